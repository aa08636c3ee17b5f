"""The PDF summary (reportlab platypus) and its Encapsulated PDF Storage wrapper.

Landscape A4 pages in two columns, as many pages as the results need (nothing is cut):

* on every page a header with the patient and study identification
  (:func:`node.results.screen.identification_lines`: name, ID, birth date, sex, accession
  number, study date and description), the research-use statement
  (:data:`node.RESEARCH_USE_NOTICE`) and "page X of Y", and a footer naming the software;
* first the summary (:func:`node.results.tables.summary_rows` of the summary groups in
  :func:`node.results.tables.reading_order`: perfusion scores and TPD, global flow and
  reserve, LVEF/EDV/ESV, every model output with its verdict) and the notes;
* then every bull's-eye and plot, one per column, printed :data:`FIGURE_WIDTH_PT` wide:
  the images are rendered at 100 pixels per inch with fonts of at least 6.5 pt
  (:mod:`node.results.render`), so at about 92 pixels per inch on paper every figure
  text, segment labels included, prints at 7 pt or more;
* the per-segment table (:func:`node.results.tables.segment_table`) and every other
  result, group by group (:func:`node.results.tables.group_rows`): every measurement and
  coded evaluation of the report;
* the algorithm cards (name, version, parameters, training data, intended use).

Page text is at least :data:`MIN_FONT_PT`. The fonts are DejaVu Sans from matplotlib's data
(embedded subsets; Latin, Greek and Cyrillic names print as they are). The PDF is built
with reportlab's ``invariant`` mode, twice (the first pass counts the pages and lays the figures
out as blank boxes of their size), so the same content gives the same bytes. Streams are Flate
compressed without the ASCII85 wrapper (binary PDF: smaller, and reportlab's ASCII85 encoder is
pure Python without its C accelerator).

Most viewers display an Encapsulated PDF even when they cannot render the SR's
numbers (reference ``dicom_outputs.md`` sections 0.6 and 7).
"""

from __future__ import annotations

import functools
import io
import threading
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian
from reportlab import rl_config
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4, landscape
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.utils import ImageReader
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import (
    BaseDocTemplate,
    Flowable,
    Frame,
    KeepTogether,
    PageTemplate,
    Paragraph,
    Spacer,
    Table,
    TableStyle,
)

import node
from node.results.content import MeasurementGroup, ReportContent
from node.results.identity import ContentIdentity, algorithms_of
from node.results.render import display_unit
from node.results.sc import SourceReferences
from node.results.screen import identification_lines
from node.results.tables import (
    MODEL_PROBABILITY,
    MODEL_VERDICT,
    group_rows,
    is_model_group,
    is_summary_group,
    reading_order,
    segment_of,
    segment_table,
    summary_rows,
)
from node.results.templates import Templates

__all__ = ["ENCAPSULATED_PDF", "FIGURE_WIDTH_PT", "MIN_FONT_PT", "render_summary_pdf", "build_encapsulated_pdf"]

ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"

_PAGE = landscape(A4)  # (width, height) in points
_MARGIN = 18.0
_GAP = 10.0  # between the columns
_HEADER = 52.0  # header band below the top margin
_FOOTER = 14.0  # footer band above the bottom margin
_COLUMN = (_PAGE[0] - 2 * _MARGIN - _GAP) / 2
_FRAME_HEIGHT = _PAGE[1] - 2 * _MARGIN - _HEADER - _FOOTER
#: printed width (and height) of every bull's-eye and plot: one column
FIGURE_WIDTH_PT = _COLUMN
#: the smallest font on the pages (tables, notes, header, footer), points
MIN_FONT_PT = 7.5
_TEXT_PT = 8.0
_FONT = "DejaVuSans"
_BOLD = "DejaVuSans-Bold"
_RED = colors.HexColor("#b00000")
_HEAD_BG = colors.HexColor("#dde4ee")
_GROUP_BG = colors.HexColor("#f1f4f8")
_RULE = colors.HexColor("#9aa5b1")
_VALUE_WIDTH = 76.0  # value column of the result tables (fits "Indeterminate" in bold)
_UNIT_WIDTH = 58.0  # unit column (fits "mmHg/min")
#: reportlab's stream encoding is a process-wide setting: one PDF build at a time changes it
_BINARY_STREAMS = threading.Lock()


