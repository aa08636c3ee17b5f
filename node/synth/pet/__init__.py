"""Synthetic dynamic cardiac PET with exact ground truth (research use only).

Modules: :mod:`node.synth.pet.tac` -- the time-activity tier (reference note ``pet_mbf.md``
section 5.1 tier A): tracer input functions with recirculation, clinical frame schedules,
17 segment TACs from the kinetic models of :mod:`node.quant.kinetics` with given per-segment
MBF, blood fraction and RV spill-over, clinical count noise from a seeded generator, and the
exact truth alongside. The image and DICOM tiers come later.
"""

from node.synth.pet.tac import (
    FRAME_SCHEDULES,
    INPUT_RANGES,
    MBF_RANGES,
    InputShape,
    TacStudy,
    TacTruth,
    frame_schedule,
    make_rest_stress,
    make_tac_study,
    noisy_frames,
    sample_input_shape,
    segment_parameters,
)

__all__ = [
    "FRAME_SCHEDULES",
    "INPUT_RANGES",
    "MBF_RANGES",
    "InputShape",
    "TacStudy",
    "TacTruth",
    "frame_schedule",
    "make_rest_stress",
    "make_tac_study",
    "noisy_frames",
    "sample_input_shape",
    "segment_parameters",
]
