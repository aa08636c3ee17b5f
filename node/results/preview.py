"""Preview of the result objects without a PACS (``cardionode process FOLDER --out DIR``).

Writes, into ``out_dir``:

* every DICOM object: ``sr.dcm``, ``sc_<image or plot key>.dcm``, ``sc_segment_table.dcm``,
  ``pm_<map key>.dcm``, ``screen.dcm``, ``summary_pdf.dcm`` (names from
  :func:`node.results.outputs.output_names`);
* the pixels of every SC as ``<key>.png`` (results-screen pages as ``results_screen_<page>.png``), the middle slice of each parametric map as
  ``pm_<map key>.png`` (greyscale over its value range, enlarged to at least 256 pixels) and each result-screen frame as
  ``screen_<n>.png``;
* the PDF summary as ``summary.pdf``;
* an HTML rendering of the SR as ``report.html``: DCMTK ``dsr2html`` when it is
  installed, else a built-in rendering of the content tree (concept name,
  value and unit on each line).

File names come from ``dicom_templates/pipelines.toml`` where they are per pipeline.
"""

from __future__ import annotations

import html
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom import Dataset

import node
from node.results.content import ReportContent
from node.results.outputs import output_names
from node.results.pdf import ENCAPSULATED_PDF
from node.results.pm import PARAMETRIC_MAP
from node.results.sc import MULTIFRAME_TRUE_COLOR_SC, SECONDARY_CAPTURE
from node.results.sr import COMPREHENSIVE_3D_SR, ENHANCED_SR
from node.results.templates import Templates, load_templates

__all__ = ["write_preview", "sr_to_html"]


def _rgb_frames(ds: Dataset) -> np.ndarray:
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    data = np.frombuffer(bytes(ds.PixelData), dtype=np.uint8)
    return data[: frames * ds.Rows * ds.Columns * 3].reshape(frames, ds.Rows, ds.Columns, 3)


