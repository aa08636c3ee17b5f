"""Result objects and their sends (``ledger.outputs``, ``ledger.sends``).

Each result object a job writes to the outbox is an output; each output gets
one send per destination, which moves ``pending`` -> ``sent`` | ``retrying``
| ``dead_letter`` through :meth:`SendStore.record_attempt`, one event per
attempt.

A send's ``last_error`` (and its events) hold the node's words only. What the
destination said (its Error Comment, already cleaned of the study's patient
identifiers by the sender) is kept in the protected ``peer_text``: no event,
log or default status view carries it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select

from node.ledger.events import record_event
from node.ledger.schema import SEND_STATES, Job, LedgerError, Output, Send, Store, utcnow

__all__ = ["OutputMeta", "OutputStore", "SendStore"]

_SR_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.88."


@dataclass(frozen=True)
class OutputMeta:
    """One result object written to the outbox."""

    sop_instance_uid: str
    study_uid: str
    series_uid: str
    sop_class_uid: str
    path: str
    size_bytes: int = 0


class OutputStore(Store):
    """The result objects the node produced (``ledger.outputs``)."""

    def record(self, job_id: int, pipeline: str, meta: OutputMeta) -> bool:
        """Record a result object written to the outbox; False if its SOP Instance UID exists."""
        with self.database.write() as s:
            if s.get(Output, meta.sop_instance_uid) is not None:
                return False
            s.add(
                Output(
                    sop_instance_uid=meta.sop_instance_uid,
                    job_id=int(job_id),
                    study_uid=meta.study_uid,
                    series_uid=meta.series_uid,
                    sop_class_uid=meta.sop_class_uid,
                    pipeline=pipeline,
                    path=meta.path,
                    size_bytes=meta.size_bytes,
                    created_at=utcnow(),
                )
            )
            return True

    def of_job(self, job_id: int) -> list[Output]:
        """The job's outputs, oldest first."""
        with self.database.read() as s:
            return list(s.scalars(select(Output).where(Output.job_id == int(job_id)).order_by(Output.created_at)))

    def get(self, sop_instance_uid: str) -> Output | None:
        """The output's row, or None."""
        with self.database.read() as s:
            return s.get(Output, sop_instance_uid)

    def predecessors(self, study_uid: str, pipeline: str, before_run: int | None = None) -> tuple[tuple[str, str, str, str], ...]:
        """SR outputs of earlier runs of ``pipeline`` on the study, for Predecessor Documents.

        Returns ``(study_uid, series_uid, sop_class_uid, sop_instance_uid)``
        tuples (the :class:`node.results.content.ReportContext` ``predecessors``
        format), oldest first, from jobs that reported or sent, and whose run is
        below ``before_run`` (all runs when None).
        """
        with self.database.read() as s:
            q = (
                select(Output)
                .join(Job, Job.id == Output.job_id)
                .where(
                    Output.study_uid == study_uid,
                    Output.pipeline == pipeline,
                    Output.sop_class_uid.startswith(_SR_CLASS_PREFIX),
                    Job.state.in_(("reported", "sent")),
                )
                .order_by(Job.run, Output.created_at)
            )
            if before_run is not None:
                q = q.where(Job.run < before_run)
            return tuple((o.study_uid, o.series_uid, o.sop_class_uid, o.sop_instance_uid) for o in s.scalars(q))


class SendStore(Store):
    """Sends of outputs to destinations, with their attempts (``ledger.sends``)."""

    def create(self, output_uid: str, destinations: Sequence[str]) -> list[Send]:
        """One ``pending`` send per destination name for an output (idempotent)."""
        now = utcnow()
        with self.database.write() as s:
            out = s.get(Output, output_uid)
            if out is None:
                raise LedgerError(f"no output {output_uid} in the ledger")
            existing = {x.destination: x for x in s.scalars(select(Send).where(Send.output_uid == output_uid))}
            for name in destinations:
                if name not in existing:
                    send = Send(
                        output_uid=output_uid,
                        job_id=out.job_id,
                        destination=name,
                        state="pending",
                        attempts=0,
                        next_attempt_at=now,
                        last_error="",
                        peer_text="",
                        created_at=now,
                        updated_at=now,
                    )
                    s.add(send)
                    s.flush()
                    record_event(s, "send", send.id, None, "pending", f"to {name}")
                    existing[name] = send
            return [existing[n] for n in destinations]

    def record_attempt(
        self,
        send_id: int,
        to_state: str,
        *,
        status: int | None = None,
        error: str = "",
        peer_text: str = "",
        next_attempt_at: datetime | None = None,
    ) -> Send:
        """Record one sending attempt: counts it and sets ``sent``, ``retrying`` (with
        ``next_attempt_at``) or ``dead_letter``; ``status`` is the DIMSE status (None when
        no association).

        ``error`` is the node's account of a failure (also written to the send's event);
        ``peer_text`` what the destination said at this attempt, cleaned of the patient's
        identifiers (:func:`node.dicom.logs.clean_peer_text`): stored in the protected
        ``sends.peer_text`` only, never in an event.
        """
        if to_state not in ("sent", "retrying", "dead_letter"):
            raise LedgerError(f"an attempt ends sent, retrying or dead_letter, not {to_state!r}")
        with self.database.write() as s:
            send = s.get(Send, int(send_id))
            if send is None:
                raise LedgerError(f"no send {send_id} in the ledger")
            old = send.state
            send.attempts += 1
            send.last_status, send.last_error, send.peer_text = status, error, peer_text
            send.next_attempt_at = next_attempt_at if to_state == "retrying" else None
            send.state, send.updated_at = to_state, utcnow()
            status_text = f"status 0x{status:04X}" if status is not None else "no status"
            record_event(s, "send", send.id, old, to_state, f"attempt {send.attempts}: {status_text} {error}".strip())
            return send

    def get(self, send_id: int) -> Send | None:
        """The send's row, or None."""
        with self.database.read() as s:
            return s.get(Send, int(send_id))

    def find(
        self, states: Sequence[str] | None = None, job_id: int | None = None, limit: int | None = None,
        offset: int = 0,
    ) -> list[Send]:
        """Sends, newest first, optionally filtered; ``offset``: skip that many (paging)."""
        with self.database.read() as s:
            q = select(Send)
            if states:
                q = q.where(Send.state.in_(list(states)))
            if job_id is not None:
                q = q.where(Send.job_id == int(job_id))
            q = q.order_by(Send.id.desc())
            if limit:
                q = q.limit(limit)
            if offset:
                q = q.offset(offset)
            return list(s.scalars(q))

    def count_by_state(self) -> dict[str, int]:
        """How many sends are in each state (every state, in :data:`SEND_STATES` order)."""
        with self.database.read() as s:
            found = {state: count for state, count in s.execute(select(Send.state, func.count()).group_by(Send.state))}
        return {state: int(found.get(state, 0)) for state in SEND_STATES}

    def due(self, now: datetime | None = None) -> list[Send]:
        """``pending`` and ``retrying`` sends whose ``next_attempt_at`` has passed, oldest first."""
        now = now or utcnow()
        with self.database.read() as s:
            q = (
                select(Send)
                .where(Send.state.in_(("pending", "retrying")))
                .where((Send.next_attempt_at.is_(None)) | (Send.next_attempt_at <= now))
                .order_by(Send.id)
            )
            return list(s.scalars(q))
