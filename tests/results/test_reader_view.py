"""What a reader sees (issue 13 acceptance): the PDF page by page, the SR as ``dsr2html`` renders it and
the results screen, kept as PNG pictures and checked by text extraction.

Two studies: a SPECT phantom (RCA reversible defect) through the SPECT pipeline with its shipped models
(``analyse``, ``predict``, ``report``), and the PET MBF report of :mod:`tests.support.pet_report`. The
expected values come from the SR dataset itself: every NUM of every measurement group, printed by the
display rule (:func:`node.results.tables.format_value` with the quantity's decimals), and every coded
evaluation (AI verdicts included) must be on the PDF; the patient's name, ID and accession number, the
research-use statement and "Page X of Y" on every PDF page; "not for diagnostic use" in the dsr2html text;
the headline results (SPECT: SSS and LVEF; PET: global MBF and MFR) within its first fifth.

Pictures: every PDF page (``pdftoppm -png``, 100 dpi), the first screens of the SR rendering and every
results-screen page go to ``$CARDIONODE_TEST_ARTIFACTS/reader_view/<study>/`` when that variable is set,
else to pytest's temporary directory (the path is printed). Debian chromium is not installed on the test
machines, so the SR's HTML is not screenshot by a browser: its text is laid out (block elements as lines,
``<b>`` and headings bold) and drawn with PIL, a textual rendering of the same HTML.
"""

from __future__ import annotations

import html
import os
import random
import re
import subprocess
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import matplotlib
import numpy as np
import pydicom
import pytest
from PIL import Image, ImageDraw, ImageFont
from pydicom import Dataset

from node.results import build_outputs
from node.results.content import ReportContent
from node.results.outputs import output_names
from node.results.tables import format_value
from node.results.templates import Templates, load_templates
from tests.support.pet_report import pet_report
from tests.support.report import context
from tests.support.tools import require_tool

ARTIFACTS_ENV = "CARDIONODE_TEST_ARTIFACTS"
#: the share of the SR rendering's text lines within which the headline results must appear
FIRST_PART = 0.20
#: (code value, scheme) of concepts whose items are not results: the imaging state qualifier of a group
_NOT_RESULTS = {("IMGSTATE", "99CARDIONODE")}
_CID_3717_SITES = {f"aha_{n}" for n in range(1, 18)}


@dataclass
class ReaderRun:
    study: str
    seed: int
    content: ReportContent
    reference: Dataset  # the source instance whose patient and study modules the outputs copy
    files: dict[str, Path]  # output name -> DICOM file
    pictures: Path  # where the PNG renderings are kept
    pdf_pages: tuple[list[list[str]], list[Path]] | None = None  # made once by _pdf_pages


def _pictures_dir(tmp_path_factory: pytest.TempPathFactory, study: str) -> Path:
    root = os.environ.get(ARTIFACTS_ENV)
    base = Path(root) / "reader_view" if root else tmp_path_factory.mktemp("reader_view")
    directory = base / study
    directory.mkdir(parents=True, exist_ok=True)
    print(f"reader-view pictures of the {study} study: {directory}")
    return directory


def _spect(seed: int, folder: Path) -> tuple[ReportContent, list[Dataset], list[Dataset]]:
    from node.pipelines.spect_mpi import PIPELINE
    from node.synth.spect.phantom import PhantomSpec, make_study, territory_defect
    from node.synth.spect.study import write_study

    spec = PhantomSpec(n_gates=8, defects=(territory_defect("RCA", 0.5, reversible=True),))
    write_study(make_study(spec, np.random.default_rng(seed), orientation="transaxial"), folder, seed=seed)
    instances = [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]
    result = PIPELINE.predict(PIPELINE.analyse(instances))
    content = PIPELINE.report_content(result)
    return content, list(result.source_headers), PIPELINE.report(result, context())


def _pet(seed: int) -> tuple[ReportContent, list[Dataset], list[Dataset]]:
    report = pet_report(seed)
    return report.content, report.sources, build_outputs(report.content, report.sources, context())