def _middle_slice_grey(ds: Dataset) -> np.ndarray:
    """The middle frame of a float Parametric Map as ``uint8`` greyscale over the map's value range."""
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    data = np.frombuffer(bytes(ds.FloatPixelData), dtype="<f4").reshape(frames, ds.Rows, ds.Columns)
    frame = data[frames // 2].astype(float)
    lo, hi = float(data.min()), float(data.max())
    scaled = (frame - lo) / (hi - lo) if hi > lo else np.zeros_like(frame)
    return np.round(255.0 * scaled).astype(np.uint8)


def _save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def write_preview(
    datasets: Sequence[Dataset], content: ReportContent, out_dir: Path, templates: Templates | None = None
) -> list[Path]:
    """Write the DICOM objects and their PNG/PDF/HTML renderings to ``out_dir``; return the paths written.

    ``datasets`` is the list :func:`node.results.build_outputs` returned for ``content``;
    ``templates`` the ones it used (None: the package's), for the file names.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = (templates or load_templates()).pipeline(content.pipeline)
    written: list[Path] = []
    for ds, name in zip(datasets, output_names(content, datasets)):
        sop_class = str(ds.SOPClassUID)
        if sop_class in (COMPREHENSIVE_3D_SR, ENHANCED_SR):
            sr_path = _save(ds, out_dir / str(names.get("sr_file", "sr.dcm")))
            written.append(sr_path)
            html_path = out_dir / str(names.get("html_file", "report.html"))
            html_path.write_text(sr_to_html(ds, sr_path), encoding="utf-8")
            written.append(html_path)
        elif sop_class == SECONDARY_CAPTURE:
            written.append(_save(ds, out_dir / f"{name}.dcm"))
            png = out_dir / f"{name.removeprefix('sc_')}.png"
            Image.fromarray(_rgb_frames(ds)[0], mode="RGB").save(png)
            written.append(png)
        elif sop_class == PARAMETRIC_MAP:
            written.append(_save(ds, out_dir / f"{name}.dcm"))
            png = out_dir / f"{name}.png"
            grey = Image.fromarray(_middle_slice_grey(ds), mode="L")
            scale = max(1, -(-256 // max(grey.size)))  # at least 256 pixels on the longer side
            grey.resize((grey.width * scale, grey.height * scale), Image.Resampling.NEAREST).save(png)
            written.append(png)
        elif sop_class == MULTIFRAME_TRUE_COLOR_SC:
            written.append(_save(ds, out_dir / "screen.dcm"))
            for n, frame in enumerate(_rgb_frames(ds), start=1):
                png = out_dir / f"screen_{n}.png"
                Image.fromarray(frame, mode="RGB").save(png)
                written.append(png)
        elif sop_class == ENCAPSULATED_PDF:
            written.append(_save(ds, out_dir / "summary_pdf.dcm"))
            pdf = out_dir / str(names.get("pdf_file", "summary.pdf"))
            pdf.write_bytes(bytes(ds.EncapsulatedDocument)[: int(ds.EncapsulatedDocumentLength)])
            written.append(pdf)
        else:
            written.append(_save(ds, out_dir / f"{ds.SOPInstanceUID}.dcm"))
    return written


def sr_to_html(sr: Dataset, path: Path | None = None) -> str:
    """HTML rendering of an SR: DCMTK ``dsr2html`` if installed, else the built-in rendering."""
    dsr2html = shutil.which("dsr2html")
    if dsr2html is not None:
        with tempfile.TemporaryDirectory() as tmp:
            source = path
            if source is None:
                source = Path(tmp) / "sr.dcm"
                sr.save_as(source, enforce_file_format=True)
            target = Path(tmp) / "sr.html"
            result = subprocess.run([dsr2html, str(source), str(target)], capture_output=True, timeout=60)
            if result.returncode == 0 and target.exists():
                return target.read_text(encoding="utf-8", errors="replace")
    return builtin_sr_html(sr)


def _item_text(item: Dataset) -> str:
    name = item.ConceptNameCodeSequence[0].CodeMeaning if "ConceptNameCodeSequence" in item else ""
    vt = item.ValueType
    if vt == "NUM":
        mv = item.MeasuredValueSequence[0] if item.get("MeasuredValueSequence") else None
        value = f"{mv.NumericValue} {mv.MeasurementUnitsCodeSequence[0].CodeValue}" if mv else "(no value)"
    elif vt == "CODE":
        value = item.ConceptCodeSequence[0].CodeMeaning
    elif vt == "TEXT":
        value = item.TextValue
    elif vt == "UIDREF":
        value = item.UID
    elif vt == "IMAGE":
        ref = item.ReferencedSOPSequence[0]
        value = f"image {ref.ReferencedSOPInstanceUID}"
    elif vt == "CONTAINER":
        value = ""
    else:
        value = f"({vt})"
    return f"<b>{html.escape(str(name))}</b>" + (f": {html.escape(str(value))}" if value else "")


def _tree(items: Sequence[Dataset]) -> str:
    parts = ["<ul>"]
    for item in items:
        parts.append(f"<li>{_item_text(item)}")
        if "ContentSequence" in item:
            parts.append(_tree(item.ContentSequence))
        parts.append("</li>")
    parts.append("</ul>")
    return "".join(parts)


def builtin_sr_html(sr: Dataset) -> str:
    """A self-contained HTML page of the SR content tree: concept name, value and unit per item."""
    title = sr.ConceptNameCodeSequence[0].CodeMeaning if "ConceptNameCodeSequence" in sr else "Structured Report"
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title></head><body>"
        f"<h1>{html.escape(title)}</h1><p><b>{html.escape(node.RESEARCH_USE_NOTICE)}</b></p>"
        f"<p>Verification: {html.escape(str(sr.get('VerificationFlag', '')))}; "
        f"completion: {html.escape(str(sr.get('CompletionFlag', '')))}</p>"
        f"{_tree(sr.ContentSequence)}</body></html>"
    )
