"""Bull's-eye images, SC attributes, the multi-frame result screen, the PDF summary and the preview."""

from __future__ import annotations

import re
import subprocess

import numpy as np
import pydicom

from node import RESEARCH_USE_NOTICE
from node.quant.segments import DEFAULT_GRID
from node.results import write_preview
from node.results.content import MapImage
from node.results.render import render_bullseye, segment_label_positions
from node.results.tables import format_value
from node.results.templates import load_templates
from tests.support.tools import require_tool


def test_bullseye_orientation_anterior_top_septum_left():
    ids = DEFAULT_GRID.segment_ids()
    values = np.where(np.isin(ids, (1, 7, 13)), 100.0, 0.0)  # anterior wall only
    rgb = render_bullseye(MapImage("t", "test", values, "%", (0.0, 100.0), colormap="gray")).astype(float)
    bright = rgb.mean(axis=2)
    # disc centre ~ (0.04 + 0.37) * 512 from the left, (1 - 0.12 - 0.37) * 512 from the top
    cx, cy, r = int(0.41 * 512), int(0.51 * 512), int(0.37 * 512 / 1.15)
    top = bright[cy - int(0.85 * r) - 3: cy - int(0.85 * r) + 3, cx + 20: cx + 26].mean()
    bottom = bright[cy + int(0.85 * r) - 3: cy + int(0.85 * r) + 3, cx + 20: cx + 26].mean()
    assert top > 200 and bottom < 60, (top, bottom)
    pos = segment_label_positions()
    assert pos[1][1] > 0.5 and abs(pos[1][0]) < 1e-9  # segment 1 (basal anterior) at the top
    assert pos[2][0] < 0 and pos[3][0] < 0 and pos[14][0] < 0  # septal segments on the viewer's left
    assert pos[5][0] > 0 and pos[6][0] > 0 and pos[16][0] > 0  # lateral on the right
    assert pos[4][1] < -0.5  # inferior at the bottom


def test_sc_attributes(run):
    for key in ("sc_stress", "sc_rest", "sc_gradcam_cad"):
        ds = pydicom.dcmread(run.files[key])
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
        assert (ds.PhotometricInterpretation, ds.BitsAllocated, ds.SamplesPerPixel) == ("RGB", 8, 3)
        assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert (ds.ConversionType, ds.BurnedInAnnotation, ds.BodyPartExamined) == ("WSD", "YES", "HEART")
        assert "PatientOrientation" in ds and not ds.PatientOrientation
        assert ds.StudyInstanceUID == run.sources[0].StudyInstanceUID and ds.SeriesNumber >= 900
        assert {s.ReferencedSOPInstanceUID for s in ds.SourceImageSequence} == {s.sop_instance_uid for s in run.content.sources}
        assert all(s.PurposeOfReferenceCodeSequence[0].CodeValue == "121322" for s in ds.SourceImageSequence)
        image = next(i for i in run.content.images if f"sc_{i.key}" == key)
        assert image.algorithm.name in ds.DerivationDescription
        expected = "130403" if image.derivation == "gradcam" else "113093"
        assert ds.DerivationCodeSequence[0].CodeValue == expected
        assert ds.SeriesDescription.startswith(("AI", "CardioNode")) and "research use" in ds.SeriesDescription
    screen = pydicom.dcmread(run.files["screen"])
    assert screen.NumberOfFrames == len(run.content.images) + 1 and screen.BurnedInAnnotation == "YES"
    assert screen.FrameIncrementPointer == 0x00182002 and len(screen.FrameLabelVector) == screen.NumberOfFrames


def test_pdf_landscape_pages_with_table_values_and_disclaimer(run, tmp_path):
    pdftotext = require_tool("pdftotext")
    pdftoppm = require_tool("pdftoppm")
    ds = pydicom.dcmread(run.files["pdf"])
    assert ds.MIMETypeOfEncapsulatedDocument == "application/pdf" and ds.BurnedInAnnotation == "YES"
    pdf = tmp_path / "summary.pdf"
    pdf.write_bytes(bytes(ds.EncapsulatedDocument)[: ds.EncapsulatedDocumentLength])
    info = subprocess.run(["pdfinfo", str(pdf)], capture_output=True, text=True, timeout=60).stdout
    assert re.search(r"^Page size:\s+841\.89 x 595\.\d+ pts \(A4\)", info, re.M), info  # as many pages as needed
    text = subprocess.run([pdftotext, "-layout", str(pdf), "-"], capture_output=True, text=True, timeout=60).stdout
    flat = " ".join(text.split())
    assert " ".join(RESEARCH_USE_NOTICE.split()) in flat
    templates = load_templates()
    for group in run.content.groups:
        if group.site.startswith("aha_") and group.state in ("stress", "rest"):
            value = next(m.value for m in group.measurements if m.quantity == "relative_uptake")
            shown = format_value(value, templates.quantity("relative_uptake").decimals)  # the tables' one rule
            assert re.search(rf"(?<![\d.]){re.escape(shown)}(?![\d])", text), f"segment value {value} of {group.label} missing (seed {run.seed})"
    for algo in run.content.algorithms:
        assert algo.name in flat and algo.version in flat
    assert format_value(58.3, templates.quantity("lvef").decimals) in text and "Left ventricular Ejection fraction" in flat
    proc = subprocess.run([pdftoppm, "-r", "40", "-png", str(pdf), str(tmp_path / "page")], capture_output=True, timeout=60)
    assert proc.returncode == 0 and (tmp_path / "page-1.png").stat().st_size > 1000


def test_preview_writes_dicom_png_pdf_and_html(run, tmp_path):
    written = write_preview(run.outputs, run.content, tmp_path / "out")
    names = {p.name for p in written}
    assert {"sr.dcm", "report.html", "summary.pdf", "summary_pdf.dcm", "screen.dcm"} <= names
    for image in run.content.images:
        assert f"{image.key}.png" in names and f"sc_{image.key}.dcm" in names
    html = (tmp_path / "out" / "report.html").read_text()
    assert re.search(r"Left ventricular Ejection fraction:</b>\s*<br>\s*<span[^>]*>58\.3 %", html)
    assert all(p.exists() and p.stat().st_size > 0 for p in written)


def test_builtin_html_when_dsr2html_is_absent(run):
    from node.results.preview import builtin_sr_html

    html = builtin_sr_html(pydicom.dcmread(run.files["sr"]))
    lvef = next(m.value for g in run.content.groups for m in g.measurements if m.quantity == "lvef")
    assert f"<b>Left ventricular Ejection fraction</b>: {lvef:g} %" in html
    assert "<b>Finding Site</b>: left ventricle mid anterior segment" in html
    assert RESEARCH_USE_NOTICE in html
