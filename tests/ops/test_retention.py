"""Retention: the spool and outbox do not grow forever, and nothing still needed is removed.

A real listener (in this process) receives real NM studies from dcmtk ``storescu``; the
states the conductor and the sender would record (jobs, results in the outbox, sends) are
written through the ledger's own API. The pass (:func:`node.ops.retention.prune`) then
runs against the files on disk, and ``cardionode prune`` runs as an operator would.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import UID

from node.config import RetentionSettings, Settings, load_settings
from node.dicom.spool import write_file_atomic
from node.ledger import PRUNED_PATH, Ledger, OutputMeta, utcnow
from node.ops.retention import RetentionKeeper, disk_summary, prune
from node.uids import deterministic_uid
from tests.support import PYTHON, REPO
from tests.support.config import listener_config
from tests.support.dicom_clients import storescu
from tests.support.nm import write_nm_study
from tests.support.node import listener_in_process, node_env

pytestmark = pytest.mark.network

#: the studies, oldest activity first: (name, what the ledger says about it)
KINDS = (
    ("sent_old", "done, results sent"),
    ("unsent", "done, a result still pending to its destination"),
    ("sent_mid", "done, results sent"),
    ("open_job", "processing, its job queued"),
    ("sent_new", "done, results sent"),
    ("receiving", "still receiving"),
)


@dataclass
class Site:
    """A listener's data directory with the studies of :data:`KINDS`, the listener stopped."""

    config: Path
    settings: Settings
    studies: dict[str, str]  # name -> Study Instance UID
    files: dict[str, list[Path]]  # name -> the study's files as sent


def _finish(ledger: Ledger, settings: Settings, study_uid: str, name: str) -> None:
    """Move a received study on as the node would: processed, one result in the outbox, its send."""
    if name == "receiving":
        return
    ledger.studies.transition(study_uid, "complete", "all series", rule="manual")
    ledger.studies.transition(study_uid, "processing", "run 1")
    job = ledger.jobs.create(study_uid, "spect_mpi")
    if name == "open_job":
        return
    source = ledger.instances.of_study(study_uid)[0]
    result = pydicom.dcmread(source.path)
    result.SeriesInstanceUID = deterministic_uid("result-series", study_uid)
    result.SOPInstanceUID = deterministic_uid("result", study_uid)
    result.file_meta.MediaStorageSOPInstanceUID = UID(result.SOPInstanceUID)
    path = settings.outbox_dir / study_uid / result.SeriesInstanceUID / f"{result.SOPInstanceUID}.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    result.save_as(path, enforce_file_format=True)
    ledger.outputs.record(job.id, "spect_mpi", OutputMeta(result.SOPInstanceUID, study_uid, result.SeriesInstanceUID,
                                                          str(result.SOPClassUID), str(path), path.stat().st_size))
    (send,) = ledger.sends.create(result.SOPInstanceUID, ["pacs"])
    ledger.jobs.transition(job.id, "running", "analyse")
    ledger.jobs.transition(job.id, "reported", "1 result object in the outbox")
    ledger.studies.transition(study_uid, "done", "spect_mpi run 1: 1 result object")
    if name != "unsent":
        ledger.sends.record_attempt(send.id, "sent", status=0)
        ledger.jobs.transition(job.id, "sent", "1 sends done")


@pytest.fixture
def site(tmp_path: Path) -> Site:
    listener = listener_in_process(tmp_path, record=False)
    studies: dict[str, str] = {}
    files: dict[str, list[Path]] = {}
    try:
        for seed, (name, _) in enumerate(KINDS):
            study = write_nm_study(tmp_path / "sent" / name, 3, seed=100 + seed, size=64)
            storescu(listener.port, study.paths, check=True)
            studies[name], files[name] = study.study_uid, study.paths
    finally:
        listener.stop()
    config = tmp_path / "node.toml"
    settings = load_settings(config)
    ledger = Ledger.from_settings(settings)
    try:
        for name, _ in KINDS:  # in order: each study's last activity is later than the one before
            _finish(ledger, settings, studies[name], name)
    finally:
        ledger.close()
    return Site(config, settings, studies, files)


