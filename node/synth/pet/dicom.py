"""PET Image Storage instances (one per slice per frame) from a dynamic 4-D volume: the DICOM tier.

Reference note: ``pet_mbf.md`` sections 4 (DICOM for dynamic cardiac PET, vendor timing
pitfalls) and 5.1 (tier C). :func:`build_pet_series` writes a dynamic
:class:`~node.imaging.volume.Volume` (``[frame, slice, row, column]``, Bq/mL, decay-corrected
to the radiopharmaceutical start, ``FrameAxis.dynamic`` with frame starts in seconds after it)
as legacy PET Image Storage instances the way scanners send them, in the timing convention
of a named vendor variant of :data:`node.imaging.pet.TIMING_VARIANTS`:

* ``ge``: Frame Reference Time (0054,1300) = frame start in ms after Series Date/Time;
* ``philips``: Frame Reference Time = frame middle in ms after Series Date/Time;
* ``siemens``: Acquisition Date/Time (0008,0022/0032) = frame start (changes per frame);
  Frame Reference Time = the decay-weighted frame time (the time at which the instantaneous
  decay factor equals the frame's mean one), which the loader does not use.

Series Date/Time is the acquisition start (the first frame's start). Decay Correction
(0054,1102) says what the stored values are, with ``C_i`` the input frame value
(decay-corrected to the radiopharmaceutical start, the convention of :mod:`node.quant.kinetics`)
and ``lambda = ln 2 / half-life``:

* ``ADMIN``: ``C_i`` (corrected to the administration);
* ``START``: ``C_i exp(-lambda t0)`` (corrected to the acquisition start ``t0``);
* ``NONE``: ``C_i D_i``, ``D_i`` the frame's mean decay factor
  (:meth:`~node.imaging.volume.FrameSchedule.mean_decay_factor`): the counted, decaying activity.

Decay Factor (0054,1321), required with ``DECY`` in Corrected Image, is the factor that took the
uncorrected frame value to the stored one, ``exp(lambda (t_i - t_ref)) lambda d_i / (1 - exp(-lambda d_i))``.
Pixels are signed 16-bit with a Rescale Slope of their own per instance (``max |value| / 32767``),
so a loaded voxel is within half a slope of the value written. Image Index (0054,1330) is
``frame x NumberOfSlices + slice + 1`` (slices in the order of the volume's slice axis),
Number of Time Slices (0054,0101) the number of frames; the tracer goes in the
Radiopharmaceutical Information Sequence (0054,0016) with its agent and radionuclide codes,
half-life and Radiopharmaceutical Start DateTime (0018,1078), time zero (no separate Start
Time, so removing the DateTime removes time zero). The state (rest/stress) is named in Series
Description, the text :mod:`node.imaging.states` reads. Patient and study identity are the
SPECT synthesiser's :class:`~node.synth.spect.nm_dicom.PatientInfo` and
:class:`~node.synth.spect.nm_dicom.StudyInfo`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian

from node import RESEARCH_USE_NOTICE, __version__
from node.imaging.pet import PET_IMAGE_STORAGE, TIMING_VARIANTS
from node.imaging.radiopharmaceuticals import PET_TRACERS, PETTracer, pet_tracer_from_text
from node.imaging.volume import FrameSchedule, Volume
from node.synth.spect.nm_dicom import PatientInfo, StudyInfo, geometry_attributes, set_patient_and_study
from node.uids import deterministic_uid

__all__ = [
    "SeriesPlan",
    "instance_header",
    "series_plan",
    "DECAY_CORRECTIONS",
    "MANUFACTURERS",
    "PETSeriesInfo",
    "PETSeriesInstances",
    "build_pet_series",
    "decay_scale",
    "pet_series_description",
    "pet_tracer",
]

#: Manufacturer (0008,0070) written for each timing variant (what :func:`node.imaging.pet.timing_variant_for` reads)
MANUFACTURERS: dict[str, str] = {"ge": "GE MEDICAL SYSTEMS", "siemens": "SIEMENS", "philips": "Philips Medical Systems"}
#: the Decay Correction (0054,1102) values the writer knows
DECAY_CORRECTIONS: tuple[str, ...] = ("START", "ADMIN", "NONE")

_INT16_MAX = 32767


@dataclass(frozen=True)
class PETSeriesInfo:
    """One dynamic PET series to write.

    ``description`` names the state (``REST ...`` / ``STRESS ...``, see
    :func:`pet_series_description`); ``tracer`` is a :data:`~node.imaging.radiopharmaceuticals.PET_TRACERS`
    key or a name :func:`pet_tracer` understands (``"Rb-82"``); ``injection`` is the
    radiopharmaceutical start, time zero of the volume's frame starts; ``vendor`` a timing
    variant (``ge``, ``philips``, ``siemens``); ``decay_correction`` one of
    :data:`DECAY_CORRECTIONS`; ``dose_mbq`` the injected activity (MBq, written in Bq) or None;
    ``instance_numbers`` False leaves Instance Number empty (as some vendors do).
    """

    series_uid: str
    series_number: int
    description: str
    tracer: str
    injection: datetime
    vendor: str = "ge"
    decay_correction: str = "START"
    dose_mbq: float | None = None
    instance_numbers: bool = True


@dataclass(frozen=True, eq=False)
class PETSeriesInstances:
    """What :func:`build_pet_series` wrote.

    ``datasets``: the instances, in writing order (shuffled when asked).
    ``pixel_bq_per_ml``: ``[frame, slice, row, column]`` values the instances hold after their
    rescale (stored x slope), in the decay state of ``decay_correction``: what a correct loader
    finds. ``decay_reference_s``: the time the values are decay-corrected to, in seconds after
    the injection (None for ``NONE``). ``scale``: ``[frame]`` factor from the input volume
    (decay-corrected to the injection) to the written values before quantisation;
    ``rescale_slope``: ``[frame, slice]`` Rescale Slope of each instance (Bq/mL per stored unit).
    """

    datasets: list[Dataset]
    pixel_bq_per_ml: np.ndarray
    decay_correction: str
    decay_reference_s: float | None
    scale: np.ndarray
    rescale_slope: np.ndarray


def pet_tracer(name: str) -> PETTracer:
    """The PET tracer of a :data:`PET_TRACERS` key or a tracer name (``"Rb-82"``, ``"N-13 ammonia"``, ...)."""
    key = name if name in PET_TRACERS else pet_tracer_from_text(name)
    if key is None:
        raise ValueError(f"unknown PET tracer {name!r}; known: {sorted(PET_TRACERS)}")
    return PET_TRACERS[key]


def pet_series_description(state: str, tracer: str) -> str:
    """Series Description of a dynamic series, e.g. ``"REST RB-82 CHLORIDE DYNAMIC"`` (state ``rest`` or ``stress``)."""
    if state not in ("rest", "stress"):
        raise ValueError(f"state must be 'rest' or 'stress', got {state!r}")
    return f"{state.upper()} {pet_tracer(tracer).display_name.upper()} DYNAMIC"


def decay_scale(schedule: FrameSchedule, half_life_s: float, decay_correction: str) -> np.ndarray:
    """``[frames]`` factor from frame values decay-corrected to time zero to those of ``decay_correction``.

    ``ADMIN``: 1; ``START``: ``exp(-lambda start_0)`` (acquisition start = first frame start);
    ``NONE``: the frames' mean decay factors ``D_i``. Times in seconds after time zero (injection).
    """
    lam = math.log(2.0) / float(half_life_s)
    if decay_correction == "ADMIN":
        return np.ones(schedule.n_frames)
    if decay_correction == "START":
        return np.full(schedule.n_frames, math.exp(-lam * float(schedule.start_s[0])))
    if decay_correction == "NONE":
        return schedule.mean_decay_factor(lam)
    raise ValueError(f"decay_correction must be one of {DECAY_CORRECTIONS}, got {decay_correction!r}")


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _tm(moment: datetime) -> str:
    return moment.strftime("%H%M%S.%f")


def _da(moment: datetime) -> str:
    return moment.strftime("%Y%m%d")


def _ds(value: float) -> str:
    """A Decimal String of at most 16 characters."""
    text = f"{value:.10g}"
    return text if len(text) <= 16 else f"{value:.6e}"


def _decay_weighted_offset_s(lam: float, duration_s: float) -> float:
    """Seconds after a frame's start at which ``exp(-lambda t)`` equals the frame's mean decay factor."""
    x = lam * duration_s
    return -math.log(-math.expm1(-x) / x) / lam


def _radiopharmaceutical(tracer: PETTracer, series: PETSeriesInfo) -> Dataset:
    item = Dataset()
    item.Radiopharmaceutical = tracer.display_name
    item.RadiopharmaceuticalRoute = "INTRAVENOUS"
    item.RadiopharmaceuticalStartDateTime = series.injection.strftime("%Y%m%d%H%M%S.%f")
    if series.dose_mbq is not None:
        item.RadionuclideTotalDose = _ds(series.dose_mbq * 1e6)
    item.RadionuclideHalfLife = _ds(tracer.half_life_s)
    item.RadionuclideCodeSequence = Sequence([_code(*tracer.radionuclide_code)])
    item.RadiopharmaceuticalCodeSequence = Sequence([_code(*tracer.agent_code)])
    return item


def instance_header(sop_class_uid: str, sop_instance_uid: str, patient: PatientInfo, study: StudyInfo) -> Dataset:
    """A new synthetic instance: File Meta Information (Explicit VR Little Endian) and the SOP Common,
    Patient and General Study modules; the writer adds the rest."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta.ImplementationVersionName = f"CARDIONODE_{__version__}"[:16]
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid
    ds.InstanceCreationDate, ds.InstanceCreationTime = study.study_date, study.study_time
    set_patient_and_study(ds, patient, study)
    ds.StudyDescription = study.description
    return ds


