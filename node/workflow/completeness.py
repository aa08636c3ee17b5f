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

A study no pipeline accepts is recorded as ``ignored`` with the reasons, once
it has been quiet for the default quiet period (more series may still come). The
reasons of ``ignored`` and ``given_up`` start in plain words, what was received and
what is needed (``planar whole-body images received; reconstructed stress and rest
SPECT (spect_mpi) ... needed``, :func:`node.pipelines.registry.route`), then the details;
`cardionode status` shows them and :mod:`node.ops.notify` sends them to the sender.
The rule that decided is stored in the ledger with the study.

Instances arriving after a study was processed put it back to ``receiving``
(the ledger does this); the next run's job gets the earlier reports as
predecessors, so its results supersede them rather than duplicate them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from node.config import CompletenessRule, Settings
from node.dicom.audit import AuditLog
from node.dicom.logs import hash_identifier
from node.ledger import Ledger, LedgerError, Study, utcnow
from node.pipelines import registry
from node.pipelines.routing import StudySummary, describe_study

__all__ = ["Rule", "Decision", "decide", "Assembler"]

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
) -> Decision:
    """Apply the completeness rules to a ``receiving`` study (reads only the registry; times naive UTC)."""
    quiet_s = (now - last_received).total_seconds()
    age_s = (now - first_received).total_seconds()
    pipeline, route_reason = registry.route(summary)
    if pipeline is None:
        rule = rule_for("default")
        if quiet_s >= rule.quiet_period_s:
            return Decision("ignore", route_reason)
        return Decision("wait", f"waiting for more series ({route_reason})")

    rule = rule_for(pipeline.name)
    acceptance = pipeline.accept(summary)
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


class Assembler:
    """Decides completeness of receiving studies and opens a job for each complete one."""

    def __init__(self, ledger: Ledger, settings: Settings, audit: AuditLog | None = None) -> None:
        self.ledger = ledger
        self.settings = settings
        self.audit = audit
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
            try:
                current: Study | None = study
                if study.state == "receiving":
                    current = self._examine(study, now or utcnow())
                if current is not None and current.state == "complete":
                    created += self._start_run(current)
            except LedgerError as exc:  # another actor moved the study meanwhile; look again next tick
                _log.info("study %s changed while examined: %s", hash_identifier(study.study_uid), exc)
        return created

    def _examine(self, study: Study, now: datetime) -> Study | None:
        summary = self.ledger.studies.summary(study.study_uid)
        decision = decide(summary, study.first_received_at, study.last_received_at, now, self.rule_for)
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