@functools.cache
def _register_fonts() -> None:
    """Register matplotlib's DejaVu Sans (regular and bold) with reportlab, once per process."""
    ttf = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    pdfmetrics.registerFont(TTFont(_FONT, str(ttf / "DejaVuSans.ttf")))
    pdfmetrics.registerFont(TTFont(_BOLD, str(ttf / "DejaVuSans-Bold.ttf")))


def _style(name: str, size: float = _TEXT_PT, bold: bool = False, colour: colors.Color = colors.black,
           space_before: float = 0.0, keep_with_next: bool = False) -> ParagraphStyle:
    return ParagraphStyle(name, fontName=_BOLD if bold else _FONT, fontSize=size, leading=size * 1.25,
                          textColor=colour, spaceBefore=space_before, spaceAfter=2.0,
                          keepWithNext=int(keep_with_next))


def _esc(text: str) -> str:
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class _Figure(Flowable):
    """An RGB image drawn ``side`` points wide, keeping its aspect ratio.

    ``image`` None: a blank box of the same size (the page-counting pass lays out, it need not
    encode the pixels).
    """

    def __init__(self, rgb: np.ndarray, side: float, image: ImageReader | None):
        super().__init__()
        self._image = image
        rows, columns = np.asarray(rgb).shape[:2]
        self._size = (side, side * rows / columns)

    def wrap(self, available_width: float, available_height: float) -> tuple[float, float]:
        return self._size

    def draw(self) -> None:
        if self._image is not None:
            self.canv.drawImage(self._image, 0, 0, width=self._size[0], height=self._size[1])


def _table(rows: list[list], widths: list[float], group_rows_at: Sequence[int] = (), head: bool = True) -> Table:
    """A results table: a head row (``head``), then rows; ``group_rows_at`` are rows spanning all columns
    (a group's label). The first row repeats when the table continues in the next column."""
    table = Table(rows, colWidths=widths, repeatRows=1)
    style = [
        ("FONT", (0, 0), (-1, -1), _FONT, _TEXT_PT),
        ("GRID", (0, 0), (-1, -1), 0.25, _RULE),
        ("ALIGN", (1, 1), (-1, -1), "RIGHT"),
        ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
        ("TOPPADDING", (0, 0), (-1, -1), 1.0),
        ("BOTTOMPADDING", (0, 0), (-1, -1), 1.5),
        ("LEFTPADDING", (0, 0), (-1, -1), 3.0),
        ("RIGHTPADDING", (0, 0), (-1, -1), 3.0),
    ]
    if head:
        style += [("FONT", (0, 0), (-1, 0), _BOLD, _TEXT_PT), ("BACKGROUND", (0, 0), (-1, 0), _HEAD_BG)]
    for row in group_rows_at:
        style += [("SPAN", (0, row), (-1, row)), ("BACKGROUND", (0, row), (-1, row), _GROUP_BG),
                  ("FONT", (0, row), (-1, row), _BOLD, _TEXT_PT), ("ALIGN", (0, row), (-1, row), "LEFT")]
    table.setStyle(TableStyle(style))
    return table


_RESULT_WIDTHS = [_COLUMN - _VALUE_WIDTH - _UNIT_WIDTH, _VALUE_WIDTH, _UNIT_WIDTH]


def _result_rows(lines: Sequence[tuple[str, str, str]]) -> list[list]:
    """Table rows of ``(concept, value, unit)`` lines: coded values in bold, units as displayed."""
    cell = _style("cell")
    bold_cell = _style("cell-bold", bold=True)
    rows: list[list] = []
    for concept, value, unit in lines:
        numeric = value.lstrip("-").replace(".", "", 1).isdigit()
        rows.append([Paragraph(_esc(concept), cell), value if numeric else Paragraph(_esc(value), bold_cell),
                     display_unit(unit)])
    return rows


def _grouped_tables(sections: Sequence[tuple[str, list[tuple[str, str, str]]]], head: str) -> list[Flowable]:
    """A head row (``head``, value, unit), then one table per group opening with the group's label row.

    One table per group, so that a column or page break falls between groups (or, in a long group,
    repeats its label).
    """
    bold_cell = _style("cell-bold", bold=True)
    tables: list[Flowable] = [
        _table([[Paragraph(_esc(label), bold_cell), "", ""], *_result_rows(lines)], _RESULT_WIDTHS,
               group_rows_at=(0,), head=False)
        for label, lines in sections
    ]
    head_row = _table([[head, "Value", "Unit"]], _RESULT_WIDTHS)
    return [KeepTogether([head_row, *tables[:1]]), *tables[1:]]  # the head row never alone at a column's end


