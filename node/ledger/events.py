"""State changes and refusals: the ledger's ``events`` and ``rejections``.

Every store writes an event, in the same transaction, for each state change
it makes (:func:`record_event`); :class:`EventStore` reads them back (why a
study or job is where it is). :class:`RejectionStore` keeps what the listener
refused: instances, associations and presentation contexts, with the DIMSE
status answered and the reason, never patient data.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from node.ledger.schema import Event, RejectionRecord, Store, clip, utcnow

__all__ = ["EventStore", "RejectionStore", "record_event"]


def record_event(
    session: Session,
    entity: str,
    entity_id: object,
    old: str | None,
    new: str,
    reason: str,
    rule: str | None = None,
) -> None:
    """Add the event "``entity`` ``entity_id`` moved from ``old`` to ``new``" to ``session``'s transaction."""
    session.add(
        Event(
            at=utcnow(),
            entity=entity,
            entity_id=str(entity_id),
            from_state=old,
            to_state=new,
            reason=reason,
            rule=rule,
        )
    )


class EventStore(Store):
    """The ledger's state changes (``ledger.events``)."""

    def find(self, entity: str | None = None, entity_id: object | None = None, limit: int | None = None) -> list[Event]:
        """State changes, oldest first, optionally of one entity (``study``/``job``/``send``)."""
        with self.database.read() as s:
            q = select(Event)
            if entity:
                q = q.where(Event.entity == entity)
            if entity_id is not None:
                q = q.where(Event.entity_id == str(entity_id))
            q = q.order_by(Event.id)
            if limit:
                q = q.limit(limit)
            return list(s.scalars(q))

    def after(self, event_id: int, limit: int = 500) -> list[Event]:
        """State changes with an id above ``event_id``, oldest first, at most ``limit`` (for followers
        such as :mod:`node.ops.notify`, which remember the last id they handled)."""
        with self.database.read() as s:
            return list(s.scalars(select(Event).where(Event.id > int(event_id)).order_by(Event.id).limit(limit)))

    def last_id(self) -> int:
        """The id of the latest state change (0 when there is none)."""
        with self.database.read() as s:
            return int(s.scalar(select(func.max(Event.id))) or 0)

    def recent(self, limit: int) -> list[Event]:
        """The latest ``limit`` state changes of any entity, newest first."""
        with self.database.read() as s:
            return list(s.scalars(select(Event).order_by(Event.id.desc()).limit(limit)))


class RejectionStore(Store):
    """What the listener refused (``ledger.rejections``)."""

    def record(
        self,
        reason: str,
        status: int,
        *,
        calling_ae: str = "",
        peer_address: str = "",
        sop_class_uid: str = "",
        sop_instance_uid: str = "",
        study_uid: str = "",
    ) -> int:
        """Record a refused instance or association (``status`` 0 for associations); returns its id.

        UIDs are stored as received (clipped to 80 characters), never patient data.
        """
        with self.database.write() as s:
            row = RejectionRecord(
                at=utcnow(),
                calling_ae=clip(calling_ae, 16),
                peer_address=clip(peer_address, 64),
                sop_class_uid=clip(sop_class_uid, 80),
                sop_instance_uid=clip(sop_instance_uid, 80),
                study_uid=clip(study_uid, 80),
                status=int(status),
                reason=reason,
            )
            s.add(row)
            s.flush()
            return row.id

    def find(self, limit: int | None = None) -> list[RejectionRecord]:
        """Rejections, newest first."""
        with self.database.read() as s:
            q = select(RejectionRecord).order_by(RejectionRecord.id.desc())
            if limit:
                q = q.limit(limit)
            return list(s.scalars(q))
