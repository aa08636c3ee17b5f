"""Reading the node's own result objects back: headers, the SR's content tree, image frames, the PDF.

The operator's results view (:mod:`node.ops.results`) shows what a pipeline run sent, from the
files in the outbox, without a PACS viewer. This module is its DICOM side (pydicom stays in
:mod:`node.results`; nothing here touches the network):

* :func:`read_header`: an output's kind (the ``series.toml`` entry whose series number it
  carries: ``sr``, ``sc_map``, ``sc_heatmap``, ``sc_plot``, ``sc_table``, ``sc_screen``,
  ``mf_screen``, ``pm``, ``pdf``), title, frames and photometric interpretation;
* :func:`read_content`: the TID 1500 measurement report turned back into the
  :class:`~node.results.content.ReportContent` it was written from (groups with their keys,
  found by looking the codes up in the templates), so that the tables a reader sees on the page
  are made by the same functions as those of the PDF and the results screen
  (:mod:`node.results.tables`, :func:`node.results.screen.global_matrix`: one formatting rule,
  :func:`node.results.tables.format_value`). A coded item the templates do not know (older or
  site templates) is kept as an :class:`UnknownItem` with the SR's own meanings, never dropped;
* :func:`read_frame`: one frame as display pixels (RGB; MONOCHROME with its VOI window to
  8 bits);
* :func:`withhold_screen_identity`: a results-screen page with its identification header
  (patient name, ID, birth date, accession: :func:`node.results.screen.identification_lines`)
  painted over;
* :func:`read_document`: the document bytes of an Encapsulated PDF.

What carries the patient's identity in its pixels or document (:data:`IDENTIFIED_KINDS`): the
results-screen pages (``sc_screen``: the header of every page) and the PDF (every page's head).
The single-frame images (bull's-eyes, heat maps, curve plots, segment table) and the frames of
the multi-frame result screen carry titles, values and the research-use label only
(:mod:`node.results.render`).
"""

from __future__ import annotations

import functools
import tomllib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import pydicom
from PIL import Image, ImageDraw, ImageFont
from pydicom import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut, convert_color_space

import node
from node.results.content import Algorithm, Evaluation, Measurement, MeasurementGroup, ReportContent
from node.results.pdf import ENCAPSULATED_PDF
from node.results.sc import MULTIFRAME_TRUE_COLOR_SC, SECONDARY_CAPTURE
from node.results.screen import SCREEN_BANNER
from node.results.sr import COMPREHENSIVE_3D_SR, ENHANCED_SR
from node.results.tables import format_value
from node.results.templates import Code, Templates

__all__ = [
    "IDENTIFIED_KINDS",
    "IMAGE_CLASSES",
    "SR_CLASSES",
    "OutputHeader",
    "ReadBackError",
    "ReadReport",
    "UnknownItem",
    "read_content",
    "read_document",
    "read_frame",
    "read_header",
    "read_report",
    "withhold_screen_identity",
]

#: SOP classes of the node's image outputs that a page shows as pictures (SC, multi-frame true-colour SC)
IMAGE_CLASSES = frozenset({SECONDARY_CAPTURE, MULTIFRAME_TRUE_COLOR_SC})
#: SOP classes of the node's measurement reports
SR_CLASSES = frozenset({COMPREHENSIVE_3D_SR, ENHANCED_SR})
#: output kinds (``series.toml``) whose pixels or document show the patient's name, ID and birth date
IDENTIFIED_KINDS = frozenset({"sc_screen", "pdf"})

#: the SR's document-level items that are no results (TID 1500 containers and context)
_IMAGING_MEASUREMENTS = ("126010", "DCM")
_MEASUREMENT_GROUP = ("125007", "DCM")
_QUALITATIVE_EVALUATIONS = ("C0034375", "UMLS")
_TRACKING_IDENTIFIER = ("112039", "DCM")
_FINDING = ("121071", "DCM")
_FINDING_SITE = ("363698007", "SCT")
_ALGORITHM_NAME = ("111001", "DCM")
_ALGORITHM_VERSION = ("111003", "DCM")
_ALGORITHM_PARAMETERS = ("111002", "DCM")
_PROCEDURE_REPORTED = ("121058", "DCM")