def _model_table(groups: Sequence[MeasurementGroup], content: ReportContent, templates: Templates) -> Table:
    """One row per model output: what it predicts (the group's label), its probability, its verdict."""
    cell = _style("cell")
    bold_cell = _style("cell-bold", bold=True)
    rows: list[list] = [["Model output", "Probability", "Verdict"]]
    for group in groups:
        probability = [value for _, value, _ in group_rows(group, content, templates, (MODEL_PROBABILITY,))]
        verdicts = [value for _, value, _ in group_rows(group, content, templates, (MODEL_VERDICT,))]
        rows.append([Paragraph(_esc(group.label), cell), ", ".join(probability) or "-",
                     Paragraph(_esc(", ".join(verdicts) or "-"), bold_cell)])
    return _table(rows, [_COLUMN - 56.0 - _VALUE_WIDTH, 56.0, _VALUE_WIDTH])


def _segment_flowable(content: ReportContent, templates: Templates) -> Table | None:
    header, rows = segment_table(content, templates)
    if not rows:
        return None
    head = _style("head", bold=True)
    cell = _style("cell")
    first = 104.0
    other = (_COLUMN - first) / (len(header) - 1)
    data: list[list] = [[Paragraph(_esc(h).replace("\n", "<br/>"), head) for h in header]]
    for row in rows:
        data.append([row[0], *(Paragraph(_esc(c), cell) if len(c) > 9 else c for c in row[1:])])
    return _table(data, [first] + [other] * (len(header) - 1))


def _height(flowables: Sequence[Flowable]) -> float:
    """Height in points of ``flowables`` stacked in one column (paragraph spacing included)."""
    scratch = Canvas(io.BytesIO(), pagesize=_PAGE)
    total = 0.0
    for flowable in flowables:
        total += flowable.wrapOn(scratch, _COLUMN, _FRAME_HEIGHT)[1] + flowable.getSpaceBefore() + flowable.getSpaceAfter()
    return total


def _story(content: ReportContent, renders: Sequence[tuple[str, np.ndarray]], templates: Templates,
           images: Sequence[ImageReader | None]) -> list[Flowable]:
    """The flowables of the document, top to bottom (a fresh list for every build); ``images`` are the
    renders' pixels for reportlab, one per render (None: a blank box of the same size)."""
    heading = _style("heading", size=11.0, bold=True, space_before=4.0, keep_with_next=True)
    text = _style("text")
    story: list[Flowable] = []
    ordered = reading_order(content)
    summary_groups = [g for g in ordered if is_summary_group(g)]
    headline = [(g.label, summary_rows(g, content, templates)) for g in summary_groups if not is_model_group(g)]
    headline = [(label, lines) for label, lines in headline if lines]
    if headline:
        story += [Paragraph("Summary", heading), *_grouped_tables(headline, "Headline result")]
    models = [g for g in summary_groups if is_model_group(g)]
    if models:
        story += [Paragraph("Model outputs", heading), _model_table(models, content, templates)]
    figures: list[Flowable] = [_Figure(rgb, FIGURE_WIDTH_PT, image) for (_, rgb), image in zip(renders, images)]
    notes = [Paragraph("Notes", heading), *(Paragraph(_esc(note), text) for note in content.notes)] if content.notes else []
    if _height([*story, *notes]) <= _FRAME_HEIGHT:
        story += notes + figures  # the notes under the summary, the first map beside them
    else:
        story += figures[:1] + notes + figures[1:]  # the first map beside the summary, the notes after it
    segments = _segment_flowable(content, templates)
    if segments is not None:
        story.append(KeepTogether([Paragraph("Results per AHA segment", heading), segments]))
    others = [(g.label, group_rows(g, content, templates)) for g in ordered if segment_of(g) is None]
    if others:
        story += [Paragraph("All other results", heading), *_grouped_tables(others, "Result")]
    story.append(Paragraph("Algorithms", heading))
    for algo in algorithms_of(content):
        params = ", ".join(algo.parameters) or "none"
        training = (algo.training_data or "not applicable (no learned parameters)").rstrip(".")
        story.append(Paragraph(
            f"<b>{_esc(algo.name)}</b> version {_esc(algo.version)}; parameters: {_esc(params)}. "
            f"Training data: {_esc(training)}. Intended use: {_esc(algo.intended_use)}", text))
    story.append(Spacer(1, 4))
    story.append(Paragraph(f"The machine-readable results are in the DICOM Structured Report of the same study. "
                           f"{_esc(node.RESEARCH_USE_NOTICE)}", _style("closing", bold=True, colour=_RED)))
    return story


