"""Stress-rest pairing across studies: the two days of a two-day protocol analysed together.

In a two-day SPECT MPI protocol the rest images of one day and the stress images of another
are separate studies (separate orders, accessions and Study Instance UIDs). The node pairs
them when the modality worklist says so (:mod:`node.workflow.worklist`), and runs **one** job
on today's study whose inputs are today's series plus the earlier study's series of the
states today lacks. Its results belong to today's study (its Study Instance UID); the SR
cites the earlier images as Pertinent Other Evidence, and the report says "rest from the
study of <date>".

**The decision** (:func:`earlier_part`, the one rule): today's study has a ``found`` worklist
answer that names a pipeline; the matched scheduled steps (SPS) name some acquisition states
(e.g. stress) and the pipeline's required series rules need others (rest); an SPS of the same
patient among the answer's steps with one of those states, not today's, dated 1 to
``pair_within_days`` days before today's step, is the other part (the latest such date; its
states that today lacks are paired). The answer holds those steps: when the matched steps lack
a state, the lookup also asks by patient over ``pair_within_days`` either side and keeps the
other days' steps (:func:`node.workflow.worklist.look_up`, :class:`node.config.Worklist`). No
such step: nothing to pair, the study runs alone by its rule as before (a stress-only protocol,
or day 1 of a two-day protocol, is not an error) and nothing is held.

**Finding the earlier study** (:func:`pair`): first in the ledger (a study the node received:
the order's Study Instance UID, or a study whose worklist answer matched that step), whose
series of the paired states still have their files in the spool; otherwise at each
``[[retrieve_from]]`` Q/R source (:class:`node.config.RetrieveSource`): a Study Root C-FIND by
Patient ID with the step's date and modality (the match whose Study Instance UID is the
order's, else whose accession is the step's, else the only one), then a C-MOVE of that study
to the node's own AE title (:mod:`node.dicom.retrieve`). The moved instances arrive through
the listener like any C-STORE (spool, fsync, ledger), as instances of the earlier study; while
they arrive the assembler leaves that study alone (:attr:`Pairer.fetching`), and afterwards it
is recorded ``ignored`` with the reason "fetched as the earlier part of ..." so that it is not
processed on its own. A study processed before whose files retention pruned is fetched again
(and, being a finished study receiving instances, runs again by its own rule; its deterministic
outputs are the same objects, so the PACS sees no duplicate).

**Never blocking**: the pairing runs on a background thread (:class:`Pairer`), started by the
assembler when today's study has its worklist answer and the decision names an earlier step. While it runs, completeness does not use
the worklist's expected series (the study still completes by its quiet period or force
deadline, as without a worklist); once recorded, the expected series apply. A worklist, Q/R
source or C-MOVE that fails, or an earlier study found nowhere, records ``alone`` with the
node's words: today's study is processed alone by its rule, and the pipeline's report says
which state is missing. What was decided is kept with the worklist answer
(:meth:`node.ledger.worklist.WorklistStore.record_pairing`) and is an event (entity
``pairing``) that `cardionode status --study` shows (a node stopped during a fetch pairs again
after its restart; the partly fetched study may then be processed once on its own); the job's inputs are chosen where they always are
(:meth:`node.queue.conductor.Conductor._dispatch`, with :func:`paired_study`). No identifier is
logged; the patient ID is read from the spool file for the queries and never kept.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from pydicom import Dataset

from node.config import RetrieveSource, Settings, Worklist
from node.dicom.logs import hash_identifier
from node.dicom.retrieve import RetrieveUnavailable, find_studies, move_study
from node.dicom.sender import Target
from node.ledger import Ledger, LedgerError, WorklistAnswer
from node.pipelines import registry
from node.telemetry import STUDIES_PAIRED
from node.workflow.background import StudyTasks
from node.workflow.worklist import StudyKeys, study_keys
from node.workflow.worklist import missing_states as states_missing

__all__ = [
    "PAIRING_OUTCOMES",
    "PairedStudy",
    "Pairer",
    "Partner",
    "earlier_part",
    "missing_states",
    "pair",
    "paired_study",
    "series_of_states",
]

#: what :func:`pair` records: the earlier study found (in the ledger or fetched), or today's study alone
PAIRING_OUTCOMES = ("paired", "alone")

_log = logging.getLogger(__name__)


def _day(text: str) -> date | None:
    try:
        return date.fromisoformat(text) if text else None
    except ValueError:
        return None


def missing_states(answer: WorklistAnswer) -> tuple[str, ...]:
    """The acquisition states the ``found`` answer's pipeline requires that today's matched steps do not schedule
    (:func:`node.workflow.worklist.missing_states`); () for another outcome."""
    if answer.outcome != "found":
        return ()
    return states_missing(answer.pipeline, [str(s.get("state")) for s in answer.steps or [] if s.get("matched")])


@dataclass(frozen=True)
class Partner:
    """The earlier part of today's protocol: its scheduled ``step`` (as the ledger keeps steps) and the
    ``states`` of it that today lacks."""

    step: dict[str, Any]
    states: tuple[str, ...]

    @property
    def date(self) -> str:
        """The earlier step's date, ISO."""
        return str(self.step.get("date", ""))


