"""What the modality worklist said about each study (``ledger.worklist``).

One row per study (:class:`node.ledger.schema.WorklistAnswer`), written by
:mod:`node.workflow.worklist` after each lookup: the outcome (``found``,
``not_found``, ``down``), the scheduled procedure steps, the clinical facts, the
pipeline and expected series the scheduled protocol names. Every lookup also adds an
event (entity ``worklist``, to-state = outcome) with the node's words, so `cardionode
status` can say what happened. No patient name, birth date or ID is stored (see the
table's docstring for ``patient_key``).

Readers: :meth:`WorklistStore.answer_for` (the study page's "worklist context found
y/n", the conductor's clinical inputs), :meth:`WorklistStore.of_studies` (a page of
studies at once), :meth:`WorklistStore.counts` (`cardionode status`), and the keys that
pair studies of one order or one patient (:meth:`WorklistStore.with_patient_key`,
:meth:`WorklistStore.with_accession`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import func, select

from node.ledger.events import record_event
from node.ledger.schema import WORKLIST_OUTCOMES, LedgerError, Store, WorklistAnswer, clip, utcnow

__all__ = ["WorklistStore"]


class WorklistStore(Store):
    """Worklist answers by study (``ledger.worklist``)."""

    def record(
        self,
        study_uid: str,
        outcome: str,
        *,
        worklist: str,
        reason: str,
        matched_by: str = "",
        error: str = "",
        patient_key: str = "",
        accession_number: str = "",
        pipeline: str | None = None,
        expected_series: Sequence[str] = (),
        clinical: Mapping[str, Any] | None = None,
        steps: Iterable[Mapping[str, Any]] = (),
    ) -> WorklistAnswer:
        """Keep the outcome of one lookup of ``study_uid`` (replacing the previous one) and add its event.

        A ``down`` lookup of a study that already has a ``found`` or ``not_found`` answer
        keeps that answer (the worklist said it once) and only counts the attempt and the error.

        Parameters
        ----------
        outcome : str
            One of :data:`node.ledger.schema.WORKLIST_OUTCOMES`.
        worklist : str
            Name of the ``[[worklists]]`` entry asked (the one that answered, when found).
        reason : str
            The node's words for the event (no identifier).
        """
        if outcome not in WORKLIST_OUTCOMES:
            raise LedgerError(f"unknown worklist outcome {outcome!r} (known: {', '.join(WORKLIST_OUTCOMES)})")
        now = utcnow()
        with self.database.write() as s:
            row = s.get(WorklistAnswer, study_uid)
            previous = row.outcome if row is not None else None
            if row is None:
                row = WorklistAnswer(study_uid=study_uid, attempts=0, queried_at=now)
                s.add(row)
            row.attempts = (row.attempts or 0) + 1
            row.queried_at = now
            row.updated_at = now
            row.error = clip(error, 2000)
            if outcome == "down" and previous in ("found", "not_found"):
                record_event(s, "worklist", study_uid, previous, previous, clip(reason, 2000))
                s.flush()
                return row
            row.outcome = outcome
            row.worklist = clip(worklist, 64)
            row.matched_by = clip(matched_by, 16)
            row.patient_key = clip(patient_key, 64)
            row.accession_number = clip(accession_number, 64)
            row.pipeline = pipeline
            row.expected_series = list(expected_series)
            row.clinical = dict(clinical or {})
            row.steps = [dict(step) for step in steps]
            record_event(s, "worklist", study_uid, previous, outcome, clip(reason, 2000))
            s.flush()
            return row

    def answer_for(self, study_uid: str) -> WorklistAnswer | None:
        """The study's worklist answer (``outcome`` ``found``, ``not_found`` or ``down``), or None when the
        study was never looked up (no worklist configured, or not yet)."""
        with self.database.read() as s:
            return s.get(WorklistAnswer, study_uid)

    def clinical_for(self, study_uid: str) -> dict[str, Any]:
        """The clinical facts of a ``found`` answer (height in m, weight in kg, sex, age in years, reason;
        those the worklist gave), else {}: what the conductor sends to the pipeline with the run."""
        answer = self.answer_for(study_uid)
        return dict(answer.clinical or {}) if answer is not None and answer.outcome == "found" else {}

    def of_studies(self, study_uids: Iterable[str]) -> dict[str, WorklistAnswer]:
        """The answers of the studies in ``study_uids`` that have one, by study UID (one query)."""
        uids = list(dict.fromkeys(study_uids))
        if not uids:
            return {}
        with self.database.read() as s:
            rows = s.scalars(select(WorklistAnswer).where(WorklistAnswer.study_uid.in_(uids))).all()
            return {r.study_uid: r for r in rows}

    def counts(self) -> dict[str, int]:
        """How many studies have each outcome (every outcome, in :data:`WORKLIST_OUTCOMES` order)."""
        with self.database.read() as s:
            found = dict(s.execute(select(WorklistAnswer.outcome, func.count()).group_by(WorklistAnswer.outcome)).all())
        return {outcome: int(found.get(outcome, 0)) for outcome in WORKLIST_OUTCOMES}

    def recent(self, limit: int = 10, outcomes: Sequence[str] | None = None) -> list[WorklistAnswer]:
        """The latest answers, newest first, optionally only with ``outcomes``."""
        with self.database.read() as s:
            q = select(WorklistAnswer)
            if outcomes:
                q = q.where(WorklistAnswer.outcome.in_(list(outcomes)))
            return list(s.scalars(q.order_by(WorklistAnswer.queried_at.desc()).limit(limit)))

    def with_patient_key(self, patient_key: str) -> list[WorklistAnswer]:
        """Answers of every study of one patient (same hashed ID and issuer), oldest lookup first."""
        if not patient_key:
            return []
        with self.database.read() as s:
            q = select(WorklistAnswer).where(WorklistAnswer.patient_key == patient_key)
            return list(s.scalars(q.order_by(WorklistAnswer.queried_at)))

    def record_pairing(self, study_uid: str, step: Mapping[str, Any], pairing: Mapping[str, Any],
                       reason: str) -> WorklistAnswer:
        """Keep what the node found for the other part of a two-day protocol of ``study_uid``
        (:mod:`node.workflow.pairing`) and add its event (entity ``pairing``, to-state ``pairing["outcome"]``).

        ``step`` is the earlier scheduled step (as in ``steps``); it is kept among the answer's steps (replacing
        one with the same SPS ID, accession and date) with ``pairing`` under the key ``"pairing"``: ``outcome``
        (``paired`` | ``alone``), ``study_uid`` (the earlier study's, '' when none), ``states``, ``date`` (ISO),
        ``source`` (``ledger`` or a ``[[retrieve_from]]`` name). Raises :class:`LedgerError` without an answer.
        """
        key = (step.get("sps_id"), step.get("accession_number"), step.get("date"))
        with self.database.write() as s:
            row = s.get(WorklistAnswer, study_uid)
            if row is None:
                raise LedgerError(f"no worklist answer of study {study_uid}: nothing to pair")
            previous = next((str(x["pairing"].get("outcome", "")) for x in row.steps or [] if x.get("pairing")), None)
            steps = [dict(x) for x in row.steps or []
                     if (x.get("sps_id"), x.get("accession_number"), x.get("date")) != key]
            steps.append({**dict(step), "matched": False, "pairing": dict(pairing)})
            row.steps = sorted(steps, key=lambda x: (x.get("date", ""), x.get("time", ""), x.get("sps_id", "")))
            row.updated_at = utcnow()
            record_event(s, "pairing", study_uid, previous, str(pairing.get("outcome", "")), clip(reason, 2000))
            s.flush()
            return row

    def pairing_for(self, study_uid: str) -> dict[str, Any] | None:
        """The pairing :meth:`record_pairing` kept for ``study_uid`` (with ``step``: the earlier step), or None."""
        answer = self.answer_for(study_uid)
        for step in (answer.steps or []) if answer is not None else []:
            if step.get("pairing"):
                return {**dict(step["pairing"]), "step": {k: v for k, v in step.items() if k != "pairing"}}
        return None

    def with_accession(self, accession_number: str) -> list[WorklistAnswer]:
        """Answers of every study scheduled under one accession number, oldest lookup first."""
        if not accession_number:
            return []
        with self.database.read() as s:
            q = select(WorklistAnswer).where(WorklistAnswer.accession_number == accession_number)
            return list(s.scalars(q.order_by(WorklistAnswer.queried_at)))
