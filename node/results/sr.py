"""TID 1500 Measurement Report (Comprehensive 3D SR) from a :class:`ReportContent`.

Structure (reference ``dicom_outputs.md`` sections 2-4, pitfalls section 10):

* root (126000, DCM, "Imaging Measurement Report"), language, device observer
  (TID 1004, the node's stable Device Observer UID), exactly one Procedure
  Reported from CID 100; the specific procedure goes in the header's
  Performed Procedure Code Sequence;
* Image Library (TID 1600) listing every source instance (when there are more than
  :data:`MAX_GROUP_SOURCE_REFERENCES`, the first of each series; the evidence lists all);
* one TID 1501 group per :class:`MeasurementGroup`, in reading order
  (:func:`node.results.tables.reading_order`): the headline results (perfusion scores and
  TPD, global flow and reserve, LVEF/EDV/ESV, every model output) first, then the other
  global groups, then the per-segment groups, so that a tree rendering (``dsr2html``)
  shows the summary first; each group has Tracking Identifier and
  UID, finding type (row 3b), finding site, TID 4019 algorithm identification,
  the imaging state as a coded evaluation, NUMs with UCUM units, coded
  qualitative evaluations, source-image references (when there are at most
  :data:`MAX_GROUP_SOURCE_REFERENCES` sources) and, for predictions, an
  IMAGE (130401, DCM, "Visual explanation") reference to the heat-map SC;
* TID 1500 row 12 Qualitative Evaluations (C0034375, UMLS) holding the research-use statement
  (:data:`node.RESEARCH_USE_NOTICE`) as a TEXT item named by ``schemes.toml``
  ``[document] use_notice`` (the SR IODs have no Content Qualification attribute; the Parametric
  Maps carry RESEARCH);
* every CONTAINER has Continuity of Content SEPARATE, so tree renderers
  (dsr2html, Weasis, OHIF text view) show concept names next to values;
* VerificationFlag UNVERIFIED, PreliminaryFlag PRELIMINARY, CompletionFlag
  COMPLETE; private codes declared in Coding Scheme Identification Sequence;
* Contributing Equipment with one "Processing Algorithm" item per algorithm
  (IHE AI Results: manufacturer, model = algorithm name, software version and
  a Device UID derived from version and weights hash).

Dates, times and UIDs are derived from the inputs (:mod:`node.results.identity`).
"""

from __future__ import annotations

import copy
import math
import struct
from collections.abc import Iterable, Mapping, Sequence

import highdicom as hd
from pydicom import DataElement, Dataset
from pydicom.charset import convert_encodings
from pydicom.dataelem import RawDataElement
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import correct_ambiguous_vr, write_data_element
from pydicom.multival import MultiValue
from pydicom.tag import Tag
from pydicom.uid import UID

import node
from node.results.content import Algorithm, MeasurementGroup, ReportContent, ReportContext
from node.results.identity import ContentIdentity, algorithm_device_uid, algorithms_of
from node.results.tables import reading_order
from node.results.templates import Code, Quantity, Templates, load_templates

__all__ = [
    "COMPREHENSIVE_3D_SR",
    "ENHANCED_SR",
    "MAX_GROUP_SOURCE_REFERENCES",
    "ContentError",
    "build_sr",
    "to_enhanced_sr",
    "set_continuity_separate",
    "processing_algorithm_equipment",
    "encode_sequence_items",
]

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
#: at most this many source instances are referenced from every measurement group (else from the library only)
MAX_GROUP_SOURCE_REFERENCES = 32
_PIXEL_TAGS = (0x7FE00008, 0x7FE00009, 0x7FE00010)  # Float, Double Float and Pixel Data
ENHANCED_SR = "1.2.840.10008.5.1.4.1.1.88.22"
#: TID 1500 row 12: the container of document-level qualitative evaluations (CODE and TEXT items); its
#: concept name is fixed by the template (as highdicom fixes (126010, DCM, "Imaging Measurements"))
QUALITATIVE_EVALUATIONS = hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")


class ContentError(ValueError):
    """Report content that cannot be encoded (wrong unit, non-finite value, missing source)."""


def set_continuity_separate(dataset: Dataset) -> None:
    """Set ContinuityOfContent = SEPARATE on the root and every nested CONTAINER (pitfall 1)."""
    if getattr(dataset, "ValueType", None) == "CONTAINER":
        dataset.ContinuityOfContent = "SEPARATE"
    for item in getattr(dataset, "ContentSequence", []):
        set_continuity_separate(item)


def _algorithm_id(algo: Algorithm) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(
        name=algo.name, version=algo.version, parameters=list(algo.parameters) or None
    )


