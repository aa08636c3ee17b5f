"""The results screen: the report's maps, scores, curves and model outputs on reading-monitor pages.

In the style of the IHE NM Image cardiac option and of the usual nuclear-cardiology review
screens (QPS/QGS, ECTb), for viewers that show images but not SRs or PDFs. Each page is one
RGB Secondary Capture of :data:`SCREEN_SIZE` (1920 x 1080, landscape) in its own series
(``series.toml`` ``sc_screen``), composed from generic :class:`~node.results.content.ReportContent`
so that every pipeline gets one without code here:

* a header on every page: patient name, ID, birth date and sex, accession number, study date and
  description, the examination (``content.description``), page title and number, and
  "RESEARCH USE ONLY - NOT FOR DIAGNOSTIC USE";
* page 1: the maps of role ``perfusion`` and ``perfusion_change`` side by side (stress, rest,
  difference; PET stress MBF, rest MBF, MFR), under them the ``extent`` ("blackout") maps (else
  the next panels), and on the right the table of global results (rows: quantity and site;
  columns: study, stress, rest) with the coded findings and notes;
* then the other maps and curve plots, four by two per page, ordered function maps, volume
  curve, phase map, phase histogram, time-activity curves, other maps, the segment table;
* a page of the model outputs: each heat map with, under it, what the model predicts, its
  probability, its threshold (``threshold=`` in the model's parameters) and its verdict;
* a last page for the findings and notes that did not fit page 1.

Panels are the bull's-eyes, plots and tables already rendered for the single SC images
(:func:`node.results.outputs.render_images`), scaled and pasted with PIL: the screen adds no
matplotlib rendering. Numbers are printed by :func:`node.results.tables.format_value` with
the quantity's decimals from the templates (the rule of the PDF, the tables and the maps).

The layout is a model (:class:`ScreenPage`: panel boxes and every text drawn, in pixels,
``x`` to the right and ``y`` down from the top-left corner) made by :func:`plan_screen` and
drawn by :func:`render_screen_page`; tests read the texts from it (no OCR needed).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom import Dataset

import node
from node.results.content import Algorithm, MeasurementGroup, ReportContent
from node.results.render import RESEARCH_LABEL, display_unit, wrap_text
from node.results.tables import format_value, segment_of
from node.results.templates import Templates

__all__ = [
    "SCREEN_SIZE",
    "SCREEN_KIND",
    "SCREEN_BANNER",
    "TextItem",
    "Panel",
    "ScreenPage",
    "screen_key",
    "global_matrix",
    "plan_screen",
    "render_screen_page",
]

#: (columns, rows) of every page, pixels
SCREEN_SIZE = (1920, 1080)
#: the series of the pages (``series.toml``)
SCREEN_KIND = "sc_screen"
#: the research-use banner of every page's header
SCREEN_BANNER = "RESEARCH USE ONLY \u2014 NOT FOR DIAGNOSTIC USE"

_HEADER = 96  # header height
_FOOTER = 30  # footer height
_MARGIN = 12
_PANEL_3 = 462  # panel side on page 1 (three columns beside the table)
_PANEL_4 = 462  # panel side on the grid pages (four columns)
_TABLE_X = _MARGIN + 3 * _PANEL_3 + 2 * _MARGIN + 20  # left edge of page 1's table column
_LINE = 23  # table and text line height
_TEXT = 17  # table and text font size (pixels)
_RED = (176, 0, 0)
_GREY = (90, 90, 90)
_BAND = (238, 241, 245)
_MODEL_QUANTITY = "probability"  # a group with this measurement is a model output (shown on the model page)

_FONT_DIR = Path(matplotlib.get_data_path()) / "fonts" / "ttf"


@functools.lru_cache(maxsize=16)
def _font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont:
    """DejaVu Sans (shipped with matplotlib, so pages are the same on every machine) at ``size`` pixels."""
    return ImageFont.truetype(str(_FONT_DIR / ("DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf")), size)


@dataclass(frozen=True)
class TextItem:
    """One line of text: top-left ``(x, y)`` in pixels (``anchor="ra"``: ``x`` is the right end)."""

    text: str
    x: int
    y: int
    size: int = _TEXT
    bold: bool = False
    colour: tuple[int, int, int] = (0, 0, 0)
    anchor: str = "la"


@dataclass(frozen=True)
class Panel:
    """A pre-rendered panel (``key`` of a map, a plot or ``segment_table``) scaled into the square ``box``.

    ``box`` is ``(x, y, side)`` in pixels, top-left corner.
    """

    key: str
    title: str
    box: tuple[int, int, int]


@dataclass(frozen=True)
class ScreenPage:
    """The layout of one page: its number (1-based), title, panels, table bands and every text drawn."""

    number: int
    title: str
    panels: tuple[Panel, ...]
    texts: tuple[TextItem, ...]
    bands: tuple[tuple[int, int, int, int], ...] = field(default=())  # shaded rows (x0, y0, x1, y1)

    @property
    def strings(self) -> list[str]:
        """Every text of the page, top to bottom as planned (panel titles are in the panels' pixels)."""
        return [t.text for t in self.texts]


def screen_key(number: int) -> str:
    """Key (SOP Instance UID input and file-name stem) of page ``number`` (1-based)."""
    return f"results_screen_{number}"


# --------------------------------------------------------------------------- identification


def _person_name(value: object) -> str:
    """DICOM PN ``FAMILY^GIVEN^MIDDLE^PREFIX^SUFFIX`` as ``FAMILY, GIVEN MIDDLE``."""
    parts = [p.strip() for p in str(value or "").split("=")[0].split("^")]
    family, given = (parts + ["", ""])[:2]
    rest = " ".join(p for p in [given, *parts[2:3]] if p)
    return f"{family}, {rest}" if family and rest else family or rest or "(no name)"


def _date(value: object) -> str:
    """DICOM DA ``YYYYMMDD`` as ``YYYY-MM-DD`` (other text as is; empty as "-")."""
    text = str(value or "").strip()
    return f"{text[:4]}-{text[4:6]}-{text[6:8]}" if re.fullmatch(r"\d{8}", text) else (text or "-")


def identification_lines(ref: Dataset, content: ReportContent) -> tuple[str, str, str]:
    """The header's lines: patient (name, ID, birth date, sex); study (accession, date, description);
    the examination (``content.description``)."""
    sex = str(getattr(ref, "PatientSex", "") or "").strip()
    patient = (f"{_person_name(getattr(ref, 'PatientName', ''))}    ID {getattr(ref, 'PatientID', '') or '-'}    "
               f"born {_date(getattr(ref, 'PatientBirthDate', ''))}" + (f" ({sex})" if sex else ""))
    study = [f"Accession {getattr(ref, 'AccessionNumber', '') or '-'}", f"study date {_date(getattr(ref, 'StudyDate', ''))}"]
    description = str(getattr(ref, "StudyDescription", "") or "").strip()
    if description:
        study.append(description)
    return patient, "    ".join(study), content.description


# --------------------------------------------------------------------------- global results table


def _is_model_group(group: MeasurementGroup) -> bool:
    return any(m.quantity == _MODEL_QUANTITY for m in group.measurements) or group.explanation_image is not None


def _site_suffix(site: str) -> str:
    """What a row label adds for its site: the territory name, nothing for the whole ventricle."""
    if site.startswith("territory_"):
        return " " + site.removeprefix("territory_").upper().replace("LCX", "LCx")
    return ""


def _row_label(short_label: str, unit: str) -> str:
    """A quantity's short label on one line, without a last line that only repeats the unit (it has its column)."""
    lines = [line.strip() for line in short_label.split("\n")]
    if len(lines) > 1 and lines[-1] == display_unit(unit):
        lines = lines[:-1]
    return " ".join(lines)


def global_matrix(content: ReportContent, templates: Templates) -> tuple[list[str], list[list[str]]]:
    """The global (non-segment, non-model) measurements as a table: head and rows.

    Columns: label (quantity short label and territory), one column per state in order of
    appearance (the study-level column, state None, first), unit. Rows: one per (site,
    quantity), study-level rows first, then in content order. Values by
    :func:`node.results.tables.format_value` with the quantity's decimals.
    """
    states: list[str | None] = []
    rows: dict[tuple[str, str], dict[str | None, str]] = {}
    units: dict[tuple[str, str], str] = {}
    labels: dict[tuple[str, str], str] = {}
    study_level: set[tuple[str, str]] = set()
    for group in content.groups:
        if segment_of(group) is not None or _is_model_group(group):
            continue
        for m in group.measurements:
            quantity = templates.quantity(m.quantity, content.pipeline)
            key = (group.site, m.quantity)
            if group.state not in states:
                states.append(group.state)
            rows.setdefault(key, {})[group.state] = format_value(m.value, quantity.decimals)
            units[key] = display_unit(m.unit)
            labels[key] = _row_label(quantity.short_label, m.unit) + _site_suffix(group.site)
            if group.state is None:
                study_level.add(key)
    states.sort(key=lambda s: s is not None)
    order = sorted(rows, key=lambda k: k not in study_level)  # stable: content order within each part
    head = ["", *("Study" if s is None else templates.state_short_label(s) for s in states), ""]
    table = [[labels[k], *(rows[k].get(s, "") for s in states), units[k]] for k in order]
    return head, table


def _finding_lines(content: ReportContent, templates: Templates) -> list[str]:
    """Every coded finding outside the segment table and the model page, as ``label: value``."""
    lines = []
    for group in content.groups:
        if segment_of(group) is not None or _is_model_group(group):
            continue
        for e in group.evaluations:
            lines.append(f"{group.label}: {templates.evaluation_value_label(e.value)}")
    return lines


# --------------------------------------------------------------------------- layout


def _header(page_title: str, number: int, pages: int, identification: tuple[str, str, str]) -> list[TextItem]:
    width = SCREEN_SIZE[0]
    return [
        TextItem(identification[0], _MARGIN, 8, 26, bold=True),
        TextItem(identification[1], _MARGIN, 42, 18),
        TextItem(identification[2], _MARGIN, 67, 17, colour=(40, 40, 40)),
        TextItem(SCREEN_BANNER, width - _MARGIN, 8, 24, bold=True, colour=_RED, anchor="ra"),
        TextItem(f"{page_title}  (page {number} of {pages})", width - _MARGIN, 40, 20, bold=True, anchor="ra"),
        TextItem(node.RESEARCH_USE_NOTICE, width - _MARGIN, 69, 13, colour=_GREY, anchor="ra"),
    ]


def _footer(algorithms: Sequence[Algorithm]) -> list[TextItem]:
    who = "; ".join(f"{a.name} {a.version}" for a in algorithms)
    text = f"CardioNode {node.__version__}. Algorithms: {who}"
    lines = wrap_text(text, _font(13), SCREEN_SIZE[0] - 2 * _MARGIN - 560)
    y = SCREEN_SIZE[1] - _FOOTER + 6
    return [TextItem(lines[0] + (" \u2026" if len(lines) > 1 else ""), _MARGIN, y, 13, colour=_GREY),
            TextItem(RESEARCH_LABEL, SCREEN_SIZE[0] - _MARGIN, y - 2, 15, bold=True, colour=_RED, anchor="ra")]


@dataclass
class _Column:
    """A column of text that fills downward from ``y`` to ``bottom``; lines that do not fit go to ``overflow``."""

    x: int
    y: int
    width: int
    bottom: int
    texts: list[TextItem] = field(default_factory=list)
    bands: list[tuple[int, int, int, int]] = field(default_factory=list)
    overflow: list[str] = field(default_factory=list)

    def heading(self, text: str) -> bool:
        if self.y + _LINE + 8 > self.bottom:
            return False
        self.y += 6
        self.texts.append(TextItem(text, self.x, self.y, 19, bold=True))
        self.y += _LINE + 4
        return True

    def paragraph(self, text: str, size: int = _TEXT, colour: tuple[int, int, int] = (0, 0, 0), bold: bool = False) -> None:
        """``text`` wrapped to the column; the whole text goes to ``overflow`` when it does not fit (or once anything has)."""
        lines = wrap_text(text, _font(size, bold), self.width)
        if self.overflow or self.y + len(lines) * (_LINE - 2) > self.bottom:
            self.overflow.append(text)
            return
        for line in lines:
            self.texts.append(TextItem(line, self.x, self.y, size, bold=bold, colour=colour))
            self.y += _LINE - 2

    def section(self, title: str, lines: Sequence[str], size: int = _TEXT,
                colour: tuple[int, int, int] = (0, 0, 0)) -> None:
        """A heading and its lines (all to ``overflow`` when not even the heading fits)."""
        if not lines:
            return
        if self.overflow or not self.heading(title):
            self.overflow.extend(lines)
            return
        for line in lines:
            self.paragraph(line, size, colour)

    def model_output(self, group: MeasurementGroup, content: ReportContent, templates: Templates) -> None:
        """What a model predicts (bold), then its probability, threshold and verdict on one line."""
        self.paragraph(group.label, bold=True)
        self.paragraph(_model_summary(group, content, templates))
        self.y += 4

    def table(self, head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[Sequence[str]]:
        """Draw the table (label left, values right-aligned, unit left); return the rows that did not fit."""
        n_values = len(head) - 2
        value_width = 76
        unit_width = 10 + max((round(_font(_TEXT - 2).getlength(row[-1])) for row in rows), default=0)
        label_width = self.width - n_values * value_width - unit_width
        edges = [self.x + label_width + (k + 1) * value_width for k in range(n_values)]
        for k, text in enumerate(head[1:-1]):
            self.texts.append(TextItem(text, edges[k] - 4, self.y, _TEXT, bold=True, anchor="ra"))
        self.y += _LINE + 2
        for i, row in enumerate(rows):
            if self.y + _LINE > self.bottom:
                return list(rows[i:])
            if i % 2 == 0:
                self.bands.append((self.x - 4, self.y - 2, self.x + self.width, self.y + _LINE - 2))
            label = row[0]
            while _font(_TEXT).getlength(label) > label_width - 8 and len(label) > 4:
                label = label[:-2] + "\u2026" if not label.endswith("\u2026") else label[:-2] + "\u2026"
            self.texts.append(TextItem(label, self.x, self.y, _TEXT))
            for k, value in enumerate(row[1:-1]):
                if value:
                    self.texts.append(TextItem(value, edges[k] - 4, self.y, _TEXT, bold=True, anchor="ra"))
            if row[-1]:
                self.texts.append(TextItem(row[-1], self.x + label_width + n_values * value_width + 6, self.y, _TEXT - 2,
                                           colour=_GREY))
            self.y += _LINE
        return []


def _threshold(group: MeasurementGroup) -> float | None:
    """The decision threshold of a model output, from ``threshold=`` in its algorithm's parameters."""
    for parameter in group.algorithm.parameters:
        name, _, value = parameter.partition("=")
        if name.strip() == "threshold":
            try:
                return float(value.split()[0])
            except (ValueError, IndexError):
                return None
    return None


def _model_summary(group: MeasurementGroup, content: ReportContent, templates: Templates) -> str:
    """A model output in one line: its measurements (the probability with the threshold) and its verdicts."""
    threshold = _threshold(group)
    parts = []
    for m in group.measurements:
        quantity = templates.quantity(m.quantity, content.pipeline)
        value = format_value(m.value, quantity.decimals)
        text = f"{quantity.short_label.replace(chr(10), ' ').lower()} {value} {display_unit(m.unit)}".strip()
        if m.quantity == _MODEL_QUANTITY and threshold is not None:
            text += f" (threshold {format_value(threshold, quantity.decimals)})"
        parts.append(text)
    verdicts = [templates.evaluation_value_label(e.value) for e in group.evaluations]
    return "; ".join(parts) + (f" \u2014 {', '.join(verdicts)}" if verdicts else "")


def _grid_boxes(columns: int, rows: int, side: int, x0: int, y0: int, gap: int = _MARGIN) -> list[tuple[int, int, int]]:
    """Square boxes ``(x, y, side)`` of a ``columns`` x ``rows`` grid, row by row, ``gap`` pixels apart."""
    return [(x0 + c * (side + gap), y0 + r * (side + gap), side) for r in range(rows) for c in range(columns)]


def plan_screen(
    content: ReportContent,
    templates: Templates,
    ref: Dataset,
    panel_titles: Mapping[str, str],
    algorithms: Sequence[Algorithm],
) -> list[ScreenPage]:
    """The pages of the results screen of ``content``.

    ``ref`` is the source dataset the identification comes from; ``panel_titles`` the keys (in
    content order: maps, plots, then ``segment_table`` if rendered) and titles of the panels
    available; ``algorithms`` are named in the footer.
    """
    images = {image.key: image for image in content.images}
    roles = {image.key: image.role for image in content.images}
    plot_roles = {plot.key: plot.role for plot in content.plots}
    heat_maps = [image for image in content.images if image.derivation == "gradcam" and image.key in panel_titles]
    maps = [image for image in content.images if image.derivation != "gradcam" and image.key in panel_titles]
    if any(image.role for image in maps):
        first_row = [i.key for i in maps if i.role == "perfusion"] + [i.key for i in maps if i.role == "perfusion_change"]
        second_row = [i.key for i in maps if i.role == "extent"]
    else:
        first_row, second_row = [i.key for i in maps[:3]], []
    first_row, second_row = first_row[:3], second_row[:3]
    placed = set(first_row) | set(second_row)
    rest: list[str] = [i.key for i in maps if roles[i.key] == "function" and i.key not in placed]
    rest += [k for k in panel_titles if plot_roles.get(k) == "volume_curve"]
    rest += [i.key for i in maps if roles[i.key] == "phase" and i.key not in placed]
    rest += [k for k in panel_titles if plot_roles.get(k) == "phase_histogram"]
    rest += [k for k in panel_titles if k in plot_roles and k not in rest]
    rest += [i.key for i in maps if i.key not in placed and i.key not in rest]
    rest += [k for k in panel_titles if k not in images and k not in plot_roles]  # the segment table
    while len(second_row) < 3 and rest and first_row:
        second_row.append(rest.pop(0))

    # page 1: maps and the results column
    body_top = _HEADER + 6
    bottom = SCREEN_SIZE[1] - _FOOTER - 4
    boxes = _grid_boxes(3, 2, _PANEL_3, _MARGIN, body_top)
    panels1 = [Panel(k, panel_titles[k], boxes[i]) for i, k in enumerate(first_row)]
    panels1 += [Panel(k, panel_titles[k], boxes[3 + i]) for i, k in enumerate(second_row)]
    column = _Column(_TABLE_X, body_top + 4, SCREEN_SIZE[0] - _TABLE_X - _MARGIN, bottom)
    head, rows = global_matrix(content, templates)
    if rows:
        column.heading("Results")
        column.overflow += [" ".join(c for c in row if c) for row in column.table(head, rows)]
    column.section("Findings", _finding_lines(content, templates))

    pages: list[tuple[str, list[Panel], list[TextItem], list[tuple[int, int, int, int]]]] = []
    title1 = "Perfusion" if any(roles.get(k) == "perfusion" for k in first_row) else "Results"
    pages.append((title1, panels1, column.texts, column.bands))

    # grid pages: the remaining panels, four by two
    boxes = _grid_boxes(4, 2, _PANEL_4, _MARGIN, body_top, gap=(SCREEN_SIZE[0] - 2 * _MARGIN - 4 * _PANEL_4) // 3)
    for start in range(0, len(rest), 8):
        keys = rest[start: start + 8]
        kinds = {roles.get(k) for k in keys} | {plot_roles.get(k) for k in keys}
        title = "Function and phase" if kinds & {"function", "phase", "volume_curve", "phase_histogram"} else "Maps and curves"
        pages.append((title, [Panel(k, panel_titles[k], boxes[i]) for i, k in enumerate(keys)], [], []))

    # model page: heat maps with what each model says under them, then the notes
    model_groups = [g for g in content.groups if _is_model_group(g)]
    notes_column = column
    if heat_maps or model_groups:
        shown_maps = heat_maps[:4]
        per_row = max(len(shown_maps), 1)
        side = min(560, (SCREEN_SIZE[0] - 2 * _MARGIN - (per_row - 1) * 40) // per_row)
        texts: list[TextItem] = []
        panels: list[Panel] = []
        explained: set[int] = set()
        text_bottom = body_top
        for i, image in enumerate(shown_maps):
            x = _MARGIN + i * (side + 40)
            panels.append(Panel(image.key, panel_titles[image.key], (x, body_top, side)))
            below = _Column(x, body_top + side + 8, side, bottom)
            for g_index, group in enumerate(model_groups):
                if group.explanation_image == image.key:
                    explained.add(g_index)
                    below.model_output(group, content, templates)
            texts += below.texts
            text_bottom = max(text_bottom, below.y, body_top + side + 8)
        right = _MARGIN + len(shown_maps) * (side + 40)
        if SCREEN_SIZE[0] - _MARGIN - right >= 480:  # room beside the heat maps
            notes_column = _Column(right, body_top + 4, SCREEN_SIZE[0] - _MARGIN - right, bottom)
        else:
            notes_column = _Column(_MARGIN, text_bottom + 8, SCREEN_SIZE[0] - 2 * _MARGIN, bottom)
        others = [g for k, g in enumerate(model_groups) if k not in explained]
        if others and notes_column.heading("Other model outputs"):
            for group in others:
                notes_column.model_output(group, content, templates)
        elif others:
            notes_column.overflow += [group.label for group in others]
        pages.append(("Model outputs (attention maps, not perfusion)", panels, texts, []))
    notes_column.section("Notes", list(content.notes), _TEXT - 1, _GREY)
    if notes_column is not column:
        pages[-1][2].extend(notes_column.texts)
    overflow = column.overflow + (notes_column.overflow if notes_column is not column else [])

    if overflow:
        halves = [_Column(_MARGIN + k * SCREEN_SIZE[0] // 2, body_top + 4, SCREEN_SIZE[0] // 2 - 2 * _MARGIN, bottom)
                  for k in (0, 1)]
        halves[0].heading("Further results, findings and notes")
        for line in overflow:
            (halves[0] if not halves[0].overflow else halves[1]).paragraph(line)
        if halves[0].overflow:
            halves[1].overflow, pending = [], halves[0].overflow
            for line in pending:
                halves[1].paragraph(line)
        pages.append(("Further results", [], halves[0].texts + halves[1].texts, []))

    total = len(pages)
    identification = identification_lines(ref, content)
    return [
        ScreenPage(number=n, title=title, panels=tuple(panels),
                   texts=tuple(_header(title, n, total, identification) + texts + _footer(algorithms)),
                   bands=tuple(bands))
        for n, (title, panels, texts, bands) in enumerate(pages, start=1)
    ]


def render_screen_page(page: ScreenPage, panels: Mapping[str, np.ndarray]) -> np.ndarray:
    """Draw ``page`` with the pre-rendered ``panels`` (key -> RGB ``uint8`` ``[rows, columns, 3]``).

    Returns RGB ``uint8`` ``[1080, 1920, 3]``. Deterministic: same layout and panels, same pixels.
    """
    canvas = Image.new("RGB", SCREEN_SIZE, "white")
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((0, 0, SCREEN_SIZE[0], _HEADER - 4), fill=(246, 246, 246))
    draw.line((0, _HEADER - 4, SCREEN_SIZE[0], _HEADER - 4), fill=(160, 160, 160), width=2)
    draw.line((0, SCREEN_SIZE[1] - _FOOTER, SCREEN_SIZE[0], SCREEN_SIZE[1] - _FOOTER), fill=(200, 200, 200), width=1)
    for band in page.bands:
        draw.rectangle(band, fill=_BAND)
    for panel in page.panels:
        x, y, side = panel.box
        tile = Image.fromarray(np.ascontiguousarray(panels[panel.key]), mode="RGB")
        scale = side / max(tile.size)
        size = (round(tile.width * scale), round(tile.height * scale))
        canvas.paste(tile.resize(size, Image.Resampling.BILINEAR), (x, y))
        draw.rectangle((x - 1, y - 1, x + size[0], y + size[1]), outline=(210, 210, 210))
    for item in page.texts:
        draw.text((item.x, item.y), item.text, fill=item.colour, font=_font(item.size, item.bold),
                  anchor=item.anchor)
    return np.asarray(canvas, dtype=np.uint8)
