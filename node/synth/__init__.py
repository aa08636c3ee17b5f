"""Digital phantoms and synthetic studies with exact ground truth, per modality (research use only).

The modality-free LV model: :mod:`node.synth.geometry` (shapes, motion, phase delays),
:mod:`node.synth.anatomy` (heart, torso, defects) and :mod:`node.synth.truth` (ground
truth on the canonical polar grid). Per modality: :mod:`node.synth.spect` (SPECT MPI
phantoms, NM DICOM studies, the demo, training cohorts, the normal-limits builder) and
:mod:`node.synth.pet` (dynamic PET: the time-activity tier so far).

Phantoms are for the demo, tests, training and validation; no runtime module imports
this package.
"""

#: the package's modules (this face imports none of them: import the one you need)
__all__ = [
    "anatomy",
    "geometry",
    "pet",
    "spect",
    "truth",
]
