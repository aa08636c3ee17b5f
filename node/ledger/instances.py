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

from node.ledger.events import record_event
from node.ledger.schema import STUDY_FINISHED, Instance, Series, Store, Study, clip, utcnow
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


class InstanceStore(Store):
    """The instances the node received (``ledger.instances``)."""

    def record(self, meta: InstanceMeta) -> bool:
        """Record a received instance; return False if its SOP Instance UID was already recorded.

        Idempotent: a second copy changes nothing but the study's last-instance
        time. Creates the study (``receiving``) and series rows as needed. A new
        instance of a finished study puts it back to ``receiving``.
        """
        now = meta.received_at or utcnow()
        with self.database.write() as s:
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
            if s.get(Instance, meta.sop_instance_uid) is not None:
                return False
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
            if study.state in STUDY_FINISHED:
                reason = f"new instance after the study was {study.state}; it will be processed again"
                record_event(s, "study", study.study_uid, study.state, "receiving", reason)
                study.state, study.reason, study.rule, study.updated_at = "receiving", reason, None, now
            return True

    def exists(self, sop_instance_uid: str) -> bool:
        """Whether the instance is recorded."""
        with self.database.read() as s:
            return s.get(Instance, sop_instance_uid) is not None

    def get(self, sop_instance_uid: str) -> Instance | None:
        """The instance's row, or None."""
        with self.database.read() as s:
            return s.get(Instance, sop_instance_uid)

    def of_study(self, study_uid: str, series_uids: Sequence[str] | None = None) -> list[Instance]:
        """Instances of a study (optionally only some series), ordered by series then arrival."""
        with self.database.read() as s:
            q = select(Instance).where(Instance.study_uid == study_uid)
            if series_uids is not None:
                q = q.where(Instance.series_uid.in_(list(series_uids)))
            return list(s.scalars(q.order_by(Instance.series_uid, Instance.received_at)))

    def uids(self) -> set[str]:
        """Every recorded SOP Instance UID (for reconciling the spool after a crash)."""
        with self.database.read() as s:
            return set(s.scalars(select(Instance.sop_instance_uid)))

    def count(self) -> int:
        """How many instances are recorded."""
        with self.database.read() as s:
            return int(s.scalar(select(func.count()).select_from(Instance)) or 0)