@pytest.fixture(scope="module", params=["spect", "pet"])
def reader(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> ReaderRun:
    seed = random.SystemRandom().randrange(2**31)
    print(f"reader-view {request.param} seed: {seed}")
    if request.param == "spect":
        content, sources, outputs = _spect(seed, tmp_path_factory.mktemp("spect_study"))
    else:
        content, sources, outputs = _pet(seed)
    directory = tmp_path_factory.mktemp(f"{request.param}_outputs")
    files = {}
    for ds, name in zip(outputs, output_names(content, outputs)):
        files[name] = directory / f"{name}.dcm"
        ds.save_as(files[name], enforce_file_format=True)
    used = {s.sop_instance_uid for s in content.sources}
    reference = next(ds for ds in sources if str(ds.SOPInstanceUID) in used)
    return ReaderRun(request.param, seed, content, reference, files, _pictures_dir(tmp_path_factory, request.param))


# --------------------------------------------------------------------------- the SR's results


@dataclass(frozen=True)
class Shown:
    """One result of the SR as the PDF must show it."""

    group: str  # tracking identifier
    site: str  # site key
    concept: str  # concept meaning
    texts: frozenset[str]  # the printed forms (several when two quantities share a code)


def _code(item: Dataset, sequence: str) -> tuple[str, str]:
    code = getattr(item, sequence)[0]
    return str(code.CodeValue), str(code.CodingSchemeDesignator)


def _sr_results(sr: Dataset, content: ReportContent, templates: Templates) -> list[Shown]:
    """Every NUM and coded evaluation of every measurement group of ``sr``, with its printed form."""
    decimals: dict[tuple[str, str], set[int | None]] = {}
    for key in templates._raw["concepts"]:
        if key == "units":
            continue
        quantity = templates.quantity(key, content.pipeline)
        decimals.setdefault((quantity.code.value, quantity.code.scheme), set()).add(quantity.decimals)
    labels = {}
    for key in templates._raw["evaluations"]["values"]:
        code = templates.evaluation_value(key)
        labels[(code.value, code.scheme)] = templates.evaluation_value_label(key)
    sites = {}
    for key in [*_CID_3717_SITES, *{g.site for g in content.groups}]:
        code, _ = templates.site(key)
        sites[(code.value, code.scheme)] = key
    measurements = next(i for i in sr.ContentSequence if _code(i, "ConceptNameCodeSequence") == ("126010", "DCM"))
    shown = []
    for group in measurements.ContentSequence:
        items = list(group.ContentSequence)
        label = next(str(i.TextValue) for i in items if _code(i, "ConceptNameCodeSequence") == ("112039", "DCM"))
        site = sites[next(_code(i, "ConceptCodeSequence") for i in items
                          if _code(i, "ConceptNameCodeSequence") == ("363698007", "SCT"))]
        for item in items:
            concept = _code(item, "ConceptNameCodeSequence")
            meaning = str(item.ConceptNameCodeSequence[0].CodeMeaning)
            if item.ValueType == "NUM":
                value = float(item.MeasuredValueSequence[0].NumericValue)
                texts = frozenset(format_value(value, d) for d in decimals[concept])
                shown.append(Shown(label, site, meaning, texts))
            elif item.ValueType == "CODE" and item.RelationshipType == "CONTAINS" and concept not in _NOT_RESULTS \
                    and concept != ("121071", "DCM"):  # row 3b finding type: the group's kind, not a result
                shown.append(Shown(label, site, meaning, frozenset({labels[_code(item, "ConceptCodeSequence")]})))
    return shown


# --------------------------------------------------------------------------- the PDF


def _column_lines(bbox_html: str) -> list[list[str]]:
    """Per page, the text lines of ``pdftotext -bbox`` output in reading order: the left column top to
    bottom, then the right column (the pages have two columns; a word belongs to the column of its start)."""
    pages = []
    for page in re.findall(r"<page width=\"([\d.]+)\"[^>]*>(.*?)</page>", bbox_html, re.S):
        half = float(page[0]) / 2
        words = [(float(x0), float(y0), html.unescape(w)) for x0, y0, w in
                 re.findall(r'<word xMin="([\d.]+)" yMin="([\d.]+)"[^>]*>(.*?)</word>', page[1])]
        lines: list[str] = []
        for column in (0, 1):
            in_column = sorted((y, x, w) for x, y, w in words if (x >= half) == bool(column))
            current: list[tuple[float, str]] = []
            top = None
            for y, x, w in in_column:
                if top is not None and y - top > 2.0:
                    lines.append(" ".join(word for _, word in sorted(current)))
                    current = []
                if not current:
                    top = y
                current.append((x, w))
            if current:
                lines.append(" ".join(word for _, word in sorted(current)))
        pages.append(lines)
    return pages


def _pdf_pages(run: ReaderRun) -> tuple[list[list[str]], list[Path]]:
    """Per page, its text lines in reading order (:func:`_column_lines`); and the PNG of every page (kept)."""
    if run.pdf_pages is not None:
        return run.pdf_pages
    pdftotext = require_tool("pdftotext")
    pdftoppm = require_tool("pdftoppm")
    ds = pydicom.dcmread(run.files["pdf"])
    pdf = run.pictures / "summary.pdf"
    pdf.write_bytes(bytes(ds.EncapsulatedDocument)[: int(ds.EncapsulatedDocumentLength)])
    bbox = subprocess.run([pdftotext, "-bbox", str(pdf), "-"], capture_output=True, text=True, timeout=120,
                          check=True)
    for old in run.pictures.glob("pdf_page-*.png"):
        old.unlink()
    subprocess.run([pdftoppm, "-r", "100", "-png", str(pdf), str(run.pictures / "pdf_page")], check=True, timeout=300)
    run.pdf_pages = _column_lines(bbox.stdout), sorted(run.pictures.glob("pdf_page-*.png"))
    return run.pdf_pages


def _flat(text: str) -> str:
    return " ".join(text.split())


def _has_token(text: str, token: str) -> bool:
    return re.search(rf"(?<![\w.]){re.escape(token)}(?![\w])", text) is not None


def test_pdf_pages_identify_the_patient_and_say_research_use(reader: ReaderRun) -> None:
    pages, pngs = _pdf_pages(reader)
    assert len(pages) == len(pngs) >= 1
    name = reader.reference.PatientName
    parts = [p for p in (name.family_name, name.given_name) if p]
    for number, page in enumerate(pages, start=1):
        flat = _flat(" ".join(page))
        for part in parts:
            assert part in flat, f"page {number}: patient name part {part!r} missing (seed {reader.seed})"
        for keyword in ("PatientID", "AccessionNumber"):
            assert str(reader.reference.get(keyword)) in flat, f"page {number}: {keyword} missing"
        assert "not for diagnostic use" in flat.lower(), f"page {number}: no research-use statement"
        assert f"Page {number} of {len(pages)}" in flat
        with Image.open(pngs[number - 1]) as png:
            assert png.size[0] > png.size[1] > 700  # landscape A4 at 100 dpi


def test_pdf_shows_every_sr_measurement_and_every_ai_verdict(reader: ReaderRun) -> None:
    templates = load_templates()
    sr = pydicom.dcmread(reader.files["sr"])
    results = _sr_results(sr, reader.content, templates)
    assert len(results) >= 17 * 2 and any(r.concept == "AI classification of the finding" for r in results) == (
        reader.study == "spect")
    pages, _ = _pdf_pages(reader)
    text = _flat(" ".join(line for page in pages for line in page))
    # per-segment results: the row of the segment table (one line per row)
    rows: dict[str, list[str]] = {}
    for page in pages:
        for line in page:
            for match in re.finditer(r"(?<![\w.])(\d{1,2}) (?:basal|mid|apical|apex)", line):
                rows.setdefault(f"aha_{match.group(1)}", []).append(line[match.start():])
    # every other result: in a block that starts at its group's label and ends at the next group's label
    labels = sorted({r.group for r in results}, key=len, reverse=True)
    starts = sorted({m.start() for label in labels for m in re.finditer(re.escape(label), text)})
    missing = []
    for result in results:
        if result.site in _CID_3717_SITES and rows.get(result.site) and any(
                _has_token(line, t) for line in rows[result.site] for t in result.texts):
            continue
        blocks = []
        for match in re.finditer(re.escape(result.group), text):
            end = next((s for s in starts if s > match.start() + len(result.group) - 1), len(text))
            blocks.append(text[match.start(): end])
        if not any(_has_token(block, t) for block in blocks for t in result.texts):
            missing.append(f"{result.group}: {result.concept} = {sorted(result.texts)}")
    assert not missing, f"{len(missing)} SR results not on the PDF (seed {reader.seed}):\n" + "\n".join(missing[:20])
    assert "more results in the Structured Report" not in text


def test_pdf_figures_print_their_text_at_7_pt_or_more(reader: ReaderRun) -> None:
    """The figures are rendered at 100 pixels per inch with 6.5 pt as their smallest font
    (:mod:`node.results.render`): printed at no more than 92.8 pixels per inch, that text is 7 pt or more."""
    ds = pydicom.dcmread(reader.files["pdf"])
    pdf = reader.pictures / "summary.pdf"
    pdf.write_bytes(bytes(ds.EncapsulatedDocument)[: int(ds.EncapsulatedDocumentLength)])
    listing = subprocess.run([require_tool("pdfimages"), "-list", str(pdf)], capture_output=True, text=True,
                             timeout=120, check=True).stdout.splitlines()[2:]
    assert len(listing) >= len(reader.content.images) + len(reader.content.plots)
    for line in listing:
        fields = line.split()
        x_ppi, y_ppi = int(fields[12]), int(fields[13])  # rounded by pdfimages
        assert max(x_ppi, y_ppi) - 0.5 <= 100 * 6.5 / 7, line


# --------------------------------------------------------------------------- the SR as dsr2html shows it


class _TextOfHtml(HTMLParser):
    """The text of an HTML page as lines of ``(text, bold)`` runs: block elements and ``<br>`` end a line."""

    _BLOCKS = {"p", "div", "br", "h1", "h2", "h3", "h4", "tr", "hr", "li", "table", "ul", "ol"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[list[tuple[str, bool]]] = [[]]
        self._bold = 0
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("head", "style", "script"):
            self._skip += 1
        if tag in self._BLOCKS and self.lines[-1]:
            self.lines.append([])
        if tag in ("b", "h1", "h2", "h3", "h4"):
            self._bold += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("head", "style", "script"):
            self._skip -= 1
        if tag in ("b", "h1", "h2", "h3", "h4"):
            self._bold -= 1
        if tag in self._BLOCKS and self.lines[-1]:
            self.lines.append([])

    def handle_data(self, data: str) -> None:
        text = " ".join(data.split())
        if text and not self._skip:
            self.lines[-1].append((text, self._bold > 0))

    def text_lines(self) -> list[list[tuple[str, bool]]]:
        return [line for line in self.lines if line]


def _font(bold: bool, size: int) -> ImageFont.FreeTypeFont:
    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name), size)