class _Memo:
    """Content items and coded concepts built once per report and shared by its groups: the TID 4019 items
    of each algorithm, the coded concept of each code and unit (written once per group that holds them;
    nothing changes them after the build)."""

    def __init__(self) -> None:
        self._algorithms: dict[Algorithm, hd.sr.AlgorithmIdentification] = {}
        self._concepts: dict[tuple[str, str, str], hd.sr.CodedConcept] = {}

    def algorithm_id(self, algo: Algorithm) -> hd.sr.AlgorithmIdentification:
        if algo not in self._algorithms:
            self._algorithms[algo] = _algorithm_id(algo)
        return self._algorithms[algo]

    def concept(self, code: Code) -> hd.sr.CodedConcept:
        key = (code.value, code.scheme, code.meaning)
        if key not in self._concepts:
            self._concepts[key] = code.concept()
        return self._concepts[key]

    def unit(self, quantity: Quantity) -> hd.sr.CodedConcept:
        return self.concept(Code(quantity.unit, "UCUM", quantity.unit_meaning))


def processing_algorithm_equipment(
    algorithms: Sequence[Algorithm], templates: Templates, content_datetime: str
) -> list[hd.ContributingEquipment]:
    """IHE AIR Contributing Equipment items, one per algorithm, each with a Device UID.

    The Device UID is derived from name, version and parameters (weights hash),
    so it changes whenever a model changes.
    """
    items = []
    for algo in algorithms:
        eq = hd.ContributingEquipment(
            manufacturer=templates.manufacturer,
            purpose_of_reference=hd.sr.CodedConcept("109102", "DCM", "Processing Equipment"),
            manufacturer_model_name=algo.name[:64],
            software_versions=algo.version[:64],
            contribution_datetime=content_datetime,
            contribution_description=f"Algorithm {algo.name} {algo.version}"[:64],
        )
        # highdicom accepts only CID 7005 purposes; IHE AIR names the algorithm's purpose itself.
        eq.PurposeOfReferenceCodeSequence = [templates.equipment_purpose.concept()]
        eq.DeviceUID = algorithm_device_uid(algo)
        items.append(eq)
    return items


