"""``decide``, the completeness rules as a pure function of a study summary and three times."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from node.workflow.completeness import Rule, decide
from tests.support.pipelines import flowtest as flowtest_pipeline  # noqa: F401  (registers the test pipeline)
from tests.support.pipelines import study_summary as _study

pytestmark = pytest.mark.uses_test_pipelines

T0 = datetime(2026, 1, 1, 12, 0, 0)
RULE = Rule(quiet_period_s=10.0, force_deadline_s=100.0, force_action="process", settle_s=2.0)


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
