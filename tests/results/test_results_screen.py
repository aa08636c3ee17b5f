"""The results screen (:mod:`node.results.screen`): reading-monitor Secondary Captures made by default.

A SPECT study (gated LAD-defect phantom written by ``node.synth``, analysed by the SPECT pipeline
without models, plus one model output with a heat map) and a PET report (the hand-built PET
content of :mod:`tests.support.pet_report`) go through :func:`node.results.build_outputs` with
the default report context. Each page must be a valid SC (dciodvfy), carry the patient and study
identification and the research-use banner (read from the layout model, whose texts are the ones
drawn: the page's pixels are re-drawn from it and compared), and place the panels the content
asks for. The pages are written as PNG under the test's temporary directory (printed) to be
looked at. A normal phantom checks the pale valve-plane rim of the perfusion maps.
"""

from __future__ import annotations

import dataclasses
import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom import Dataset

from node.config import OutputOptions
from node.pipelines.spect_mpi import PIPELINE, report_content
from node.quant.segments import DEFAULT_GRID
from node.results import build_outputs, output_names
from node.results.content import Algorithm, Evaluation, MapImage, Measurement, MeasurementGroup, ReportContent
from node.results.identity import algorithms_of
from node.results.outputs import render_images
from node.results.render import render_bullseye
from node.results.screen import SCREEN_BANNER, SCREEN_SIZE, ScreenPage, global_matrix, plan_screen, render_screen_page
from node.results.tables import format_value
from node.results.templates import load_templates
from node.synth.spect.phantom import PhantomSpec, make_study, territory_defect
from node.synth.spect.study import write_study
from tests.support.pet_report import pet_report
from tests.support.report import context
from tests.support.tools import assert_dciodvfy_clean

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
MODEL = Algorithm(name="cardionode-test-cad", version="9.9.9", parameters=("weights=sha256:00ff", "threshold=0.50"))


@dataclass
class Screen:
    seed: int
    content: ReportContent
    sources: list[Dataset]
    outputs: list[Dataset]
    pages: list[Dataset]  # the results-screen SC instances, in page order
    layout: list[ScreenPage]
    files: dict[str, Path]  # name -> .dcm (every output)
    pngs: list[Path]


def _with_model_output(content: ReportContent) -> ReportContent:
    """``content`` plus one model output explained by a heat map over the stress perfusion map."""
    stress = next(image for image in content.images if image.key == "stress_perfusion")
    heat = MapImage("gradcam_test", "Test model attention", np.clip((100.0 - stress.values) / 60.0, 0, 1), "1",
                    (0.0, 1.0), colormap="inferno", derivation="gradcam", algorithm=MODEL, overlay_on=stress.key)
    group = MeasurementGroup(label="Probability of obstructive CAD (test model)", finding="obstructive_cad", site="heart",
                             state=None, algorithm=MODEL, measurements=(Measurement("probability", 0.734, "1"),),
                             evaluations=(Evaluation("classification", "present"),), explanation_image=heat.key)
    return dataclasses.replace(content, images=(*content.images, heat), groups=(*content.groups, group),
                               algorithms=(*content.algorithms, MODEL))


def _make_screen(content: ReportContent, sources: list[Dataset], seed: int, directory: Path) -> Screen:
    outputs = build_outputs(content, sources, context())  # default context: the screen is on by default
    names = output_names(content, outputs)
    directory.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    for ds, name in zip(outputs, names):
        files[name] = directory / f"{name}.dcm"
        ds.save_as(files[name], enforce_file_format=True)
    pages = [ds for ds, name in zip(outputs, names) if name.startswith("results_screen_")]
    titles = {i.key: i.title for i in content.images} | {p.key: p.title for p in content.plots}
    if "sc_segment_table" in names:
        titles["segment_table"] = "Results per AHA segment"
    used = {str(ds.SOPInstanceUID): ds for ds in sources}
    layout = plan_screen(content, load_templates(), used[content.sources[0].sop_instance_uid], titles,
                         algorithms_of(content))
    pngs = []
    for ds in pages:
        png = directory / f"results_screen_{ds.InstanceNumber}.png"
        Image.fromarray(_pixels(ds)).save(png)
        pngs.append(png)
    print(f"results screen pages (seed {seed}): " + ", ".join(str(p) for p in pngs))
    return Screen(seed, content, sources, outputs, pages, layout, files, pngs)


def _pixels(ds: Dataset) -> np.ndarray:
    return np.frombuffer(bytes(ds.PixelData), dtype=np.uint8).reshape(int(ds.Rows), int(ds.Columns), 3)


def _phantom_datasets(folder: Path, seed: int, defects: tuple = ()) -> list[Dataset]:
    rng = np.random.default_rng(seed)
    write_study(make_study(PhantomSpec(n_gates=8, defects=defects), rng), folder, seed=seed)
    return [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]


