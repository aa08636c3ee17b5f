"""DICOM Parametric Map (1.2.840.10008.5.1.4.1.1.30) of a voxel map in the source images' space.

A :class:`~node.results.content.ParametricVolume` (e.g. voxel-wise MBF in mL/min/g on the grid
of the dynamic PET slices) becomes one multi-frame Parametric Map built by
``highdicom.pm.ParametricMap`` (reference ``dicom_outputs.md`` sections 1 and 7, ``pet_mbf.md``
7.2):

* 32-bit float pixel data (Float Pixel Data), no palette, MONOCHROME2; one frame per source
  slice, each frame's position and its Derivation Image Sequence taken from its source
  instance (highdicom orders the frames along the slice normal);
* a Real World Value Mapping with the quantity's code as Quantity Definition, its UCUM unit
  (both from ``concepts.toml``), slope 1 and intercept 0 (stored value = real value), and the
  finite value range of the map;
* Content Qualification RESEARCH, Content Description naming the map and saying research use,
  Recognizable Visual Features NO, Body Part Examined HEART, derivation from ``series.toml``
  ``[pm]``;
* UIDs, dates and the dimension organisation UID from
  :class:`~node.results.identity.ContentIdentity` (highdicom's random and wall-clock values
  are replaced), so a re-run gives the same bytes.

Only the headers of the source instances are needed: the geometry (Image Position and
Orientation (Patient), Pixel Spacing, Slice Thickness, Frame of Reference) comes from them,
never their pixels.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence

import highdicom as hd
import numpy as np
from pydicom import Dataset

import node
from node.results.content import Algorithm, ParametricVolume
from node.results.identity import ContentIdentity
from node.results.sr import ContentError, header_view, processing_algorithm_equipment
from node.results.templates import Templates

__all__ = ["PARAMETRIC_MAP", "build_parametric_map"]

PARAMETRIC_MAP = "1.2.840.10008.5.1.4.1.1.30"

#: Type 2 patient and study attributes highdicom reads from the first source (present, possibly empty)
_TYPE2_SOURCE_KEYWORDS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
    "StudyDate", "StudyTime", "ReferringPhysicianName",
)


def _source_header(ds: Dataset) -> Dataset:
    """A source instance without pixel data (:func:`~node.results.sr.header_view`), its Type 2 patient/study
    attributes present."""
    header = Dataset()
    for elem in header_view(ds):  # a new data set sharing the elements: the Type 2 additions stay here
        header.add(elem)
    if hasattr(ds, "file_meta"):
        header.file_meta = copy.deepcopy(ds.file_meta)
    for keyword in _TYPE2_SOURCE_KEYWORDS:
        if keyword not in header:
            setattr(header, keyword, "")
    return header


def _sources_of(volume: ParametricVolume, sources_by_uid: Mapping[str, Dataset]) -> list[Dataset]:
    """The source datasets of ``volume`` in slice order, checked against the map's grid."""
    values = np.asarray(volume.values)
    if values.ndim != 3:
        raise ContentError(f"parametric map {volume.key!r}: values must be [slice, row, column], got shape {values.shape}")
    uids = list(volume.source_sop_instance_uids)
    if len(uids) != values.shape[0]:
        raise ContentError(
            f"parametric map {volume.key!r}: {values.shape[0]} slices but {len(uids)} source instances; "
            "name one single-frame source instance per slice"
        )
    missing = [uid for uid in uids if uid not in sources_by_uid]
    if missing:
        raise ContentError(
            f"parametric map {volume.key!r}: datasets of source instances {missing[:3]} ({len(missing)} in all) "
            "were not passed to build_outputs"
        )
    datasets = [sources_by_uid[uid] for uid in uids]
    for ds in datasets:
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
        if frames != 1 or (int(ds.Rows), int(ds.Columns)) != values.shape[1:]:
            raise ContentError(
                f"parametric map {volume.key!r}: source {ds.SOPInstanceUID} has {frames} frame(s) of "
                f"{ds.Rows}x{ds.Columns}; the map needs single-frame sources of {values.shape[1]}x{values.shape[2]}"
            )
    frames_of_reference = {str(getattr(ds, "FrameOfReferenceUID", "")) for ds in datasets}
    if len(frames_of_reference) != 1 or "" in frames_of_reference:
        raise ContentError(
            f"parametric map {volume.key!r}: the source instances must share one Frame of Reference UID, "
            f"got {sorted(frames_of_reference)}"
        )
    return datasets


def _content_label(key: str) -> str:
    """Content Label (CS, at most 16 characters of A-Z, 0-9, space and underscore) of a map key."""
    return re.sub(r"[^A-Z0-9_ ]", "_", key.upper())[:16] or "MAP"