def earlier_part(answer: WorklistAnswer, steps: Sequence[Mapping[str, Any]], within_days: int) -> Partner | None:
    """The pairing decision: the earlier scheduled step that completes today's study, or None (see the module
    docstring). ``steps``: the scheduled steps known for the patient (the answer's, which include the other
    days' when today's lack a state); those the answer matched to today's study are today's. ``within_days``:
    the worklist's ``pair_within_days``."""
    missing = missing_states(answer)
    matched = [s for s in answer.steps or [] if s.get("matched")]
    today = max((d for d in (_day(s.get("date", "")) for s in matched) if d is not None), default=None)
    if not missing or today is None:
        return None
    modality = next((s.get("modality") for s in matched if s.get("modality")), "")
    own = {(s.get("sps_id"), s.get("accession_number"), s.get("date")) for s in matched}
    candidates = []
    for step in steps:
        when = _day(str(step.get("date", "")))
        if (step.get("sps_id"), step.get("accession_number"), step.get("date")) in own or when is None:
            continue
        if step.get("state") not in missing or (modality and step.get("modality") and step["modality"] != modality):
            continue
        if today - timedelta(days=within_days) <= when < today:
            candidates.append(step)
    if not candidates:
        return None
    best = max(candidates, key=lambda s: (s["date"], s.get("time", ""), s.get("sps_id", "")))
    states = tuple(st for st in missing if any(c["state"] == st and c["date"] == best["date"]
                                               and c.get("accession_number") == best.get("accession_number")
                                               for c in candidates))
    chosen = {k: v for k, v in best.items() if k != "pairing"}
    return Partner({**chosen, "matched": False}, states)


@dataclass(frozen=True)
class PairedStudy:
    """A recorded pairing whose earlier study is in the ledger: what the conductor adds to today's job and
    the pipeline states in its report (``date`` ISO, ``states`` the earlier study contributes)."""

    study_uid: str
    earlier_study_uid: str
    date: str
    states: tuple[str, ...]

    def run_pairing(self) -> dict[str, Any]:
        """The pairing as :attr:`node.pipelines.options.RunConfig.pairing` carries it to the pipeline."""
        return {"study_uid": self.study_uid, "earlier_study_uid": self.earlier_study_uid, "date": self.date,
                "states": list(self.states)}


def paired_study(ledger: Ledger, study_uid: str) -> PairedStudy | None:
    """The earlier study paired with ``study_uid`` (outcome ``paired``), or None."""
    record = ledger.worklist.pairing_for(study_uid)
    if not record or record.get("outcome") != "paired" or not record.get("study_uid"):
        return None
    return PairedStudy(study_uid, str(record["study_uid"]), str(record.get("date", "")),
                       tuple(str(s) for s in record.get("states") or ()))


