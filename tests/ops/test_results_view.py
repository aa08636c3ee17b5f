"""Issue 20: a study's results as the operator's page shows them (``node.ops.results``), from a node that processed it.

A synthetic SPECT study (the demo phantom, RCA reversible defect) goes through the node in the test's
process: real ledger, SQLite broker, artifact directory, assembler and conductor; the shipped
``spect_mpi`` pipeline with its models runs its steps in process (:mod:`tests.support.worker`); the
node's own :class:`~node.dicom.sender.Exporter` sends the results to a real Orthanc and to a
destination that does not answer. The view is then read from the ledger and the outbox only.

Checked: the objects of the job grouped by role with their send states; every number of the SR
(read here with pydicom, independently of :mod:`node.results.readback`) is in the page's tables with
the display rule's decimals; the model predictions and verdicts; the PNG of a bull's-eye is the SC's
pixels and is cached; a results-screen page comes with its identification header painted over
unless identifiers are shown; the PDF only when they are; refusals of what is not an image or PDF of
this node; no patient name, ID or birth date in the view model or the rendered HTML;
``cardionode status --study UID --results`` prints the same tables; a revised report marks the earlier
one superseded (the results end-to-end test pipeline, whose content changes with a late instance) and
a file pruned from the outbox is said so; a PET study (image-tier phantom through ``pet_mbf``) shows
its MBF and MFR per segment and its time-activity curves.

The partial ``study_results.html`` is rendered by a small Jinja2 environment whose ``url_for`` makes the
web app's paths; the web app's own tests (tests/web) show it in Chromium.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass, fields, is_dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pydicom
import pytest
from PIL import Image

from node.cli import main as cli_main
from node.config import Settings, load_settings
from node.dicom.sender import Exporter, RetryPolicy, Target
from node.ledger import Ledger, utcnow
from node.ops.results import (
    ResultNotFound,
    ResultWithheld,
    StudyResults,
    format_results,
    result_frame_png,
    result_pdf,
    study_results,
)
from node.pipelines import registry
from node.queue.app import QueueSettings
from node.queue.conductor import Conductor
from node.queue.dispatch import JobQueue
from node.results.tables import format_value
from node.results.templates import load_templates
from node.workflow.completeness import Assembler
from tests.support import REPO
from tests.support.config import write_config
from tests.support.nm import add_nm_instance, write_nm_study
from tests.support.orthanc import Orthanc
from tests.support.pipelines import results_e2e  # noqa: F401  (registers the test pipeline)
from tests.support.ports import free_port
from tests.support.worker import record_instances, work_step

pytestmark = pytest.mark.network  # Orthanc, and a destination that does not answer, on loopback

QUIET = {"default": {"quiet_period_s": 1.0, "force_deadline_s": 600.0, "force_action": "process", "settle_s": 0.5}}
TEMPLATES = REPO / "node" / "web" / "templates"
SR_CLASSES = ("1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.88.22")


@dataclass
class Processed:
    settings: Settings
    ledger: Ledger
    study_uid: str
    identity: tuple[str, ...]  # the synthetic patient's name parts, ID and birth date (several spellings)
    config: Path
    orthanc: Orthanc | None = None


class InProcessNode:
    """The node's ledger, queue, assembler, conductor and exporter in the test's process."""

    def __init__(self, root: Path, destinations: list[dict[str, Any]], targets: dict[str, Target], **extra: Any):
        config = write_config(root / "node.toml", data_dir=root / "data", disk_watermark_mb=1, completeness=QUIET,
                              destinations=destinations, **extra)
        self.config = config
        self.settings = load_settings(config)
        self.ledger = Ledger.from_settings(self.settings)
        self.queue = JobQueue(QueueSettings.from_settings(self.settings), self.settings.effective_device_uid())
        self.conductor = Conductor(self.ledger, self.queue, self.settings)
        self.assembler = Assembler(self.ledger, self.settings)
        self.exporter = Exporter(self.ledger, targets, calling_ae=self.settings.ae_title,
                                 retry=RetryPolicy.from_settings(self.settings), timeout_s=10.0)

    def process(self, files: list[Path], pipeline: str) -> None:
        """Record ``files`` as received, let the study complete, run every step of ``pipeline`` and send."""
        record_instances(self.ledger, files)
        assert self.assembler.tick(utcnow() + timedelta(seconds=5)) == 1
        job = self.ledger.jobs.find(states=("queued",))[0]
        assert job.pipeline == pipeline, f"the study went to {job.pipeline}, not {pipeline}"
        self.conductor.tick()
        for step in registry.get(pipeline).steps:
            work_step(self.queue, step.queue)
            self.conductor.tick()
        self.exporter.run_once()

    def close(self) -> None:
        self.queue.close()
        self.ledger.close()


def _identity(ds: pydicom.Dataset) -> tuple[str, ...]:
    """The patient's name (as stored, as the screens print it, the family name and the parts with digits: the
    synthetic names' given name "MODEL" is an ordinary word of the page), ID and birth date (DA and ISO)."""
    name = str(ds.PatientName)
    parts = name.split("^")
    printed = f"{parts[0]}, {' '.join(parts[1:3])}"
    birth = str(ds.PatientBirthDate)
    marked = [p for p in parts if any(c.isdigit() for c in p)]
    return (name, printed, parts[0], *marked, str(ds.PatientID), birth, f"{birth[:4]}-{birth[4:6]}-{birth[6:]}")


