"""One Enhanced PET Image Storage instance from a dynamic 4-D volume: the multi-frame DICOM tier.

Reference note: ``pet_mbf.md`` section 4.1 (IODs); DICOM PS3.3 A.56 (Enhanced PET Image IOD),
C.8.22 (Enhanced PET modules) and C.7.6.16 (multi-frame functional groups).
:func:`build_enhanced_pet` writes the same series as :func:`node.synth.pet.dicom.build_pet_series`
(same :class:`~node.synth.pet.dicom.PETSeriesInfo`, decay states and per-image quantisation, same
:class:`~node.synth.pet.dicom.PETSeriesInstances` back) as one multi-frame instance, the way a
scanner that sends Enhanced PET would:

* one frame per (time frame, slice), time-major, or in an order drawn from ``shuffle_rng``;
* per frame (Per-frame Functional Groups Sequence): Frame Content (Frame Acquisition DateTime =
  frame start, Frame Acquisition Duration in ms, Frame Reference DateTime = the decay-weighted
  frame time, Temporal Position Index = time frame + 1, Stack ID ``1``, In-Stack Position Number
  = slice + 1 along the volume's slice axis, Dimension Index Values of those three), Plane Position
  (Patient), Pixel Value Transformation (Rescale Slope ``max |value| / 32767`` of that image,
  intercept 0, Rescale Type ``US``), Real World Value Mapping (the same line, UCUM ``Bq/ml``)
  and PET Frame Correction Factors (Decay Factor of the time frame);
* shared: Pixel Measures, Plane Orientation (Patient), Frame Anatomy (heart), Frame VOI LUT,
  Radiopharmaceutical Usage, Patient Physiological State (rest or stress, from the Series
  Description by :func:`node.imaging.states.state_from_text`), PET Frame Type
  ``ORIGINAL\\PRIMARY\\DYNAMIC\\NONE``, PET Frame Acquisition, PET Position and PET Reconstruction;
* Enhanced PET Corrections: attenuation, scatter, dead time, randoms, normalisation and
  sensitivity corrected; Decay Corrected ``YES`` with Decay Correction DateTime = the injection
  (``ADMIN``) or the acquisition start (``START``), ``NO`` for ``NONE``.

Values are signed 16-bit; a loaded voxel is within half its image's Rescale Slope of the value
written. The vendor of ``series`` only names the Manufacturer (Enhanced PET timing is standard).
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from node import RESEARCH_USE_NOTICE, __version__
from node.imaging.pet import ENHANCED_PET_IMAGE_STORAGE
from node.imaging.states import state_from_text
from node.imaging.volume import Volume
from node.synth.pet.dicom import (
    MANUFACTURERS,
    PETSeriesInfo,
    PETSeriesInstances,
    _code,
    _decay_weighted_offset_s,
    _ds,
    _radiopharmaceutical,
    instance_header,
    series_plan,
)
from node.synth.spect.nm_dicom import PatientInfo, StudyInfo, geometry_attributes
from node.uids import deterministic_uid

__all__ = ["build_enhanced_pet"]

_INT16_MAX = 32767
_STATE_CODES = {"rest": ("128975004", "SCT", "Resting State"), "stress": ("432655005", "SCT", "Cardiac Stress State")}
_FRAME_TYPE = ["ORIGINAL", "PRIMARY", "DYNAMIC", "NONE"]


def _dt(moment: datetime) -> str:
    return moment.strftime("%Y%m%d%H%M%S.%f")


def _frame_type_item(keyword: str) -> Dataset:
    item = Dataset()
    setattr(item, keyword, list(_FRAME_TYPE))
    item.PixelPresentation = "MONOCHROME"
    item.VolumetricProperties = "VOLUME"
    item.VolumeBasedCalculationTechnique = "NONE"
    return item


def _shared_groups(volume: Volume, description: str, centre: np.ndarray, largest: float) -> Dataset:
    """The functional groups every frame shares (geometry, anatomy, PET frame type and acquisition)."""
    iop, _, pixel_spacing, spacing = geometry_attributes(volume.affine)
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = pixel_spacing
    measures.SliceThickness = spacing
    measures.SpacingBetweenSlices = spacing
    shared.PixelMeasuresSequence = Sequence([measures])
    orientation = Dataset()
    orientation.ImageOrientationPatient = iop
    shared.PlaneOrientationSequence = Sequence([orientation])
    anatomy = Dataset()
    anatomy.AnatomicRegionSequence = Sequence([_code("80891009", "SCT", "Heart")])
    anatomy.FrameLaterality = "U"
    shared.FrameAnatomySequence = Sequence([anatomy])
    voi = Dataset()
    voi.WindowCenter, voi.WindowWidth = _ds(largest / 2.0), _ds(max(largest, 1.0))
    shared.FrameVOILUTSequence = Sequence([voi])
    usage = Dataset()
    usage.RadiopharmaceuticalAgentNumber = 1
    shared.RadiopharmaceuticalUsageSequence = Sequence([usage])
    state = state_from_text(description)
    if state in _STATE_CODES:
        physiological = Dataset()
        physiological.PatientPhysiologicalStateCodeSequence = Sequence([_code(*_STATE_CODES[state])])
        shared.PatientPhysiologicalStateSequence = Sequence([physiological])
    shared.PETFrameTypeSequence = Sequence([_frame_type_item("FrameType")])
    acquisition = Dataset()
    acquisition.TableHeight = "150"
    acquisition.GantryDetectorTilt = "0"
    acquisition.GantryDetectorSlew = "0"
    acquisition.DataCollectionDiameter = "700"
    shared.PETFrameAcquisitionSequence = Sequence([acquisition])
    position = Dataset()
    position.TablePosition = 0.0
    position.DataCollectionCenterPatient = [float(v) for v in centre]
    position.ReconstructionTargetCenterPatient = [float(v) for v in centre]
    shared.PETPositionSequence = Sequence([position])
    reconstruction = Dataset()
    reconstruction.ReconstructionType = "3D"
    reconstruction.ReconstructionAlgorithm = "MLEM"  # ordered subsets: NumberOfSubsets
    reconstruction.IterativeReconstructionMethod = "YES"
    reconstruction.NumberOfIterations = 3
    reconstruction.NumberOfSubsets = 21
    reconstruction.ReconstructionDiameter = "700"
    shared.PETReconstructionSequence = Sequence([reconstruction])
    return shared


def _view(volume: Volume) -> tuple[str, str, str]:
    """View Code Sequence (0054,0220) code (CID 26): transverse slices, else oblique axial."""
    normal = volume.affine[:3, 0] / np.linalg.norm(volume.affine[:3, 0])
    if abs(float(normal[2])) > 0.999:
        return "62824007", "SCT", "Transverse"
    return "399089007", "SCT", "Oblique axial"


def _dimension_index(pointer: str, label: str, organisation_uid: str) -> Dataset:
    item = Dataset()
    item.DimensionOrganizationUID = organisation_uid
    item.DimensionIndexPointer = Tag(pointer)
    item.FunctionalGroupPointer = Tag("FrameContentSequence")
    item.DimensionDescriptionLabel = label
    return item


def build_enhanced_pet(
    volume: Volume,
    *,
    patient: PatientInfo,
    study: StudyInfo,
    series: PETSeriesInfo,
    shuffle_rng: np.random.Generator | None = None,
) -> PETSeriesInstances:
    """One Enhanced PET Image Storage instance holding every slice of every frame of ``volume``.

    Parameters
    ----------
    volume
        ``[frame, slice, row, column]`` activity concentration in Bq/mL, decay-corrected to the
        injection, with ``FrameAxis.dynamic`` (frame starts and durations in seconds after
        ``series.injection``). The slice axis must point along the row x column normal.
    patient, study, series
        Identity of the patient and study, and what the series is (decay correction, tracer,
        description; ``series.vendor`` names the Manufacturer only).
    shuffle_rng
        When given, the frames are stored in an order drawn from it (the SOP Instance UID then
        depends on that order).

    Returns
    -------
    PETSeriesInstances
        ``datasets`` holds the one instance; the values, slopes, scale and decay reference are
        ``[frame, slice]`` in time order, what a correct loader finds.
    """
    plan = series_plan(volume, series)
    voxels, schedule, tracer, lam = plan.voxels, plan.schedule, plan.tracer, plan.decay_constant_per_s
    n_frames, n_slices, n_rows, n_cols = voxels.shape
    _, ipp, _, _ = geometry_attributes(volume.affine)
    slice_step = plan.slice_step
    start_s, duration_s = schedule.start_s, schedule.duration_s
    acquisition_start, scale, reference_s = plan.acquisition_start, plan.scale, plan.decay_reference_s
    centre = volume.index_to_patient(0.5 * (np.array(voxels.shape[1:], dtype=float) - 1.0))

    pixel_values = np.empty_like(voxels)
    slopes = np.empty((n_frames, n_slices))
    stored = np.empty((n_frames, n_slices, n_rows, n_cols), dtype="<i2")
    for frame, slice_ in np.ndindex(n_frames, n_slices):
        values = voxels[frame, slice_] * scale[frame]
        largest = float(np.max(np.abs(values)))
        slopes[frame, slice_] = float(_ds(largest / _INT16_MAX if largest > 0 else 1.0))
        stored[frame, slice_] = np.clip(np.round(values / slopes[frame, slice_]), -_INT16_MAX, _INT16_MAX)
        pixel_values[frame, slice_] = stored[frame, slice_] * slopes[frame, slice_]

    order = [(frame, slice_) for frame in range(n_frames) for slice_ in range(n_slices)]
    if shuffle_rng is not None:
        order = [order[i] for i in shuffle_rng.permutation(len(order))]
    sop_uid = deterministic_uid(series.series_uid, "enhanced-pet-instance",
                                *([] if shuffle_rng is None else [f"{f}.{s}" for f, s in order]))
    organisation_uid = deterministic_uid(series.series_uid, "enhanced-pet-dimensions")

    per_frame: list[Dataset] = []
    for frame, slice_ in order:
        start = series.injection + timedelta(seconds=float(start_s[frame]))
        duration = float(duration_s[frame])
        content = Dataset()
        content.FrameAcquisitionNumber = frame + 1
        content.FrameReferenceDateTime = _dt(start + timedelta(seconds=_decay_weighted_offset_s(lam, duration)))
        content.FrameAcquisitionDateTime = _dt(start)
        content.FrameAcquisitionDuration = duration * 1000.0
        content.TemporalPositionIndex = frame + 1
        content.StackID = "1"
        content.InStackPositionNumber = slice_ + 1
        content.DimensionIndexValues = [frame + 1, 1, slice_ + 1]
        position = Dataset()
        position.ImagePositionPatient = [round(float(v), 4) for v in np.asarray(ipp) + slice_ * slice_step]
        transformation = Dataset()
        transformation.RescaleIntercept, transformation.RescaleSlope = "0", _ds(slopes[frame, slice_])
        transformation.RescaleType = "US"  # the unit is the Real World Value Mapping's (A.56.4)
        mapping = Dataset()
        mapping.add_new("RealWorldValueFirstValueMapped", "SS", -_INT16_MAX)
        mapping.add_new("RealWorldValueLastValueMapped", "SS", _INT16_MAX)
        mapping.RealWorldValueIntercept, mapping.RealWorldValueSlope = 0.0, float(slopes[frame, slice_])
        mapping.LUTExplanation, mapping.LUTLabel = "activity concentration", "BQML"
        mapping.MeasurementUnitsCodeSequence = Sequence([_code("Bq/ml", "UCUM", "Becquerels/milliliter")])
        factors = Dataset()
        factors.PrimaryPromptsCountsAccumulated = 1000000
        factors.SliceSensitivityFactor = "1"
        if reference_s is not None:
            factors.DecayFactor = _ds(math.exp(lam * (float(start_s[frame]) - reference_s)) * lam * duration
                                      / -math.expm1(-lam * duration))
        factors.ScatterFractionFactor = "0.3"
        factors.DeadTimeFactor = "1"
        groups = Dataset()
        groups.FrameContentSequence = Sequence([content])
        groups.PlanePositionSequence = Sequence([position])
        groups.PixelValueTransformationSequence = Sequence([transformation])
        groups.RealWorldValueMappingSequence = Sequence([mapping])
        groups.PETFrameCorrectionFactorsSequence = Sequence([factors])
        per_frame.append(groups)

    ds = instance_header(ENHANCED_PET_IMAGE_STORAGE, sop_uid, patient, study)
    # general series / Enhanced PET series / frame of reference / equipment
    ds.Modality = "PT"
    ds.SeriesInstanceUID = series.series_uid
    ds.SeriesNumber = series.series_number
    ds.SeriesDescription = series.description
    ds.SeriesDate, ds.SeriesTime = acquisition_start.strftime("%Y%m%d"), acquisition_start.strftime("%H%M%S.%f")
    ds.BodyPartExamined = "HEART"
    ds.FrameOfReferenceUID = study.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = MANUFACTURERS.get(series.vendor, series.vendor)
    ds.ManufacturerModelName = "CardioNode phantom"
    ds.DeviceSerialNumber = "SYNTH-0001"
    ds.SoftwareVersions = f"cardionode {__version__}"
    ds.InstitutionName = "Synthetic"
    # Enhanced PET image / multi-frame functional groups / dimensions
    ds.ImageType = list(_FRAME_TYPE)
    ds.PixelPresentation = "MONOCHROME"
    ds.VolumetricProperties = "VOLUME"
    ds.VolumeBasedCalculationTechnique = "NONE"
    ds.AcquisitionDateTime = _dt(acquisition_start)
    ds.AcquisitionDuration = float(schedule.end_s[-1] - start_s[0])
    ds.ContentQualification = "RESEARCH"
    ds.ImageComments = RESEARCH_USE_NOTICE + " Synthetic phantom data."
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.PresentationLUTShape = "IDENTITY"
    ds.InstanceNumber = 1
    ds.ContentDate, ds.ContentTime = acquisition_start.strftime("%Y%m%d"), acquisition_start.strftime("%H%M%S.%f")
    ds.NumberOfFrames = len(order)
    ds.AcquisitionContextSequence = Sequence()
    ds.SharedFunctionalGroupsSequence = Sequence([_shared_groups(volume, series.description, centre,
                                                                 float(np.max(np.abs(pixel_values))))])
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    organisation = Dataset()
    organisation.DimensionOrganizationUID = organisation_uid
    ds.DimensionOrganizationSequence = Sequence([organisation])
    ds.DimensionOrganizationType = "3D_TEMPORAL"
    ds.DimensionIndexSequence = Sequence([
        _dimension_index("TemporalPositionIndex", "Time frame", organisation_uid),
        _dimension_index("StackID", "Stack", organisation_uid),
        _dimension_index("InStackPositionNumber", "Slice", organisation_uid),
    ])
    # Enhanced PET isotope
    radiopharmaceutical = _radiopharmaceutical(tracer, series)
    del radiopharmaceutical.Radiopharmaceutical, radiopharmaceutical.RadiopharmaceuticalRoute  # not in C.8.22.4
    radiopharmaceutical.RadiopharmaceuticalAgentNumber = 1
    radiopharmaceutical.AdministrationRouteCodeSequence = Sequence([_code("47625008", "SCT", "Intravenous route")])
    radiopharmaceutical.RadionuclidePositronFraction = "0.95"
    if "RadionuclideTotalDose" not in radiopharmaceutical:
        radiopharmaceutical.RadionuclideTotalDose = None
    ds.RadiopharmaceuticalInformationSequence = Sequence([radiopharmaceutical])
    # Enhanced PET acquisition
    ds.AcquisitionStartCondition = "MANU"
    ds.AcquisitionTerminationCondition = "TIME"
    ds.TerminationTimeThreshold = float(schedule.end_s[-1] - start_s[0])
    ds.TypeOfDetectorMotion = "STATIONARY"
    ds.DetectorGeometry = "CYLINDRICAL_RING"
    ds.TransverseDetectorSeparation = 820.0
    ds.AxialDetectorDimension = 157.0
    ds.CollimatorType = "NONE"
    ds.CoincidenceWindowWidth = "4.7"
    window = Dataset()
    window.EnergyWindowLowerLimit, window.EnergyWindowUpperLimit = "435", "650"
    ds.EnergyWindowRangeSequence = Sequence([window])
    ds.TableMotion = "STATIC"
    ds.TimeOfFlightInformationUsed = "TRUE"
    ds.ViewCodeSequence = Sequence([_code(*_view(volume))])
    # Enhanced PET corrections
    ds.CountsSource = "EMISSION"
    ds.DecayCorrected = "NO" if reference_s is None else "YES"
    ds.AttenuationCorrected = "YES"
    ds.ScatterCorrected = "YES"
    ds.DeadTimeCorrected = "YES"
    ds.GantryMotionCorrected = "NO"
    ds.PatientMotionCorrected = "NO"
    ds.CountLossNormalizationCorrected = "NO"
    ds.RandomsCorrected = "YES"
    ds.NonUniformRadialSamplingCorrected = "NO"
    ds.SensitivityCalibrated = "YES"
    ds.DetectorNormalizationCorrection = "YES"
    ds.RandomsCorrectionMethod = "DLYD"
    ds.AttenuationCorrectionSource = "CT"
    ds.AttenuationCorrectionTemporalRelationship = "SEPARATE"
    ds.ScatterCorrectionMethod = "model-based"
    if reference_s is not None:
        ds.DecayCorrectionDateTime = _dt(series.injection + timedelta(seconds=reference_s))
    # image pixel
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(n_rows), int(n_cols)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.PixelData = np.stack([stored[frame, slice_] for frame, slice_ in order]).tobytes()
    ds["PixelData"].VR = "OW"
    return PETSeriesInstances([ds], pixel_values, series.decay_correction, reference_s, scale, slopes)
