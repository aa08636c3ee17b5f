"""Secondary Capture images of rendered results (single-frame SC and multi-frame true-colour SC).

Single-frame SCs hold a bull's-eye, a heat map, a curve plot or a table screen, each in
its own series (``series.toml``: ``sc_map``, ``sc_heatmap``, ``sc_plot``, ``sc_table``).
A bull's-eye is not in patient space, so it is a Secondary Capture, not a
Parametric Map (reference ``dicom_outputs.md`` section 7). Attributes:

* RGB, 8 bits, planar configuration 0; Image Type ``DERIVED\\SECONDARY\\OTHER``;
* Conversion Type ``WSD`` (rendered on a workstation), Burned In Annotation
  ``YES`` (labels, colour bar and the research-use label are in the pixels),
  Recognizable Visual Features ``NO``;
* Patient Orientation present and empty (a polar map has no patient
  orientation; absent would fail the Type 2C check), Body Part Examined HEART;
* Source Image Sequence with purpose (121322, DCM, "Source image for image
  processing operation"); Derivation Description naming the algorithm and a
  Derivation Code Sequence from ``dicom_templates/series.toml`` (heat maps:
  (130403, DCM, "Gradient-weighted class activation"));
* Content Date/Time and UIDs from :class:`node.results.identity.ContentIdentity`.

The multi-frame true-colour SC (1.2.840.10008.5.1.4.1.1.7.4) holds a whole
result screen (every bull's-eye, plot and table) as frames, written with
pydicom because highdicom builds single-frame SC only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.charset import convert_encodings
from pydicom.dataelem import RawDataElement
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import correct_ambiguous_vr
from pydicom.tag import Tag
from pydicom.uid import UID, ExplicitVRLittleEndian

import node
from node.results.content import Algorithm, MapImage
from node.results.identity import ContentIdentity
from node.results.sr import encode_sequence_items, processing_algorithm_equipment
from node.results.templates import Code, Templates

__all__ = [
    "SECONDARY_CAPTURE",
    "MULTIFRAME_TRUE_COLOR_SC",
    "build_sc",
    "build_rendered_sc",
    "build_multiframe_screen",
    "source_image_sequence",
    "SourceReferences",
]

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
MULTIFRAME_TRUE_COLOR_SC = "1.2.840.10008.5.1.4.1.1.7.4"

_PATIENT_STUDY_KEYWORDS = (
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
    "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID",
    "AccessionNumber", "StudyDescription",
)


def _check_rgb(pixels: np.ndarray) -> np.ndarray:
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"SC pixels must be RGB uint8 [rows, columns, 3], got {pixels.dtype} {pixels.shape}")
    return np.ascontiguousarray(pixels)


def source_image_sequence(sources: Sequence[Dataset], templates: Templates) -> list[Dataset]:
    """Source Image Sequence items with purpose 121322 for every source instance."""
    purpose = templates.reference_code("source_for_processing").concept()
    items = []
    for ds in sources:
        item = Dataset()
        item.ReferencedSOPClassUID = ds.SOPClassUID
        item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
        item.PurposeOfReferenceCodeSequence = [purpose]
        items.append(item)
    return items


@dataclass(frozen=True)
class SourceReferences:
    """The source references of a study's result objects, built and encoded once for all of them.

    A PET study's objects each reference every source instance (thousands): building the items
    and encoding them per object cost more than the rest of the object. ``encoded`` is the value
    of the sequence (:func:`source_image_sequence` items) in explicit VR little endian, the
    transfer syntax of every result object; :meth:`attach` puts it into a dataset as a raw
    element, which pydicom writes as it is and parses only when the sequence is read.
    """

    items: tuple[Dataset, ...]
    encoded: bytes

    @classmethod
    def of(cls, sources: Sequence[Dataset], templates: Templates) -> SourceReferences:
        """The references of ``sources`` (:func:`source_image_sequence`), encoded once."""
        items = source_image_sequence(sources, templates)
        # as pydicom's writer encodes them in the default character set (the holder's, as before)
        return cls(tuple(items), encode_sequence_items(items, convert_encodings(None)))

    def attach(self, ds: Dataset, keyword: str = "SourceImageSequence") -> None:
        """Set ``keyword`` (Source Image Sequence, or Source Instance Sequence of a document) of ``ds``
        to these references.

        Call it when ``ds`` is complete but for elements of unambiguous VR. Ambiguous VRs
        (Pixel Data OB or OW...) are resolved for little endian as pydicom's writer would, and
        ``ds`` is marked as encoded in explicit VR little endian with its present character set,
        so that writing it in that transfer syntax copies the encoded value; a dataset written in
        another encoding, or whose Specific Character Set changes later, is encoded element by
        element as usual (same bytes, more time).
        """
        correct_ambiguous_vr(ds, is_little_endian=True)
        tag = Tag(keyword)
        ds[tag] = RawDataElement(tag, "SQ", len(self.encoded), self.encoded, 0, False, True)
        ds.set_original_encoding(False, True, ds._character_set)


def _derivation_text(prefix: str, algorithm: Algorithm | None, pipeline: str, pipeline_version: str) -> str:
    who = f"{algorithm.name} {algorithm.version}" if algorithm is not None else f"CardioNode {pipeline} {pipeline_version}"
    return f"{prefix} {who}. {node.RESEARCH_USE_NOTICE}"[:1024]


def _deterministic_times(ds: Dataset, identity: ContentIdentity) -> None:
    ds.InstanceCreationDate = identity.content_date
    ds.InstanceCreationTime = identity.content_time
    ds.ContentDate = identity.content_date
    ds.ContentTime = identity.content_time
    if "DateOfSecondaryCapture" in ds or "TimeOfSecondaryCapture" in ds:
        ds.DateOfSecondaryCapture = identity.content_date
        ds.TimeOfSecondaryCapture = identity.content_time
    for item in getattr(ds, "ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            item.ContributionDateTime = identity.content_datetime


def build_sc(
    pixels: np.ndarray,
    image: MapImage,
    sources: Sequence[Dataset],
    identity: ContentIdentity,
    templates: Templates,
    instance_number: int,
    pipeline: str,
    pipeline_version: str,
    references: SourceReferences | None = None,
) -> Dataset:
    """One Secondary Capture image of a rendered :class:`MapImage` (RGB ``uint8`` ``[rows, columns, 3]``).

    Heat maps (``image.derivation == "gradcam"``) go to the heat-map series
    with derivation (130403, DCM, "Gradient-weighted class activation");
    polar maps to the bull's-eye series. ``references``: those of ``sources``
    (:class:`SourceReferences`, shared by a study's objects; None: made here).
    """
    kind = {"gradcam": "sc_heatmap", "polar_map": "sc_map"}.get(image.derivation)
    if kind is None:
        raise ValueError(f"MapImage {image.key!r}: derivation must be 'polar_map' or 'gradcam', got {image.derivation!r}")
    algorithms = [image.algorithm] if image.algorithm is not None else []
    return build_rendered_sc(pixels, kind, image.key, image.title, image.algorithm, algorithms, sources, identity,
                             templates, instance_number, pipeline, pipeline_version, references)


def build_rendered_sc(
    pixels: np.ndarray,
    kind: str,
    key: str,
    title: str,
    algorithm: Algorithm | None,
    algorithms: Sequence[Algorithm],
    sources: Sequence[Dataset],
    identity: ContentIdentity,
    templates: Templates,
    instance_number: int,
    pipeline: str,
    pipeline_version: str,
    references: SourceReferences | None = None,
) -> Dataset:
    """One Secondary Capture image of any rendered result (RGB ``uint8`` ``[rows, columns, 3]``).

    ``kind`` names the series in ``series.toml`` (``sc_map``, ``sc_heatmap``, ``sc_plot``,
    ``sc_table``), which gives series number, description and derivation; ``key`` makes the
    SOP Instance UID; ``title`` goes to Image Comments. ``algorithm`` is named in the
    derivation description and as the model (None: the pipeline); ``algorithms`` are listed
    as contributing equipment; ``references`` those of ``sources`` (None: made here).
    """
    pixels = _check_rgb(pixels)
    series = templates.series(kind)
    derivation: Code = templates.series_derivation(kind)
    ref = sources[0]
    model = f"{algorithm.name}" if algorithm is not None else f"CardioNode {pipeline}"
    version = f"{algorithm.version}" if algorithm is not None else pipeline_version
    sc = hd.sc.SCImage(
        pixel_array=pixels,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        study_instance_uid=ref.StudyInstanceUID,
        series_instance_uid=identity.uid(kind, "series"),
        series_number=int(series["series_number"]),
        sop_instance_uid=identity.uid(kind, "instance", key),
        instance_number=instance_number,
        manufacturer=templates.manufacturer,
        patient_id=getattr(ref, "PatientID", None),
        patient_name=getattr(ref, "PatientName", None),
        patient_birth_date=getattr(ref, "PatientBirthDate", None),
        patient_sex=getattr(ref, "PatientSex", None) or None,
        accession_number=getattr(ref, "AccessionNumber", None),
        study_id=getattr(ref, "StudyID", None),
        study_date=getattr(ref, "StudyDate", None) or None,
        study_time=getattr(ref, "StudyTime", None) or None,
        referring_physician_name=getattr(ref, "ReferringPhysicianName", None),
        patient_orientation=("L", "P"),
        contributing_equipment=processing_algorithm_equipment(algorithms, templates, identity.content_datetime),
        series_description=str(series["description"])[:64],
        manufacturer_model_name=model[:64],
        software_versions=f"{version}; CardioNode {node.__version__}"[:64],
        content_date=identity.content_date,
        content_time=identity.content_time,
        series_date=identity.content_date,
        series_time=identity.content_time,
    )
    # a polar map has no patient orientation (pitfall 7); highdicom's __init__ makes mypy infer list[str]
    sc.PatientOrientation = ""  # type: ignore[assignment]
    sc.ConversionType = "WSD"
    sc.BurnedInAnnotation = "YES"
    sc.RecognizableVisualFeatures = "NO"
    sc.BodyPartExamined = "HEART"
    sc.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
    sc.DerivationDescription = _derivation_text(str(series["derivation_text"]), algorithm, pipeline, pipeline_version)
    sc.DerivationCodeSequence = [derivation.concept()]
    sc.ImageComments = f"{title}. {node.RESEARCH_USE_NOTICE}"[:10240]
    _deterministic_times(sc, identity)
    (references or SourceReferences.of(sources, templates)).attach(sc)
    return sc


def build_multiframe_screen(
    frames: Sequence[np.ndarray],
    frame_labels: Sequence[str],
    sources: Sequence[Dataset],
    identity: ContentIdentity,
    templates: Templates,
    pipeline: str,
    pipeline_version: str,
    references: SourceReferences | None = None,
) -> Dataset:
    """Multi-frame True Color SC holding a whole result screen, one rendered panel per frame.

    ``frames`` are RGB ``uint8`` ``[rows, columns, 3]`` arrays of equal shape;
    ``frame_labels`` (one per frame, at most 64 characters) go to Frame Label
    Vector, which Frame Increment Pointer points to. ``references``: those of ``sources``
    (None: made here).
    """
    if not frames:
        raise ValueError("a result screen needs at least one frame")
    arrays = [_check_rgb(f) for f in frames]
    if len({a.shape for a in arrays}) != 1:
        raise ValueError(f"all frames of a result screen must have the same shape, got {sorted({a.shape for a in arrays})}")
    if len(frame_labels) != len(arrays):
        raise ValueError(f"{len(frame_labels)} frame labels for {len(arrays)} frames")
    series = templates.series("mf_screen")
    ref = sources[0]
    rows, columns, _ = arrays[0].shape
    sop_uid = identity.uid("mf_screen", "instance")

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(MULTIFRAME_TRUE_COLOR_SC)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = UID("1.2.826.0.1.3680043.8.498.1")  # pydicom's implementation root
    ds.SpecificCharacterSet = getattr(ref, "SpecificCharacterSet", "ISO_IR 100")
    # SOP Common
    ds.SOPClassUID = UID(MULTIFRAME_TRUE_COLOR_SC)
    ds.SOPInstanceUID = UID(sop_uid)
    ds.InstanceCreationDate = identity.content_date
    ds.InstanceCreationTime = identity.content_time
    # Patient and General Study (copied from the source)
    for keyword in _PATIENT_STUDY_KEYWORDS:
        if keyword in ref:
            setattr(ds, keyword, getattr(ref, keyword))
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                    "ReferringPhysicianName", "StudyID", "AccessionNumber"):
        if keyword not in ds:
            setattr(ds, keyword, "")  # Type 2: present, possibly empty
    # General Series
    ds.Modality = "OT"
    ds.SeriesInstanceUID = UID(identity.uid("mf_screen", "series"))
    ds.SeriesNumber = int(series["series_number"])
    ds.SeriesDate = identity.content_date
    ds.SeriesTime = identity.content_time
    ds.SeriesDescription = str(series["description"])[:64]
    ds.BodyPartExamined = "HEART"
    # General Equipment and SC Equipment
    ds.Manufacturer = templates.manufacturer
    ds.ManufacturerModelName = f"CardioNode {pipeline}"[:64]
    ds.SoftwareVersions = f"{pipeline_version}; CardioNode {node.__version__}"[:64]
    ds.ConversionType = "WSD"
    # General Image
    ds.InstanceNumber = 1
    ds.PatientOrientation = ""
    ds.ContentDate = identity.content_date
    ds.ContentTime = identity.content_time
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.BurnedInAnnotation = "YES"
    ds.RecognizableVisualFeatures = "NO"
    ds.ImageComments = f"CardioNode result screen. {node.RESEARCH_USE_NOTICE}"
    ds.DerivationDescription = f"Result screen rendered by CardioNode {pipeline} {pipeline_version}. {node.RESEARCH_USE_NOTICE}"[:1024]
    # Image Pixel
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    # Multi-frame and SC Multi-frame Image
    ds.NumberOfFrames = len(arrays)
    ds.FrameIncrementPointer = [0x00182002]  # Frame Label Vector
    ds.FrameLabelVector = [label[:64] for label in frame_labels]
    # Contributing equipment: the algorithms of the screen
    ds.PixelData = np.stack(arrays).tobytes()
    (references or SourceReferences.of(sources, templates)).attach(ds)
    return ds


def contributing_algorithms(ds: Dataset, algorithms: Sequence[Algorithm], templates: Templates, identity: ContentIdentity) -> None:
    """Add the IHE AIR "Processing Algorithm" Contributing Equipment items to a pydicom-built object."""
    items = processing_algorithm_equipment(algorithms, templates, identity.content_datetime)
    if items:
        ds.ContributingEquipmentSequence = list(items)