@pytest.fixture(scope="module")
def spect(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processed]:
    import random

    from node.synth.spect.demo import demo_spec, save_datasets
    from node.synth.spect.phantom import make_study
    from node.synth.spect.study import build_study_datasets

    seed = random.SystemRandom().randrange(2**31)
    print(f"results view seed: {seed}")
    root = tmp_path_factory.mktemp("results_view")
    datasets, truth = build_study_datasets(make_study(demo_spec("RCA", "tc99m_sestamibi"), np.random.default_rng(seed)),
                                           key=f"results-view-{seed}", when=datetime(2026, 1, 15, 8, 30))
    files = save_datasets(datasets, truth, root / "study")
    orthanc = Orthanc(root / "orthanc").start()
    offline_port = free_port()  # nothing listens there: the sends to it are retried
    destinations = [{"name": "pacs", "ae_title": orthanc.ae_title, "host": "127.0.0.1", "port": orthanc.dicom_port},
                    {"name": "offline", "ae_title": "NOBODY", "host": "127.0.0.1", "port": offline_port}]
    targets = {"pacs": Target("pacs", orthanc.ae_title, "127.0.0.1", orthanc.dicom_port),
               "offline": Target("offline", "NOBODY", "127.0.0.1", offline_port)}
    node = InProcessNode(root, destinations, targets)
    # a module fixture is made before the registry is reset for the test: route with the shipped pipelines only
    tests_pipelines = [p for p in registry.all_pipelines() if not type(p).__module__.startswith("node.")]
    for pipeline in tests_pipelines:
        registry.unregister(pipeline.name)
    try:
        try:
            node.process(files, "spect_mpi")
        finally:
            for pipeline in tests_pipelines:
                registry.register(pipeline)
        yield Processed(node.settings, node.ledger, str(datasets[0].StudyInstanceUID), _identity(datasets[0]),
                        node.config, orthanc)
    finally:
        node.close()
        orthanc.stop()


def _with_identifiers(settings: Settings, show: bool) -> Settings:
    return settings.model_copy(update={"web": settings.web.model_copy(update={"show_identifiers": show})})


def _sr_numbers(path: Path) -> list[tuple[str, str, float, str]]:
    """Every NUM of every measurement group: (group label, code value, value, UCUM unit), read with pydicom."""
    ds = pydicom.dcmread(path)
    out = []
    imaging = next(i for i in ds.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "126010")
    for group in imaging.ContentSequence:
        label = next(str(i.TextValue) for i in group.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "112039")
        for item in group.ContentSequence:
            if item.ValueType == "NUM":
                value = item.MeasuredValueSequence[0]
                out.append((label, str(item.ConceptNameCodeSequence[0].CodeValue), float(value.NumericValue),
                            str(value.MeasurementUnitsCodeSequence[0].CodeValue)))
    return out


