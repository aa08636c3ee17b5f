"""Cardiac MR loading: classic per-slice series merged into short-axis stacks, Enhanced MR per-frame rescale, faults named.

The data sets are built here with pydicom (small, exact pixel values that encode slice and phase),
written to bytes and read back, so the loader sees what it sees from a file.
"""

from __future__ import annotations

import io
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian

from node.imaging.errors import UnusableSeriesError
from node.imaging.mr import (
    ENHANCED_MR_IMAGE_STORAGE,
    MR_IMAGE_STORAGE,
    build_sax_stack,
    load_cmr_study,
    load_mr_series,
    mr_frames,
)
from node.imaging.volume import ShortAxisStack
from node.uids import deterministic_uid
from tests.support.cmr import cmr_study

#: apex-to-base LV axis used by these data sets (LPS), a little off the loader's prior
AXIS = np.array([-0.55, 0.45, 0.70]) / np.linalg.norm([-0.55, 0.45, 0.70])
FOR_UID = deterministic_uid("mr-test-for")


def plane_axes(normal: np.ndarray, spin_deg: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Row and column cosines of a plane with unit ``normal`` (row x column = normal)."""
    normal = np.asarray(normal, dtype=float) / np.linalg.norm(normal)
    helper = np.array([0.0, 0.0, 1.0]) if abs(normal[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    row = np.cross(helper, normal)
    row /= np.linalg.norm(row)
    col = np.cross(normal, row)
    angle = np.deg2rad(spin_deg)
    row, col = np.cos(angle) * row + np.sin(angle) * col, -np.sin(angle) * row + np.cos(angle) * col
    return row, col


def tilted(normal: np.ndarray, degrees: float) -> np.ndarray:
    """``normal`` turned by ``degrees`` about an axis perpendicular to it."""
    row, _ = plane_axes(normal)
    angle = np.deg2rad(degrees)
    return np.cos(angle) * normal + np.sin(angle) * row


@dataclass(frozen=True)
class Image:
    """One classic MR image to write."""

    series_uid: str
    series_number: int
    instance_number: int
    position: np.ndarray
    normal: np.ndarray
    pixels: np.ndarray  # uint16 [rows, columns]
    spacing: tuple[float, float] = (1.5, 1.5)
    trigger_ms: float | None = None
    inversion_ms: float | None = None
    cardiac_images: int | None = None
    description: str = ""
    scanning: str = "GR"
    variant: str = "SS"
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "M", "NONE")
    thickness: float = 8.0
    spacing_between: float | None = None
    signed: bool = False
    gated: bool = True  # ScanOptions (0018,0022) CG


def _reread(ds: Dataset) -> Dataset:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


def _common(ds: Dataset, sop_class: str, sop_uid: str, series_uid: str, series_number: int, description: str) -> None:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    ds.Modality = "MR"
    ds.PatientName, ds.PatientID = "Synthetic^Mr", "SYNMR"
    ds.StudyInstanceUID = deterministic_uid("mr-test-study")
    ds.SeriesInstanceUID, ds.SeriesNumber = series_uid, series_number
    ds.FrameOfReferenceUID = FOR_UID
    ds.SeriesDescription = description
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"


def classic(image: Image) -> Dataset:
    """An MR Image Storage instance (read back from bytes)."""
    ds = Dataset()
    sop_uid = deterministic_uid("mr-test-image", image.series_uid, image.instance_number)
    _common(ds, MR_IMAGE_STORAGE, sop_uid, image.series_uid, image.series_number, image.description)
    ds.InstanceNumber = image.instance_number
    ds.ImageType = list(image.image_type)
    ds.ScanningSequence, ds.SequenceVariant = image.scanning, image.variant
    ds.MRAcquisitionType = "2D"
    if image.gated:
        ds.ScanOptions = "CG"
    row, col = plane_axes(image.normal)
    ds.ImageOrientationPatient = [round(float(v), 8) for v in (*row, *col)]
    ds.ImagePositionPatient = [round(float(v), 4) for v in image.position]
    ds.PixelSpacing = list(image.spacing)
    ds.SliceThickness = image.thickness
    if image.spacing_between is not None:
        ds.SpacingBetweenSlices = image.spacing_between
    if image.trigger_ms is not None:
        ds.TriggerTime = image.trigger_ms
    if image.inversion_ms is not None:
        ds.InversionTime = image.inversion_ms
    if image.cardiac_images is not None:
        ds.CardiacNumberOfImages = image.cardiac_images
    ds.Rows, ds.Columns = image.pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12 if not image.signed else 16, 11 if not image.signed else 15
    ds.PixelRepresentation = 1 if image.signed else 0
    ds.PixelData = image.pixels.astype("<i2" if image.signed else "<u2").tobytes()
    return _reread(ds)


def code(slice_: int, phase: int) -> int:
    """The pixel value that says which slice and phase an image is (fits 12 bits)."""
    return 100 * slice_ + phase + 1


def sax_study(n_slices: int = 8, n_phases: int = 20, *, per_slice_series: bool = True, spacing_mm: float = 10.0,
              reverse_instances: bool = True, seed: int = 0, shape: tuple[int, int] = (6, 7),
              axis: np.ndarray = AXIS, description: str = "CINE_segmented_SAX") -> list[Image]:
    """A cine short-axis stack (UK Biobank style: one series per slice), pixel value = :func:`code`."""
    rng = np.random.default_rng(seed)
    row, col = plane_axes(axis)
    origin = np.array([10.0, -40.0, 20.0]) - 0.5 * (shape[0] * col + shape[1] * row) * 1.5
    images: list[Image] = []
    for s in range(n_slices):
        uid = deterministic_uid("mr-test-cine", seed, s if per_slice_series else 0)
        for p in range(n_phases):
            number = (n_phases - p if reverse_instances else p + 1) + (0 if per_slice_series else s * n_phases)
            if reverse_instances and not per_slice_series:
                number = n_slices * n_phases - (s * n_phases + p)
            images.append(Image(uid, 10 + (s if per_slice_series else 0), number, origin + s * spacing_mm * axis,
                                axis, np.full(shape, code(s, p), dtype=np.uint16), trigger_ms=p * 40.0 + 5.0,
                                cardiac_images=n_phases,
                                description=f"{description}_b{s + 1}" if per_slice_series else description,
                                spacing_between=spacing_mm))
    order = rng.permutation(len(images))
    return [images[i] for i in order]


def expected_codes(n_phases: int, slices: Sequence[int]) -> np.ndarray:
    return np.array([[code(s, p) for s in slices] for p in range(n_phases)], dtype=float)


def test_per_slice_series_are_merged_in_position_then_trigger_order_despite_reversed_instance_numbers() -> None:
    images = sax_study()
    datasets = [classic(i) for i in images]
    study = load_cmr_study(datasets)
    assert {d.role for d in study.decisions.values()} == {"cine_sax"}
    assert len(study.decisions) == 8
    merged = study.stacks["cine_sax"]
    stack = merged.stack
    assert isinstance(stack, ShortAxisStack)
    assert stack.voxels.shape == (20, 8, 6, 7)
    along = stack.slice_positions_mm
    truth_order = list(range(8)) if float(stack.normal @ AXIS) > 0 else list(range(7, -1, -1))
    assert np.all(np.diff(along) > 0)
    assert np.array_equal(stack.voxels[:, :, 0, 0], expected_codes(20, truth_order))
    assert np.all(np.diff(stack.trigger_ms, axis=0) > 0)
    assert np.allclose(stack.slice_spacing_mm, 10.0, atol=1e-3)
    assert merged.issues == ()
    assert len(set(merged.series_uids)) == 8
    volume = stack.as_volume()
    assert volume.is_gated and volume.voxels.shape == (20, 8, 6, 7)
    assert np.allclose(volume.index_to_patient(np.array([1.0, 0.0, 0.0])), stack.positions_mm[1], atol=1e-3)


def test_one_series_stack_in_reversed_instance_order_is_sorted_by_position() -> None:
    images = sax_study(n_slices=6, n_phases=12, per_slice_series=False, seed=3)
    stack = load_cmr_study([classic(i) for i in images]).stacks["cine_sax"].stack
    truth_order = list(range(6)) if float(stack.normal @ AXIS) > 0 else list(range(5, -1, -1))
    assert np.array_equal(stack.voxels[:, :, 3, 3], expected_codes(12, truth_order))


def test_a_missing_slice_is_flagged_and_never_interpolated() -> None:
    images = [i for i in sax_study(n_slices=9, n_phases=10, seed=1) if not i.description.endswith("_b5")]
    merged = load_cmr_study([classic(i) for i in images]).stacks["cine_sax"]
    assert merged.stack.n_slices == 8  # the 8 acquired slices only
    assert [i.kind for i in merged.issues] == ["missing_slice"]
    assert "1 slice(s) missing" in merged.issues[0].detail and "not interpolated" in merged.issues[0].detail
    gap = merged.stack.gaps_after()
    assert gap.size == 1
    assert np.isclose(np.diff(merged.stack.slice_positions_mm)[gap[0]], 20.0, atol=1e-3)
    present = {int(v) // 100 for v in merged.stack.voxels[0, :, 0, 0]}
    assert present == set(range(9)) - {4}
    with pytest.raises(ValueError, match="even grid"):
        merged.stack.as_volume()


def test_duplicates_mixed_orientation_matrix_pixel_spacing_and_spacing_are_named() -> None:
    images = sax_study(n_slices=8, n_phases=10, seed=2)
    by_slice = {s: [i for i in images if i.description.endswith(f"_b{s + 1}")] for s in range(8)}
    # slice 2 re-scanned in a later series (values + 1000), slice 5 re-planned 4 degrees off
    rescan = [Image(deterministic_uid("rescan"), 99, i.instance_number, i.position, i.normal, i.pixels + 1000,
                    trigger_ms=i.trigger_ms, cardiac_images=10, description="CINE_segmented_SAX_b3_REPEAT")
              for i in by_slice[2]]
    replanned = [Image(i.series_uid, i.series_number, i.instance_number, i.position, tilted(AXIS, 4.0), i.pixels,
                       trigger_ms=i.trigger_ms, cardiac_images=10, description=i.description) for i in by_slice[5]]
    bigger = [Image(i.series_uid, i.series_number, i.instance_number, i.position, i.normal,
                    np.zeros((8, 7), dtype=np.uint16), trigger_ms=i.trigger_ms, cardiac_images=10,
                    description=i.description) for i in by_slice[6]]
    finer = [Image(i.series_uid, i.series_number, i.instance_number, i.position, i.normal, i.pixels, spacing=(1.2, 1.2),
                   trigger_ms=i.trigger_ms, cardiac_images=10, description=i.description) for i in by_slice[7]]
    kept = [i for s in (0, 1, 2, 3, 4) for i in by_slice[s]]
    study = load_cmr_study([classic(i) for i in kept + rescan + replanned + bigger + finer])
    merged = study.stacks["cine_sax"]
    kinds = {i.kind for i in merged.issues}
    assert {"duplicate", "mixed_orientation", "mixed_matrix", "mixed_pixel_spacing"} <= kinds
    assert merged.stack.n_slices == 5
    values = merged.stack.voxels[0, :, 0, 0]
    assert 1000 + code(2, 0) in values and code(2, 0) not in values  # the re-scan (higher SeriesNumber) kept
    detail = " ".join(i.detail for i in merged.issues)
    assert "4.0 deg" in detail and "PixelSpacing (0028,0030)" in detail and "Rows x Columns" in detail


def test_uneven_spacing_and_unequal_phase_counts_are_named() -> None:
    images = sax_study(n_slices=6, n_phases=10, seed=4)
    moved = [Image(i.series_uid, i.series_number, i.instance_number, i.position + 3.0 * AXIS, i.normal, i.pixels,
                   trigger_ms=i.trigger_ms, cardiac_images=10, description=i.description, spacing_between=10.0)
             if i.description.endswith("_b4") else i for i in images]
    short = [i for i in moved if not (i.description.endswith("_b1") and i.trigger_ms is not None and i.trigger_ms > 300)]
    merged = load_cmr_study([classic(i) for i in short]).stacks["cine_sax"]
    kinds = {i.kind for i in merged.issues}
    assert {"mixed_spacing", "phase_count"} <= kinds
    assert merged.stack.n_phases == 8


def _enhanced(truth: np.ndarray, slopes: np.ndarray, intercepts: np.ndarray, *, order: np.ndarray,
              description: str = "SAX cine enhanced", inversion_ms: float | None = None,
              component: str = "MAGNITUDE", real_world: bool = False, in_stack: np.ndarray | None = None) -> Dataset:
    """An Enhanced MR Image Storage instance of ``truth[phase, slice, row, column]``; frame ``k`` holds image
    ``order[k]`` (flat phase-major index) with its own Pixel Value Transformation."""
    n_phases, n_slices, rows, columns = truth.shape
    ds = Dataset()
    uid = deterministic_uid("mr-test-enhanced", description)
    _common(ds, ENHANCED_MR_IMAGE_STORAGE, uid, deterministic_uid("mr-test-enhanced-series", description), 40,
            description)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.InstanceNumber = 1
    ds.NumberOfFrames = len(order)
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    row, col = plane_axes(AXIS)
    shared = Dataset()
    orientation = Dataset()
    orientation.ImageOrientationPatient = [round(float(v), 8) for v in (*row, *col)]
    shared.PlaneOrientationSequence = DicomSequence([orientation])
    measures = Dataset()
    measures.PixelSpacing, measures.SliceThickness = [1.4, 1.4], 8.0
    shared.PixelMeasuresSequence = DicomSequence([measures])
    if inversion_ms is not None:
        modifier = Dataset()
        modifier.InversionRecovery, modifier.InversionTimes = "YES", [inversion_ms]
        shared.MRModifierSequence = DicomSequence([modifier])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    per_frame = []
    stored = np.empty((len(order), rows, columns), dtype=np.uint16)
    for k, flat in enumerate(order):
        p, s = divmod(int(flat), n_slices)
        item = Dataset()
        content = Dataset()
        content.StackID, content.TemporalPositionIndex = "1", p + 1
        content.InStackPositionNumber = int(in_stack[s]) if in_stack is not None else s + 1
        item.FrameContentSequence = DicomSequence([content])
        position = Dataset()
        position.ImagePositionPatient = [round(float(v), 4) for v in np.array([5.0, -30.0, 10.0]) + s * 9.0 * AXIS]
        item.PlanePositionSequence = DicomSequence([position])
        cardiac = Dataset()
        cardiac.NominalCardiacTriggerDelayTime = 30.0 * p + 2.0
        item.CardiacSynchronizationSequence = DicomSequence([cardiac])
        frame_type = Dataset()
        frame_type.FrameType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
        frame_type.ComplexImageComponent = component
        item.MRImageFrameTypeSequence = DicomSequence([frame_type])
        if real_world:  # a Real World Value Mapping only (no Pixel Value Transformation)
            mapping = Dataset()
            mapping.RealWorldValueSlope, mapping.RealWorldValueIntercept = float(slopes[k]), float(intercepts[k])
            mapping.LUTExplanation, mapping.LUTLabel = "signal", "SIGNAL"
            mapping.RealWorldValueFirstValueMapped, mapping.RealWorldValueLastValueMapped = 0, 65535
            item.RealWorldValueMappingSequence = DicomSequence([mapping])
        else:
            transform = Dataset()
            transform.RescaleSlope, transform.RescaleIntercept = f"{slopes[k]:.10g}", f"{intercepts[k]:.10g}"
            transform.RescaleType = "US"
            item.PixelValueTransformationSequence = DicomSequence([transform])
        per_frame.append(item)
        stored[k] = np.clip(np.round((truth[p, s] - intercepts[k]) / slopes[k]), 0, 65535)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    ds.PixelData = stored.astype("<u2").tobytes()
    return _reread(ds)


@pytest.mark.parametrize("seed", range(4))
def test_enhanced_mr_per_frame_rescale_is_applied_pixel_mean_within_0_1_percent(seed: int) -> None:
    rng = np.random.default_rng(seed)
    truth = rng.uniform(50.0, 900.0, size=(12, 5, 16, 16))
    n = truth.shape[0] * truth.shape[1]
    order = rng.permutation(n)
    slopes = rng.uniform(0.02, 2.5, size=n)  # Philips-like per-frame slopes (2.488 in the corpus)
    intercepts = rng.uniform(-40.0, 0.0, size=n)
    ds = _enhanced(truth, slopes, intercepts, order=order)
    study = load_cmr_study([ds])
    assert study.decisions[str(ds.SeriesInstanceUID)].role == "cine_sax"
    stack = study.stacks["cine_sax"].stack
    truth_sorted = truth if float(stack.normal @ AXIS) > 0 else truth[:, ::-1]
    assert stack.voxels.shape == truth.shape
    assert abs(stack.voxels.mean() / truth.mean() - 1.0) < 1e-3
    # every image: the error is the stored-value rounding only (half a step of its own slope)
    steps = np.empty(truth.shape[:2])
    for k, flat in enumerate(order):
        steps[divmod(int(flat), truth.shape[1])] = slopes[k]
    steps = steps if float(stack.normal @ AXIS) > 0 else steps[:, ::-1]
    assert np.all(np.abs(stack.voxels - truth_sorted) <= 0.5 * steps[:, :, None, None] + 1e-9)
    assert np.all(np.diff(stack.trigger_ms, axis=0) > 0)
    series = load_mr_series(ds)
    assert series.pixels.shape == (n, 16, 16)


def test_real_world_value_mapping_is_the_rescale_when_no_pixel_value_transformation_is_given() -> None:
    rng = np.random.default_rng(7)
    truth = rng.uniform(100.0, 800.0, size=(6, 4, 8, 8))
    n = 24
    order = np.arange(n)
    slopes, intercepts = rng.uniform(0.1, 2.0, size=n), rng.uniform(-10.0, 0.0, size=n)
    ds = _enhanced(truth, slopes, intercepts, order=order, description="rwvm cine", real_world=True)
    stack = load_cmr_study([ds]).stacks["cine_sax"].stack
    assert abs(stack.voxels.mean() / truth.mean() - 1.0) < 1e-3


def test_an_in_stack_position_order_that_contradicts_the_positions_is_named() -> None:
    rng = np.random.default_rng(8)
    truth = rng.uniform(100.0, 800.0, size=(6, 4, 8, 8))
    ones, zeros = np.ones(24), np.zeros(24)
    fine = load_cmr_study([_enhanced(truth, ones, zeros, order=np.arange(24), description="ok cine")])
    assert fine.stacks["cine_sax"].issues == ()
    ds = _enhanced(truth, ones, zeros, order=np.arange(24), description="bad cine", in_stack=np.array([1, 3, 2, 4]))
    merged = load_cmr_study([ds]).stacks["cine_sax"]
    assert [i.kind for i in merged.issues] == ["stack_position_order"]
    assert "InStackPositionNumber (0020,9057)" in merged.issues[0].detail


def test_short_axis_stack_refuses_what_it_cannot_be() -> None:
    row, col = plane_axes(AXIS)
    positions = np.array([k * 8.0 * AXIS for k in range(3)])
    ShortAxisStack(np.zeros((2, 3, 4, 4)), positions, row, col, np.array([1.5, 1.5]), 8.0, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="increasing"):
        ShortAxisStack(np.zeros((2, 3, 4, 4)), positions[::-1], row, col, np.array([1.5, 1.5]), 8.0, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="trigger_ms"):
        ShortAxisStack(np.zeros((2, 3, 4, 4)), positions, row, col, np.array([1.5, 1.5]), 8.0, np.zeros((3, 3)))
    with pytest.raises(ValueError, match="phase, slice"):
        ShortAxisStack(np.zeros((3, 4, 4)), positions, row, col, np.array([1.5, 1.5]), 8.0, np.zeros((2, 3)))


def test_loading_reads_each_instance_once_and_costs_little_more_than_decoding() -> None:
    images = sax_study(n_slices=12, n_phases=25, seed=5, shape=(128, 128))
    datasets = [classic(i) for i in images]
    started = time.perf_counter()
    for ds in datasets:
        np.asarray(ds.pixel_array, dtype=np.float64)
    floor = time.perf_counter() - started
    started = time.perf_counter()
    study = load_cmr_study(datasets)
    elapsed = time.perf_counter() - started
    assert study.stacks["cine_sax"].stack.voxels.shape == (25, 12, 128, 128)
    print(f"cine 25 x 12 x 128 x 128 classic: load {elapsed:.3f} s, decode floor {floor:.3f} s, "
          f"ratio {elapsed / floor:.2f}")
    assert elapsed < 6.0 * floor + 0.5


def test_instances_that_cannot_be_used_are_refused_one_by_one_and_the_study_goes_on() -> None:
    images = sax_study(n_slices=5, n_phases=10, seed=6)
    datasets = [classic(i) for i in images]
    broken = classic(images[0])
    del broken.ImagePositionPatient
    truncated = classic(images[1])
    truncated.PixelData = truncated.PixelData[:-10]
    frames, refusals = mr_frames([broken, truncated])
    assert frames == []
    assert [r.attribute for r in refusals] == ["ImagePositionPatient", "PixelData"]
    assert "ImagePositionPatient (0020,0032)" in refusals[0].reason and "truncated" in refusals[1].reason
    study = load_cmr_study(datasets[2:] + [broken, truncated])
    assert len(study.refusals) == 2
    assert "cine_sax" in study.stacks
    with pytest.raises(UnusableSeriesError) as refused:
        load_mr_series([broken])
    assert refused.value.attribute == "ImagePositionPatient"
    lonely = [d for d, i in zip(datasets, images) if i.description.endswith("_b1")]
    frames, _ = mr_frames(lonely)
    with pytest.raises(UnusableSeriesError, match="at least 2"):
        build_sax_stack(lonely, frames, "cine_sax")


# --------------------------------------------------------------------------- the synthetic CMR studies (node.synth.cmr)

PHANTOM_SEEDS = (0, 1)


def _by_position_and_trigger(datasets: Sequence[Dataset], normal: np.ndarray) -> dict[tuple[float, float], Dataset]:
    """Classic instances keyed by (position along ``normal`` to 0.1 mm, trigger time): an independent lookup."""
    return {(round(float(np.dot(np.array(ds.ImagePositionPatient, dtype=float), normal)), 1),
             float(ds.get("TriggerTime", np.nan))): ds for ds in datasets}


@pytest.mark.parametrize("variant", ["standard", "siemens", "philips", "reversed_instances", "missing_slice"])
def test_phantom_stacks_are_in_true_slice_order_with_the_right_images(variant: str) -> None:
    for seed in PHANTOM_SEEDS:
        study = cmr_study(variant, seed)
        truth = study.truth
        loaded = load_cmr_study(study.datasets)
        for role in ("cine_sax", "lge_mag", "lge_psir"):
            merged = loaded.stacks[role]
            stack = merged.stack
            sign = 1.0 if float(stack.normal @ truth.long_axis) > 0 else -1.0
            present = [s for s in range(truth.slice_position_mm.size) if s not in truth.missing_slices]
            expected = np.sort(sign * truth.slice_position_mm[present])
            assert np.allclose(stack.slice_positions_mm, expected, atol=0.05), (variant, seed, role)
            assert np.all(np.diff(stack.trigger_ms, axis=0) > 0)
            lookup = _by_position_and_trigger([ds for ds in study.datasets
                                               if truth.series_roles[str(ds.SeriesInstanceUID)] == role], stack.normal)
            for p in range(stack.n_phases):
                for s in range(stack.n_slices):
                    ds = lookup[(round(float(stack.slice_positions_mm[s]), 1), float(stack.trigger_ms[p, s]))]
                    assert np.array_equal(stack.voxels[p, s], ds.pixel_array.astype(float))
            if truth.missing_slices:
                assert [i.kind for i in merged.issues] == ["missing_slice"]
                assert stack.gaps_after().size == 1
            else:
                assert merged.issues == ()


@pytest.mark.parametrize("seed", PHANTOM_SEEDS)
def test_phantom_enhanced_mr_per_frame_rescale_gives_the_true_values(seed: int) -> None:
    """Enhanced MR of the phantoms (per-frame Pixel Value Transformation, PSIR with a negative intercept): the
    loaded pixel mean equals the written values' mean within 0.1 %, every pixel within half its frame's step."""
    study = cmr_study("enhanced", seed)
    loaded = load_cmr_study(study.datasets)
    for written in study.series:
        if written.values is None:
            continue
        role = written.info.role
        stack = loaded.stacks[role].stack
        values = written.values
        assert stack.voxels.size == values.size
        assert abs(stack.voxels.mean() - values.mean()) <= 1e-3 * np.abs(values).mean(), role
        assert abs(np.abs(stack.voxels).mean() / np.abs(values).mean() - 1.0) < 1e-3, role
        assert written.slopes is not None
        frames = loaded.stacks[role].frames
        for p in range(stack.n_phases):
            for s in range(stack.n_slices):
                k = frames[p][s].number - 1  # the frame as written
                assert np.all(np.abs(stack.voxels[p, s] - values[k]) <= 0.5 * written.slopes[k] + 1e-9), role