def _draw_screens(lines: list[list[tuple[str, bool]]], directory: Path, stem: str, screens: int,
                  size: tuple[int, int] = (1280, 1024), font_px: int = 15) -> list[Path]:
    """Draw the first ``screens`` screens of ``lines`` (long lines wrapped) as PNG files."""
    regular, bold = _font(False, font_px), _font(True, font_px)
    height = font_px + 6
    per_screen = (size[1] - 40) // height
    wrapped: list[list[tuple[str, bool]]] = []
    for line in lines:
        current: list[tuple[str, bool]] = []
        width = 0.0
        for text, is_bold in line:
            for word in text.split(" "):
                font = bold if is_bold else regular
                w = font.getlength(word + " ")
                if width + w > size[0] - 40 and current:
                    wrapped.append(current)
                    current, width = [], 0.0
                current.append((word + " ", is_bold))
                width += w
        wrapped.append(current)
    paths = []
    for k in range(min(screens, -(-len(wrapped) // per_screen))):
        image = Image.new("RGB", size, "white")
        draw = ImageDraw.Draw(image)
        for row, line in enumerate(wrapped[k * per_screen: (k + 1) * per_screen]):
            x = 20.0
            for word, is_bold in line:
                font = bold if is_bold else regular
                draw.text((x, 20 + row * height), word, fill="black", font=font)
                x += font.getlength(word)
        path = directory / f"{stem}_{k + 1}.png"
        image.save(path)
        paths.append(path)
    return paths


def test_sr_rendering_says_not_for_diagnostic_use_and_shows_the_summary_first(reader: ReaderRun) -> None:
    dsr2html = require_tool("dsr2html")
    html_path = reader.pictures / "sr.html"
    proc = subprocess.run([dsr2html, str(reader.files["sr"]), str(html_path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    parser = _TextOfHtml()
    parser.feed(html_path.read_text(encoding="latin-1"))
    lines = parser.text_lines()
    plain = ["".join(text + " " for text, _ in line).strip() for line in lines]
    (reader.pictures / "sr.txt").write_text("\n".join(plain) + "\n", encoding="utf-8")
    assert "not for diagnostic use" in html.unescape(" ".join(plain)).lower()
    templates = load_templates()
    keys = ("sss", "lvef") if reader.study == "spect" else ("mbf", "mfr")
    for key in keys:
        meaning = templates.quantity(key, reader.content.pipeline).code.meaning
        first = next((n for n, line in enumerate(plain) if meaning in line), None)
        assert first is not None, f"{meaning!r} not in the SR rendering"
        assert first <= FIRST_PART * len(plain), (
            f"{meaning!r} first at line {first} of {len(plain)} of the dsr2html text (seed {reader.seed})")
    screens = _draw_screens(lines, reader.pictures, "sr_screen", screens=3)
    assert len(screens) == 3 and all(p.stat().st_size > 5000 for p in screens)


# --------------------------------------------------------------------------- the results screen


def test_results_screen_pages_are_kept_as_pictures(reader: ReaderRun) -> None:
    pages = sorted(name for name in reader.files if name.startswith("results_screen"))
    assert pages, f"no results screen among {sorted(reader.files)}"
    for name in pages:
        ds = pydicom.dcmread(reader.files[name])
        rgb = np.frombuffer(bytes(ds.PixelData), dtype=np.uint8).reshape(ds.Rows, ds.Columns, 3)
        assert (ds.Columns, ds.Rows) == (1920, 1080)
        Image.fromarray(rgb, mode="RGB").save(reader.pictures / f"{name}.png")
