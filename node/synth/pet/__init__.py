"""Synthetic dynamic cardiac PET with exact ground truth (research use only).

Modules: :mod:`node.synth.pet.tac` -- the time-activity tier (reference note ``pet_mbf.md``
section 5.1 tier A): tracer input functions with recirculation, clinical frame schedules,
17 segment TACs from the kinetic models of :mod:`node.quant.kinetics` with given per-segment
MBF, blood fraction and RV spill-over, clinical count noise from a seeded generator, and the
exact truth alongside.
:mod:`node.synth.pet.phantom` -- the image tier (section 5.1 tier B): 4-D dynamic volumes of an LV
shell with per-segment MBF from the models, cavities, RV, torso, blur, correlated count noise,
territory defects, diffuse disease and frame-to-frame motion, with exact truth.
:mod:`node.synth.pet.dicom` -- the DICOM tier (section 5.1 tier C): a dynamic volume as PET
Image Storage instances, one per slice per frame, in the GE / Philips / Siemens timing
conventions with Decay Correction START / ADMIN / NONE and per-instance rescale.
:mod:`node.synth.pet.study` -- a rest + stress study of those (one study or two on two days,
section 5.7) with its truth JSON; :mod:`node.synth.pet.demo` -- ``cardionode demo --modality pet``.
:mod:`node.synth.pet.enhanced` -- one Enhanced PET Image Storage (multi-frame) instance of a
dynamic volume, the multi-frame variant of the DICOM tier.
:mod:`node.synth.pet.cohort` -- the versioned PET cohort with planted disease and risk traits for the
flow-reserve model (issue 16), each case analysed by the node's own PET quantification (imported on
its own: it needs the analysis).
"""

from node.synth.pet.dicom import (
    DECAY_CORRECTIONS,
    MANUFACTURERS,
    PETSeriesInfo,
    PETSeriesInstances,
    build_pet_series,
    decay_scale,
    pet_series_description,
    pet_tracer,
)
from node.synth.pet.enhanced import build_enhanced_pet
from node.synth.pet.phantom import (
    LABELS,
    PetPhantomSpec,
    PetSeries,
    PetSeriesTruth,
    PetStudy,
    PetStudyTruth,
    draw_study_flows,
    make_pet_series,
    make_pet_study,
)
from node.synth.pet.study import (
    ARRANGEMENTS,
    REST_TO_STRESS_S,
    PETStudy,
    PETStudyFiles,
    build_pet_study,
    build_phantom_pet_study,
    truth_document,
    write_pet_study,
)
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
    "ARRANGEMENTS",
    "DECAY_CORRECTIONS",
    "MANUFACTURERS",
    "REST_TO_STRESS_S",
    "PETSeriesInfo",
    "PETSeriesInstances",
    "PETStudy",
    "PETStudyFiles",
    "build_pet_series",
    "build_pet_study",
    "build_phantom_pet_study",
    "decay_scale",
    "pet_series_description",
    "pet_tracer",
    "truth_document",
    "write_pet_study",
    "FRAME_SCHEDULES",
    "INPUT_RANGES",
    "MBF_RANGES",
    "InputShape",
    "TacStudy",
    "TacTruth",
    "build_enhanced_pet",
    "LABELS",
    "PetPhantomSpec",
    "PetSeries",
    "PetSeriesTruth",
    "PetStudy",
    "PetStudyTruth",
    "draw_study_flows",
    "make_pet_series",
    "make_pet_study",
    "frame_schedule",
    "make_rest_stress",
    "make_tac_study",
    "noisy_frames",
    "sample_input_shape",
    "segment_parameters",
]