#: the results-screen header's lower edge: a full-width line of this colour (node.results.screen.render_screen_page)
_SCREEN_HEADER_LINE = (160, 160, 160)
_SCREEN_HEADER_FILL = (246, 246, 246)
_SCREEN_HEADER_MAX_ROWS = 200
_WITHHELD_TEXT = "Patient identification withheld on this page (setting [web] show_identifiers is off)"
_FONT_DIR = Path(matplotlib.get_data_path()) / "fonts" / "ttf"


class ReadBackError(ValueError):
    """An output file that is not what its ledger row says, or a frame it does not have."""


@dataclass(frozen=True)
class OutputHeader:
    """What a page needs to know about one output object, from its header.

    ``kind`` is the ``series.toml`` entry of its series number (``"other"`` when none);
    ``title`` the Image Comments without the research-use notice (images) or the Document Title
    (PDF, SR); ``frames`` 1 for single-frame images, 0 for objects without pixels; ``frame_labels``
    the multi-frame screen's Frame Label Vector.
    """

    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    series_number: int | None
    series_description: str
    instance_number: int | None
    kind: str
    title: str
    frames: int
    rows: int
    columns: int
    photometric: str
    frame_labels: tuple[str, ...] = ()

    @property
    def identified(self) -> bool:
        """Whether its pixels or document show the patient's name, ID and birth date (:data:`IDENTIFIED_KINDS`)."""
        return self.kind in IDENTIFIED_KINDS


@dataclass(frozen=True)
class UnknownItem:
    """A coded SR item the templates do not know: its group, concept meaning, value text and UCUM unit."""

    group: str
    concept: str
    value: str
    unit: str = ""


@dataclass(frozen=True)
class ReadReport:
    """A measurement report read back: the content it encodes and the document's own facts.

    ``content`` holds the groups (in the SR's reading order) with the keys of the templates;
    its ``sources``, ``images`` and ``plots`` are empty (they are other objects, not the SR's
    tree). ``predecessors`` are the SOP Instance UIDs in the SR's Predecessor Documents
    Sequence (the reports this one supersedes); ``notices`` the TEXT items of its qualitative
    evaluations (the research-use statement).
    """

    sop_instance_uid: str
    series_instance_uid: str
    title: str
    procedure: str
    completion: str
    verification: str
    preliminary: str
    content_date: str
    content_time: str
    observer: str
    predecessors: tuple[str, ...]
    notices: tuple[str, ...]
    content: ReportContent
    unknown: tuple[UnknownItem, ...] = ()
    #: SOP Instance UID of the heat map named as a group's visual explanation, by group label
    explanations: tuple[tuple[str, str], ...] = ()


# --------------------------------------------------------------------------- headers


def _series_kinds(templates: Templates) -> dict[int, str]:
    """Series number -> output kind, from ``series.toml``."""
    with (templates.directory / "series.toml").open("rb") as fh:
        raw = tomllib.load(fh)
    return {int(entry["series_number"]): kind for kind, entry in raw.items()
            if isinstance(entry, dict) and "series_number" in entry}


def _int_or_none(value: object) -> int | None:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return None


def _title(ds: Dataset) -> str:
    """An image's title (Image Comments up to the research-use notice), else a document's title."""
    comments = str(getattr(ds, "ImageComments", "") or "")
    if comments:
        return comments.split(f". {node.RESEARCH_USE_NOTICE}")[0].strip()
    if "DocumentTitle" in ds:
        return str(ds.DocumentTitle)
    concept = getattr(ds, "ConceptNameCodeSequence", None)
    return str(concept[0].CodeMeaning) if concept else ""


