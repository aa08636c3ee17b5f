"""Digital SPECT MPI phantoms and synthetic NM DICOM studies with exact ground truth (research use only).

Modules: :mod:`node.synth.spect.phantom` (phantom acquisitions and studies),
:mod:`node.synth.spect.nm_dicom` and :mod:`node.synth.spect.study` (NM DICOM files and
truth JSON), :mod:`node.synth.spect.demo` (``cardionode demo``),
:mod:`node.synth.spect.cohort` (polar-map cohorts for training the models) and
:mod:`node.synth.spect.normal_db` (the offline builder of the node's SYNTHETIC normal
limits).
"""

#: the package's modules (this face imports none of them: import the one you need)
__all__ = [
    "cohort",
    "demo",
    "nm_dicom",
    "normal_db",
    "phantom",
    "study",
]