@dataclass(frozen=True, eq=False)
class SeriesPlan:
    """What every PET writer derives from a dynamic volume and its series description, checked once.

    ``voxels`` float64 ``[frame, slice, row, col]`` (Bq/mL, decay-corrected to injection);
    ``decay_constant_per_s`` of the tracer; ``slice_step`` the patient-space step between slices
    (mm); ``acquisition_start`` the first frame's start; ``scale`` ``[frame]`` the factor of the
    declared Decay Correction (:func:`decay_scale`); ``decay_reference_s`` the time the stored
    values are decay-corrected to (s after injection; None for NONE).
    """

    voxels: np.ndarray
    schedule: FrameSchedule
    tracer: PETTracer
    decay_constant_per_s: float
    slice_step: np.ndarray
    acquisition_start: datetime
    scale: np.ndarray
    decay_reference_s: float | None


def series_plan(volume: Volume, series: PETSeriesInfo) -> SeriesPlan:
    """The :class:`SeriesPlan` of ``volume`` written as ``series``; ValueError for what no writer can write."""
    if not volume.is_dynamic or volume.frame_axis is None or volume.frame_axis.schedule is None:
        raise ValueError("the volume must be 4-D with dynamic frames (FrameAxis.dynamic)")
    if series.decay_correction not in DECAY_CORRECTIONS:
        raise ValueError(f"decay_correction must be one of {DECAY_CORRECTIONS}, got {series.decay_correction!r}")
    voxels = np.asarray(volume.voxels, dtype=np.float64)
    if not np.all(np.isfinite(voxels)):
        raise ValueError("voxel values must be finite")
    schedule = volume.frame_axis.schedule
    tracer = pet_tracer(series.tracer)
    start0 = float(schedule.start_s[0])
    return SeriesPlan(
        voxels=voxels,
        schedule=schedule,
        tracer=tracer,
        decay_constant_per_s=math.log(2.0) / tracer.half_life_s,
        slice_step=np.asarray(volume.affine[:3, 0], dtype=float),
        acquisition_start=series.injection + timedelta(seconds=start0),
        scale=decay_scale(schedule, tracer.half_life_s, series.decay_correction),
        decay_reference_s={"ADMIN": 0.0, "START": start0, "NONE": None}[series.decay_correction],
    )


