"""The node's own outputs read back (``node.results.readback``), for the operator's results view.

On the session's realistic SPECT report (``tests/results/conftest.py``: phantom sources, segment, global
and AI groups, bull's-eyes, a Grad-CAM heat map, results-screen pages, the multi-frame screen and the PDF):

* the SR read back is the content it was written from: every group in the SR's reading order with its
  label, finding, site, state, algorithm, measurements (keys, full values, units) and evaluations; the
  heat map named by its SOP Instance UID; the tables made from it equal those made from the content;
* a coded item the templates do not know is kept, with the SR's own meanings;
* headers name each object's kind by its series; frames are the stored pixels; a MONOCHROME2 image
  is windowed; the results-screen header is painted over and nothing else; the PDF is the document.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian

from node.results.readback import (
    ReadBackError,
    read_content,
    read_document,
    read_frame,
    read_header,
    read_report,
    withhold_screen_identity,
)
from node.results.screen import global_matrix
from node.results.tables import format_value, reading_order, segment_table
from node.results.templates import load_templates


def test_the_sr_reads_back_as_the_content_it_was_written_from(run) -> None:
    templates = load_templates()
    read = read_content(run.files["sr"], templates, run.content.pipeline)
    original = reading_order(run.content)
    assert len(read.content.groups) == len(original)
    sc_uid = {name.removeprefix("sc_"): str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
              for name, path in run.files.items() if name.startswith("sc_")}
    for got, want in zip(read.content.groups, original):
        assert (got.label, got.finding, got.site, got.state) == (want.label, want.finding, want.site, want.state)
        assert got.algorithm.name == want.algorithm.name and got.algorithm.version == want.algorithm.version
        assert got.algorithm.parameters == want.algorithm.parameters
        assert got.measurements == want.measurements  # keys, full values and UCUM units
        assert got.evaluations == want.evaluations
        assert got.explanation_image == (sc_uid[want.explanation_image] if want.explanation_image else None)
    assert read.unknown == ()
    assert any(notice.startswith("Research use only") for notice in read.notices)
    assert read.verification == "UNVERIFIED" and read.completion == "COMPLETE"
    assert segment_table(read.content, templates) == segment_table(run.content, templates)
    assert global_matrix(read.content, templates) == global_matrix(run.content, templates)


def test_an_item_the_templates_do_not_know_is_kept_with_the_srs_meanings(run) -> None:
    ds = pydicom.dcmread(run.files["sr"])
    imaging = next(i for i in ds.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "126010")
    group = imaging.ContentSequence[0]
    num = next(i for i in group.ContentSequence if i.ValueType == "NUM")
    num.ConceptNameCodeSequence[0].CodeValue = "LOCALX1"
    num.ConceptNameCodeSequence[0].CodingSchemeDesignator = "99SITE"
    num.ConceptNameCodeSequence[0].CodeMeaning = "A site's own measure"
    value = float(num.MeasuredValueSequence[0].NumericValue)
    read = read_report(ds, load_templates(), run.content.pipeline)
    label = next(str(i.TextValue) for i in group.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "112039")
    (unknown,) = read.unknown
    assert (unknown.group, unknown.concept) == (label, "A site's own measure")
    assert unknown.value == format_value(value) and unknown.unit == str(num.MeasuredValueSequence[0]
                                                                        .MeasurementUnitsCodeSequence[0].CodeValue)
    with pytest.raises(ReadBackError):
        read_report(pydicom.dcmread(run.files["pdf"]), load_templates(), run.content.pipeline)


def test_headers_name_each_objects_kind_and_frames_are_the_stored_pixels(run) -> None:
    templates = load_templates()
    kinds = {}
    for name, path in run.files.items():
        header = read_header(path, templates)
        kinds[name] = header.kind
        assert header.sop_instance_uid == str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        assert "Research use only" not in header.title
    assert kinds["sr"] == "sr" and kinds["pdf"] == "pdf" and kinds["screen"] == "mf_screen"
    assert kinds["sc_stress"] == "sc_map" and kinds["sc_gradcam_cad"] == "sc_heatmap"
    assert [kinds[n] for n in run.files if n.startswith("results_screen_")] and all(
        kinds[n] == "sc_screen" for n in run.files if n.startswith("results_screen_"))
    stress = read_header(run.files["sc_stress"], templates)
    assert (stress.title, stress.frames, stress.rows, stress.columns) == ("Stress perfusion", 1, 512, 512)
    assert not stress.identified and read_header(run.files["results_screen_1"], templates).identified
    assert read_header(run.files["pdf"], templates).identified

    assert np.array_equal(read_frame(run.files["sc_stress"], 1), pydicom.dcmread(run.files["sc_stress"]).pixel_array)
    screen = read_header(run.files["screen"], templates)
    assert screen.frames > 1 and len(screen.frame_labels) == screen.frames
    stored = pydicom.dcmread(run.files["screen"]).pixel_array
    assert np.array_equal(read_frame(run.files["screen"], screen.frames), stored[-1])
    for bad in (0, screen.frames + 1):
        with pytest.raises(ReadBackError):
            read_frame(run.files["screen"], bad)
    with pytest.raises(ReadBackError):
        read_frame(run.files["sr"], 1)


def test_a_monochrome_image_is_windowed(run, tmp_path: Path) -> None:
    ds = pydicom.dcmread(run.files["sc_stress"])
    mono = copy.deepcopy(ds)
    ramp = np.tile(np.arange(0, 1000, 10, dtype=np.uint16), (20, 1))  # 0..990
    mono.PhotometricInterpretation, mono.SamplesPerPixel = "MONOCHROME2", 1
    mono.BitsAllocated, mono.BitsStored, mono.HighBit, mono.PixelRepresentation = 16, 16, 15, 0
    mono.Rows, mono.Columns = ramp.shape
    del mono.PlanarConfiguration
    mono.WindowCenter, mono.WindowWidth = 500, 200  # 400..600 shown
    mono.PixelData = ramp.tobytes()
    mono.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = tmp_path / "mono.dcm"
    mono.save_as(path, enforce_file_format=True)
    grey = read_frame(path, 1)
    assert grey.shape == ramp.shape and grey.dtype == np.uint8
    assert (grey[ramp <= 390] == 0).all() and (grey[ramp >= 610] == 255).all()
    inside = grey[0, (ramp[0] > 410) & (ramp[0] < 590)]
    assert (np.diff(inside.astype(int)) > 0).all()  # rising inside the window


def test_the_screen_header_is_painted_over_and_nothing_else(run) -> None:
    page = read_frame(run.files["results_screen_1"], 1)
    redacted = withhold_screen_identity(page)
    line = int(np.flatnonzero(np.all(page[:200] == (160, 160, 160), axis=(1, 2)))[0])
    assert np.array_equal(redacted[line:], page[line:])
    left = page.shape[1] // 2
    assert np.all(page[:line, :left] == 0, axis=2).any()  # the identification, in black
    assert not np.all(redacted[:line, :left] == 0, axis=2).any()
    with pytest.raises(ReadBackError):
        withhold_screen_identity(read_frame(run.files["sc_stress"], 1))  # no header: refused, never shown as is


def test_the_pdf_is_the_encapsulated_document(run) -> None:
    document = read_document(run.files["pdf"])
    stored = pydicom.dcmread(run.files["pdf"])
    assert document.startswith(b"%PDF-") and document.rstrip().endswith(b"%%EOF")
    assert len(document) == int(stored.EncapsulatedDocumentLength)
    with pytest.raises(ReadBackError):
        read_document(run.files["sr"])