def _check_measurement_value(group: MeasurementGroup, quantity: str, value: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise ContentError(f"group {group.label!r}: {quantity} value {value!r} is not a number") from exc
    if not math.isfinite(number):
        raise ContentError(
            f"group {group.label!r}: {quantity} is {number}; a report carries finite values only "
            "(leave the measurement out of the group instead)"
        )
    return number


def _group_item(
    group: MeasurementGroup,
    content: ReportContent,
    templates: Templates,
    identity: ContentIdentity,
    source_refs: Sequence[hd.sr.SourceImageForMeasurementGroup],
    images: Mapping[str, Dataset],
    memo: _Memo,
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    concept = memo.concept
    site_code, _ = templates.site(group.site)
    measurements = []
    for m in group.measurements:
        quantity = templates.quantity(m.quantity, content.pipeline)
        if m.unit != quantity.unit:
            raise ContentError(
                f"group {group.label!r}: {m.quantity} has unit {m.unit!r}, the templates require "
                f"UCUM {quantity.unit!r} ({templates.directory / 'concepts.toml'})"
            )
        measurements.append(
            hd.sr.Measurement(
                name=concept(quantity.code),
                value=_check_measurement_value(group, m.quantity, m.value),
                unit=memo.unit(quantity),
            )
        )
    evaluations = []
    if group.state is not None:
        state_code, _ = templates.state(group.state)
        evaluations.append(hd.sr.QualitativeEvaluation(concept(templates.state_concept), concept(state_code)))
    for e in group.evaluations:
        evaluations.append(
            hd.sr.QualitativeEvaluation(
                concept(templates.evaluation_concept(e.quantity)), concept(templates.evaluation_value(e.value))
            )
        )
    item = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=identity.tracking_uid(group.label), identifier=group.label[:64]),
        finding_type=concept(templates.finding(group.finding)),
        finding_sites=[hd.sr.FindingSite(concept(site_code))],
        algorithm_id=memo.algorithm_id(group.algorithm),
        measurements=measurements or None,
        qualitative_evaluations=evaluations or None,
        source_images=list(source_refs) or None,
    )
    if group.explanation_image is not None:
        sc = images.get(group.explanation_image)
        if sc is None:
            raise ContentError(
                f"group {group.label!r} names explanation image {group.explanation_image!r}, "
                f"but the content has no MapImage with that key (have: {sorted(images)})"
            )
        item[0].ContentSequence.append(
            hd.sr.ImageContentItem(
                name=templates.reference_code("visual_explanation").concept(),
                referenced_sop_class_uid=sc.SOPClassUID,
                referenced_sop_instance_uid=sc.SOPInstanceUID,
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        )
    return item


def _source_datasets(content: ReportContent, sources: Sequence[Dataset]) -> list[Dataset]:
    """The datasets of ``content.sources`` in order. The first must be of the report's study (the SR takes
    its patient and study from it); later ones may be of another study of the same patient (Patient ID
    and Issuer of Patient ID equal: the earlier day of a two-day protocol), which the SR lists as
    Pertinent Other Evidence."""
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    ordered: list[Dataset] = []
    for src in content.sources:
        ds = by_uid.get(src.sop_instance_uid)
        if ds is None:
            raise ContentError(
                f"source instance {src.sop_instance_uid} (series {src.series_instance_uid}) is listed in the "
                "report content but its dataset was not passed to build_outputs"
            )
        if str(ds.StudyInstanceUID) != content.study_instance_uid and (
            not ordered or any(str(ds.get(k, "")) != str(ordered[0].get(k, ""))
                               for k in ("PatientID", "IssuerOfPatientID"))
        ):
            raise ContentError(
                f"source instance {src.sop_instance_uid} belongs to study {ds.StudyInstanceUID}, "
                f"the report is for study {content.study_instance_uid}"
                + (" (another patient)" if ordered else " (the first source must be of the report's study)")
            )
        ordered.append(ds)
    if not ordered:
        raise ContentError("the report content lists no source instances; an SR must reference its evidence")
    return ordered


def header_view(ds: Dataset) -> Dataset:
    """A header-only view of a source instance, for the Image Library and evidence lists.

    The elements are shared with ``ds``, not copied (nothing here changes them): a dynamic PET
    study has thousands of sources, and deep copies of their headers cost seconds.
    """
    if not any(tag in ds for tag in _PIXEL_TAGS):
        return ds  # already a header (the pipelines keep headers only)
    view = Dataset()
    for elem in ds:
        if elem.tag.group == 0x7FE0:
            continue
        view.add(elem)
    return view


def _library_images(source_ds: list[Dataset]) -> list[Dataset]:
    """The Image Library's images: every source, or the first of each series when there are too many.

    A dynamic PET study has thousands of instances (frames x slices); the library then describes
    each series once (modality, frame of reference, geometry) while the evidence lists every instance.
    """
    if len(source_ds) <= MAX_GROUP_SOURCE_REFERENCES:
        return source_ds
    first: dict[str, Dataset] = {}
    for ds in source_ds:
        first.setdefault(str(ds.SeriesInstanceUID), ds)
    return list(first.values())


def _predecessor_datasets(context: ReportContext, own_uid: str) -> list[Dataset]:
    out = []
    seen = {own_uid}  # an identical re-run is the same document, not its own successor
    for study_uid, series_uid, class_uid, instance_uid in context.predecessors:
        if instance_uid in seen:
            continue
        seen.add(instance_uid)
        ds = Dataset()
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.SOPClassUID = class_uid
        ds.SOPInstanceUID = instance_uid
        out.append(ds)
    return out


def build_sr(
    content: ReportContent,
    sources: Sequence[Dataset],
    context: ReportContext,
    images: Mapping[str, Dataset] | None = None,
    templates: Templates | None = None,
) -> Dataset:
    """Build the Comprehensive 3D SR measurement report.

    Parameters
    ----------
    content:
        What the pipeline reports.
    sources:
        Datasets of the instances in ``content.sources`` (pixel data not needed).
    context:
        Node context: Device Observer UID and name, predecessor SRs.
    images:
        Secondary Capture datasets by MapImage key; heat maps referenced by a
        group's ``explanation_image`` must be here.
    templates:
        Code templates (default: those in ``context.templates_dir``, else the
        package's ``dicom_templates/``).
    """
    templates = templates or load_templates(context.templates_dir)
    images = dict(images or {})
    source_ds = [header_view(ds) for ds in _source_datasets(content, sources)]
    identity = ContentIdentity.of(content, source_ds)
    reported, performed, procedure_label = templates.procedure(content.procedure)
    series = templates.series("sr")

    observer = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=hd.sr.CodedConcept("121007", "DCM", "Device"),
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=context.device_uid,
                name=(context.device_name or "CardioNode")[:64],
                manufacturer_name=templates.manufacturer[:64],
                model_name=f"CardioNode {node.__version__}"[:64],
            ),
        )
    )
    # every group names its source images, unless there are so many (dynamic PET: frames x slices) that the
    # groups would repeat thousands of references; then the Image Library and the evidence list them once
    source_refs = (
        [hd.sr.SourceImageForMeasurementGroup(ds.SOPClassUID, ds.SOPInstanceUID) for ds in source_ds]
        if len(source_ds) <= MAX_GROUP_SOURCE_REFERENCES
        else []
    )
    memo = _Memo()
    groups = [_group_item(g, content, templates, identity, source_refs, images, memo)
              for g in reading_order(content)]
    if not groups:
        raise ContentError("the report content has no measurement groups")
    language = templates.document_code("language")
    report = hd.sr.MeasurementReport(
        observation_context=observer,
        procedure_reported=reported.concept(),
        imaging_measurements=groups,
        title=templates.document_code("title").concept(),
        language_of_content_item_and_descendants=hd.sr.LanguageOfContentItemAndDescendants(language.concept()),
        referenced_images=_library_images(source_ds),
    )
    report[0].ContentSequence.append(_use_notice(templates))

    sop_uid = identity.uid("sr", "instance")
    algorithms = algorithms_of(content)
    schemes = [
        hd.coding_schemes.CodingSchemeIdentificationItem(
            designator=s["designator"],
            name=s.get("name"),
            responsible_organization=s.get("responsible_organization"),
            version=s.get("version"),
        )
        for s in templates.declared_schemes
    ]
    evidence = source_ds + [images[g.explanation_image] for g in content.groups if g.explanation_image]
    versions = f"CardioNode {node.__version__}; {content.pipeline} {content.pipeline_version}"
    sr = _document(report, evidence, dict(
        series_instance_uid=identity.uid("sr", "series"),
        series_number=int(series["series_number"]),
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer=templates.manufacturer,
        is_complete=True,
        is_final=False,
        is_verified=False,
        institution_name=context.institution or None,
        performed_procedure_codes=[performed.concept()],
        previous_versions=_predecessor_datasets(context, sop_uid) or None,
        contributing_equipment=processing_algorithm_equipment(algorithms, templates, identity.content_datetime),
        series_description=str(series["description"])[:64],
        manufacturer_model_name=f"CardioNode {content.pipeline}"[:64],
        software_versions=versions[:64],
        coding_schemes=schemes,
        content_date=identity.content_date,
        content_time=identity.content_time,
        series_date=identity.content_date,
        series_time=identity.content_time,
    ))
    _make_deterministic(sr, identity)
    set_continuity_separate(sr)
    _attach_encoded_tree(sr)
    return sr