def _with(settings: Settings, **retention: float) -> Settings:
    """``settings`` with only the given retention limits (the others 0: none)."""
    limits = RetentionSettings.model_validate({"max_age_days": 0, "max_spool_gb": 0, "max_outbox_gb": 0, **retention})
    return settings.model_copy(update={"retention": limits})


def _spool_bytes(settings: Settings, study_uid: str) -> int:
    return sum(p.stat().st_size for p in (settings.spool_dir / study_uid).rglob("*.dcm"))


def _present(settings: Settings, area: str, studies: dict[str, str]) -> set[str]:
    root = settings.spool_dir if area == "spool" else settings.outbox_dir
    return {name for name, uid in studies.items() if any((root / uid).rglob("*.dcm"))}


def test_a_spool_over_its_limit_loses_its_oldest_finished_studies_and_nothing_still_needed(site: Site) -> None:
    s = site.settings
    sizes = {name: _spool_bytes(s, uid) for name, uid in site.studies.items()}
    total = sum(sizes.values())
    # over the limit by more than the two oldest prunable studies hold, less than three
    excess = sizes["sent_old"] + sizes["unsent"] + sizes["sent_mid"] // 2
    settings = _with(s, max_spool_gb=(total - excess) / 1e9, max_outbox_gb=1e-9)
    later = utcnow() + timedelta(minutes=5)  # every study has been quiet for the pass's QUIET_S

    for uid in site.studies.values():  # the web page's renderings of each study's results
        (s.web_cache_dir / uid).mkdir(parents=True, exist_ok=True)
        (s.web_cache_dir / uid / "1.2.3-1-full.png").write_bytes(b"png")
    ledger = Ledger.from_settings(settings)
    try:
        before = {name: ledger.studies.get(uid) for name, uid in site.studies.items()}
        dry = prune(ledger, settings, dry_run=True, now=later)
        assert _present(s, "spool", site.studies) == set(site.studies), "a dry run removed files"
        report = prune(ledger, settings, now=later)
        assert [(r.study_uid, r.area) for r in report.removals] == [(r.study_uid, r.area) for r in dry.removals]

        # the spool is under its limit again, by the oldest finished studies
        assert _present(s, "spool", site.studies) == {"open_job", "sent_new", "receiving"}
        assert sum(p.stat().st_size for p in s.spool_dir.rglob("*.dcm")) <= settings.retention.max_spool_gb * 1e9
        # results: every sent one goes (outbox limit of 1 byte); the unsent one and the open job's stay
        assert _present(s, "outbox", site.studies) == {"unsent"}
        assert report.kept_over_limit and "outbox" in report.kept_over_limit[0]
        # and the renderings of pruned results go with them
        assert {n for n, uid in site.studies.items() if (s.web_cache_dir / uid).exists()} == {"unsent", "open_job",
                                                                                          "receiving"}

        # the ledger keeps every row, marks what went, and no study changed state
        for name, uid in site.studies.items():
            study, earlier = ledger.studies.get(uid), before[name]
            assert study is not None and earlier is not None
            assert study.state == earlier.state and study.instance_count == 3
        pruned = ledger.instances.of_study(site.studies["sent_old"])
        assert pruned == [], "of_study lists instances whose files are gone"
        events = [e.reason for e in ledger.events.find("study", site.studies["sent_old"])]
        assert any(r.startswith("pruned: spool files") for r in events), events
        outputs = {name: ledger.outputs.get(deterministic_uid("result", site.studies[name])) for name in ("sent_old", "unsent")}
        assert [o.path == PRUNED_PATH for o in outputs.values() if o is not None] == [True, False]
        summary = disk_summary(ledger, settings)
        assert summary.pruned_studies == 4 and summary.last_pass is not None
        assert "4 studies pruned" in summary.line() and summary.line().startswith("disk: spool ")
    finally:
        ledger.close()