def _fitting_size(text: str, font: str, size: float, width: float) -> float:
    """``size``, or a smaller one down to :data:`MIN_FONT_PT`, at which ``text`` fits ``width`` points."""
    natural = pdfmetrics.stringWidth(text, font, size)
    return size if natural <= width else max(MIN_FONT_PT, size * width / natural)


def _clipped(text: str, font: str, size: float, width: float) -> str:
    """``text``, cut with an ellipsis where it would be wider than ``width`` points at ``size``."""
    while len(text) > 1 and pdfmetrics.stringWidth(text, font, size) > width:
        text = text[:-2] + "\u2026"
    return text


class _Pages(BaseDocTemplate):
    """Two-column landscape pages whose header and footer are drawn by :meth:`decorate`."""

    def __init__(self, buffer: io.BytesIO, title: str, identification: Sequence[str], footer: str, total: int):
        super().__init__(buffer, pagesize=_PAGE, invariant=1, pageCompression=1, initialFontName=_FONT,
                         initialFontSize=_TEXT_PT, title=title, author="CardioNode",
                         subject=node.RESEARCH_USE_NOTICE, creator=f"CardioNode {node.__version__}",
                         leftMargin=_MARGIN, rightMargin=_MARGIN, topMargin=_MARGIN, bottomMargin=_MARGIN)
        self.heading = title
        # the patient line, then the study line (accession, date, description, examination)
        self.identification = (identification[0], "    ".join(line for line in identification[1:] if line))
        self.footer = footer
        self.total = total
        frames = [Frame(_MARGIN + k * (_COLUMN + _GAP), _MARGIN + _FOOTER, _COLUMN, _FRAME_HEIGHT, leftPadding=0,
                        rightPadding=0, topPadding=0, bottomPadding=0, id=f"column{k}") for k in (0, 1)]
        self.addPageTemplates([PageTemplate(id="columns", frames=frames, onPage=self.decorate)])

    def decorate(self, canvas: Canvas, doc: BaseDocTemplate) -> None:
        width, height = _PAGE
        top = height - _MARGIN
        canvas.saveState()
        canvas.setFont(_BOLD, 11.0)
        canvas.drawString(_MARGIN, top - 10, self.heading)
        canvas.setFont(_BOLD, 9.0)
        pages = f"Page {doc.page} of {self.total}" if self.total else f"Page {doc.page}"
        canvas.drawRightString(width - _MARGIN, top - 10, pages)
        line_width = width - 2 * _MARGIN
        for text, font, size, y in ((self.identification[0], _BOLD, 8.5, top - 23),
                                    (self.identification[1], _FONT, 8.0, top - 34)):
            canvas.setFont(font, _fitting_size(text, font, size, line_width))
            canvas.drawString(_MARGIN, y, _clipped(text, font, MIN_FONT_PT, line_width))
        canvas.setFont(_BOLD, 8.0)
        canvas.setFillColor(_RED)
        canvas.drawString(_MARGIN, top - 45, node.RESEARCH_USE_NOTICE)
        canvas.setStrokeColor(_RULE)
        canvas.setLineWidth(0.6)
        canvas.line(_MARGIN, top - _HEADER + 3, width - _MARGIN, top - _HEADER + 3)
        canvas.line(_MARGIN, _MARGIN + _FOOTER - 4, width - _MARGIN, _MARGIN + _FOOTER - 4)
        canvas.setFillColor(colors.HexColor("#444444"))
        canvas.setFont(_FONT, MIN_FONT_PT)
        canvas.drawString(_MARGIN, _MARGIN + 1, self.footer)
        canvas.restoreState()