#: value representations whose values :func:`encode_sequence_items` writes itself when they are ASCII text
_TEXT_VRS = frozenset({"AE", "AS", "CS", "LO", "LT", "SH", "ST", "UC", "UI", "UR", "UT"})
#: value representations with a 4-byte length in explicit VR little endian
_LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
_ITEM = struct.pack("<HH", 0xFFFE, 0xE000)


def encode_sequence_items(items: Iterable[Dataset], encodings: list[str]) -> bytes:
    """The value of a sequence of ``items`` in explicit VR little endian, byte for byte as pydicom writes it
    (items and nested sequences of defined length), about ten times faster for the elements SR content
    trees and reference lists are made of (ASCII text, sequences); any other element (numbers, dates,
    non-ASCII text) is written by pydicom's own element writer. ``encodings``: the Python encodings of the
    dataset's Specific Character Set (:func:`pydicom.charset.convert_encodings`)."""
    out = []
    for item in items:
        parts = []
        for elem in item:
            vr = elem.VR
            header = struct.pack("<HH", elem.tag.group, elem.tag.element)
            value: bytes | None = None
            if vr == "SQ":
                value = encode_sequence_items(elem.value or [], encodings)
            elif vr in _TEXT_VRS:
                raw = elem.value
                text = "" if raw is None else raw if isinstance(raw, str) else (
                    "\\".join(raw) if isinstance(raw, (list, tuple, MultiValue)) and all(isinstance(v, str) for v in raw)
                    else None)
                if text is not None and text.isascii():
                    value = text.encode("ascii")
                    if len(value) % 2:
                        value += b"\0" if vr == "UI" else b" "
            if value is None:  # pydicom's writer
                buffer = DicomBytesIO()
                buffer.is_little_endian, buffer.is_implicit_VR = True, False
                write_data_element(buffer, elem, encodings)
                parts.append(buffer.getvalue())
                continue
            if vr in _LONG_VRS:
                parts.append(header + vr.encode("ascii") + b"\0\0" + struct.pack("<I", len(value)) + value)
            else:
                parts.append(header + vr.encode("ascii") + struct.pack("<H", len(value)) + value)
        body = b"".join(parts)
        out.append(_ITEM + struct.pack("<I", len(body)) + body)
    return b"".join(out)


