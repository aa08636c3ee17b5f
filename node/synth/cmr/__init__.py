"""Cardiac MR phantoms and synthetic CMR DICOM studies with exact truth (research use only).

:mod:`node.synth.cmr.phantom` (analytic LV/RV short-axis stacks: cine over the cardiac cycle and
LGE with scar patterns, partial volume, Rician noise, continuous and sampled truth),
:mod:`node.synth.cmr.dicom` (classic and Enhanced MR Image Storage writers with vendor flavours)
and :mod:`node.synth.cmr.study` (a whole cine + LGE study with its truth); :mod:`node.synth.cmr.demo`
is ``cardionode demo --modality mr``; :mod:`node.synth.cmr.cohort` the versioned LGE cohorts with their event
process and oracle for the CMR outcome models (issue 18).
"""

#: the package's modules (this face imports none of them: import the one you need)
__all__ = ["cohort", "demo", "dicom", "phantom", "study"]