# ----------------------------------------------------------------------------- finding the earlier study


def series_of_states(ledger: Ledger, pipeline_name: str, study_uid: str, states: Sequence[str]) -> list[str]:
    """Series of ``study_uid`` that the pipeline's series rules of ``states`` take (files in the spool or not):
    the earlier study's part of a paired job's inputs."""
    pipeline = next((p for p in registry.all_pipelines() if p.name == pipeline_name), None)
    if pipeline is None:
        return []
    accepted = pipeline.accept(ledger.studies.summary(study_uid))
    return sorted({uid for rule in pipeline.series_rules if rule.states & set(states)
                   for uid in accepted.series_by_rule.get(rule.name, ())})


def _usable_in_ledger(ledger: Ledger, pipeline: str, study_uid: str, states: Sequence[str]) -> bool:
    series = series_of_states(ledger, pipeline, study_uid, states)
    return bool(series) and bool(ledger.instances.of_study(study_uid, series))


def _ledger_candidates(ledger: Ledger, answer: WorklistAnswer, partner: Partner, own: str) -> list[str]:
    """Studies in the ledger that may be the earlier part: the order's Study Instance UID, and studies of the same
    patient whose worklist answer matched the earlier step."""
    found = []
    order_uid = str(partner.step.get("study_uid", "") or "")
    if order_uid and order_uid != own and ledger.studies.get(order_uid) is not None:
        found.append(order_uid)
    key = (partner.step.get("sps_id"), partner.step.get("accession_number"), partner.step.get("date"))
    for other in ledger.worklist.with_patient_key(answer.patient_key):
        if other.study_uid == own or other.outcome != "found":
            continue
        if any((s.get("sps_id"), s.get("accession_number"), s.get("date")) == key and s.get("matched")
               for s in other.steps or []):
            found.append(other.study_uid)
    return list(dict.fromkeys(found))


def _study_query(keys: StudyKeys, partner: Partner) -> Dataset:
    ds = Dataset()
    ds.PatientID = keys.patient_id
    ds.IssuerOfPatientID = ""
    ds.StudyDate = partner.date.replace("-", "")
    ds.ModalitiesInStudy = str(partner.step.get("modality", "") or keys.modality)
    ds.StudyInstanceUID = ""
    ds.AccessionNumber = ""
    return ds


def _choose_study(matches: Sequence[Dataset], keys: StudyKeys, partner: Partner) -> tuple[str, str]:
    """(Study Instance UID, how it was chosen) of the C-FIND matches, or ('', why none)."""
    ours = [m for m in matches if str(m.get("StudyInstanceUID", "") or "") not in ("", keys.study_uid)
            and str(m.get("IssuerOfPatientID", "") or keys.issuer_of_patient_id) == keys.issuer_of_patient_id]
    order_uid = str(partner.step.get("study_uid", "") or "")
    accession = str(partner.step.get("accession_number", "") or "")
    for words, test in (("the order's Study Instance UID", lambda m: order_uid and m.StudyInstanceUID == order_uid),
                        ("the step's accession number", lambda m: accession and m.get("AccessionNumber") == accession)):
        hit = next((m for m in ours if test(m)), None)
        if hit is not None:
            return str(hit.StudyInstanceUID), words
    if len(ours) == 1:
        return str(ours[0].StudyInstanceUID), "the only study of the patient that day"
    return "", (f"{len(ours)} studies of the patient that day, none with the order's UID or accession" if ours
                else "no study of the patient that day")


class _Fetched:
    """What a fetch gave: the study, the source's name and the words; ``study_uid`` '' when it failed."""

    def __init__(self, study_uid: str, source: str, words: str) -> None:
        self.study_uid, self.source, self.words = study_uid, source, words