def render(results: StudyResults, *, images: dict[str, str] | None = None) -> str:
    """The partial as HTML, with a ``url_for`` that makes the web app's paths (or data: URIs from ``images``)."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, undefined=jinja2.StrictUndefined)

    def url_for(name: str, /, **params: Any) -> str:
        if name == "result_frame":
            key = f"{params['sop_instance_uid']}/{params['frame']}"
            return (images or {}).get(key, f"/results/{params['sop_instance_uid']}/frames/{params['frame']}.png")
        assert name == "result_pdf", name
        return f"/results/{params['sop_instance_uid']}.pdf"

    env.globals["url_for"] = url_for
    return env.get_template("study_results.html").render(results=results)


def _strings(value: object) -> Iterator[str]:
    """Every string inside a view model (dataclasses, tuples, properties left out)."""
    if isinstance(value, str):
        yield value
    elif is_dataclass(value) and not isinstance(value, type):
        for f in fields(value):
            yield from _strings(getattr(value, f.name))
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _strings(item)


@pytest.mark.slow  # the module's SPECT study through the node: 30-45 s once
def test_the_view_of_a_processed_spect_study_has_its_images_numbers_and_send_states(spect: Processed) -> None:
    results = study_results(spect.settings, spect.ledger, spect.study_uid)
    assert len(results.reports) == 1
    report = results.reports[0]
    assert results.current is report and not report.superseded and report.job_state == "reported", report.job_reason
    assert report.sr is not None and report.sr.available and report.problems == ()
    recorded = spect.ledger.outputs.get(report.sr.sop_instance_uid)
    assert recorded is not None and report.reported_at == recorded.created_at
    outputs = spect.ledger.outputs.of_job(report.job_id)
    assert {o.sop_instance_uid for o in report.objects} == {o.sop_instance_uid for o in outputs}

    # images by role, from the series they were written to (series.toml numbers)
    by_series: dict[int, int] = {}
    for output in outputs:
        ds = pydicom.dcmread(output.path, stop_before_pixels=True)
        by_series[int(ds.SeriesNumber)] = by_series.get(int(ds.SeriesNumber), 0) + 1
    roles = {role: len(report.images_of(role)) for role in ("bullseye", "heatmap", "curves", "screen")}
    assert roles == {"bullseye": by_series.get(901, 0), "heatmap": by_series.get(902, 0),
                     "curves": by_series.get(905, 0), "screen": by_series.get(908, 0)}, (roles, by_series)
    assert roles["bullseye"] >= 2 and roles["screen"] >= 1, roles  # which maps, curves and heat maps: the phantom decides
    stress = next(i for i in report.images_of("bullseye") if i.title.startswith("Stress perfusion"))
    assert (stress.rows, stress.columns, stress.frames, stress.offered, stress.identified) == (512, 512, 1, True, False)
    assert all(i.offered and i.identified for i in report.images_of("screen"))
    assert report.pdf is not None and not report.pdf.offered and "show_identifiers" in report.pdf.note

    # every number of the SR is in a table, printed by the one display rule
    templates = load_templates()
    tables = [report.global_table, report.segment_table]
    cells = {c for t in tables if t for row in t.rows for c in row}
    cells |= {p.probability for p in report.predictions}
    by_code = {templates.quantity(k).code.value: templates.quantity(k) for k in (
        "relative_uptake", "segment_score", "edv", "esv", "lvef", "sss", "srs", "sds", "tid_ratio", "probability")}
    numbers = _sr_numbers(Path(output_path(spect, report.sr.sop_instance_uid)))
    checked = 0
    for label, code, value, unit in numbers:
        quantity = by_code.get(code)
        if quantity is None:
            continue
        assert unit == quantity.unit
        assert format_value(value, quantity.decimals) in cells, (label, code, value)
        checked += 1
    assert checked >= 17 * 2 * 2 + 3, checked  # uptake and score per segment at stress and rest, SSS, SRS, SDS
    segments = report.segment_table
    assert segments is not None and len(segments.rows) == 17
    assert segments.rows[0][0] == "1 basal anterior" and segments.rows[16][0] == "17 apex"
    stress_uptake = segments.head.index("Stress\nuptake %")
    sr_uptake = {label: value for label, code, value, _ in numbers if code == "RELUPTAKE"}
    for n in range(1, 18):
        assert segments.rows[n - 1][stress_uptake] == format_value(sr_uptake[f"Stress perfusion AHA segment {n}"], 0)
    glob = report.global_table
    assert glob is not None and glob.head[1:4] == ("Study", "Stress", "Rest")
    lvef = next(row for row in glob.rows if row[0] == "LVEF")
    assert lvef[-1] == "%" and lvef[2] and lvef[3]

    # model predictions: one per model group of the SR, with the SR's coded verdict
    ds = pydicom.dcmread(output_path(spect, report.sr.sop_instance_uid))
    imaging = next(i for i in ds.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "126010")
    verdicts = [next(str(i.ConceptCodeSequence[0].CodeMeaning) for i in g.ContentSequence
                     if i.ValueType == "CODE" and i.ConceptNameCodeSequence[0].CodeValue == "AICLASS")
                for g in imaging.ContentSequence
                if any(i.ValueType == "NUM" and i.ConceptNameCodeSequence[0].CodeValue == "AIPROB" for i in g.ContentSequence)]
    assert len(report.predictions) == len(verdicts) >= 1
    assert [v.lower() for p in report.predictions for v in p.verdicts] == [v.lower() for v in verdicts]
    heatmaps = {i.sop_instance_uid for i in report.images_of("heatmap")}
    assert {p.heatmap_uid for p in report.predictions if p.heatmap_uid} <= heatmaps

    # send states: the PACS has every object, the destination that does not answer is retried
    for obj in report.objects:
        states = {s.destination: s.state for s in obj.sends}
        assert states == {"pacs": "sent", "offline": "retrying"}, (obj.role, states)
        assert "sent to pacs" in obj.send_summary and "retrying to offline (1 attempt)" in obj.send_summary
    assert spect.orthanc is not None and len(spect.orthanc.study_instances(spect.study_uid)) >= len(report.objects)

    text = format_results(results)
    assert "LVEF" in text and "17 apex" in text and "Model predictions" in text and "Research use only" in text


@pytest.mark.slow  # the module's SPECT study through the node: 30-45 s once
def test_status_study_results_prints_the_tables(spect: Processed, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["--config", str(spect.config), "status", "--study", spect.study_uid, "--results"]) == 0
    out = capsys.readouterr().out
    report = study_results(spect.settings, spect.ledger, spect.study_uid).reports[0]
    assert report.segment_table is not None and report.global_table is not None
    for row in (*report.segment_table.rows, *report.global_table.rows):
        assert " ".join(c for c in row if c) in " ".join(out.split()), row
    assert "Results per AHA segment" in out and "Research use only" in out and "sent to pacs" in out
    assert all(text.lower() not in out.lower() for text in spect.identity)
    assert cli_main(["--config", str(spect.config), "status", "--study", spect.study_uid]) == 0
    assert "Results per AHA segment" not in capsys.readouterr().out


def output_path(spect: Processed, sop_instance_uid: str) -> str:
    output = spect.ledger.outputs.get(sop_instance_uid)
    assert output is not None
    return output.path


@pytest.mark.slow  # the module's SPECT study through the node: 30-45 s once
def test_no_patient_identity_in_the_view_or_its_html(spect: Processed) -> None:
    results = study_results(spect.settings, spect.ledger, spect.study_uid)
    html = render(results)
    strings = list(_strings(results))
    for text in spect.identity:
        assert all(text.lower() not in s.lower() for s in strings), "identity in the view model"
        assert text.lower() not in html.lower(), "identity in the HTML"
    assert "Research use only" in html and "17 apex" in html and "LVEF" in html
    assert html.count("/frames/1.png") >= 2 * len(results.reports[0].images)  # link + img per frame
    assert ".pdf" not in html  # the PDF is withheld: no link
    shown = study_results(_with_identifiers(spect.settings, True), spect.ledger, spect.study_uid)
    assert ".pdf" in render(shown) and shown.show_identifiers
    withheld = study_results(_with_identifiers(spect.settings, True), spect.ledger, spect.study_uid, identifiers=False)
    assert not withheld.show_identifiers and ".pdf" not in render(withheld)


@pytest.mark.slow  # the module's SPECT study through the node: 30-45 s once
def test_frame_png_is_the_images_pixels_cached_and_a_screen_page_withholds_its_header(spect: Processed) -> None:
    settings, ledger = spect.settings, spect.ledger
    report = study_results(settings, ledger, spect.study_uid).reports[0]
    bullseye = report.images_of("bullseye")[0]
    path = Path(output_path(spect, bullseye.sop_instance_uid))
    png = result_frame_png(settings, ledger, bullseye.sop_instance_uid, 1)
    assert png.startswith(b"\x89PNG")
    decoded = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert np.array_equal(decoded, pydicom.dcmread(path).pixel_array)
    cached = list((settings.web_cache_dir / spect.study_uid).glob(f"{bullseye.sop_instance_uid}-1-*.png"))
    assert len(cached) == 1 and cached[0].read_bytes() == png
    before = cached[0].stat().st_mtime_ns
    assert result_frame_png(settings, ledger, bullseye.sop_instance_uid, 1) == png
    assert cached[0].stat().st_mtime_ns == before  # served from the cache, not rendered again

    screen = report.images_of("screen")[0]
    original = pydicom.dcmread(output_path(spect, screen.sop_instance_uid)).pixel_array
    redacted = np.asarray(Image.open(io.BytesIO(result_frame_png(settings, ledger, screen.sop_instance_uid, 1))))
    assert redacted.shape == original.shape
    line = int(np.flatnonzero(np.all(original[:200] == (160, 160, 160), axis=(1, 2)))[0])  # the header's closing line
    assert 40 < line < 200
    assert np.array_equal(redacted[line:], original[line:])  # maps, tables, curves: unchanged
    # the identification is drawn in black on the header's left half; after redaction no black pixel is left there
    left = original.shape[1] // 2
    assert np.all(original[:line, :left] == 0, axis=2).any(), "the page's header shows no identification"
    assert not np.all(redacted[:line, :left] == 0, axis=2).any()
    shown = _with_identifiers(settings, True)
    full = np.asarray(Image.open(io.BytesIO(result_frame_png(shown, ledger, screen.sop_instance_uid, 1))))
    assert np.array_equal(full, original)
    again = np.asarray(Image.open(io.BytesIO(result_frame_png(settings, ledger, screen.sop_instance_uid, 1))))
    assert np.array_equal(again, redacted)  # the cache keeps the two renderings apart


@pytest.mark.slow  # the module's SPECT study through the node: 30-45 s once
def test_refusals_and_the_pdf(spect: Processed) -> None:
    settings, ledger = spect.settings, spect.ledger
    report = study_results(settings, ledger, spect.study_uid).reports[0]
    assert report.sr is not None and report.pdf is not None
    bullseye = report.images_of("bullseye")[0].sop_instance_uid
    for uid, frame in (("1.2.3.4.5", 1), (report.sr.sop_instance_uid, 1), (report.pdf.sop_instance_uid, 1),
                       (bullseye, 2), (bullseye, 0), (spect.study_uid, 1)):
        with pytest.raises(ResultNotFound):
            result_frame_png(settings, ledger, uid, frame)
    with pytest.raises(ResultNotFound):
        result_pdf(settings, ledger, bullseye)
    with pytest.raises(ResultWithheld):
        result_pdf(settings, ledger, report.pdf.sop_instance_uid)
    shown = _with_identifiers(settings, True)
    with pytest.raises(ResultWithheld):
        result_pdf(shown, ledger, report.pdf.sop_instance_uid, identifiers=False)
    document = result_pdf(shown, ledger, report.pdf.sop_instance_uid)
    assert document.startswith(b"%PDF-") and document.rstrip().endswith(b"%%EOF")
    stored = pydicom.dcmread(output_path(spect, report.pdf.sop_instance_uid))
    assert len(document) == int(stored.EncapsulatedDocumentLength)


@pytest.mark.uses_test_pipelines("results_e2e")
def test_a_revised_report_marks_the_earlier_one_superseded(tmp_path: Path, seed: int) -> None:
    node = InProcessNode(tmp_path, [], {}, pipeline_modules=["tests.support.pipelines.results_e2e"])
    try:
        study_uid, _, files = write_nm_study(tmp_path / "study", 2, seed, frames=2, size=16)
        node.process(files, "results_e2e")
        node.process([add_nm_instance(files[0], tmp_path / "late", seed + 1)], "results_e2e")
        results = study_results(node.settings, node.ledger, study_uid)
        assert [r.run for r in results.reports] == [2, 1]
        new, old = results.reports
        assert new.sr is not None and old.sr is not None and new.sr.sop_instance_uid != old.sr.sop_instance_uid
        assert old.sr.sop_instance_uid in new.supersedes
        assert (old.superseded_by, old.superseded_by_job) == (new.sr.sop_instance_uid, new.job_id)
        assert not new.superseded and results.current is new
        assert all(o.sends == () and o.send_summary.startswith("not sent") for o in new.objects)
        html = render(results)
        assert f"superseded by the report of job {new.job_id}" in html and "current report" in html

        # a file pruned from the outbox: the view says so, the image is refused and its cached PNG deleted
        image = new.images_of("bullseye")[0]
        result_frame_png(node.settings, node.ledger, image.sop_instance_uid, 1)
        cache = node.settings.web_cache_dir / study_uid
        assert list(cache.glob(f"{image.sop_instance_uid}-*.png"))
        os.unlink(node.ledger.outputs.get(image.sop_instance_uid).path)  # type: ignore[union-attr]
        again = study_results(node.settings, node.ledger, study_uid).reports[0]
        pruned = next(i for i in again.images if i.sop_instance_uid == image.sop_instance_uid)
        assert not pruned.available and "no longer in the outbox" in pruned.note
        assert any("no longer in the outbox" in p for p in again.problems)
        with pytest.raises(ResultNotFound):
            result_frame_png(node.settings, node.ledger, image.sop_instance_uid, 1)
        assert not list(cache.glob(f"{image.sop_instance_uid}-*.png"))
    finally:
        node.close()


@pytest.mark.slow
def test_a_pet_study_shows_its_flows_reserve_and_time_activity_curves(tmp_path: Path, seed: int) -> None:
    from node.synth.pet.phantom import make_pet_study
    from node.synth.pet.study import build_phantom_pet_study, write_pet_study

    study = build_phantom_pet_study(make_pet_study(np.random.default_rng(seed), defect_territory="LAD"), vendor="ge",
                                    key=f"results-view-pet-{seed}", when=datetime(2026, 5, 4, 8, 0))
    files = list(write_pet_study(study, tmp_path / "study").paths)
    node = InProcessNode(tmp_path, [], {})
    try:
        node.process(files, "pet_mbf")
        study_uid = str(study.datasets[0].StudyInstanceUID)
        results = study_results(node.settings, node.ledger, study_uid)
        report = results.current
        assert report is not None and report.pipeline == "pet_mbf" and report.sr is not None, results
        curves = report.images_of("curves")
        assert len(curves) >= 2 and all("time-activity" in c.title for c in curves), [c.title for c in curves]
        assert {"Stress MBF (mL/min/g)", "Rest MBF (mL/min/g)"} <= {i.title for i in report.images_of("bullseye")}
        segments, glob = report.segment_table, report.global_table
        assert segments is not None and glob is not None and len(segments.rows) == 17
        assert any("MBF" in h for h in segments.head) and any(h.startswith("MFR") for h in segments.head)
        cells = {c for t in (segments, glob) for row in t.rows for c in row}
        templates = load_templates()
        checked = 0
        sr = node.ledger.outputs.get(report.sr.sop_instance_uid)
        assert sr is not None
        for key in ("mbf", "mfr"):
            quantity = templates.quantity(key, "pet_mbf")
            for label, code, value, unit in _sr_numbers(Path(sr.path)):
                if code == quantity.code.value:
                    assert unit == quantity.unit and format_value(value, quantity.decimals) in cells, (label, value)
                    checked += 1
        assert checked >= 17 * 3, checked
        assert any(f.concept == "Impaired myocardial flow reserve" for f in report.findings)
        html = render(results)
        identity = _identity(study.datasets[0])
        assert all(text.lower() not in html.lower() for text in identity)
        assert "time-activity" in html and "mL/min/g" in html
    finally:
        node.close()
