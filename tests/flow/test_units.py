"""Fast tests of the flow modules in one process: registry, completeness, artifact stores, retry policy."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
import redis

import flowtest_pipeline  # noqa: F401  (registers the test pipeline)
from node.workflow.completeness import Rule, decide
from node.dicom.sender import RetryPolicy, classify_status
from node.pipelines import registry
from node.pipelines.base import SeriesSummary, StudySummary
from node.config import Settings
from node.queue.artifacts import DirectoryStore, MissingArtifactError, RedisStore, open_store, validate_key
from node.queue.dispatch import parse_task_id, task_id_for
from node.queue.worker import parse_queues, worker_argv

T0 = datetime(2026, 1, 1, 12, 0, 0)
RULE = Rule(quiet_period_s=10.0, force_deadline_s=100.0, force_action="process", settle_s=2.0)


def _study(*modalities: str) -> StudySummary:
    return StudySummary(
        "1.2.3",
        tuple(SeriesSummary(f"1.2.3.{i}", m, "1.2.840.10008.5.1.4.1.1.20", instance_count=1)
              for i, m in enumerate(modalities)),
    )


def test_route_accepts_nm_and_explains_refusal() -> None:
    pipeline, reason = registry.route(_study("NM"))
    assert pipeline is not None and pipeline.name == flowtest_pipeline.NAME, reason
    pipeline, reason = registry.route(_study("CT"))
    assert pipeline is None
    assert "CT" in reason and flowtest_pipeline.NAME in reason


def test_get_unknown_pipeline_names_the_registered_ones() -> None:
    with pytest.raises(registry.UnknownPipelineError) as err:
        registry.get("no_such_pipeline")
    assert flowtest_pipeline.NAME in str(err.value)


def test_expected_series_waits_for_settle_time() -> None:
    study = _study("NM")
    assert decide(study, T0, T0, T0 + timedelta(seconds=1), lambda _: RULE).action == "wait"
    decision = decide(study, T0, T0, T0 + timedelta(seconds=2.5), lambda _: RULE)
    assert (decision.action, decision.rule) == ("complete", "expected_series")


def test_unaccepted_study_is_ignored_after_quiet_period_with_reason() -> None:
    study = _study("CT")
    assert decide(study, T0, T0, T0 + timedelta(seconds=5), lambda _: RULE).action == "wait"
    decision = decide(study, T0, T0, T0 + timedelta(seconds=11), lambda _: RULE)
    assert decision.action == "ignore" and "CT" in decision.reason


def test_force_deadline_processes_or_gives_up() -> None:
    study = _study("NM")
    busy = T0 + timedelta(seconds=150)  # instances still arriving: last one 0.5 s ago
    decision = decide(study, T0, busy - timedelta(seconds=0.5), busy, lambda _: RULE)
    assert (decision.action, decision.rule) == ("complete", "force_deadline")
    give_up = Rule(10.0, 100.0, "give_up", 2.0)
    decision = decide(study, T0, busy - timedelta(seconds=0.5), busy, lambda _: give_up)
    assert (decision.action, decision.rule) == ("give_up", "force_deadline")


def test_status_classes() -> None:
    assert classify_status(0x0000) == "sent" and classify_status(0xB007) == "sent"
    assert classify_status(0xA700) == "transient" and classify_status(0xA7FF) == "transient"
    assert classify_status(0xA900) == "permanent" and classify_status(0xC000) == "permanent"
    assert classify_status(0x0122) == "permanent"


def test_retry_backoff_doubles_up_to_the_cap() -> None:
    policy = RetryPolicy(initial_s=5, max_s=30, max_attempts=5)
    assert [policy.delay_s(n) for n in range(1, 6)] == [5, 10, 20, 30, 30]


def test_task_ids_round_trip() -> None:
    assert parse_task_id(task_id_for("0a1b2c", 17, 2, "predict")) == (17, 2, "predict")
    with pytest.raises(ValueError):
        parse_task_id("someone-elses-task")


def test_worker_arguments() -> None:
    assert parse_queues("gpu") == ["gpu"]
    with pytest.raises(ValueError):
        parse_queues("gpu,video")
    argv = worker_argv(["gpu"], 1)
    assert "--queues=gpu" in argv and "--concurrency=1" in argv


def _exercise(store) -> None:  # type: ignore[no-untyped-def]
    store.put("jobs/9.1/inputs/00000.dcm", b"abc")
    store.put("jobs/9.1/analyse.pkl", b"\x00" * 1000)
    assert store.get("jobs/9.1/inputs/00000.dcm") == b"abc"
    assert list(store.keys("jobs/9.1")) == ["jobs/9.1/analyse.pkl", "jobs/9.1/inputs/00000.dcm"]
    store.delete_prefix("jobs/9.1")
    assert not store.exists("jobs/9.1/analyse.pkl")
    with pytest.raises(MissingArtifactError):
        store.get("jobs/9.1/analyse.pkl")


def test_directory_store(tmp_path: Path) -> None:
    _exercise(DirectoryStore(tmp_path))
    with pytest.raises(ValueError):
        validate_key("../etc/passwd")


def test_redis_store_and_automatic_choice(tmp_path: Path) -> None:
    url = "redis://127.0.0.1:6379/13"
    redis.Redis.from_url(url).ping()
    store = RedisStore(url, namespace=f"flowtest:{tmp_path.name}")
    _exercise(store)
    redis_settings = Settings(data_dir=tmp_path, broker_url=url)
    assert redis_settings.effective_artifact_store == url
    assert redis_settings.effective_result_backend == url
    assert isinstance(open_store(redis_settings.effective_artifact_store), RedisStore)
    sqlite_settings = Settings(data_dir=tmp_path)
    assert sqlite_settings.effective_result_backend.startswith("db+sqlite:///")
    assert isinstance(open_store(sqlite_settings.effective_artifact_store), DirectoryStore)