def _fetch(ledger: Ledger, settings: Settings, answer: WorklistAnswer, keys: StudyKeys, partner: Partner,
           fetching: set[str]) -> _Fetched:
    if not settings.retrieve_from:
        return _Fetched("", "", "not in the ledger and no [[retrieve_from]] source configured")
    problems: list[str] = []
    for source in settings.retrieve_from:
        target = Target(source.name, source.ae_title, source.host, source.port, None)
        try:
            matches = find_studies(target, _study_query(keys, partner), calling_ae=settings.ae_title,
                                   timeout_s=source.timeout_s, identifiers=keys.identifiers())
        except RetrieveUnavailable as exc:
            problems.append(f"{source.name}: C-FIND {exc.kind}: {exc}")
            continue
        uid, chosen = _choose_study(matches, keys, partner)
        if not uid:
            problems.append(f"{source.name}: {chosen}")
            continue
        fetched = _move(ledger, settings, source, target, answer, partner, uid, chosen, fetching)
        if fetched.study_uid:
            return fetched
        problems.append(fetched.words)
    return _Fetched("", "", "; ".join(problems))


def _move(ledger: Ledger, settings: Settings, source: RetrieveSource, target: Target, answer: WorklistAnswer,
          partner: Partner, uid: str, chosen: str, fetching: set[str]) -> _Fetched:
    fetching.add(uid)
    try:
        try:
            outcome = move_study(target, uid, destination_ae=source.move_destination or settings.ae_title,
                                 calling_ae=settings.ae_title, timeout_s=source.timeout_s)
        except RetrieveUnavailable as exc:
            return _Fetched("", "", f"{source.name}: C-MOVE {exc.kind}: {exc}")
        if not _usable_in_ledger(ledger, str(answer.pipeline), uid, partner.states):
            return _Fetched("", "", f"{source.name}: {outcome.words()}; no {'/'.join(partner.states)} series of "
                                    f"the study ({chosen}) in the ledger afterwards")
        words = f"fetched from {source.name} ({chosen}; {outcome.words()})"
        study = ledger.studies.get(uid)
        if study is not None and study.state == "receiving":
            try:
                ledger.studies.transition(uid, "ignored", f"fetched as the earlier part ({'/'.join(partner.states)}) "
                                          f"of a two-day protocol; analysed with study {hash_identifier(answer.study_uid)}"
                                          " of the later day, not on its own", expected_from=("receiving",))
            except LedgerError as exc:  # the assembler got there first (a fetch slower than its rule)
                _log.info("fetched study %s left as it is: %s", hash_identifier(uid), exc)
        return _Fetched(uid, source.name, words)
    finally:
        fetching.discard(uid)


def _within(settings: Settings, answer: WorklistAnswer) -> int:
    """``pair_within_days`` of the worklist that answered (its default when no longer configured)."""
    return next((w.pair_within_days for w in settings.worklists if w.name == answer.worklist),
                Worklist.model_fields["pair_within_days"].default)


