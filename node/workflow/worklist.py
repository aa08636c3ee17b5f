"""Modality worklist context: what was scheduled for a study, and what the node does with it.

For each study the node asks the configured worklists (``[[worklists]]``,
:class:`node.config.Worklist`), in order, with one C-FIND each
(:func:`node.dicom.worklist_scu.find_scheduled_steps`):

1. by **Accession Number** when the study's images carry one (every scheduled
   procedure step, SPS, of the order comes back: both steps of a one-day stress/rest
   protocol);
2. else, or when that found nothing, by **Patient ID** (+ **Issuer of Patient ID**
   when the images carry it) with the study's **Modality** and a **Scheduled Procedure
   Step Start Date** range of ``window_days`` either side of the Study Date (both days
   of a two-day protocol come back when they are that close).

When the matched steps lack an acquisition state the pipeline needs (stress today, rest on
another day), the worklist that answered is also asked by patient over ``pair_within_days`` either
side of the Study Date (unless the first lookup already was by patient over at least that window),
and those other days' steps are kept, unmatched: the stress-rest pairing across studies decides
from them (:mod:`node.workflow.pairing`). The first worklist with matches answers; ``not_found`` only when every worklist
answered without a match; ``down`` when none matched and one did not answer. The
keys are read from the header of one received instance of the study (spool file).

**Which answers match the study** (:func:`choose_steps`): an SPS whose Study
Instance UID is the study's own (the modality used the RIS's UID) decides; otherwise
the SPS are grouped by order (Accession Number + Requested Procedure ID), and the
order with an SPS closest in date to the Study Date is chosen (a tie: the order whose
SPS time is earliest). Of that order, the SPS of that date are the study's
(``matched``): both steps of a one-day protocol; only the rest step on day 1 of a
two-day protocol scheduled as one order.

**What the node takes from the answer** (:func:`interpret`):

* each SPS's acquisition state, ``stress`` or ``rest``, by the node's one rule
  (:func:`node.imaging.states.state_from_text`) over the SPS description, its
  Scheduled Protocol Code Sequence (meanings, then values) and the requested
  procedure description; the tracer from the same texts
  (:mod:`node.imaging.radiopharmaceuticals`);
* the **pipeline**: the first registered pipeline with a series rule for the SPS's
  modality and a scheduled state (and tracer, when both say one); the **expected
  series**: that pipeline's rules for the scheduled states of the matched SPS (the
  completeness rule ``expected_series`` then waits for those, not for a state that is
  scheduled on another day);
* the **clinical inputs** (:data:`CLINICAL_KEYS`): height in m (Patient's Size
  (0010,1020)), weight in kg (Patient's Weight (0010,1030)), sex (M/F/O), age in years
  (Patient's Age, else from the birth date at the SPS date; the birth date is not
  kept), reason for the requested procedure (0040,1002, else its code meaning).

Everything kept (:meth:`node.ledger.worklist.WorklistStore.record`): every SPS
returned (date, time, modality, station, description, protocol codes, states, tracer,
accession, requested procedure ID/description/codes, the order's Study Instance UID,
``matched``) so that studies of one order or one patient can be paired later, a hash of
the patient ID and issuer (never the ID), no name and no birth date. Nothing here is
logged with an identifier.

**Never blocking**: :class:`WorklistLookups` runs lookups on its own threads, started
by the assembler when it first examines a receiving study; completeness reads the
answer if there is one and never waits for it. A worklist that is down is recorded
(``down``, with the node's words) and asked again at most :data:`MAX_ATTEMPTS` times,
:data:`RETRY_S` apart, while the study is still receiving; `cardionode status` shows it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import pydicom
from pydicom import Dataset
from pydicom.sequence import Sequence as DicomSequence

from node.config import Settings, Worklist
from node.dicom.logs import PatientIdentifiers, hash_identifier
from node.dicom.sender import Target
from node.dicom.worklist_scu import WorklistUnavailable, find_scheduled_steps
from node.imaging.radiopharmaceuticals import pet_tracer_from_text, tracer_from_text
from node.imaging.states import state_from_text
from node.ledger import Ledger, WorklistAnswer, utcnow
from node.pipelines import registry
from node.pipelines.clinical import age_years, height_m, weight_kg
from node.telemetry import MWL_QUERIES
from node.workflow.background import StudyTasks

__all__ = [
    "CLINICAL_KEYS",
    "MAX_ATTEMPTS",
    "RETRY_S",
    "Expectation",
    "Interpretation",
    "StudyKeys",
    "WorklistLookups",
    "choose_steps",
    "clinical_facts",
    "expectation",
    "interpret",
    "look_up",
    "missing_states",
    "query_identifier",
    "scheduled_step",
    "study_keys",
]

_log = logging.getLogger(__name__)

#: the clinical facts taken from a worklist answer (units in the names)
CLINICAL_KEYS = ("height_m", "weight_kg", "sex", "age_years", "reason")
#: lookups of a study while its worklists are down, at most
MAX_ATTEMPTS = 3
#: seconds between two lookups of a study while its worklists are down
RETRY_S = 30.0

#: header elements read from one instance of the study (the match keys)
_KEY_TAGS = ("AccessionNumber", "PatientID", "IssuerOfPatientID", "Modality", "StudyDate", "StudyInstanceUID")


# ----------------------------------------------------------------------------- keys


@dataclass(frozen=True)
class StudyKeys:
    """The match keys of one study, read from its images (identifiers: never log them)."""

    study_uid: str
    accession_number: str = ""
    patient_id: str = ""
    issuer_of_patient_id: str = ""
    modality: str = ""
    study_date: date | None = None

    @classmethod
    def from_dataset(cls, ds: Dataset) -> StudyKeys:
        """The keys of the study ``ds`` belongs to."""
        return cls(
            study_uid=str(ds.get("StudyInstanceUID", "") or ""),
            accession_number=str(ds.get("AccessionNumber", "") or "").strip(),
            patient_id=str(ds.get("PatientID", "") or "").strip(),
            issuer_of_patient_id=str(ds.get("IssuerOfPatientID", "") or "").strip(),
            modality=str(ds.get("Modality", "") or "").strip().upper(),
            study_date=_date(ds.get("StudyDate")),
        )

    @property
    def patient_key(self) -> str:
        """A one-way hash of patient ID and issuer ('' without a patient ID): pairs studies, reveals no ID."""
        if not self.patient_id:
            return ""
        return hash_identifier(f"{self.issuer_of_patient_id}\\{self.patient_id}", 64)

    def identifiers(self) -> PatientIdentifiers:
        """These identifiers, for redaction from logs while a query runs."""
        ids = frozenset(v.lower() for v in (self.patient_id, self.accession_number) if len(v) >= 2)
        return PatientIdentifiers(ids=ids)


def study_keys(ledger: Ledger, study_uid: str) -> StudyKeys | None:
    """The match keys of ``study_uid`` from the header of its first kept instance; None when none is readable."""
    for instance in ledger.instances.of_study(study_uid)[:3]:
        try:
            ds = pydicom.dcmread(instance.path, stop_before_pixels=True, specific_tags=list(_KEY_TAGS))
        except (OSError, ValueError, pydicom.errors.InvalidDicomError):
            continue
        keys = StudyKeys.from_dataset(ds)
        return keys if keys.study_uid else StudyKeys(study_uid, keys.accession_number, keys.patient_id,
                                                     keys.issuer_of_patient_id, keys.modality, keys.study_date)
    return None


def query_identifier(keys: StudyKeys, by: str, window_days: int = 1) -> Dataset:
    """The C-FIND identifier of one lookup: match keys of ``by`` (``accession`` or ``patient``), return keys empty.

    ``patient``: Patient ID (+ Issuer of Patient ID when known), Modality and an SPS start date range of
    ``window_days`` either side of the Study Date (no date range when the study has no date).
    Patient's Name is not asked for; the birth date only gives the age (it is not kept).
    """
    if by not in ("accession", "patient"):
        raise ValueError(f"unknown lookup {by!r}: accession or patient")
    ds = Dataset()
    ds.AccessionNumber = keys.accession_number if by == "accession" else ""
    ds.PatientID = keys.patient_id if by == "patient" else ""
    ds.IssuerOfPatientID = keys.issuer_of_patient_id if by == "patient" else ""
    ds.PatientSex = ""
    ds.PatientBirthDate = ""  # for the age at the scheduled date only; never kept
    ds.PatientAge = ""
    ds.PatientSize = None
    ds.PatientWeight = None
    ds.StudyInstanceUID = ""
    ds.RequestedProcedureID = ""
    ds.RequestedProcedureDescription = ""
    ds.RequestedProcedureCodeSequence = DicomSequence([])
    ds.ReasonForTheRequestedProcedure = ""
    step = Dataset()
    step.Modality = keys.modality if by == "patient" else ""
    step.ScheduledStationAETitle = ""
    step.ScheduledProcedureStepStartDate = ""
    if by == "patient" and keys.study_date is not None:
        low = keys.study_date - timedelta(days=window_days)
        high = keys.study_date + timedelta(days=window_days)
        step.ScheduledProcedureStepStartDate = f"{low:%Y%m%d}-{high:%Y%m%d}"
    step.ScheduledProcedureStepStartTime = ""
    step.ScheduledProcedureStepDescription = ""
    step.ScheduledProtocolCodeSequence = DicomSequence([])
    step.ScheduledProcedureStepID = ""
    ds.ScheduledProcedureStepSequence = DicomSequence([step])
    return ds


# ----------------------------------------------------------------------------- answers


def _date(value: object) -> date | None:
    text = str(value or "").strip()[:8]
    try:
        return datetime.strptime(text, "%Y%m%d").date() if len(text) == 8 else None
    except ValueError:
        return None


def _codes(sequence: Any) -> list[dict[str, str]]:
    return [
        {"value": str(item.get("CodeValue", "") or ""), "scheme": str(item.get("CodingSchemeDesignator", "") or ""),
         "meaning": str(item.get("CodeMeaning", "") or "")}
        for item in (sequence or [])
    ]


def _tracer(*texts: str) -> str:
    for text in texts:
        found = tracer_from_text(text) or pet_tracer_from_text(text)
        if found:
            return found
    return ""


def scheduled_step(answer: Dataset) -> dict[str, Any]:
    """One C-FIND match (one SPS, with its order) as the plain values the ledger keeps (no patient data).

    Keys: ``sps_id``, ``date`` (ISO), ``time`` (HHMMSS), ``modality``, ``station_ae``, ``description``,
    ``protocol_codes`` (value/scheme/meaning), ``state`` (stress|rest|unknown), ``tracer`` (key or ''),
    ``accession_number``, ``requested_procedure_id``, ``requested_procedure_description``,
    ``requested_procedure_codes``, ``study_uid`` (the order's), ``matched`` (False until chosen).
    """
    steps = answer.get("ScheduledProcedureStepSequence") or [Dataset()]
    sps = steps[0]
    protocol = _codes(sps.get("ScheduledProtocolCodeSequence"))
    procedure = _codes(answer.get("RequestedProcedureCodeSequence"))
    description = str(sps.get("ScheduledProcedureStepDescription", "") or "")
    procedure_text = str(answer.get("RequestedProcedureDescription", "") or "")
    state = state_from_text(description, *(c["meaning"] for c in protocol), *(c["value"] for c in protocol),
                            procedure_text)
    when = _date(sps.get("ScheduledProcedureStepStartDate"))
    return {
        "sps_id": str(sps.get("ScheduledProcedureStepID", "") or ""),
        "date": when.isoformat() if when else "",
        "time": str(sps.get("ScheduledProcedureStepStartTime", "") or "")[:6],
        "modality": str(sps.get("Modality", "") or "").upper(),
        "station_ae": str(sps.get("ScheduledStationAETitle", "") or ""),
        "description": description,
        "protocol_codes": protocol,
        "state": state,
        "tracer": _tracer(description, *(c["meaning"] for c in protocol), procedure_text,
                          *(c["meaning"] for c in procedure)),
        "accession_number": str(answer.get("AccessionNumber", "") or ""),
        "requested_procedure_id": str(answer.get("RequestedProcedureID", "") or ""),
        "requested_procedure_description": procedure_text,
        "requested_procedure_codes": procedure,
        "study_uid": str(answer.get("StudyInstanceUID", "") or ""),
        "matched": False,
    }


def choose_steps(steps: Sequence[Mapping[str, Any]], keys: StudyKeys) -> tuple[list[dict[str, Any]], str]:
    """The SPS of ``steps`` that are the study's (``matched`` set), every step kept; and how they were chosen.

    See the module docstring for the rule. Returns ``(steps sorted by date and time, words)``;
    no step is matched when ``steps`` is empty.
    """
    ordered = sorted((dict(s) for s in steps), key=lambda s: (s["date"], s["time"], s["sps_id"]))
    if not ordered:
        return ordered, "no scheduled procedure step"
    own = [s for s in ordered if keys.study_uid and s["study_uid"] == keys.study_uid]
    if own:
        for s in own:
            s["matched"] = True
        return ordered, f"{len(own)} scheduled step(s) of the study's own Study Instance UID"

    def distance(step: Mapping[str, Any]) -> int:
        when = _date(step["date"].replace("-", ""))
        if when is None or keys.study_date is None:
            return 0
        return abs((when - keys.study_date).days)

    best = min(ordered, key=lambda s: (distance(s), s["date"], s["time"]))
    order = (best["accession_number"], best["requested_procedure_id"])
    orders = {(s["accession_number"], s["requested_procedure_id"]) for s in ordered if distance(s) == distance(best)}
    for s in ordered:
        if (s["accession_number"], s["requested_procedure_id"]) == order and s["date"] == best["date"]:
            s["matched"] = True
    matched = sum(1 for s in ordered if s["matched"])
    words = (f"{matched} scheduled step(s) of the order closest in date ({distance(best)} day(s) from the study date)"
             + (f"; {len(orders)} orders that close, the earliest taken" if len(orders) > 1 else ""))
    return ordered, words


@dataclass(frozen=True)
class Interpretation:
    """What the node takes from the matched steps: ``pipeline`` (None when no registered pipeline fits),
    ``expected_series`` (rule names of that pipeline), ``states`` and ``tracer`` scheduled, ``clinical``
    (:data:`CLINICAL_KEYS`, only those the worklist gave), ``words`` for the ledger's event."""

    pipeline: str | None
    expected_series: tuple[str, ...]
    states: tuple[str, ...]
    tracer: str
    clinical: dict[str, Any] = field(default_factory=dict)
    words: str = ""


def _age_years(answer: Dataset, on: date | None) -> float | None:
    given = age_years(answer.get("PatientAge"))
    if given is not None:
        return given
    born = _date(answer.get("PatientBirthDate"))
    if born is None or on is None or born > on:
        return None
    return float(on.year - born.year - ((on.month, on.day) < (born.month, born.day)))


def clinical_facts(answer: Dataset, on: date | None) -> dict[str, Any]:
    """The clinical inputs of one match (:data:`CLINICAL_KEYS`; those absent or implausible left out).

    ``on``: the date the age is reckoned at (the SPS date), when only a birth date is given.
    """
    facts: dict[str, Any] = {}
    height = height_m(answer.get("PatientSize"))
    weight = weight_kg(answer.get("PatientWeight"))
    if height is not None:
        facts["height_m"] = height
    if weight is not None:
        facts["weight_kg"] = weight
    sex = str(answer.get("PatientSex", "") or "").strip().upper()
    if sex in ("M", "F", "O"):
        facts["sex"] = sex
    age = _age_years(answer, on)
    if age is not None:
        facts["age_years"] = age
    reason = str(answer.get("ReasonForTheRequestedProcedure", "") or "").strip()
    if not reason:
        codes = _codes(answer.get("ReasonForRequestedProcedureCodeSequence"))
        reason = codes[0]["meaning"] if codes else ""
    if reason:
        facts["reason"] = reason[:200]
    return facts


def interpret(steps: Sequence[Mapping[str, Any]], answers: Sequence[Dataset], keys: StudyKeys) -> Interpretation:
    """Pipeline, expected series, states, tracer and clinical inputs of the ``matched`` steps.

    ``answers`` are the C-FIND matches (same order as the steps they were made from is not needed:
    the patient's facts are the same in every match of one patient; the first with a value wins).
    """
    matched = [s for s in steps if s.get("matched")]
    states = tuple(st for st in ("stress", "rest") if any(s["state"] == st for s in matched))
    tracer = next((s["tracer"] for s in matched if s["tracer"]), "")
    modality = next((s["modality"] for s in matched if s["modality"]), keys.modality)
    on = next((_date(s["date"].replace("-", "")) for s in matched if s["date"]), keys.study_date)
    clinical: dict[str, Any] = {}
    for answer in answers:
        for key, value in clinical_facts(answer, on).items():
            clinical.setdefault(key, value)
    pipeline: str | None = None
    expected: tuple[str, ...] = ()
    for candidate in registry.all_pipelines():
        rules = [r for r in candidate.series_rules if not r.modalities or modality in r.modalities]
        if not rules:
            continue
        if tracer and all(r.tracers and tracer not in r.tracers for r in rules):
            continue
        wanted = tuple(r.name for r in rules if r.required and (not states or not r.states or r.states & set(states)))
        if wanted:
            pipeline, expected = candidate.name, wanted
            break
    words = (f"scheduled {'/'.join(states) or 'state not named'} {modality or ''}".rstrip()
             + (f", tracer {tracer}" if tracer else "")
             + (f" -> {pipeline} expecting {', '.join(expected)}" if pipeline else " -> no pipeline for it"))
    return Interpretation(pipeline, expected, states, tracer, clinical, words)


# ----------------------------------------------------------------------------- lookups


@dataclass(frozen=True)
class Expectation:
    """What completeness takes from a ``found`` answer: the pipeline and the series it should wait for."""

    pipeline: str
    expected_series: tuple[str, ...]
    words: str


def expectation(answer: WorklistAnswer | None) -> Expectation | None:
    """The :class:`Expectation` of a study's worklist answer; None unless it was found and names a pipeline."""
    if answer is None or answer.outcome != "found" or not answer.pipeline or not answer.expected_series:
        return None
    states = [s["state"] for s in answer.steps or [] if s.get("matched") and s.get("state") != "unknown"]
    words = f"the worklist schedules {'/'.join(dict.fromkeys(states)) or 'this study'}"
    return Expectation(answer.pipeline, tuple(answer.expected_series), words)


def _target(worklist: Worklist) -> Target:
    return Target(worklist.name, worklist.ae_title, worklist.host, worklist.port, None)


def look_up(ledger: Ledger, settings: Settings, study_uid: str) -> WorklistAnswer | None:
    """Ask the configured worklists about ``study_uid`` now and keep the answer (blocks up to the timeouts).

    Returns the ledger's answer, or None when no worklist is configured. A study none of whose
    instances this process can read (a listener on another machine) is recorded ``not_found`` with
    that reason. Never raises for a worklist's problems: they are recorded as ``down``.
    """
    if not settings.worklists:
        return None
    answer = _look_up(ledger, settings, study_uid)
    MWL_QUERIES.labels(outcome=answer.outcome).inc()
    return answer


def _look_up(ledger: Ledger, settings: Settings, study_uid: str) -> WorklistAnswer:
    keys = study_keys(ledger, study_uid)
    if keys is None:
        return ledger.worklist.record(study_uid, "not_found", worklist=settings.worklists[0].name,
                                      reason="no instance of the study is readable here: no keys to ask with")
    lookups = [by for by, value in (("accession", keys.accession_number), ("patient", keys.patient_id)) if value]
    if not lookups:
        return ledger.worklist.record(study_uid, "not_found", worklist=settings.worklists[0].name,
                                      reason="the study's images carry neither accession number nor patient ID")
    problems: list[str] = []
    answered: list[str] = []
    for worklist in settings.worklists:
        for by in lookups:
            identifier = query_identifier(keys, by, worklist.window_days)
            try:
                found = find_scheduled_steps(_target(worklist), identifier, calling_ae=settings.ae_title,
                                             timeout_s=worklist.timeout_s, identifiers=keys.identifiers())
            except WorklistUnavailable as exc:
                problems.append(f"{worklist.name}: {exc.kind}: {exc}")
                break  # the other lookup would meet the same problem
            answered.append(f"{worklist.name} by {by}")
            if found.matches:
                return _record_found(ledger, study_uid, keys, worklist, by, found.matches, found.elapsed_s,
                                     settings.ae_title)
    if problems:
        reason = "worklist down: " + "; ".join(problems)
        _log.warning("study %s: %s", hash_identifier(study_uid), reason)
        return ledger.worklist.record(study_uid, "down", worklist=settings.worklists[0].name, reason=reason,
                                      error="; ".join(problems), patient_key=keys.patient_key,
                                      accession_number=keys.accession_number)
    reason = "no scheduled procedure step matches (" + ", ".join(answered) + ")"
    _log.info("study %s: %s", hash_identifier(study_uid), reason)
    return ledger.worklist.record(study_uid, "not_found", worklist=settings.worklists[0].name, reason=reason,
                                  patient_key=keys.patient_key, accession_number=keys.accession_number)


def missing_states(pipeline: str | None, scheduled: Sequence[str]) -> tuple[str, ...]:
    """The acquisition states ``pipeline``'s required series rules need that the ``scheduled`` states (of the
    study's matched steps) lack, in rule order; () when no pipeline or no state is scheduled (nothing to pair:
    :mod:`node.workflow.pairing`); () too for a pipeline that does not pair across studies
    (:attr:`node.pipelines.base.Pipeline.pairs_across_studies`)."""
    found = next((p for p in registry.all_pipelines() if p.name == pipeline), None)
    today = {st for st in scheduled if st in ("stress", "rest")}
    if found is None or not today or not found.pairs_across_studies:
        return ()
    needed = [st for rule in found.series_rules if rule.required for st in sorted(rule.states)]
    return tuple(dict.fromkeys(st for st in needed if st not in today))


def _other_days(keys: StudyKeys, worklist: Worklist, steps: list[dict[str, Any]],
                calling_ae: str) -> tuple[list[dict[str, Any]], str]:
    """``steps`` with the patient's other scheduled steps within ``pair_within_days`` of the Study Date (a lookup
    by patient, modality and that date range; unmatched), and words for the event: the other day of a two-day
    protocol, kept for the pairing. A worklist problem here keeps ``steps`` as they are."""
    if not keys.patient_id:
        return steps, ""
    try:
        found = find_scheduled_steps(_target(worklist), query_identifier(keys, "patient", worklist.pair_within_days),
                                     calling_ae=calling_ae,
                                     timeout_s=worklist.timeout_s, identifiers=keys.identifiers())
    except WorklistUnavailable as exc:
        return steps, f"; other days not asked ({exc.kind})"
    known = {(s["sps_id"], s["accession_number"], s["date"]) for s in steps}
    more = [st for st in (scheduled_step(m) for m in found.matches)
            if (st["sps_id"], st["accession_number"], st["date"]) not in known]
    merged = sorted([*steps, *more], key=lambda s: (s["date"], s["time"], s["sps_id"]))
    return merged, f"; {len(more)} other scheduled step(s) of the patient within {worklist.pair_within_days} days"


def _record_found(ledger: Ledger, study_uid: str, keys: StudyKeys, worklist: Worklist, by: str,
                  matches: Sequence[Dataset], elapsed_s: float, calling_ae: str) -> WorklistAnswer:
    steps, chosen = choose_steps([scheduled_step(m) for m in matches], keys)
    meaning = interpret(steps, matches, keys)
    accession = next((s["accession_number"] for s in steps if s["matched"] and s["accession_number"]),
                     keys.accession_number)
    other_days = ""
    if missing_states(meaning.pipeline, meaning.states) and (by == "accession" or
                                                             worklist.window_days < worklist.pair_within_days):
        steps, other_days = _other_days(keys, worklist, steps, calling_ae)
    reason = (f"{worklist.name} by {by}: {len(steps)} scheduled step(s) in {elapsed_s * 1000:.0f} ms; {chosen}; "
              f"{meaning.words}{other_days}")
    _log.info("study %s: worklist context found: %s", hash_identifier(study_uid), reason)
    return ledger.worklist.record(
        study_uid, "found", worklist=worklist.name, reason=reason, matched_by=by, patient_key=keys.patient_key,
        accession_number=accession, pipeline=meaning.pipeline, expected_series=meaning.expected_series,
        clinical=meaning.clinical, steps=steps)


class WorklistLookups:
    """Worklist lookups of receiving studies on background threads (never on the acknowledge path).

    :meth:`request` is cheap and non-blocking: the conductor's assembler calls it for each receiving
    study on every tick; a lookup starts when the study has no answer yet, or its worklists were
    ``down`` at the last of fewer than :data:`MAX_ATTEMPTS` attempts, :data:`RETRY_S` ago or more.
    """

    def __init__(self, ledger: Ledger, settings: Settings, *, workers: int = 2, retry_s: float = RETRY_S) -> None:
        self.ledger = ledger
        self.settings = settings
        self.retry_s = retry_s
        self._tasks: StudyTasks[WorklistAnswer | None] = StudyTasks(
            "worklist lookup", lambda uid: look_up(self.ledger, self.settings, uid), workers=workers)

    @property
    def enabled(self) -> bool:
        return bool(self.settings.worklists)

    def request(self, study_uid: str, now: datetime | None = None) -> bool:
        """Start a lookup of ``study_uid`` if one is due; returns whether one was started."""
        if not self.enabled or self._tasks.running(study_uid):
            return False
        answer = self.ledger.worklist.answer_for(study_uid)
        if answer is not None:
            waited = ((now or utcnow()) - answer.queried_at).total_seconds()
            if answer.outcome != "down" or answer.attempts >= MAX_ATTEMPTS or waited < self.retry_s:
                return False
        return self._tasks.start(study_uid)

    def wait(self, timeout_s: float | None = None) -> None:
        """Wait for the lookups under way (tests, shutdown)."""
        self._tasks.wait(timeout_s)

    def close(self) -> None:
        """Stop taking lookups; those under way finish within their timeouts."""
        self._tasks.close()
