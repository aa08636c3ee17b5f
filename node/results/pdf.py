"""One-page PDF summary (reportlab) and its Encapsulated PDF Storage wrapper.

The page holds, top to bottom: title and research-use disclaimer, the
bull's-eye images and curve plots, the per-segment table (left) and the table of
every other result (right; :mod:`node.results.tables`), the algorithm card (name, version, parameters, training data, intended
use), notes, and the disclaimer again. The PDF is built with reportlab's
``invariant`` mode, so the same content gives the same bytes.

Most viewers display an Encapsulated PDF even when they cannot render the SR's
numbers (reference ``dicom_outputs.md`` sections 0.6 and 7).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.utils import ImageReader
from reportlab.pdfbase.pdfmetrics import stringWidth
from reportlab.pdfgen import canvas
from reportlab.platypus import Paragraph, Table, TableStyle

import node
from node.results.content import ReportContent
from node.results.identity import ContentIdentity, algorithms_of
from node.results.sc import source_image_sequence
from node.results.tables import global_rows, segment_table
from node.results.templates import Templates

__all__ = ["ENCAPSULATED_PDF", "render_summary_pdf", "build_encapsulated_pdf"]

ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"

_MARGIN = 30.0
#: table cells longer than this are wrapped (a Paragraph) instead of drawn on one line
_WRAP_CHARS = 12


def _png(rgb: np.ndarray) -> ImageReader:
    return ImageReader(Image.fromarray(np.asarray(rgb, dtype=np.uint8), mode="RGB"))


def _table(data: list[list], col_widths: list[float], font_size: float, fixed_rows: bool = True) -> Table:
    head_lines = max([2, *(str(cell).count("\n") + 1 for cell in data[0])])
    heights = [head_lines * font_size + 4.0] + [font_size + 3.0] * (len(data) - 1) if fixed_rows else None
    table = Table(data, colWidths=col_widths, rowHeights=heights)
    table.setStyle(
        TableStyle(
            [
                ("FONT", (0, 0), (-1, -1), "Helvetica", font_size),
                ("FONT", (0, 0), (-1, 0), "Helvetica-Bold", font_size),
                ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#dde4ee")),
                ("GRID", (0, 0), (-1, -1), 0.25, colors.HexColor("#9aa5b1")),
                ("ALIGN", (1, 1), (-1, -1), "RIGHT"),
                ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
                ("TOPPADDING", (0, 0), (-1, -1), 0.5),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 0.5),
                ("LEFTPADDING", (0, 0), (-1, -1), 2),
                ("RIGHTPADDING", (0, 0), (-1, -1), 2),
            ]
        )
    )
    return table


#: layouts tried in order until the page fits: (table font size pt, max global rows or None, max image side pt)
_LAYOUTS = ((6.5, None, 180.0), (5.5, None, 140.0), (5.0, None, 110.0), (5.0, 40, 100.0), (5.0, 24, 90.0))


def render_summary_pdf(
    content: ReportContent,
    renders: Sequence[tuple[str, np.ndarray]],
    templates: Templates,
    identity: ContentIdentity,
    header_lines: Sequence[str] = (),
) -> bytes:
    """The one-page A4 summary as PDF bytes. ``renders`` are ``(title, RGB uint8 image)`` bull's-eyes and plots.

    Larger reports get smaller fonts and images, then a global table cut to
    its first rows with a pointer to the SR, so the summary stays one page.
    """
    for font, max_rows, side in _LAYOUTS:
        pdf_bytes, fits = _draw_page(content, renders, templates, identity, header_lines, font, max_rows, side)
        if fits:
            return pdf_bytes
    raise ValueError("the summary does not fit on one page even in its most compact layout; shorten the content's notes")


def _draw_page(
    content: ReportContent,
    renders: Sequence[tuple[str, np.ndarray]],
    templates: Templates,
    identity: ContentIdentity,
    header_lines: Sequence[str],
    font: float,
    max_global_rows: int | None,
    image_side: float,
) -> tuple[bytes, bool]:
    width, height = A4
    buf = io.BytesIO()
    pdf = canvas.Canvas(buf, pagesize=A4, invariant=1, pageCompression=1)
    _, _, procedure_label = templates.procedure(content.procedure)
    pdf.setTitle(f"CardioNode {procedure_label} summary")
    pdf.setAuthor("CardioNode")
    pdf.setSubject(node.RESEARCH_USE_NOTICE)
    y = height - _MARGIN

    pdf.setFont("Helvetica-Bold", 14)
    pdf.drawString(_MARGIN, y - 12, f"CardioNode - {procedure_label}")
    pdf.setFont("Helvetica", 7.5)
    info = f"Pipeline {content.pipeline} {content.pipeline_version} | data of {identity.content_date[:4]}-{identity.content_date[4:6]}-{identity.content_date[6:]}"
    pdf.drawRightString(width - _MARGIN, y - 10, info)
    y -= 20
    for line in header_lines:
        pdf.drawString(_MARGIN, y - 8, line[:140])
        y -= 10
    disclaimer_style = ParagraphStyle("disclaimer", fontName="Helvetica-Bold", fontSize=8, leading=10,
                                      textColor=colors.HexColor("#b00000"))
    disclaimer = Paragraph(node.RESEARCH_USE_NOTICE, disclaimer_style)
    _, dh = disclaimer.wrapOn(pdf, width - 2 * _MARGIN, 40)
    disclaimer.drawOn(pdf, _MARGIN, y - dh - 2)
    y -= dh + 8

    shown = list(renders)[:8]
    if shown:
        per_row = len(shown) if len(shown) <= 4 else math.ceil(len(shown) / math.ceil(len(shown) / 4))
        side = min(image_side, (width - 2 * _MARGIN - (per_row - 1) * 6) / per_row)
        for i, (_title, rgb) in enumerate(shown):
            row, col = divmod(i, per_row)
            x = _MARGIN + col * (side + 6)
            top = y - row * (side + 4)
            pdf.drawImage(_png(rgb), x, top - side, width=side, height=side)
        y -= ((len(shown) - 1) // per_row + 1) * (side + 4) + 4

    left_width = 262.0
    header, rows = segment_table(content, templates)
    table_top = y
    if rows:
        n = len(header) - 1
        first = 82.0
        widths = [first] + [(left_width - first) / n] * n
        seg = _table([header, *rows], widths, font)
        _, th = seg.wrapOn(pdf, left_width, y)
        seg.drawOn(pdf, _MARGIN, y - th)
        left_bottom = y - th
    else:
        left_bottom = y
    right_x = _MARGIN + (left_width + 8 if rows else 0)
    right_width = width - _MARGIN - right_x
    grows = global_rows(content, templates)
    if max_global_rows is not None and len(grows) > max_global_rows:
        hidden = len(grows) - (max_global_rows - 1)
        grows = grows[: max_global_rows - 1] + [(f"... {hidden} more results in the Structured Report", "", "")]
    if grows:
        cell = ParagraphStyle("cell", fontName="Helvetica", fontSize=font, leading=font + 1.2)
        data = [["Global result", "Value", "Unit"]] + [
            [Paragraph(_esc(label), cell), Paragraph(_esc(v), cell) if len(v) > _WRAP_CHARS else v, u]
            for label, v, u in grows
        ]
        unit_width = max([28.0, *(stringWidth(u, "Helvetica", font) + 5.0 for _, _, u in grows)])
        glob = _table(data, [right_width - 50 - unit_width, 50, unit_width], font, fixed_rows=False)
        _, gh = glob.wrapOn(pdf, right_width, y)
        glob.drawOn(pdf, right_x, y - gh)
        right_bottom = y - gh
    else:
        right_bottom = y
    y = min(left_bottom, right_bottom, table_top) - 10

    pdf.setFont("Helvetica-Bold", 9)
    pdf.drawString(_MARGIN, y, "Algorithms")
    y -= 3
    card_style = ParagraphStyle("card", fontName="Helvetica", fontSize=6.5, leading=8)
    for algo in algorithms_of(content):
        params = ", ".join(algo.parameters) or "none"
        text = (f"<b>{_esc(algo.name)}</b> version {_esc(algo.version)}; parameters: {_esc(params)}. "
                f"Training data: {_esc((algo.training_data or 'not applicable (no learned parameters)').rstrip('.'))}. "
                f"Intended use: {_esc(algo.intended_use)}")
        para = Paragraph(text, card_style)
        _, ph = para.wrapOn(pdf, width - 2 * _MARGIN, 60)
        para.drawOn(pdf, _MARGIN, y - ph)
        y -= ph + 2
    if content.notes:
        y -= 10
        pdf.setFont("Helvetica-Bold", 9)
        pdf.drawString(_MARGIN, y, "Notes")
        y -= 3
        for note in content.notes:
            para = Paragraph(_esc(note), card_style)
            _, ph = para.wrapOn(pdf, width - 2 * _MARGIN, 40)
            para.drawOn(pdf, _MARGIN, y - ph)
            y -= ph + 1
    footer = Paragraph(
        f"{_esc(node.RESEARCH_USE_NOTICE)} Results of CardioNode {node.__version__}; the machine-readable results "
        "are in the DICOM Structured Report of the same study.",
        disclaimer_style,
    )
    _, fh = footer.wrapOn(pdf, width - 2 * _MARGIN, 40)
    footer.drawOn(pdf, _MARGIN, _MARGIN - 10)
    pdf.showPage()
    pdf.save()
    return buf.getvalue(), y >= _MARGIN + fh


def _esc(text: str) -> str:
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "\u2026"


def build_encapsulated_pdf(
    pdf_bytes: bytes,
    content: ReportContent,
    sources: Sequence[Dataset],
    identity: ContentIdentity,
    templates: Templates,
) -> Dataset:
    """Wrap ``pdf_bytes`` as Encapsulated PDF Storage in the source study, own series."""
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
    ds.SourceInstanceSequence = source_image_sequence(sources, templates)
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    payload = pdf_bytes if len(pdf_bytes) % 2 == 0 else pdf_bytes + b"\x00"
    ds.EncapsulatedDocument = payload
    ds.EncapsulatedDocumentLength = len(pdf_bytes)
    return ds