def read_header(path: Path, templates: Templates) -> OutputHeader:
    """The :class:`OutputHeader` of the output file at ``path`` (pixels not read)."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except (OSError, pydicom.errors.InvalidDicomError) as exc:
        raise ReadBackError(f"{path.name}: not readable as DICOM ({type(exc).__name__})") from exc
    series_number = _int_or_none(getattr(ds, "SeriesNumber", None))
    kind = _series_kinds(templates).get(series_number, "other") if series_number is not None else "other"
    has_pixels = "Rows" in ds and "Columns" in ds
    labels = getattr(ds, "FrameLabelVector", None)
    return OutputHeader(
        sop_instance_uid=str(ds.SOPInstanceUID),
        sop_class_uid=str(ds.SOPClassUID),
        series_instance_uid=str(ds.SeriesInstanceUID),
        series_number=series_number,
        series_description=str(getattr(ds, "SeriesDescription", "") or ""),
        instance_number=_int_or_none(getattr(ds, "InstanceNumber", None)),
        kind=kind,
        title=_title(ds),
        frames=(int(getattr(ds, "NumberOfFrames", 1) or 1) if has_pixels else 0),
        rows=int(ds.Rows) if has_pixels else 0,
        columns=int(ds.Columns) if has_pixels else 0,
        photometric=str(getattr(ds, "PhotometricInterpretation", "") or ""),
        frame_labels=tuple(str(x) for x in (labels if isinstance(labels, Sequence) and not isinstance(labels, str)
                                            else [labels] if labels else [])),
    )


# --------------------------------------------------------------------------- SR content tree


def _code(item: Dataset, sequence: str = "ConceptNameCodeSequence") -> tuple[str, str]:
    seq = getattr(item, sequence, None)
    if not seq:
        return ("", "")
    return (str(seq[0].CodeValue), str(seq[0].CodingSchemeDesignator))


def _meaning(item: Dataset, sequence: str = "ConceptNameCodeSequence") -> str:
    seq = getattr(item, sequence, None)
    return str(seq[0].CodeMeaning) if seq else ""


class _Lexicon:
    """The templates read backwards: code -> key for quantities, evaluations, sites, findings, states."""

    def __init__(self, templates: Templates) -> None:
        self.templates = templates
        self.quantities: dict[tuple[str, str], str] = {}
        for key in self._keys("concepts"):
            try:
                code = templates.quantity(key).code
            except (KeyError, TypeError, ValueError):
                continue  # not a quantity entry (e.g. [units])
            self.quantities.setdefault((code.value, code.scheme), key)
        self.sites = self._map("sites", lambda key: templates.site(key)[0])
        self.findings = self._map("findings", templates.finding)
        self.concepts: dict[tuple[str, str], str] = {}
        self.values: dict[tuple[str, str], str] = {}
        for table, lookup, target in (("concepts", templates.evaluation_concept, self.concepts),
                                      ("values", templates.evaluation_value, self.values)):
            for key in self._keys("evaluations", table):
                code = lookup(key)
                target.setdefault((code.value, code.scheme), key)
        self.states: dict[tuple[str, str], str] = {}
        for key in self._keys("schemes", "states"):
            code, _ = templates.state(key)
            self.states.setdefault((code.value, code.scheme), key)
        state = templates.state_concept
        self.state_concept = (state.value, state.scheme)

    def _keys(self, name: str, table: str | None = None) -> list[str]:
        with (self.templates.directory / f"{name}.toml").open("rb") as fh:
            raw = tomllib.load(fh)
        if table is not None:
            raw = raw.get(table, {})
        return [k for k, v in raw.items() if isinstance(v, dict) and "code" in v]

    def _map(self, name: str, lookup: Callable[[str], Code]) -> dict[tuple[str, str], str]:
        out: dict[tuple[str, str], str] = {}
        for key in self._keys(name):
            code = lookup(key)
            out.setdefault((code.value, code.scheme), key)
        return out


@functools.lru_cache(maxsize=8)
def _lexicon(templates: Templates) -> _Lexicon:
    return _Lexicon(templates)


def _children(item: Dataset) -> Iterable[Dataset]:
    return getattr(item, "ContentSequence", None) or []


def _find_container(items: Iterable[Dataset], code: tuple[str, str]) -> Dataset | None:
    for item in items:
        if item.ValueType == "CONTAINER" and _code(item) == code:
            return item
    return None


def _read_group(item: Dataset, lexicon: _Lexicon, pipeline: str,
                unknown: list[UnknownItem]) -> tuple[MeasurementGroup, str | None]:
    """One TID 1501 group as a MeasurementGroup (keys), and the SOP UID of its visual explanation."""
    label = finding = site = ""
    name = version = ""
    parameters: list[str] = []
    state: str | None = None
    measurements: list[Measurement] = []
    evaluations: list[Evaluation] = []
    explanation: str | None = None
    visual = lexicon.templates.reference_code("visual_explanation")
    for child in _children(item):
        code, kind = _code(child), child.ValueType
        if code == _TRACKING_IDENTIFIER and kind == "TEXT":
            label = str(child.TextValue)
        elif code == _FINDING and kind == "CODE":
            finding = lexicon.findings.get(_code(child, "ConceptCodeSequence"), _meaning(child, "ConceptCodeSequence"))
        elif code == _FINDING_SITE and kind == "CODE":
            value = _code(child, "ConceptCodeSequence")
            site = lexicon.sites.get(value, "")
            if not site:
                unknown.append(UnknownItem(label, "Finding Site", _meaning(child, "ConceptCodeSequence")))
        elif code == _ALGORITHM_NAME and kind == "TEXT":
            name = str(child.TextValue)
        elif code == _ALGORITHM_VERSION and kind == "TEXT":
            version = str(child.TextValue)
        elif code == _ALGORITHM_PARAMETERS and kind == "TEXT":
            parameters.append(str(child.TextValue))
        elif kind == "NUM":
            measured = getattr(child, "MeasuredValueSequence", None)
            if not measured:
                continue
            number = float(measured[0].NumericValue)
            unit_code = _code(measured[0], "MeasurementUnitsCodeSequence")[0]
            quantity = lexicon.quantities.get(code)
            if quantity is None:
                unknown.append(UnknownItem(label, _meaning(child), format_value(number), unit_code))
            else:
                measurements.append(Measurement(quantity, number, unit_code))
        elif kind == "CODE":
            value_code = _code(child, "ConceptCodeSequence")
            if code == lexicon.state_concept and value_code in lexicon.states:
                state = lexicon.states[value_code]
                continue
            concept, value_key = lexicon.concepts.get(code), lexicon.values.get(value_code)
            if concept is None or value_key is None:
                unknown.append(UnknownItem(label, _meaning(child), _meaning(child, "ConceptCodeSequence")))
            else:
                evaluations.append(Evaluation(concept, value_key))
        elif kind == "IMAGE" and code == (visual.value, visual.scheme):
            explanation = str(child.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
    group = MeasurementGroup(
        label=label, finding=finding, site=site, state=state,
        algorithm=Algorithm(name=name, version=version, parameters=tuple(parameters)),
        measurements=tuple(measurements), evaluations=tuple(evaluations),
        explanation_image=explanation,
    )
    return group, explanation


def read_report(ds: Dataset, templates: Templates, pipeline: str) -> ReadReport:
    """Read a TID 1500 measurement report (the node's SR) back.

    ``pipeline`` is the pipeline that made it (the ledger's ``outputs.pipeline``): its
    ``concept_overrides`` decide the decimals of its quantities. Raises :class:`ReadBackError`
    when ``ds`` is no SR or has no Imaging Measurements container.
    """
    if str(getattr(ds, "SOPClassUID", "")) not in SR_CLASSES:
        raise ReadBackError(f"SOP class {getattr(ds, 'SOPClassUID', '?')} is not a measurement report")
    lexicon = _lexicon(templates)
    root = list(_children(ds))
    measurements = _find_container(root, _IMAGING_MEASUREMENTS)
    if measurements is None:
        raise ReadBackError("the SR has no Imaging Measurements container (TID 1500 row 6)")
    unknown: list[UnknownItem] = []
    groups: list[MeasurementGroup] = []
    explanations: list[tuple[str, str]] = []
    for item in _children(measurements):
        if item.ValueType == "CONTAINER" and _code(item) == _MEASUREMENT_GROUP:
            group, explanation = _read_group(item, lexicon, pipeline, unknown)
            groups.append(group)
            if explanation:
                explanations.append((group.label, explanation))
    notices: list[str] = []
    evaluations = _find_container(root, _QUALITATIVE_EVALUATIONS)
    for item in _children(evaluations) if evaluations is not None else []:
        if item.ValueType == "TEXT":
            notices.append(str(item.TextValue))
    procedure = next((_meaning(i, "ConceptCodeSequence") for i in root if _code(i) == _PROCEDURE_REPORTED), "")
    performed = getattr(ds, "PerformedProcedureCodeSequence", None)
    if performed:
        procedure = str(performed[0].CodeMeaning)
    versions = str(getattr(ds, "SoftwareVersions", "") or "")
    pipeline_version = versions.rsplit(f"{pipeline} ", 1)[-1] if f"{pipeline} " in versions else ""
    content = ReportContent(
        pipeline=pipeline,
        pipeline_version=pipeline_version,
        procedure=procedure,
        study_instance_uid=str(ds.StudyInstanceUID),
        sources=(),
        groups=tuple(groups),
    )
    predecessors = tuple(
        str(instance.ReferencedSOPInstanceUID)
        for study in getattr(ds, "PredecessorDocumentsSequence", None) or []
        for series in getattr(study, "ReferencedSeriesSequence", None) or []
        for instance in getattr(series, "ReferencedSOPSequence", None) or []
    )
    observer = ""
    for item in root:
        if item.ValueType == "TEXT" and _code(item) == ("121013", "DCM"):  # Device Observer Name
            observer = str(item.TextValue)
    return ReadReport(
        sop_instance_uid=str(ds.SOPInstanceUID),
        series_instance_uid=str(ds.SeriesInstanceUID),
        title=_meaning(ds),
        procedure=procedure,
        completion=str(getattr(ds, "CompletionFlag", "") or ""),
        verification=str(getattr(ds, "VerificationFlag", "") or ""),
        preliminary=str(getattr(ds, "PreliminaryFlag", "") or ""),
        content_date=str(getattr(ds, "ContentDate", "") or ""),
        content_time=str(getattr(ds, "ContentTime", "") or ""),
        observer=observer,
        predecessors=predecessors,
        notices=tuple(notices),
        content=content,
        unknown=tuple(unknown),
        explanations=tuple(explanations),
    )


def read_content(path: Path, templates: Templates, pipeline: str) -> ReadReport:
    """:func:`read_report` of the SR file at ``path``."""
    try:
        ds = pydicom.dcmread(path)
    except (OSError, pydicom.errors.InvalidDicomError) as exc:
        raise ReadBackError(f"{path.name}: not readable as DICOM ({type(exc).__name__})") from exc
    return read_report(ds, templates, pipeline)


# --------------------------------------------------------------------------- pixels and documents


def read_frame(path: Path, frame: int) -> np.ndarray:
    """Frame ``frame`` (1-based) of the image at ``path`` as display pixels, ``uint8``.

    RGB images (and YBR ones, converted) give ``[rows, columns, 3]``; MONOCHROME1/2 ones give
    ``[rows, columns]`` after the modality and VOI transforms (the image's own window, else its
    full range) scaled to 0..255, MONOCHROME1 inverted so that white is high.
    """
    try:
        ds = pydicom.dcmread(path)
    except (OSError, pydicom.errors.InvalidDicomError) as exc:
        raise ReadBackError(f"{path.name}: not readable as DICOM ({type(exc).__name__})") from exc
    if str(ds.SOPClassUID) not in IMAGE_CLASSES:
        raise ReadBackError(f"SOP class {ds.SOPClassUID} is not an image the page shows")
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if not 1 <= frame <= frames:
        raise ReadBackError(f"frame {frame} does not exist (the image has {frames})")
    pixels = ds.pixel_array
    if frames > 1:
        pixels = pixels[frame - 1]
    photometric = str(ds.PhotometricInterpretation)
    if photometric in ("RGB", "YBR_FULL", "YBR_FULL_422"):
        if photometric != "RGB":
            pixels = convert_color_space(pixels, photometric, "RGB")
        return np.ascontiguousarray(pixels, dtype=np.uint8)
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ReadBackError(f"photometric interpretation {photometric} is not shown")
    values = apply_modality_lut(pixels, ds)
    if "WindowCenter" in ds or "VOILUTSequence" in ds:
        values = apply_voi_lut(values, ds)
    values = np.asarray(values, dtype=float)
    low, high = float(np.min(values)), float(np.max(values))
    scaled = np.zeros(values.shape) if high <= low else (values - low) / (high - low)
    if photometric == "MONOCHROME1":
        scaled = 1.0 - scaled
    return np.ascontiguousarray(np.round(scaled * 255.0), dtype=np.uint8)


def read_document(path: Path) -> bytes:
    """The encapsulated document (PDF) of the Encapsulated PDF object at ``path``, without its padding byte."""
    try:
        ds = pydicom.dcmread(path)
    except (OSError, pydicom.errors.InvalidDicomError) as exc:
        raise ReadBackError(f"{path.name}: not readable as DICOM ({type(exc).__name__})") from exc
    if str(ds.SOPClassUID) != ENCAPSULATED_PDF:
        raise ReadBackError(f"SOP class {ds.SOPClassUID} is not an Encapsulated PDF")
    data = bytes(ds.EncapsulatedDocument)
    length = _int_or_none(getattr(ds, "EncapsulatedDocumentLength", None))
    if length is not None and 0 < length <= len(data):
        data = data[:length]
    elif data.endswith(b"\x00"):
        data = data[:-1]
    return data


@functools.lru_cache(maxsize=4)
def _font(size: int, bold: bool) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(_FONT_DIR / ("DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf")), size)


def withhold_screen_identity(rgb: np.ndarray) -> np.ndarray:
    """A results-screen page with its identification header painted over.

    The header (:func:`node.results.screen.render_screen_page`) is everything above the
    full-width grey line that closes it; every pixel above that line is replaced by the
    header's background, with a line saying that the identification is withheld and the
    research-use banner. Raises :class:`ReadBackError` when the page has no such line in its
    top :data:`_SCREEN_HEADER_MAX_ROWS` rows (then nothing of it may be shown).
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ReadBackError("a results-screen page is RGB")
    top = rgb[:_SCREEN_HEADER_MAX_ROWS]
    full = np.all(top == np.asarray(_SCREEN_HEADER_LINE, dtype=np.uint8), axis=(1, 2))
    lines = np.flatnonzero(full)
    if lines.size == 0:
        raise ReadBackError("the page has no header line where the identification ends; not shown")
    edge = int(lines[0])
    out = np.array(rgb, dtype=np.uint8, copy=True)
    out[:edge] = np.asarray(_SCREEN_HEADER_FILL, dtype=np.uint8)
    canvas = Image.fromarray(out, mode="RGB")
    draw = ImageDraw.Draw(canvas)
    size = max(10, min(22, edge // 3))
    draw.text((12, max(2, edge // 2 - size)), _WITHHELD_TEXT, fill=(60, 60, 60), font=_font(size, False))
    draw.text((canvas.width - 12, max(2, edge // 2 - size)), SCREEN_BANNER, fill=(176, 0, 0),
              font=_font(size, True), anchor="ra")
    return np.asarray(canvas, dtype=np.uint8)
