"""UPS work items and event subscriptions: ``ledger.workitems`` and ``ledger.ups_subscriptions``.

The ledger is the UPS database of the node's UPS SCP (:mod:`node.dicom.ups_scp`).
A change of a work item is decided *inside* the ledger's write transaction
(:meth:`WorkitemStore.change`): two performers claiming the same UPS at once are
serialised, and the second sees the first's claim. Every change of state is an
``events`` row (entity ``workitem``) in the same transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select

from node.ledger.events import record_event
from node.ledger.schema import WORKITEM_STATES, Store, UpsSubscription, Workitem, utcnow

__all__ = ["SubscriptionStore", "WorkitemChange", "WorkitemStore", "FINAL_WORKITEM_STATES"]

#: the final states of a work item (no change after them)
FINAL_WORKITEM_STATES = ("COMPLETED", "CANCELED")


@dataclass
class WorkitemChange:
    """What :meth:`WorkitemStore.change` writes: column values of :class:`node.ledger.schema.Workitem`
    (``fields``; a ``state`` among them is a state change, recorded as an event with ``reason``)."""

    fields: dict[str, Any] = field(default_factory=dict)
    reason: str = ""


class WorkitemStore(Store):
    """The UPS work items (``ledger.workitems``)."""

    def create(self, uid: str, *, state: str, reason: str = "", **fields: Any) -> bool:
        """Record a new work item ``uid`` in ``state``; False (nothing written) when ``uid`` exists."""
        now = utcnow()
        with self.database.write() as s:
            if s.get(Workitem, uid) is not None:
                return False
            s.add(Workitem(sop_instance_uid=uid, state=state, created_at=now, updated_at=now, **fields))
            record_event(s, "workitem", uid, None, state, reason)
        return True

    def get(self, uid: str) -> Workitem | None:
        """The work item ``uid``, or None."""
        with self.database.read() as s:
            return s.get(Workitem, uid)

    def change(self, uid: str, decide: Callable[[Workitem | None], WorkitemChange | None]) -> Workitem | None:
        """Decide a change of work item ``uid`` in the write transaction and write it.

        ``decide`` gets the work item as it is now (None when there is none) and returns the
        change, or None to change nothing; it runs under the ledger's write lock, so no other
        change of any work item happens between what it reads and what is written. Returns
        the work item afterwards (None when there is none).
        """
        with self.database.write() as s:
            row = s.get(Workitem, uid)
            change = decide(row)
            if row is None or change is None:
                return row
            old = row.state
            for name, value in change.fields.items():
                setattr(row, name, value)
            row.updated_at = utcnow()
            if row.state != old:
                if row.state in FINAL_WORKITEM_STATES:
                    row.finished_at = row.updated_at
                record_event(s, "workitem", uid, old, row.state, change.reason)
            s.flush()
            return row

    def find(self, states: Sequence[str] | None = None, limit: int | None = None) -> list[Workitem]:
        """Work items, newest first, optionally only those in ``states``."""
        with self.database.read() as s:
            q = select(Workitem)
            if states:
                q = q.where(Workitem.state.in_(list(states)))
            q = q.order_by(Workitem.created_at.desc(), Workitem.sop_instance_uid)
            if limit:
                q = q.limit(limit)
            return list(s.scalars(q))

    def performing(self, study_uid: str | None = None) -> list[Workitem]:
        """Work items of a site's task manager the node holds (role ``performer``, a Transaction UID of the node's,
        not final): claims sent or landed, oldest first; optionally only those of ``study_uid``."""
        with self.database.read() as s:
            q = select(Workitem).where(Workitem.role == "performer", Workitem.transaction_uid != "",
                                       Workitem.state.not_in(list(FINAL_WORKITEM_STATES)))
            if study_uid is not None:
                q = q.where(Workitem.study_uid == study_uid)
            return list(s.scalars(q.order_by(Workitem.created_at, Workitem.sop_instance_uid)))

    def count_by_state(self) -> dict[str, int]:
        """Work items per state, every state of :data:`node.ledger.schema.WORKITEM_STATES` (0 when none)."""
        with self.database.read() as s:
            counts = {state: n for state, n in s.execute(select(Workitem.state, func.count()).group_by(Workitem.state))}
        return {state: int(counts.get(state, 0)) for state in WORKITEM_STATES}

    def purge_final(self, finished_before: datetime, locked: Iterable[str] = ()) -> list[str]:
        """Delete the work items COMPLETED or CANCELED before ``finished_before``, except those in
        ``locked`` (deletion locks); their subscriptions go with them. Returns the UIDs deleted."""
        keep = set(locked)
        with self.database.write() as s:
            uids = [
                uid for uid in s.scalars(
                    select(Workitem.sop_instance_uid).where(
                        Workitem.state.in_(FINAL_WORKITEM_STATES), Workitem.finished_at < finished_before))
                if uid not in keep
            ]
            if uids:
                s.execute(delete(UpsSubscription).where(UpsSubscription.ups_uid.in_(uids)))
                s.execute(delete(Workitem).where(Workitem.sop_instance_uid.in_(uids)))
            return uids


class SubscriptionStore(Store):
    """Who receives the UPS event reports (``ledger.ups_subscriptions``, PS3.4 CC.2.3)."""

    def subscribe(self, ae_title: str, ups_uids: Sequence[str], deletion_lock: bool,
                  filter_keys: dict[str, Any] | None = None, *, keep_existing: bool = False) -> list[str]:
        """Subscribe ``ae_title`` to each of ``ups_uids`` (a UPS, or a well-known global UID) with ``deletion_lock``.

        ``keep_existing``: leave the AE's existing subscriptions to those UIDs as they are
        (a global subscription does not change specific ones). Returns the UIDs newly subscribed.
        """
        now = utcnow()
        added = []
        with self.database.write() as s:
            existing = {
                row.ups_uid: row for row in s.scalars(
                    select(UpsSubscription).where(UpsSubscription.ae_title == ae_title,
                                                  UpsSubscription.ups_uid.in_(list(ups_uids))))
            }
            for uid in ups_uids:
                row = existing.get(uid)
                if row is None:
                    s.add(UpsSubscription(ae_title=ae_title, ups_uid=uid, deletion_lock=deletion_lock,
                                          filter=filter_keys or {}, created_at=now))
                    added.append(uid)
                elif not keep_existing:
                    row.deletion_lock = deletion_lock
                    row.filter = filter_keys or {}
        return added

    def unsubscribe(self, ae_title: str, ups_uids: Sequence[str] | None = None) -> int:
        """Remove ``ae_title``'s subscriptions to ``ups_uids`` (None: all of them, global ones included)."""
        with self.database.write() as s:
            q = delete(UpsSubscription).where(UpsSubscription.ae_title == ae_title)
            if ups_uids is not None:
                q = q.where(UpsSubscription.ups_uid.in_(list(ups_uids)))
            return int(s.execute(q).rowcount or 0)  # type: ignore[attr-defined]

    def find(self, *, ae_title: str | None = None, ups_uids: Sequence[str] | None = None) -> list[UpsSubscription]:
        """Subscriptions, oldest first, optionally of one AE and/or to some UIDs."""
        with self.database.read() as s:
            q = select(UpsSubscription)
            if ae_title is not None:
                q = q.where(UpsSubscription.ae_title == ae_title)
            if ups_uids is not None:
                q = q.where(UpsSubscription.ups_uid.in_(list(ups_uids)))
            return list(s.scalars(q.order_by(UpsSubscription.id)))

    def locked(self) -> set[str]:
        """The UIDs someone holds a deletion lock on."""
        with self.database.read() as s:
            return set(s.scalars(select(UpsSubscription.ups_uid).where(UpsSubscription.deletion_lock.is_(True))))
