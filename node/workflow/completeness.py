"""Study completeness: when has the node received enough of a study to process it?

The node cannot know when a PACS has finished sending a study, so every study
in ``receiving`` is examined on each tick of the conductor loop against the
completeness rule of the pipeline that accepts it (settings ``completeness``):

* ``expected_series``: every series the pipeline requires is present and no
  instance arrived for ``settle_s`` seconds (lets a burst of instances of the
  last series finish);
* ``quiet_period``: no instance arrived for ``quiet_period_s`` seconds although
  some required series are missing; the pipeline processes what is there;
* ``force_deadline``: the first instance arrived ``force_deadline_s`` seconds
  ago and the study is still undecided (instances keep trickling in); the
  configured ``force_action`` either processes what is there or gives up;
* ``manual``: ``cardionode complete STUDY`` (the ledger marks it).
* ``ups_inputs``: the node claimed a work item of a site's task manager for this study
  (:mod:`node.workflow.performer`): the study is complete when every instance of the work
  item's Input Information Sequence is in the ledger (received or fetched) and its Input
  Readiness State is READY (:func:`ups_inputs`); until then it waits, whatever the other
  rules say (the performer fetches the missing inputs, or cancels the work item).

A study no pipeline accepts is recorded as ``ignored`` with the reasons, once
it has been quiet for the default quiet period (more series may still come). The
reasons of ``ignored`` and ``given_up`` start in plain words, what was received and
what is needed (``planar whole-body images received; reconstructed stress and rest
SPECT (spect_mpi) ... needed``, :func:`node.pipelines.registry.route`), then the details;
`cardionode status` shows them and :mod:`node.ops.notify` sends them to the sender.
The rule that decided is stored in the ledger with the study.

With ``[[worklists]]`` configured, the assembler asks the modality worklist about each
receiving study on background threads (:class:`node.workflow.worklist.WorklistLookups`;
never on the acknowledge path, never waited for). When the answer is there and names a
pipeline (:class:`node.workflow.worklist.Expectation`), that pipeline is chosen if it
accepts the study, and ``expected_series`` is met when the series the worklist schedules
for this study are present (a rest-only day of a two-day protocol completes on its rest
series instead of waiting out the quiet period). A worklist can only make a study
complete sooner by this rule, never later: the quiet period and the force deadline apply
as without it. When that answer names one state of a two-day protocol whose other state was
scheduled on an earlier day, the assembler starts its pairing (:class:`node.workflow.pairing.Pairer`:
the earlier study found in the ledger or fetched from the PACS); while the pairing runs the
worklist's expected series are not used (the quiet period and force deadline still apply), and
an earlier study being fetched is not examined on its own.

Instances arriving after a study was processed put it back to ``receiving``
(the ledger does this); the next run's job gets the earlier reports as
predecessors, so its results supersede them rather than duplicate them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from pydicom.dataset import Dataset

from node.config import CompletenessRule, Settings
from node.dicom.audit import AuditLog
from node.dicom.logs import hash_identifier
from node.ledger import Ledger, LedgerError, Study, utcnow
from node.pipelines import registry
from node.pipelines.base import Acceptance
from node.pipelines.routing import StudySummary, describe_study
from node.telemetry import COMPLETENESS_DECISIONS
from node.workflow import ups
from node.workflow.pairing import Pairer
from node.workflow.worklist import Expectation, WorklistLookups, expectation

__all__ = ["Rule", "Decision", "decide", "ups_inputs", "Assembler"]

_log = logging.getLogger(__name__)

#: seconds of quiet before the expected-series rule fires, when the setting is absent
#: (:class:`node.config.CompletenessRule`'s default)
DEFAULT_SETTLE_S: float = CompletenessRule.model_fields["settle_s"].default


@dataclass(frozen=True)
class Rule:
    """One pipeline's completeness settings (seconds)."""

    quiet_period_s: float
    force_deadline_s: float
    force_action: str  # "process" | "give_up"
    settle_s: float = DEFAULT_SETTLE_S

    @classmethod
    def from_setting(cls, setting: Any) -> Rule:
        """From a :class:`node.config.CompletenessRule` (settle time capped by the quiet period)."""
        quiet = float(setting.quiet_period_s)
        return cls(
            quiet_period_s=quiet,
            force_deadline_s=float(setting.force_deadline_s),
            force_action=str(setting.force_action),
            settle_s=min(float(setting.settle_s), quiet),
        )


@dataclass(frozen=True)
class Decision:
    """What to do with a receiving study now.

    ``action``: ``wait``, ``complete`` (with ``rule``), ``ignore`` or ``give_up``.
    """

    action: str
    reason: str
    pipeline: str | None = None
    rule: str | None = None