@pytest.fixture(scope="module")
def spect(tmp_path_factory) -> Screen:
    seed = random.SystemRandom().randrange(2**31)
    tmp = tmp_path_factory.mktemp("screen_spect")
    datasets = _phantom_datasets(tmp / "study", seed, (territory_defect("LAD", 0.5, reversible=True),))
    result = PIPELINE.analyse(datasets)
    content = _with_model_output(report_content(result))
    return _make_screen(content, list(result.source_headers), seed, tmp / "out")


@pytest.fixture(scope="module")
def pet(tmp_path_factory) -> Screen:
    seed = random.SystemRandom().randrange(2**31)
    report = pet_report(seed)
    roles = {"stress_mbf": "perfusion", "rest_mbf": "perfusion", "mfr": "perfusion_change"}  # as the PET pipeline sets them
    content = dataclasses.replace(report.content, images=tuple(
        dataclasses.replace(image, role=roles.get(image.key)) for image in report.content.images))
    return _make_screen(content, list(report.sources), seed, tmp_path_factory.mktemp("screen_pet"))


def test_the_screen_is_on_by_default():
    assert OutputOptions().results_screen is True
    assert context().results_screen is True


@pytest.mark.parametrize("which", ["spect", "pet"])
def test_pages_are_reading_monitor_secondary_captures_in_their_own_series(which, request):
    screen: Screen = request.getfixturevalue(which)
    assert screen.pages, f"no results screen among {output_names(screen.content, screen.outputs)}"
    assert len(screen.pages) == len(screen.layout)
    for number, ds in enumerate(screen.pages, start=1):
        assert str(ds.SOPClassUID) == SECONDARY_CAPTURE
        assert (ds.Columns, ds.Rows) == SCREEN_SIZE and ds.SamplesPerPixel == 3 and ds.PhotometricInterpretation == "RGB"
        assert int(ds.InstanceNumber) == number and int(ds.SeriesNumber) == 908
        assert ds.BurnedInAnnotation == "YES" and "research use" in ds.SeriesDescription.lower()
        assert "Not for diagnostic use" in ds.ImageComments
        assert ds.StudyInstanceUID == screen.content.study_instance_uid
    assert len({ds.SeriesInstanceUID for ds in screen.pages}) == 1
    other_series = {ds.SeriesInstanceUID for ds in screen.outputs if ds not in screen.pages}
    assert screen.pages[0].SeriesInstanceUID not in other_series


@pytest.mark.parametrize("which", ["spect", "pet"])
def test_dciodvfy_reports_no_error_on_any_page(which, request):
    screen: Screen = request.getfixturevalue(which)
    for ds in screen.pages:
        name = f"results_screen_{ds.InstanceNumber}"
        assert_dciodvfy_clean(screen.files[name], f"{which} {name} (seed {screen.seed})", "SCImage")


@pytest.mark.parametrize("which", ["spect", "pet"])
def test_every_page_identifies_patient_and_study_and_says_research_use_only(which, request):
    screen: Screen = request.getfixturevalue(which)
    ref = screen.sources[0]
    family = str(ref.PatientName).split("^")[0]
    birth = str(ref.PatientBirthDate)
    study_date = str(ref.StudyDate)
    panels = dict(render_images(screen.content))  # deterministic: the same pixels as the SC images
    panels |= {k: _pixels(ds_) for k, ds_ in _sc_pixels(screen).items() if k not in panels}
    for page, ds in zip(screen.layout, screen.pages):
        text = "\n".join(page.strings)
        assert family in text and str(ref.PatientID) in text, text[:300]
        assert f"{birth[:4]}-{birth[4:6]}-{birth[6:]}" in text and f"{study_date[:4]}-{study_date[4:6]}-{study_date[6:]}" in text
        assert f"Accession {ref.AccessionNumber}" in text
        assert SCREEN_BANNER in page.strings and f"(page {page.number} of {len(screen.layout)})" in text
        # the layout is what the pixels show: drawing it again with the same panels gives the same page
        assert np.array_equal(render_screen_page(page, panels), _pixels(ds)), f"page {page.number} differs from its layout"
        header_right = _pixels(ds)[4:36, SCREEN_SIZE[0] - 700:]
        red = (header_right[..., 0] > 140) & (header_right[..., 1] < 60) & (header_right[..., 2] < 60)
        assert red.sum() > 1500, "the research-use banner is not drawn in red at the top right"


def _sc_pixels(screen: Screen) -> dict[str, Dataset]:
    """The single SC images of plots and the segment table, by key (their pixels are the screen's panels)."""
    names = output_names(screen.content, screen.outputs)
    return {name.removeprefix("sc_"): ds for ds, name in zip(screen.outputs, names)
            if name.startswith("sc_") and str(ds.SOPClassUID) == SECONDARY_CAPTURE}