def render_summary_pdf(
    content: ReportContent,
    renders: Sequence[tuple[str, np.ndarray]],
    templates: Templates,
    identity: ContentIdentity,
    study: Dataset,
) -> bytes:
    """The summary as PDF bytes: as many landscape A4 pages as the results need.

    ``renders`` are ``(title, RGB uint8 image [rows, columns, 3])`` bull's-eyes and plots, in
    the order they are shown; ``study`` is the source instance whose patient and study
    modules the Encapsulated PDF copies (its identification heads every page).
    """
    _register_fonts()
    _, _, procedure_label = templates.procedure(content.procedure)
    title = f"CardioNode \u2014 {procedure_label} \u2014 results"
    identification = identification_lines(study, content)
    date = identity.content_date
    footer = (f"CardioNode {node.__version__}, pipeline {content.pipeline} {content.pipeline_version}, "
              f"data of {date[:4]}-{date[4:6]}-{date[6:]}. Every result of the report is in this document; "
              "the machine-readable results are in the DICOM Structured Report of the same study.")
    blanks: list[ImageReader | None] = [None] * len(renders)
    images = [ImageReader(Image.fromarray(np.asarray(rgb, dtype=np.uint8), mode="RGB")) for _, rgb in renders]
    with _BINARY_STREAMS:
        saved = rl_config.useA85
        rl_config.useA85 = 0  # binary (Flate only) streams: no pure-Python ASCII85 pass, a quarter smaller
        try:
            # the first pass counts the pages for "page X of Y" (figures as blank boxes of their size)
            counting = _Pages(io.BytesIO(), title, identification, footer, 0)
            counting.build(_story(content, renders, templates, blanks))
            buffer = io.BytesIO()
            _Pages(buffer, title, identification, footer, counting.page).build(_story(content, renders, templates, images))
        finally:
            rl_config.useA85 = saved
    return buffer.getvalue()


def build_encapsulated_pdf(
    pdf_bytes: bytes,
    content: ReportContent,
    sources: Sequence[Dataset],
    identity: ContentIdentity,
    templates: Templates,
    references: SourceReferences | None = None,
) -> Dataset:
    """Wrap ``pdf_bytes`` as Encapsulated PDF Storage in the source study, own series.

    ``references``: those of ``sources`` for the Source Instance Sequence (shared by a study's
    objects; None: made here).
    """
    if not pdf_bytes.startswith(b"%PDF"):
        raise ValueError("not a PDF document")
    series = templates.series("pdf")
    ref = sources[0]
    sop_uid = identity.uid("pdf", "instance")
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(ENCAPSULATED_PDF)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = UID("1.2.826.0.1.3680043.8.498.1")
    ds.SpecificCharacterSet = getattr(ref, "SpecificCharacterSet", "ISO_IR 100")
    ds.SOPClassUID = UID(ENCAPSULATED_PDF)
    ds.SOPInstanceUID = UID(sop_uid)
    ds.InstanceCreationDate = identity.content_date
    ds.InstanceCreationTime = identity.content_time
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                    "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber", "IssuerOfPatientID",
                    "StudyDescription"):
        if keyword in ref:
            setattr(ds, keyword, getattr(ref, keyword))
        elif keyword not in ("IssuerOfPatientID", "StudyDescription"):
            setattr(ds, keyword, "")
    ds.Modality = "DOC"
    ds.SeriesInstanceUID = UID(identity.uid("pdf", "series"))
    ds.SeriesNumber = int(series["series_number"])
    ds.SeriesDate = identity.content_date
    ds.SeriesTime = identity.content_time
    ds.SeriesDescription = str(series["description"])[:64]
    ds.Manufacturer = templates.manufacturer
    ds.ManufacturerModelName = f"CardioNode {content.pipeline}"[:64]
    ds.SoftwareVersions = f"{content.pipeline_version}; CardioNode {node.__version__}"[:64]
    ds.ConversionType = "WSD"
    ds.InstanceNumber = 1
    ds.ContentDate = identity.content_date
    ds.ContentTime = identity.content_time
    ds.AcquisitionDateTime = identity.content_datetime
    ds.BurnedInAnnotation = "YES"
    ds.RecognizableVisualFeatures = "NO"
    ds.DocumentTitle = str(series["document_title"])[:64]
    ds.ConceptNameCodeSequence = []
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    payload = pdf_bytes if len(pdf_bytes) % 2 == 0 else pdf_bytes + b"\x00"
    ds.EncapsulatedDocument = payload
    ds.EncapsulatedDocumentLength = len(pdf_bytes)
    (references or SourceReferences.of(sources, templates)).attach(ds, "SourceInstanceSequence")
    return ds
