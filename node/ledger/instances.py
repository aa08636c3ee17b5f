"""Received instances: what the listener stored, where, from whom (``ledger.instances``).

Recording an instance is idempotent on its SOP Instance UID and keeps its
study and series rows up to date: the first instance of a study creates it in
``receiving``, each new instance adds its routing attributes to its series
(:func:`node.pipelines.routing.merge_attributes`), and a new instance of a
finished study puts the study back to ``receiving``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from node.ledger.events import record_event
from node.ledger.schema import PRUNED_PATH, STUDY_FINISHED, Instance, Series, Store, Study, clip, utcnow
from node.pipelines.routing import AttributeValue, merge_attributes

__all__ = ["InstanceMeta", "InstanceStore"]


@dataclass(frozen=True)
class InstanceMeta:
    """What the SCP knows about one stored instance (no patient identifiers)."""

    sop_instance_uid: str
    sop_class_uid: str
    study_uid: str
    series_uid: str
    path: str
    size_bytes: int
    transfer_syntax_uid: str = ""
    routing: Mapping[str, AttributeValue] = field(default_factory=dict)  # node.pipelines.routing.routing_attributes
    calling_ae: str = ""
    received_at: datetime | None = None


def _reopen(session: Session, study: Study, now: datetime, reason: str) -> None:
    """A finished study goes back to ``receiving`` with ``reason`` (an instance arrived for it)."""
    if study.state in STUDY_FINISHED:
        record_event(session, "study", study.study_uid, study.state, "receiving", reason)
        study.state, study.reason, study.rule, study.updated_at = "receiving", reason, None, now


def _record(s: Session, meta: InstanceMeta) -> bool:
    """:meth:`InstanceStore.record` in the session ``s`` (the caller's transaction)."""
    now = meta.received_at or utcnow()
    study = s.get(Study, meta.study_uid)
    if study is None:
        study = Study(
            study_uid=meta.study_uid,
            state="receiving",
            reason="first instance received",
            run=0,
            instance_count=0,
            first_received_at=now,
            last_received_at=now,
            updated_at=now,
        )
        s.add(study)
        s.flush()  # parent rows first (no ORM relationships to order inserts)
        record_event(s, "study", meta.study_uid, None, "receiving", "first instance received")
    study.last_received_at = max(study.last_received_at, now)
    known = s.get(Instance, meta.sop_instance_uid)
    if known is not None and known.path != PRUNED_PATH:
        return False
    if known is not None:  # sent again after retention pruned its file: stored again, processed again
        known.path, known.size_bytes, known.received_at = meta.path, meta.size_bytes, now
        _reopen(s, study, now, "instances sent again after the study's files were pruned; it will be processed again")
        return True
    series = s.get(Series, meta.series_uid)
    if series is None:
        series = Series(
            series_uid=meta.series_uid,
            study_uid=meta.study_uid,
            routing={},
            instance_count=0,
            first_received_at=now,
            last_received_at=now,
        )
        s.add(series)
        s.flush()
    series.instance_count += 1
    series.last_received_at = max(series.last_received_at, now)
    series.routing = merge_attributes(series.routing or {}, meta.routing)
    s.add(
        Instance(
            sop_instance_uid=meta.sop_instance_uid,
            series_uid=meta.series_uid,
            study_uid=meta.study_uid,
            sop_class_uid=meta.sop_class_uid,
            transfer_syntax_uid=meta.transfer_syntax_uid,
            path=meta.path,
            size_bytes=meta.size_bytes,
            calling_ae=clip(meta.calling_ae, 16),
            received_at=now,
        )
    )
    study.instance_count += 1
    _reopen(s, study, now, f"new instance after the study was {study.state}; it will be processed again")
    return True


class InstanceStore(Store):
    """The instances the node received (``ledger.instances``)."""

    def record(self, meta: InstanceMeta) -> bool:
        """Record a received instance; return False if its SOP Instance UID was already recorded.

        Idempotent: a second copy changes nothing but the study's last-instance
        time, unless retention pruned the first copy's file (path
        :data:`~node.ledger.schema.PRUNED_PATH`): then the row takes the new file and
        the call returns True, as for a new instance. Creates the study (``receiving``) and series rows as needed. A new
        instance of a finished study puts it back to ``receiving``.
        """
        with self.database.write() as s:
            return _record(s, meta)

    def record_many(self, metas: Sequence[InstanceMeta]) -> list[bool]:
        """Record several instances in one transaction (as :meth:`record` each, in order); for
        each, False if its SOP Instance UID was already recorded (or earlier in ``metas``)."""
        with self.database.write() as s:
            return [_record(s, meta) for meta in metas]

    def exists(self, sop_instance_uid: str) -> bool:
        """Whether the instance is recorded."""
        with self.database.read() as s:
            return s.get(Instance, sop_instance_uid) is not None

    def get(self, sop_instance_uid: str) -> Instance | None:
        """The instance's row, or None."""
        with self.database.read() as s:
            return s.get(Instance, sop_instance_uid)

    def of_study(self, study_uid: str, series_uids: Sequence[str] | None = None) -> list[Instance]:
        """Instances of a study whose spool file is kept (optionally only some series), ordered by series
        then arrival; those whose file retention pruned (path :data:`~node.ledger.schema.PRUNED_PATH`) are left out."""
        with self.database.read() as s:
            q = select(Instance).where(Instance.study_uid == study_uid, Instance.path != PRUNED_PATH)
            if series_uids is not None:
                q = q.where(Instance.series_uid.in_(list(series_uids)))
            return list(s.scalars(q.order_by(Instance.series_uid, Instance.received_at)))

    def uids(self) -> set[str]:
        """Every recorded SOP Instance UID whose file is kept (for reconciling the spool after a crash:
        a file of a pruned instance found in the spool was sent again, and is recorded again)."""
        with self.database.read() as s:
            return set(s.scalars(select(Instance.sop_instance_uid).where(Instance.path != PRUNED_PATH)))

    def count(self) -> int:
        """How many instances are recorded."""
        with self.database.read() as s:
            return int(s.scalar(select(func.count()).select_from(Instance)) or 0)