def test_spect_first_page_has_the_three_perfusion_maps_the_extent_maps_and_the_scores(spect):
    first = spect.layout[0]
    keys = [panel.key for panel in first.panels]
    assert keys[:3] == ["stress_perfusion", "rest_perfusion", "defect_difference"], keys
    assert keys[3:5] == ["stress_extent", "rest_extent"], keys
    top = {panel.box[1] for panel in first.panels[:3]}
    assert len(top) == 1 and all(panel.box[2] >= 450 for panel in first.panels), "maps not side by side at a legible size"
    strings = first.strings
    for label in ("Results", "SSS", "SRS", "SDS", "TPD stress", "TPD ischemic", "TID ratio", "EDV", "ESV", "LVEF",
                  "Stress", "Rest"):
        assert label in strings, f"{label!r} missing from page 1: {strings}"
    extent = next(image for image in spect.content.images if image.key == "stress_extent")
    assert extent.blackout is not None and extent.blackout.any(), "the LAD defect is not blacked out on the stress extent map"
    assert "TPD" in extent.title and "normal limits" in extent.subtitle


def test_spect_function_page_has_volume_curve_phase_map_and_histogram(spect):
    keys = {panel.key for page in spect.layout[1:] for panel in page.panels}
    assert {"volume_curve", "phase", "phase_histogram", "thickening", "wall_motion"} <= keys, keys
    phase = next(image for image in spect.content.images if image.key == "phase")
    lo, hi = phase.value_range
    assert hi - lo < 360.0, "the phase map scale is not fitted to the data"
    analysed = (np.arange(DEFAULT_GRID.n_u) + 0.5) / DEFAULT_GRID.n_u <= 0.85  # the phase statistics leave out the basal 15 %
    values = np.asarray(phase.values)[analysed]
    assert np.mean((values >= lo) & (values <= hi)) > 0.97, (lo, hi)


def test_model_page_shows_probability_threshold_and_verdict_under_the_heat_map(spect):
    page = next(p for p in spect.layout if any(panel.key == "gradcam_test" for panel in p.panels))
    assert "Probability of obstructive CAD (test model)" in page.strings
    assert "probability 0.73 (threshold 0.50) \u2014 Present" in page.strings, page.strings
    assert "attention" in page.title


def test_pet_first_page_has_flow_maps_reserve_curves_and_table(pet):
    first = pet.layout[0]
    keys = [panel.key for panel in first.panels]
    assert keys[:3] == ["stress_mbf", "rest_mbf", "mfr"], keys
    assert {"rest_tac", "stress_tac"} <= set(keys), keys
    for label in ("MBF", "MFR", "MBF LAD", "MFR LAD", "Heart rate"):
        assert label in first.strings, f"{label!r} missing: {first.strings}"
    head, rows = global_matrix(pet.content, load_templates())
    assert head[1] == "Study" and {"Stress", "Rest"} <= set(head)
    mbf = next(row for row in rows if row[0] == "MBF")
    assert all(re.fullmatch(r"\d+\.\d\d", cell) for cell in mbf[1:-1] if cell), mbf  # decimals = 2 for mbf


def test_numbers_follow_one_rule_per_quantity(spect):
    """The screen table and the bull's-eye labels use the quantity's decimals from the templates."""
    templates = load_templates()
    head, rows = global_matrix(spect.content, templates)
    by_label = {row[0]: row for row in rows}
    lvef = next(m.value for g in spect.content.groups for m in g.measurements if m.quantity == "lvef")
    assert format_value(lvef, templates.quantity("lvef").decimals) in by_label["LVEF"]
    tid = next(m.value for g in spect.content.groups for m in g.measurements if m.quantity == "tid_ratio")
    assert templates.quantity("tid_ratio").decimals == 2
    assert by_label["TID ratio"][1] == format_value(tid, 2)
    stress = next(image for image in spect.content.images if image.key == "stress_perfusion")
    assert stress.quantity == "relative_uptake" and templates.quantity("relative_uptake").decimals == 0
    one = dataclasses.replace(stress, segment_values=tuple([66.6] * 17))
    assert not np.array_equal(render_bullseye(one, decimals=0), render_bullseye(one, decimals=2))


def test_normal_phantom_rim_is_drawn_pale_not_as_a_basal_defect(tmp_path):
    seed = random.SystemRandom().randrange(2**31)
    result = PIPELINE.analyse(_phantom_datasets(tmp_path / "normal", seed))
    content = report_content(result)
    stress = next(image for image in content.images if image.key == "stress_perfusion")
    rim = stress.muted_rim_rows
    assert 0 < rim <= 6, f"seed {seed}: {rim} rim rows"
    # the normal limits' own mean falls in those rows: the raw map's rim is low in a normal study too
    values = np.asarray(stress.values)
    assert values[-rim:].mean() < values[: DEFAULT_GRID.n_u - rim].mean() - 10, f"seed {seed}"
    pale = render_bullseye(stress)
    plain = render_bullseye(dataclasses.replace(stress, muted_rim_rows=0))
    Image.fromarray(pale).save(tmp_path / "normal_stress_perfusion.png")
    print(f"normal phantom stress map (seed {seed}): {tmp_path / 'normal_stress_perfusion.png'}")
    # the veil lightens a ring (thousands of pixels) and darkens almost nothing
    lighter = pale.astype(int).sum(axis=2) - plain.astype(int).sum(axis=2)
    assert (lighter >= -30).mean() > 0.98 and (lighter > 60).sum() > 3000, f"seed {seed}"  # darker: the dashed line, the note
