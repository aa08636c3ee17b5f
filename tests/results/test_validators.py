"""Independent validators on every output object: dciodvfy, PixelMed DicomSRValidator, DCMTK dsrdump/dsr2html."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.support.tools import assert_dciodvfy_clean, assert_pixelmed_sr_clean, require_tool


@pytest.mark.parametrize("kind", ["sr", "sc_stress", "sc_rest", "sc_gradcam_cad", "screen", "pdf"])
def test_dciodvfy_reports_no_error(run, kind):
    iod = {"sr": "Comprehensive3DSR", "screen": "MultiframeTrueColorSCImage", "pdf": "EncapsulatedPDF"}.get(kind, "SCImage")
    assert_dciodvfy_clean(run.files[kind], f"{kind} (seed {run.seed})", iod)


# PixelMed DicomSRValidator warnings that are expected, with the reason:
PIXELMED_KNOWN_WARNINGS = {
    # PixelMed 2022's TID 1501 has no generic qualitative-evaluation row, so every coded evaluation
    # (imaging state, perfusion / LV function assessment, AI classification) is "not in template"
    # (reference section 8; Gazelle AIR rule: warnings are acceptable).
    r'CODE \((IMGSTATE|PERFCAT|LVFUNCCAT|AICLASS|DEFECTTYPE|RISKCAT|NORMALITY|DYSSYNCCAT|STUDYIMPR),99CARDIONODE,"[^"]+"\): '
    r"Content Item not in template": "qualitative evaluations",
}


def test_pixelmed_sr_validator_reports_no_error(run):
    assert_pixelmed_sr_clean(run.files["sr"], "the SR", PIXELMED_KNOWN_WARNINGS)


def test_dsrdump_and_dsr2html_show_concept_names_next_to_values(run, tmp_path):
    dsrdump = require_tool("dsrdump")
    dsr2html = require_tool("dsr2html")
    dump = subprocess.run([dsrdump, "-v", "+Pt", str(run.files["sr"])], capture_output=True, text=True, timeout=60)
    assert dump.returncode == 0, dump.stderr
    assert "TID 1500" in dump.stdout and "TID 1501" in dump.stdout
    html_path = tmp_path / "sr.html"
    proc = subprocess.run([dsr2html, str(run.files["sr"]), str(html_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    html = html_path.read_text(errors="replace")
    lvef = next(m.value for g in run.content.groups for m in g.measurements if m.quantity == "lvef")
    pattern = r"Left ventricular Ejection fraction:</b>\s*<br>\s*<span[^>]*>" + re.escape(f"{lvef:g}") + r"\s*%"
    assert re.search(pattern, html), "dsr2html does not show the LVEF concept name next to its value and unit"
    assert re.search(r"Relative tracer uptake, % of maximum:</b>", html)
    assert re.search(r"Finding Site:</b>\s*<br>\s*<span[^>]*>left ventricle mid anterior segment", html) or \
        "left ventricle mid anterior segment" in html