def decide(
    summary: StudySummary,
    first_received: datetime,
    last_received: datetime,
    now: datetime,
    rule_for: Callable[[str], Rule],
    expected: Expectation | None = None,
) -> Decision:
    """Apply the completeness rules to a ``receiving`` study (reads only the registry; times naive UTC).

    ``expected``: what the study's worklist answer schedules (pipeline and series), or None.
    """
    quiet_s = (now - last_received).total_seconds()
    age_s = (now - first_received).total_seconds()
    pipeline, route_reason = registry.route(summary)
    if expected is not None and (pipeline is None or pipeline.name != expected.pipeline):
        scheduled = next((p for p in registry.all_pipelines() if p.name == expected.pipeline), None)
        if scheduled is not None and scheduled.accept(summary).accepted:
            pipeline = scheduled
    if pipeline is None:
        rule = rule_for("default")
        if quiet_s >= rule.quiet_period_s:
            return Decision("ignore", route_reason)
        return Decision("wait", f"waiting for more series ({route_reason})")

    rule = rule_for(pipeline.name)
    acceptance = pipeline.accept(summary)
    if not acceptance.complete and expected is not None and expected.pipeline == pipeline.name:
        acceptance = _scheduled_acceptance(acceptance, summary, expected)
    if acceptance.complete and quiet_s >= rule.settle_s:
        return Decision(
            "complete",
            f"{acceptance.reason}; no new instance for {quiet_s:.1f} s",
            pipeline.name,
            "expected_series",
        )
    if not acceptance.complete and quiet_s >= rule.quiet_period_s:
        return Decision(
            "complete",
            f"no new instance for {quiet_s:.1f} s (quiet period {rule.quiet_period_s:g} s); "
            f"processing what is there ({acceptance.reason})",
            pipeline.name,
            "quiet_period",
        )
    if age_s >= rule.force_deadline_s:
        reason = f"first instance {age_s:.0f} s ago (force deadline {rule.force_deadline_s:g} s)"
        if rule.force_action == "give_up":
            plain = f"{describe_study(summary)} received; {pipeline.needs()} needed"
            return Decision("give_up", f"{plain}; gave up waiting: {reason}. Details: {acceptance.reason}",
                            pipeline.name, "force_deadline")
        return Decision("complete", f"{reason}; processing what is there", pipeline.name, "force_deadline")
    return Decision("wait", acceptance.reason, pipeline.name)


def ups_inputs(ledger: Ledger, study_uid: str, summary: StudySummary) -> Decision | None:
    """The ``ups_inputs`` rule: None when the node holds no claimed work item for ``study_uid`` (the other rules
    apply); else ``complete`` when every input of the work item (Input Information Sequence, READY) is in the
    ledger, ``ignore`` when no pipeline accepts what is there, and ``wait`` otherwise."""
    held = [w for w in ledger.workitems.performing(study_uid) if w.state == "IN PROGRESS"]
    if not held:
        return None
    item = held[0]
    workitem = Dataset.from_json(dict(item.attributes or {}))
    if not ups.may_start(workitem):
        state = str(workitem.get("InputReadinessState", "") or "no")
        return Decision("wait", f"work item {item.sop_instance_uid}: Input Readiness State {state}, "
                                "or no input listed")
    listed = ups.input_references(workitem)
    missing = ups.missing_inputs(workitem, ledger.instances.exists)
    if missing:
        return Decision("wait", f"work item {item.sop_instance_uid}: {len(missing)} of {len(listed)} inputs "
                                "not yet in the ledger")
    pipeline, route_reason = registry.route(summary)
    if pipeline is None:
        return Decision("ignore", route_reason)
    return Decision("complete", f"every input of work item {item.sop_instance_uid} in the ledger "
                                f"({len(listed)} instances)", pipeline.name, "ups_inputs")


def _scheduled_acceptance(acceptance: Acceptance, summary: StudySummary, expected: Expectation) -> Acceptance:
    """``acceptance`` made complete when every series rule the worklist schedules has its series, whole."""
    wanted = {uid for name in expected.expected_series for uid in acceptance.series_by_rule.get(name, ())}
    if not all(acceptance.series_by_rule.get(name) for name in expected.expected_series):
        return acceptance
    if any(s.missing_instances for s in summary.series if s.series_instance_uid in wanted):
        return acceptance
    reason = (f"{', '.join(expected.expected_series)} present as {expected.words} "
              f"(the pipeline's other series are not scheduled for this study)")
    return replace(acceptance, complete=True, reason=reason)