def build_parametric_map(
    volume: ParametricVolume,
    sources_by_uid: Mapping[str, Dataset],
    identity: ContentIdentity,
    templates: Templates,
    instance_number: int,
    pipeline: str,
    pipeline_version: str,
    device_serial_number: str,
    algorithms: Sequence[Algorithm] = (),
) -> Dataset:
    """One Parametric Map of ``volume`` (float32 ``[slice, row, column]`` in ``volume.unit``).

    Parameters
    ----------
    volume:
        The map; ``volume.source_sop_instance_uids`` name its slices' source instances.
    sources_by_uid:
        Datasets (headers suffice) by SOP Instance UID; must hold every source of the map.
    identity:
        UIDs and dates of this run's outputs.
    templates:
        Quantity code and unit, series attributes.
    instance_number:
        Instance Number within the parametric-map series.
    pipeline, pipeline_version:
        Named as the model when the volume has no algorithm.
    device_serial_number:
        Device Serial Number (Type 1 in Enhanced General Equipment): the node's device UID.
    algorithms:
        Contributing algorithms (IHE AIR Contributing Equipment); default: the volume's own.

    Raises
    ------
    ContentError
        Wrong unit, non-finite values, or sources missing or not matching the grid.
    """
    quantity = templates.quantity(volume.quantity, pipeline)
    if volume.unit != quantity.unit:
        raise ContentError(
            f"parametric map {volume.key!r}: unit {volume.unit!r}, the templates require UCUM {quantity.unit!r} "
            f"for {volume.quantity!r} ({templates.directory / 'concepts.toml'})"
        )
    values = np.ascontiguousarray(np.asarray(volume.values, dtype=np.float32))
    if not np.all(np.isfinite(values)):
        raise ContentError(f"parametric map {volume.key!r}: values must be finite (use 0 outside the myocardium)")
    headers = [_source_header(ds) for ds in _sources_of(volume, sources_by_uid)]
    series = templates.series("pm")
    lo, hi = float(values.min()), float(values.max())
    mapping = hd.pm.RealWorldValueMapping(
        lut_label=_content_label(volume.quantity),
        lut_explanation=f"{quantity.code.meaning} ({quantity.unit_meaning})"[:64],
        unit=quantity.unit_concept(),
        value_range=(lo, hi if hi > lo else lo + 1.0),
        slope=1.0,
        intercept=0.0,
        quantity_definition=quantity.code.concept(),
    )
    shown_lo, shown_hi = min(lo, 0.0), max(hi, 1e-6)
    algorithm = volume.algorithm
    model = algorithm.name if algorithm is not None else f"CardioNode {pipeline}"
    version = algorithm.version if algorithm is not None else pipeline_version
    contributors = list(algorithms) or ([algorithm] if algorithm is not None else [])
    pm = hd.pm.ParametricMap(
        source_images=headers,
        pixel_array=values,
        series_instance_uid=identity.uid("pm", "series"),
        series_number=int(series["series_number"]),
        sop_instance_uid=identity.uid("pm", "instance", volume.key),
        instance_number=instance_number,
        manufacturer=templates.manufacturer,
        manufacturer_model_name=model[:64],
        software_versions=f"{version}; CardioNode {node.__version__}"[:64],
        device_serial_number=device_serial_number[:64],
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[
            hd.VOILUTTransformation(window_center=(shown_lo + shown_hi) / 2, window_width=shown_hi - shown_lo)
        ],
        content_label=_content_label(volume.key),
        content_description=f"{volume.title}. Research use only"[:64],
        contributing_equipment=processing_algorithm_equipment(contributors, templates, identity.content_datetime),
        series_description=str(series["description"])[:64],
        derivation=templates.series_derivation("pm").concept(),
    )
    pm.BodyPartExamined = "HEART"
    pm.ImageComments = f"{volume.title}. {node.RESEARCH_USE_NOTICE}"[:10240]
    _make_deterministic(pm, identity, volume.key)
    return pm


def _make_deterministic(pm: Dataset, identity: ContentIdentity, key: str) -> None:
    """Replace highdicom's wall-clock dates and random dimension organisation UID by derived ones."""
    for keyword in ("InstanceCreationDate", "ContentDate", "SeriesDate"):
        setattr(pm, keyword, identity.content_date)
    for keyword in ("InstanceCreationTime", "ContentTime", "SeriesTime"):
        setattr(pm, keyword, identity.content_time)
    organisation = identity.uid("pm", "dimension-organization", key)
    for item in pm.get("DimensionOrganizationSequence", []):
        item.DimensionOrganizationUID = organisation
    for item in pm.get("DimensionIndexSequence", []):
        if "DimensionOrganizationUID" in item:
            item.DimensionOrganizationUID = organisation
    for item in pm.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            item.ContributionDateTime = identity.content_datetime