def build_pet_series(
    volume: Volume,
    *,
    patient: PatientInfo,
    study: StudyInfo,
    series: PETSeriesInfo,
    shuffle_rng: np.random.Generator | None = None,
) -> PETSeriesInstances:
    """PET Image Storage instances of the dynamic ``volume``, one per slice per frame.

    Parameters
    ----------
    volume
        ``[frame, slice, row, column]`` activity concentration in Bq/mL, decay-corrected to the
        injection, with ``FrameAxis.dynamic`` (frame starts in seconds after
        ``series.injection``). The slice axis must point along the row x column normal.
    patient, study, series
        Identity of the patient and study, and what the series is (timing variant, decay
        correction, tracer, description).
    shuffle_rng
        When given, the instances come out in an order drawn from it.

    Returns
    -------
    PETSeriesInstances
        The datasets and the values a loader must find in them.
    """
    if series.vendor not in TIMING_VARIANTS:
        raise ValueError(f"vendor must be one of {sorted(TIMING_VARIANTS)}, got {series.vendor!r}")
    plan = series_plan(volume, series)
    voxels, schedule, tracer, lam = plan.voxels, plan.schedule, plan.tracer, plan.decay_constant_per_s
    n_frames, n_slices, n_rows, n_cols = voxels.shape
    iop, ipp, pixel_spacing, spacing = geometry_attributes(volume.affine)
    slice_step = plan.slice_step
    start_s, duration_s = schedule.start_s, schedule.duration_s
    acquisition_start, scale, reference_s = plan.acquisition_start, plan.scale, plan.decay_reference_s
    corrected = ["DECY", "ATTN", "SCAT", "DTIM", "RAN", "NORM"]
    if series.decay_correction == "NONE":
        corrected.remove("DECY")

    pixel_values = np.empty_like(voxels)
    slopes = np.empty((n_frames, n_slices))
    datasets: list[Dataset] = []
    for frame in range(n_frames):
        frame_start = series.injection + timedelta(seconds=float(start_s[frame]))
        offset_ms = (float(start_s[frame]) - float(start_s[0])) * 1000.0
        duration = float(duration_s[frame])
        if series.vendor == "ge":
            frame_reference_ms, acquired = offset_ms, acquisition_start
        elif series.vendor == "philips":
            frame_reference_ms, acquired = offset_ms + 500.0 * duration, frame_start
        else:
            frame_reference_ms = offset_ms + 1000.0 * _decay_weighted_offset_s(lam, duration)
            acquired = frame_start
        decay_factor = None
        if reference_s is not None:
            decay_factor = math.exp(lam * (float(start_s[frame]) - reference_s)) * lam * duration / -math.expm1(
                -lam * duration)
        for slice_ in range(n_slices):
            values = voxels[frame, slice_] * scale[frame]
            largest = float(np.max(np.abs(values)))
            slope_text = _ds(largest / _INT16_MAX if largest > 0 else 1.0)
            slope = float(slope_text)
            stored = np.clip(np.round(values / slope), -_INT16_MAX, _INT16_MAX).astype("<i2")
            pixel_values[frame, slice_] = stored * slope
            slopes[frame, slice_] = slope
            index = frame * n_slices + slice_ + 1
            sop_uid = deterministic_uid(series.series_uid, "pet-instance", frame, slice_)

            ds = instance_header(PET_IMAGE_STORAGE, sop_uid, patient, study)
            # series / equipment / frame of reference
            ds.Modality = "PT"
            ds.SeriesInstanceUID = series.series_uid
            ds.SeriesNumber = series.series_number
            ds.SeriesDescription = series.description
            ds.SeriesDate, ds.SeriesTime = _da(acquisition_start), _tm(acquisition_start)
            ds.BodyPartExamined = "HEART"
            ds.Manufacturer = MANUFACTURERS[series.vendor]
            ds.ManufacturerModelName = "CardioNode phantom"
            ds.DeviceSerialNumber = "SYNTH-0001"
            ds.SoftwareVersions = f"cardionode {__version__}"
            ds.InstitutionName = "Synthetic"
            ds.FrameOfReferenceUID = study.frame_of_reference_uid
            ds.PositionReferenceIndicator = ""
            # PET series
            ds.Units = "BQML"
            ds.CountsSource = "EMISSION"
            ds.CollimatorType = "NONE"
            ds.SeriesType = ["DYNAMIC", "IMAGE"]
            ds.NumberOfTimeSlices = n_frames
            ds.NumberOfSlices = n_slices
            ds.CorrectedImage = list(corrected)
            ds.DecayCorrection = series.decay_correction
            ds.RandomsCorrectionMethod = "DLYD"
            ds.AttenuationCorrectionMethod = "CT-based"
            ds.ScatterCorrectionMethod = "model-based"
            ds.ReconstructionMethod = "OSEM 3i21s"
            # PET isotope / NM-PET patient orientation (Type 2: empty)
            ds.RadiopharmaceuticalInformationSequence = Sequence([_radiopharmaceutical(tracer, series)])
            ds.PatientOrientationCodeSequence = Sequence()
            ds.PatientGantryRelationshipCodeSequence = Sequence()
            # general image / PET image
            ds.InstanceNumber = index if series.instance_numbers else ""
            ds.ImageType = ["ORIGINAL", "PRIMARY"]
            ds.ContentDate, ds.ContentTime = _da(acquisition_start), _tm(acquisition_start)
            ds.AcquisitionDate, ds.AcquisitionTime = _da(acquired), _tm(acquired)
            ds.ImageComments = RESEARCH_USE_NOTICE + " Synthetic phantom data."
            ds.LossyImageCompression = "00"
            ds.ImageIndex = index
            ds.FrameReferenceTime = f"{frame_reference_ms:.1f}"
            ds.ActualFrameDuration = int(round(duration * 1000.0))
            if decay_factor is not None:
                ds.DecayFactor = _ds(decay_factor)
            ds.RescaleIntercept, ds.RescaleSlope = "0", slope_text
            # image plane
            ds.ImageOrientationPatient = iop
            ds.ImagePositionPatient = [round(float(v), 4) for v in np.asarray(ipp) + slice_ * slice_step]
            ds.PixelSpacing = pixel_spacing
            ds.SliceThickness = spacing
            # image pixel
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.Rows, ds.Columns = int(n_rows), int(n_cols)
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
            ds.PixelData = stored.tobytes()
            ds["PixelData"].VR = "OW"
            datasets.append(ds)
    if shuffle_rng is not None:
        datasets = [datasets[i] for i in shuffle_rng.permutation(len(datasets))]
    return PETSeriesInstances(datasets, pixel_values, series.decay_correction, reference_s, scale, slopes)