class Assembler:
    """Decides completeness of receiving studies and opens a job for each complete one.

    ``worklist``: the lookups of the worklist context (made from ``settings`` when None and
    ``[[worklists]]`` are configured); ``pairer``: the stress-rest pairings across studies (likewise).

    ``listening_since`` (naive UTC): when the node's listener started. A study whose last instance
    came before it counts as quiet only from then: while the node was down its senders could not
    send, and after a restart they resend what was not acknowledged, so the time the node was away
    must not make a half-received study look finished (`cardionode serve` passes its start time).
    """

    def __init__(self, ledger: Ledger, settings: Settings, audit: AuditLog | None = None,
                 worklist: WorklistLookups | None = None, pairer: Pairer | None = None,
                 listening_since: datetime | None = None) -> None:
        self.ledger = ledger
        self.listening_since = listening_since
        self.settings = settings
        self.audit = audit
        self.worklist = worklist or WorklistLookups(ledger, settings)
        self.pairer = pairer or Pairer(ledger, settings)
        self.examined = 0  # studies examined by the last tick (the node ticks more often while there are any)

    def rule_for(self, pipeline: str) -> Rule:
        return Rule.from_setting(self.settings.completeness_for(pipeline))

    def recover(self) -> int:
        """At start-up: give every ``processing`` study without a job for its run a job.

        Covers a crash between the study entering ``processing`` and its job
        being created. Returns the number of jobs created.
        """
        created = 0
        for study in self.ledger.studies.find(states=("processing",)):
            jobs = [j for j in self.ledger.jobs.find(study_uid=study.study_uid) if j.run == study.run]
            if not jobs and study.pipeline:
                self._create_job(study, study.pipeline, "job re-created after a restart")
                created += 1
        return created

    def tick(self, now: datetime | None = None) -> int:
        """Examine every receiving or complete study once; returns the number of jobs created."""
        created = 0
        studies = self.ledger.studies.to_examine()
        self.examined = len(studies)
        for study in studies:
            if study.study_uid in self.pairer.fetching:  # the earlier part of a two-day protocol, arriving
                continue
            try:
                current: Study | None = study
                if study.state == "receiving":
                    self.worklist.request(study.study_uid, now)
                    if self.worklist.enabled:
                        self.pairer.request(study.study_uid)
                    current = self._examine(study, now or utcnow())
                if current is not None and current.state == "complete":
                    created += self._start_run(current)
            except LedgerError as exc:  # another actor moved the study meanwhile; look again next tick
                _log.info("study %s changed while examined: %s", hash_identifier(study.study_uid), exc)
        return created

    def _examine(self, study: Study, now: datetime) -> Study | None:
        summary = self.ledger.studies.summary(study.study_uid)
        scheduled = expectation(self.ledger.worklist.answer_for(study.study_uid)) if self.worklist.enabled else None
        if scheduled is not None and self.pairer.busy(study.study_uid):
            scheduled = None  # the other day's part is being looked for: its quiet period and deadline still apply
        last_received = study.last_received_at
        if self.listening_since is not None and last_received < self.listening_since:
            last_received = self.listening_since  # quiet only since the node listens again
        decision = ups_inputs(self.ledger, study.study_uid, summary) or decide(
            summary, study.first_received_at, last_received, now, self.rule_for, scheduled)
        tag = hash_identifier(study.study_uid)
        if decision.action == "wait":
            return None
        if decision.action == "ignore":
            _log.info("study %s ignored: %s", tag, decision.reason)
            self._audit("study.ignored", study.study_uid, reason=decision.reason)
            return self.ledger.studies.transition(study.study_uid, "ignored", decision.reason, expected_from=("receiving",))
        if decision.action == "give_up":
            _log.info("study %s given up (%s): %s", tag, decision.rule, decision.reason)
            self._audit("study.given_up", study.study_uid, rule=decision.rule, reason=decision.reason)
            return self.ledger.studies.transition(
                study.study_uid, "given_up", decision.reason, pipeline=decision.pipeline, expected_from=("receiving",)
            )
        _log.info(
            "study %s complete for %s by rule %s: %s (%d instances)",
            tag,
            decision.pipeline,
            decision.rule,
            decision.reason,
            study.instance_count,
        )
        self._audit("study.complete", study.study_uid, rule=decision.rule, pipeline=decision.pipeline)
        return self.ledger.studies.transition(
            study.study_uid,
            "complete",
            decision.reason,
            rule=decision.rule,
            pipeline=decision.pipeline,
            expected_from=("receiving",),
        )

    def _start_run(self, study: Study) -> int:
        pipeline_name = study.pipeline
        if not pipeline_name:  # e.g. `cardionode complete` on a study never routed
            pipeline, reason = registry.route(self.ledger.studies.summary(study.study_uid))
            if pipeline is None:
                self.ledger.studies.transition(study.study_uid, "ignored", reason, expected_from=("complete",))
                return 0
            pipeline_name = pipeline.name
        study = self.ledger.studies.transition(
            study.study_uid,
            "processing",
            f"run {study.run + 1} of {pipeline_name} ({study.rule})",
            pipeline=pipeline_name,
            expected_from=("complete",),
        )
        COMPLETENESS_DECISIONS.labels(rule=study.rule or "manual").inc()  # every rule, `cardionode complete` too
        self._create_job(study, pipeline_name, f"study complete ({study.rule})")
        return 1

    def _create_job(self, study: Study, pipeline_name: str, reason: str) -> None:
        job = self.ledger.jobs.create(study.study_uid, pipeline_name, reason)
        _log.info(
            "job %d: %s run %d of study %s queued", job.id, pipeline_name, job.run, hash_identifier(study.study_uid)
        )
        self._audit("job.queued", study.study_uid, job=job.id, pipeline=pipeline_name, run=job.run)

    def _audit(self, event: str, study_uid: str, **fields: Any) -> None:
        if self.audit is not None:
            self.audit.record(event, study_uid=study_uid, **fields)