def test_a_pruned_study_sent_again_is_stored_and_processed_again(site: Site, tmp_path: Path) -> None:
    settings = _with(site.settings, max_age_days=30)
    ledger = Ledger.from_settings(settings)
    try:
        report = prune(ledger, settings, now=utcnow() + timedelta(days=31))
        assert {r.study_uid for r in report.removals} == {site.studies[n] for n in ("sent_old", "unsent", "sent_mid", "sent_new")}
        assert _present(site.settings, "spool", site.studies) == {"open_job", "receiving"}
    finally:
        ledger.close()

    uid = site.studies["sent_mid"]
    listener = listener_in_process(tmp_path, record=False)
    try:
        storescu(listener.port, site.files["sent_mid"], check=True)
        study = listener.ledger.studies.get(uid)
        assert study is not None and study.state == "receiving", study and (study.state, study.reason)
        assert "pruned" in study.reason
        kept = listener.ledger.instances.of_study(uid)
        assert len(kept) == 3 and all(Path(i.path).is_file() for i in kept)
        assert study.instance_count == 3  # the same instances, not new ones
    finally:
        listener.stop()


def test_artifacts_of_finished_jobs_go_and_those_of_open_jobs_stay(site: Site) -> None:
    from node.queue.dispatch import job_key, node_tag
    from node.queue.steps import job_prefix

    settings = _with(site.settings, artifact_grace_h=1)
    ledger = Ledger.from_settings(settings)
    try:
        jobs = {j.study_uid: j for j in ledger.jobs.find()}
        tag = node_tag(settings.effective_device_uid())
        open_job, sent_job = jobs[site.studies["open_job"]], jobs[site.studies["sent_old"]]
        root = Path(settings.effective_artifact_store)
        folders = {}
        for job in (open_job, sent_job):
            folder = root / job_prefix(job_key(tag, job.id, 1))
            write_file_atomic(folder / "analyse.values", b"x" * 1000, durable=False)
            old = (utcnow() - timedelta(hours=2)).timestamp()
            os.utime(folder / "analyse.values", (old, old))
            folders[job.state] = folder
        report = prune(ledger, settings)
        assert report.artifacts_removed == 1 and report.artifacts_bytes == 1000
        assert folders["queued"].is_dir() and not folders["sent"].exists()
    finally:
        ledger.close()


def test_cardionode_prune_dry_run_lists_and_removes_nothing(site: Site) -> None:
    # an age limit of about a second: every finished study without an open job or unsent result qualifies
    config, _ = listener_config(site.config.parent, retention={"max_age_days": 1e-5, "max_spool_gb": 0,
                                                               "max_outbox_gb": 0})
    time.sleep(1.0)  # every study's last activity older than the 0.86 s limit, however fast the command starts
    result = subprocess.run([PYTHON, "-m", "node.cli", "--config", str(config), "prune", "--dry-run"], cwd=REPO,
                            env=node_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    listed = {(line.split()[2], line.split("study ")[1].split()[0])
              for line in result.stdout.splitlines() if line.startswith("would remove")}
    names = {uid: name for name, uid in site.studies.items()}
    assert {(area, names[uid]) for area, uid in listed} == {
        *(("spool", n) for n in ("sent_old", "unsent", "sent_mid", "sent_new")),
        *(("outbox", n) for n in ("sent_old", "sent_mid", "sent_new")),
    }, result.stdout
    assert "retention: would free" in result.stdout and "disk: spool" in result.stdout, result.stdout
    assert _present(site.settings, "spool", site.studies) == set(site.studies)
    assert _present(site.settings, "outbox", site.studies) == {"sent_old", "unsent", "sent_mid", "sent_new"}


def test_the_node_prunes_on_schedule_counted_from_the_last_pass(tmp_path: Path) -> None:
    config, _ = listener_config(tmp_path, retention={"interval_s": 3600})
    settings = load_settings(config)
    ledger = Ledger.from_settings(settings)
    try:
        keeper = RetentionKeeper(ledger, settings)
        assert keeper.run_due() is not None  # no pass recorded yet: one at start
        assert keeper.run_due() is None  # then one per interval_s
        assert RetentionKeeper(ledger, settings).run_due() is None  # a restarted node counts from that pass
        off = settings.model_copy(update={"retention": settings.retention.model_copy(update={"enabled": False})})
        assert RetentionKeeper(ledger, off).run_due() is None
    finally:
        ledger.close()
