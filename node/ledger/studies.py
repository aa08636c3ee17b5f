"""Studies and their series: completeness and processing states (``ledger.studies``).

A study's state moves only through :meth:`StudyStore.transition` (or
:meth:`StudyStore.complete_manually` for `cardionode complete`), each move
with a reason and an event; the series rows give the routing summary
(:class:`node.pipelines.routing.StudySummary`) that completeness and routing
read. Study and series rows are created by
:meth:`node.ledger.instances.InstanceStore.record`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, select

from node.ledger.events import record_event
from node.ledger.schema import (
    COMPLETENESS_RULES,
    STUDY_FINISHED,
    STUDY_STATES,
    LedgerError,
    Series,
    Store,
    Study,
    utcnow,
)
from node.pipelines.routing import SeriesSummary, StudySummary

__all__ = ["StudyStore"]


class StudyStore(Store):
    """The studies the node received, with their states (``ledger.studies``)."""

    def get(self, study_uid: str) -> Study | None:
        """The study's row, or None."""
        with self.database.read() as s:
            return s.get(Study, study_uid)

    def find(self, states: Sequence[str] | None = None, limit: int | None = None, offset: int = 0) -> list[Study]:
        """Studies, most recently active first, optionally only in ``states``; ``offset``: skip that many (paging)."""
        with self.database.read() as s:
            q = select(Study)
            if states:
                q = q.where(Study.state.in_(list(states)))
            q = q.order_by(Study.updated_at.desc())
            if limit:
                q = q.limit(limit)
            if offset:
                q = q.offset(offset)
            return list(s.scalars(q))

    def count_by_state(self) -> dict[str, int]:
        """How many studies are in each state (every state, in :data:`STUDY_STATES` order)."""
        with self.database.read() as s:
            found = {state: count for state, count in s.execute(select(Study.state, func.count()).group_by(Study.state))}
        return {state: int(found.get(state, 0)) for state in STUDY_STATES}

    def to_examine(self) -> list[Study]:
        """Studies the conductor must look at: ``receiving`` (apply completeness rules) and
        ``complete`` (start a job; e.g. after `cardionode complete`)."""
        return self.find(("receiving", "complete"))

    def last_instance_time(self, study_uid: str) -> datetime | None:
        """When the study's latest instance arrived (UTC), or None if unknown."""
        study = self.get(study_uid)
        return study.last_received_at if study else None

    def summary(self, study_uid: str) -> StudySummary:
        """The study's series as :class:`node.pipelines.routing.StudySummary` (for routing)."""
        with self.database.read() as s:
            rows = s.scalars(
                select(Series).where(Series.study_uid == study_uid).order_by(Series.first_received_at)
            ).all()
            return StudySummary(
                study_instance_uid=study_uid,
                series=tuple(SeriesSummary.from_attributes(r.series_uid, r.routing or {}, r.instance_count) for r in rows),
            )

    def transition(
        self,
        study_uid: str,
        to_state: str,
        reason: str,
        *,
        rule: str | None = None,
        pipeline: str | None = None,
        expected_from: Sequence[str] | None = None,
    ) -> Study:
        """Move a study to ``to_state`` with a reason (and the completeness ``rule`` when
        entering ``complete``); returns the updated study.

        ``expected_from``: the move happens only if the study is in one of these
        states, else :class:`LedgerError` (guards against two deciders racing).
        Entering ``processing`` increments ``run``. Ending a run (``done``,
        ``ignored``, ``failed``, ``given_up``) when instances arrived after the
        study was decided puts it back to ``receiving`` instead, with that reason.
        """
        if to_state not in STUDY_STATES:
            raise LedgerError(f"unknown study state {to_state!r}; states are {STUDY_STATES}")
        if to_state == "complete" and rule not in COMPLETENESS_RULES:
            raise LedgerError(f"entering 'complete' needs a rule from {COMPLETENESS_RULES}, got {rule!r}")
        now = utcnow()
        with self.database.write() as s:
            study = s.get(Study, study_uid)
            if study is None:
                raise LedgerError(f"no study {study_uid} in the ledger")
            if expected_from is not None and study.state not in expected_from:
                raise LedgerError(
                    f"study {study_uid} is {study.state}, not {'/'.join(expected_from)}; not moved to {to_state}"
                )
            old = study.state
            if (
                to_state in STUDY_FINISHED
                and study.decided_at is not None
                and study.last_received_at > study.decided_at
            ):
                reason = f"{to_state}: {reason}; instances arrived meanwhile, study will be processed again"
                to_state = "receiving"
            if to_state == "complete":
                study.rule, study.decided_at = rule, now
            if to_state == "processing":
                study.run += 1
            if pipeline is not None:
                study.pipeline = pipeline
            study.state, study.reason, study.updated_at = to_state, reason, now
            record_event(s, "study", study_uid, old, to_state, reason, rule if to_state == "complete" else None)
            return study

    def complete_manually(self, study_uid: str, reason: str = "declared complete by an operator",
                          pipeline: str | None = None) -> Study:
        """`cardionode complete`: mark a study ``complete`` with rule ``manual``.

        Allowed from any state except ``processing`` (the running job must finish
        or be discarded first); the conductor starts a job for it, with ``pipeline``
        when given (else the study's pipeline, or the one routing chooses).
        """
        study = self.get(study_uid)
        if study is None:
            raise LedgerError(f"no study {study_uid} in the ledger; check the Study Instance UID with `cardionode status`")
        allowed = tuple(st for st in STUDY_STATES if st != "processing")
        return self.transition(study_uid, "complete", reason, rule="manual", pipeline=pipeline, expected_from=allowed)