def pair(ledger: Ledger, settings: Settings, study_uid: str, fetching: set[str] | None = None) -> dict[str, Any] | None:
    """Pair ``study_uid`` with the earlier part of its protocol, if it has one, and record what happened.

    Blocks up to the worklist's and the Q/R source's timeouts (:class:`Pairer` runs it on a thread).
    Returns the recorded pairing (:meth:`node.ledger.worklist.WorklistStore.pairing_for`), or None when
    there is nothing to pair (no answer, no missing state, no earlier step). ``fetching``: the set the
    study being fetched is put in meanwhile (the assembler leaves those alone).
    """
    answer = ledger.worklist.answer_for(study_uid)
    if answer is None or not missing_states(answer):
        return None
    keys = study_keys(ledger, study_uid)
    partner = earlier_part(answer, answer.steps or [], _within(settings, answer))
    tag = hash_identifier(study_uid)
    if partner is None:
        return None
    states, when = "/".join(partner.states), partner.date
    pipeline = str(answer.pipeline)
    in_ledger = [uid for uid in _ledger_candidates(ledger, answer, partner, study_uid)
                 if _usable_in_ledger(ledger, pipeline, uid, partner.states)]
    if in_ledger:
        record = {"outcome": "paired", "study_uid": in_ledger[0], "states": list(partner.states), "date": when,
                  "source": "ledger"}
        reason = f"{states} from the study of {when} (in the ledger)"
        STUDIES_PAIRED.labels(outcome="from_ledger").inc()
    elif keys is None:
        record = {"outcome": "alone", "study_uid": "", "states": list(partner.states), "date": when, "source": ""}
        reason = f"{states} of {when} not paired: no instance of today's study readable here to query with"
        STUDIES_PAIRED.labels(outcome="alone").inc()
    else:
        fetched = _fetch(ledger, settings, answer, keys, partner, fetching if fetching is not None else set())
        if fetched.study_uid:
            record = {"outcome": "paired", "study_uid": fetched.study_uid, "states": list(partner.states),
                      "date": when, "source": fetched.source}
            reason = f"{states} from the study of {when}: {fetched.words}"
            STUDIES_PAIRED.labels(outcome="fetched").inc()
        else:
            record = {"outcome": "alone", "study_uid": "", "states": list(partner.states), "date": when, "source": ""}
            reason = f"{states} of {when} not found ({fetched.words}); processed alone"
            STUDIES_PAIRED.labels(outcome="alone").inc()
    (_log.info if record["outcome"] == "paired" else _log.warning)("study %s: pairing: %s", tag, reason)
    try:
        ledger.worklist.record_pairing(study_uid, partner.step, record, reason)
    except LedgerError as exc:
        _log.info("study %s: pairing not recorded: %s", tag, exc)
        return None
    return ledger.worklist.pairing_for(study_uid)


class Pairer:
    """Pairings of receiving studies on a background thread (never on the acknowledge path, never waited for).

    :meth:`request` is cheap: the assembler calls it for each receiving study on every tick; a pairing starts
    once per study (per process) when its worklist answer is ``found`` and :func:`earlier_part` names a step. :attr:`fetching`
    holds the earlier studies being fetched (the assembler leaves them alone); :meth:`busy` says whether a
    study's pairing is under way (completeness does not use the worklist's expected series meanwhile).
    """

    def __init__(self, ledger: Ledger, settings: Settings) -> None:
        self.ledger = ledger
        self.settings = settings
        self.fetching: set[str] = set()
        self._tasks: StudyTasks[dict[str, Any] | None] = StudyTasks(
            "pairing", lambda uid: pair(self.ledger, self.settings, uid, self.fetching))
        self._tried: set[str] = set()
        self._lock = threading.Lock()

    def request(self, study_uid: str) -> bool:
        """Start the pairing of ``study_uid`` if it is due; returns whether one was started."""
        with self._lock:
            if study_uid in self._tried:
                return False
        answer = self.ledger.worklist.answer_for(study_uid)
        if answer is None or answer.outcome != "found":
            return False
        with self._lock:
            self._tried.add(study_uid)
        if earlier_part(answer, answer.steps or [], _within(self.settings, answer)) is None:
            return False  # nothing to pair: the study's rule is not held
        if self.ledger.worklist.pairing_for(study_uid) is not None:
            return False
        return self._tasks.start(study_uid)

    def busy(self, study_uid: str) -> bool:
        """Whether the pairing of ``study_uid`` is under way."""
        return self._tasks.running(study_uid)

    def wait(self, timeout_s: float | None = None) -> None:
        """Wait for the pairings under way (tests, shutdown)."""
        self._tasks.wait(timeout_s)

    def close(self) -> None:
        """Stop taking pairings; those under way finish within their timeouts."""
        self._tasks.close()