def _attach_encoded_tree(sr: Dataset) -> None:
    """Encode the document's Content Sequence and evidence lists once, here, and keep them as raw elements.

    pydicom's writer spends about 30 microseconds on each of the ten thousand elements of a report's tree
    (and on each of the thousands of evidence items of a dynamic PET study); their own encoder
    (:func:`encode_sequence_items`, the same bytes) a tenth of that. Written in explicit VR little endian
    (the transfer syntax of every result object) the bytes are copied as they are; read, a sequence is
    parsed on first access; the highdicom view (``sr.content``) keeps the built items.
    """
    encodings = convert_encodings(sr.get("SpecificCharacterSet"))
    encoded = {tag: encode_sequence_items(sr[tag].value, encodings) for tag in _ENCODED_ONCE if tag in sr}
    correct_ambiguous_vr(sr, is_little_endian=True)
    for tag, value in encoded.items():
        sr[tag] = RawDataElement(Tag(tag), "SQ", len(value), value, 0, False, True)
    sr.set_original_encoding(False, True, sr._character_set)


_CONTENT_SEQUENCE = 0x0040A730
#: the SR's sequences encoded once: Content Sequence, Current Requested Procedure Evidence Sequence,
#: Pertinent Other Evidence Sequence
_ENCODED_ONCE = (_CONTENT_SEQUENCE, 0x0040A375, 0x0040A385)


def _document(report: hd.sr.MeasurementReport, evidence: Sequence[Dataset], attributes: dict) -> hd.sr.Comprehensive3DSR:
    """The Comprehensive 3D SR document of ``report`` (highdicom's, header and evidence lists as highdicom makes
    them), without highdicom's three passes over the content tree.

    :class:`highdicom.sr.Comprehensive3DSR` deep-copies the content tree, parses the copy back into content
    items and walks the original for the images it references; for a report of 60 groups that was most of
    the SR's CPU. The document is built around the root container holding only its first item (the
    language), then given the full tree. What the walk checked holds by construction: every image the
    tree references is a source instance or a heat-map SC, and both are in ``evidence`` (the evidence
    lists are made from ``evidence`` alone). The document's ``content`` is ``report`` itself.
    """
    root = report[0]
    tree = root[_CONTENT_SEQUENCE]
    root[_CONTENT_SEQUENCE] = DataElement(_CONTENT_SEQUENCE, "SQ", hd.sr.ContentSequence([tree.value[0]]))
    try:
        sr = hd.sr.Comprehensive3DSR(evidence=evidence, content=report, **attributes)
    finally:
        root[_CONTENT_SEQUENCE] = tree
    sr[_CONTENT_SEQUENCE] = tree
    sr._content = report  # what highdicom's parse of its copy would hold
    return sr


def _use_notice(templates: Templates) -> hd.sr.ContainerContentItem:
    """TID 1500 row 12 container with the research-use statement as its TEXT item (row 14)."""
    container = hd.sr.ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    container.ContentSequence = hd.sr.ContentSequence([
        hd.sr.TextContentItem(
            name=templates.document_code("use_notice").concept(),
            value=node.RESEARCH_USE_NOTICE,
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
    ])
    return container


def _make_deterministic(ds: Dataset, identity: ContentIdentity) -> None:
    """Replace the wall-clock values highdicom writes by the content date/time."""
    ds.InstanceCreationDate = identity.content_date
    ds.InstanceCreationTime = identity.content_time
    for item in getattr(ds, "ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            item.ContributionDateTime = identity.content_datetime


def to_enhanced_sr(sr: Dataset) -> Dataset:
    """The same document as Enhanced SR (88.22), for a peer that rejects Comprehensive 3D SR.

    The content has no SCOORD3D, so it is valid Enhanced SR unchanged; the
    SOP Instance UID is kept (the peer never stored the 88.34 instance).
    """
    if str(sr.SOPClassUID) != COMPREHENSIVE_3D_SR:
        raise ValueError(f"expected a Comprehensive 3D SR, got SOP class {sr.SOPClassUID}")

    def has_3d(items: Iterable[Dataset]) -> bool:
        return any(i.ValueType == "SCOORD3D" or has_3d(getattr(i, "ContentSequence", [])) for i in items)

    if has_3d(sr.ContentSequence):
        raise ValueError("the report has SCOORD3D content items, which Enhanced SR cannot hold")
    out = copy.deepcopy(sr)
    out.SOPClassUID = UID(ENHANCED_SR)
    out.file_meta.MediaStorageSOPClassUID = UID(ENHANCED_SR)
    return out

