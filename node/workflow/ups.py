"""Unified Procedure Step (UPS) rules of DICOM PS3.4 Annex CC, as data: states, transitions, content checks.

The node is a UPS SCP (task manager grouped with the task performer, IHE AIW-I);
:mod:`node.dicom.ups_scp` does the networking and the ledger its memory, and both
ask this module what a request does. Nothing here opens a socket or the ledger.

State machine (PS3.4 Table CC.1.1-2): :data:`STATE_TABLE` maps each *request*
(a row of the standard's table, :data:`REQUESTS`) and each *current state* (a
column, :data:`COLUMNS`: the UPS does not exist, or is in one of :data:`STATES`)
to an :class:`Outcome`: the status answered, the new state and what the SCP does
besides (record the Transaction UID, report the change, check the final-state
requirements). :func:`change_state_request` says which row an N-ACTION Change UPS
State (action type 1) is: "correct Transaction UID" means, for a SCHEDULED UPS
(which has none yet), that one is given, and otherwise that it equals the one
recorded when the UPS was claimed. The SCP keeps that UID after the UPS is final,
so that a performer that repeats its COMPLETED (a lost response) gets B306, not
C301; it is never returned (N-GET, C-FIND) nor shown.

Request UPS Cancel (action type 2) on an IN PROGRESS UPS: the table's "report that
an AE requested a cancel" (0000 and a UPS Cancel Requested event), refined by
CC.2.2.3 in :func:`request_cancel`: when the node itself performs the step it
either cancels it (IN PROGRESS -> CANCELED) or answers C313 (the results are
already out); when a peer performs it and that peer's AE is not subscribed to the
UPS, nobody can tell it: C312.

N-SET (CC.2.6): :func:`set_status` (C307, C300 on a final UPS, C301 without the
UPS's Transaction UID when IN PROGRESS, C310 when a Transaction UID is given for a
SCHEDULED UPS, as dcm4chee-arc answers; Procedure Step State is never set by N-SET:
0x0106). N-CREATE (CC.2.5, Table CC.2.5-3): :func:`check_creation` (C309 unless the
state is SCHEDULED, 0x0120/0x0121 for a missing type 1 attribute or value, 0x0106
for a value outside its enumerated values, B300 when the SCP added or emptied
something: the missing type 2 attributes are added empty, a Transaction UID,
Progress Information or Performed Procedure sequence given at creation is emptied,
an empty Worklist Label gets the node's). Final states (CC.2.5.1.1):
:data:`FINAL_STATE_REQUIREMENTS` and :func:`final_state_problems`; before
CANCELED the SCP fills the cancellation date and time when absent
(:func:`complete_cancellation`), as CC.2.2.3 lets it.

Inputs (Input Information Sequence, the Referenced Instances and Access Macro): :func:`input_references`,
:func:`missing_inputs` and :func:`may_start`, the groundwork of the ``ups_inputs`` completeness rule.

Datasets are :class:`pydicom.dataset.Dataset`; statuses are DIMSE status ints.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

__all__ = [
    "ABSENT",
    "CANCELED",
    "COLUMNS",
    "COMPLETED",
    "CREATE_ENUMERATED",
    "CREATE_MUST_BE_EMPTY",
    "CREATE_TYPE1",
    "CREATE_TYPE2",
    "DEFAULT_DISCONTINUATION_REASON",
    "EFFECTS",
    "FINAL_STATE_REQUIREMENTS",
    "GLOBAL_SUBSCRIPTION_UID",
    "FILTERED_GLOBAL_SUBSCRIPTION_UID",
    "IN_PROGRESS",
    "REQUESTS",
    "SCHEDULED",
    "STATES",
    "SET_FORBIDDEN",
    "STATE_TABLE",
    "UPS_PUSH",
    "Creation",
    "InputReference",
    "Outcome",
    "Status",
    "change_state_request",
    "check_creation",
    "complete_cancellation",
    "final_state_problems",
    "input_references",
    "may_start",
    "missing_inputs",
    "outcome",
    "request_cancel",
    "set_status",
]

SCHEDULED = "SCHEDULED"
IN_PROGRESS = "IN PROGRESS"
COMPLETED = "COMPLETED"
CANCELED = "CANCELED"
#: the states of a UPS (Table CC.1.1-1)
STATES = (SCHEDULED, IN_PROGRESS, COMPLETED, CANCELED)
#: the column of a UPS that does not exist (not managed by this SCP)
ABSENT = "absent"
#: the columns of Table CC.1.1-2, in the standard's order
COLUMNS = (ABSENT, *STATES)

#: UPS Push SOP Class: the SOP Class UID of every UPS (CC.3.1)
UPS_PUSH = "1.2.840.10008.5.1.4.34.6.1"
#: well-known SOP Instance UIDs of the (filtered) global subscription (CC.3.1.2)
GLOBAL_SUBSCRIPTION_UID = "1.2.840.10008.5.1.4.34.5"
FILTERED_GLOBAL_SUBSCRIPTION_UID = "1.2.840.10008.5.1.4.34.5.1"


class Status:
    """DIMSE statuses of the UPS service (CC.2.1.4, CC.2.2.4, CC.2.3.4, CC.2.5.4, CC.2.6.4, CC.2.7.4) and
    the general ones (PS3.7 C) the SCP answers."""

    SUCCESS = 0x0000
    OPTIONAL_ATTRIBUTES_NOT_SUPPORTED = 0x0001
    CREATED_WITH_MODIFICATIONS = 0xB300
    DELETION_LOCK_NOT_GRANTED = 0xB301
    ALREADY_CANCELED = 0xB304
    COERCED = 0xB305
    ALREADY_COMPLETED = 0xB306
    MAY_NO_LONGER_BE_UPDATED = 0xC300
    WRONG_TRANSACTION_UID = 0xC301
    ALREADY_IN_PROGRESS = 0xC302
    ONLY_SCHEDULED_BY_CREATE = 0xC303
    FINAL_STATE_NOT_MET = 0xC304
    NO_SUCH_UPS = 0xC307
    RECEIVING_AE_UNKNOWN = 0xC308
    NOT_SCHEDULED = 0xC309
    NOT_YET_IN_PROGRESS = 0xC310
    CANCEL_ALREADY_COMPLETED = 0xC311
    PERFORMER_UNREACHABLE = 0xC312
    PERFORMER_WILL_NOT_CANCEL = 0xC313
    ACTION_NOT_APPROPRIATE = 0xC314
    NO_EVENT_REPORTS = 0xC315
    # general DIMSE statuses (PS3.7 C)
    INVALID_ATTRIBUTE_VALUE = 0x0106
    DUPLICATE_INSTANCE = 0x0111
    NO_SUCH_ACTION = 0x0123
    MISSING_ATTRIBUTE = 0x0120
    MISSING_ATTRIBUTE_VALUE = 0x0121
    INVALID_ARGUMENT_VALUE = 0x0115
    SOP_CLASS_NOT_SUPPORTED = 0x0122


# ---------------------------------------------------------------------------- Table CC.1.1-2

#: the rows of Table CC.1.1-2: what a peer asks of a UPS
REQUESTS = (
    "create",  # N-CREATE received for this SOP Instance UID
    "in-progress/correct",  # N-ACTION Change State to IN PROGRESS with correct Transaction UID
    "in-progress/incorrect",  # ... without correct Transaction UID
    "scheduled",  # N-ACTION Change State to SCHEDULED
    "completed/correct",
    "completed/incorrect",
    "request-cancel",  # N-ACTION Request Cancel
    "canceled/correct",
    "canceled/incorrect",
)

#: what the SCP does besides answering, named in :attr:`Outcome.effects`
EFFECTS = (
    "create",  # create the instance with an empty Transaction UID
    "record-transaction-uid",
    "check-final-state",  # the final-state requirements must be met, else :attr:`Outcome.otherwise`
    "report-state",  # UPS State Report (event 1) to the subscribers
    "report-cancel-requested",  # UPS Cancel Requested (event 2) to the subscribers
    "cancel-through-in-progress",  # SCHEDULED -> IN PROGRESS -> CANCELED, a State Report for each
)


@dataclass(frozen=True)
class Outcome:
    """One cell of Table CC.1.1-2.

    Attributes
    ----------
    status : int
        The DIMSE status answered.
    state : str or None
        The UPS's state afterwards when it changes; None when it stays.
    effects : tuple of str
        What the SCP does besides (:data:`EFFECTS`).
    otherwise : int or None
        The status when ``check-final-state`` fails (the state then stays).
    """

    status: int
    state: str | None = None
    effects: tuple[str, ...] = ()
    otherwise: int | None = None


def _error(status: int) -> Outcome:
    return Outcome(status)


_S = Status
#: Table CC.1.1-2: request -> current state (:data:`COLUMNS`) -> outcome
STATE_TABLE: Mapping[str, Mapping[str, Outcome]] = {
    "create": {
        ABSENT: Outcome(_S.SUCCESS, SCHEDULED, ("create", "report-state")),
        SCHEDULED: _error(_S.DUPLICATE_INSTANCE),
        IN_PROGRESS: _error(_S.DUPLICATE_INSTANCE),
        COMPLETED: _error(_S.DUPLICATE_INSTANCE),
        CANCELED: _error(_S.DUPLICATE_INSTANCE),
    },
    "in-progress/correct": {
        ABSENT: _error(_S.NO_SUCH_UPS),
        SCHEDULED: Outcome(_S.SUCCESS, IN_PROGRESS, ("record-transaction-uid", "report-state")),
        IN_PROGRESS: _error(_S.ALREADY_IN_PROGRESS),
        COMPLETED: _error(_S.MAY_NO_LONGER_BE_UPDATED),
        CANCELED: _error(_S.MAY_NO_LONGER_BE_UPDATED),
    },
    "in-progress/incorrect": {
        ABSENT: _error(_S.NO_SUCH_UPS),
        SCHEDULED: _error(_S.WRONG_TRANSACTION_UID),
        IN_PROGRESS: _error(_S.WRONG_TRANSACTION_UID),
        COMPLETED: _error(_S.WRONG_TRANSACTION_UID),
        CANCELED: _error(_S.WRONG_TRANSACTION_UID),
    },
    "scheduled": {
        ABSENT: _error(_S.NO_SUCH_UPS),
        SCHEDULED: _error(_S.ONLY_SCHEDULED_BY_CREATE),
        IN_PROGRESS: _error(_S.ONLY_SCHEDULED_BY_CREATE),
        COMPLETED: _error(_S.ONLY_SCHEDULED_BY_CREATE),
        CANCELED: _error(_S.ONLY_SCHEDULED_BY_CREATE),
    },
    "completed/correct": {
        ABSENT: _error(_S.NO_SUCH_UPS),
        SCHEDULED: _error(_S.NOT_YET_IN_PROGRESS),
        IN_PROGRESS: Outcome(_S.SUCCESS, COMPLETED, ("check-final-state", "report-state"), _S.FINAL_STATE_NOT_MET),
        COMPLETED: Outcome(_S.ALREADY_COMPLETED),
        CANCELED: _error(_S.MAY_NO_LONGER_BE_UPDATED),
    },
    "completed/incorrect": {
        ABSENT: _error(_S.NO_SUCH_UPS),
        SCHEDULED: _error(_S.WRONG_TRANSACTION_UID),
        IN_PROGRESS: _error(_S.WRONG_TRANSACTION_UID),
        COMPLETED: _error(_S.WRONG_TRANSACTION_UID),
        CANCELED: _error(_S.WRONG_TRANSACTION_UID),
    },
    "request-cancel": {
        ABSENT: _error(_S.NO_SUCH_UPS),
        # CC.2.4.3: every Request UPS Cancel is reported (event 2); then the SCP cancels (two State Reports)
        SCHEDULED: Outcome(_S.SUCCESS, CANCELED, ("report-cancel-requested", "cancel-through-in-progress",
                                                  "report-state")),
        IN_PROGRESS: Outcome(_S.SUCCESS, None, ("report-cancel-requested",)),
        COMPLETED: _error(_S.CANCEL_ALREADY_COMPLETED),
        CANCELED: Outcome(_S.ALREADY_CANCELED),
    },
    "canceled/correct": {
        ABSENT: _error(_S.NO_SUCH_UPS),
        SCHEDULED: _error(_S.NOT_YET_IN_PROGRESS),
        IN_PROGRESS: Outcome(_S.SUCCESS, CANCELED, ("check-final-state", "report-state"), _S.FINAL_STATE_NOT_MET),
        COMPLETED: _error(_S.MAY_NO_LONGER_BE_UPDATED),
        CANCELED: Outcome(_S.ALREADY_CANCELED),
    },
    "canceled/incorrect": {
        ABSENT: _error(_S.NO_SUCH_UPS),
        SCHEDULED: _error(_S.WRONG_TRANSACTION_UID),
        IN_PROGRESS: _error(_S.WRONG_TRANSACTION_UID),
        COMPLETED: _error(_S.WRONG_TRANSACTION_UID),
        CANCELED: _error(_S.WRONG_TRANSACTION_UID),
    },
}


def outcome(request: str, state: str | None) -> Outcome:
    """The cell of Table CC.1.1-2 for ``request`` (:data:`REQUESTS`) on a UPS in ``state`` (None: absent)."""
    return STATE_TABLE[request][state or ABSENT]


def change_state_request(requested_state: str, given_uid: str, state: str | None, recorded_uid: str) -> str | None:
    """The row of Table CC.1.1-2 an N-ACTION Change UPS State is, or None for a requested state that is none of
    :data:`STATES` (answered 0x0106 by the SCP).

    Parameters
    ----------
    requested_state : str
        Procedure Step State (0074,1000) of the action information.
    given_uid : str
        Transaction UID (0008,1195) of the action information ("" when absent or empty).
    state : str or None
        The UPS's current state (None: no such UPS).
    recorded_uid : str
        The Transaction UID the SCP recorded when the UPS was claimed ("" while SCHEDULED).
    """
    if requested_state == SCHEDULED:
        return "scheduled"
    names = {IN_PROGRESS: "in-progress", COMPLETED: "completed", CANCELED: "canceled"}
    if requested_state not in names:
        return None
    if state in (None, SCHEDULED):
        correct = bool(given_uid)
    else:
        correct = bool(given_uid) and given_uid == recorded_uid
    return f"{names[requested_state]}/{'correct' if correct else 'incorrect'}"


def request_cancel(state: str | None, *, performed_by_node: bool, performer_subscribed: bool,
                   node_cancels: bool) -> Outcome:
    """The outcome of a Request UPS Cancel (CC.2.2.3) on a UPS in ``state``.

    Parameters
    ----------
    performed_by_node : bool
        The node itself performs the IN PROGRESS step (it claimed it).
    performer_subscribed : bool
        The peer that claimed the step is subscribed to it (it can hear the Cancel Requested event).
    node_cancels : bool
        When the node performs it: whether it cancels (False: its results are already out, C313).
    """
    cell = outcome("request-cancel", state)
    if state != IN_PROGRESS:
        return cell
    if performed_by_node:
        if node_cancels:
            return Outcome(Status.SUCCESS, CANCELED, ("report-cancel-requested", "report-state"))
        return Outcome(Status.PERFORMER_WILL_NOT_CANCEL)
    if not performer_subscribed:
        return Outcome(Status.PERFORMER_UNREACHABLE)
    return cell


# ---------------------------------------------------------------------------- N-CREATE (Table CC.2.5-3)

#: type 1 at N-CREATE (a value is required)
CREATE_TYPE1 = (
    "ScheduledProcedureStepPriority",
    "ProcedureStepLabel",
    "ScheduledProcedureStepStartDateTime",
    "InputReadinessState",
    "ProcedureStepState",
)
#: type 2 at N-CREATE (present, may be empty); the SCP adds a missing one empty (B300)
CREATE_TYPE2 = (
    "WorklistLabel",
    "ScheduledProcessingParametersSequence",
    "ScheduledStationNameCodeSequence",
    "ScheduledStationClassCodeSequence",
    "ScheduledStationGeographicLocationCodeSequence",
    "ScheduledWorkitemCodeSequence",
    "CommentsOnTheScheduledProcedureStep",
    "InputInformationSequence",
    "StudyInstanceUID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AdmissionID",
    "IssuerOfAdmissionIDSequence",
    "AdmittingDiagnosesDescription",
    "AdmittingDiagnosesCodeSequence",
    "ReferencedRequestSequence",
    "OtherPatientIDsSequence",
    "ProcedureStepProgressInformationSequence",
    "UnifiedProcedureStepPerformedProcedureSequence",
)
#: empty at N-CREATE (the Transaction UID, type 2 as well, is never kept in the UPS: the SCP records it apart); a value given is removed (B300)
CREATE_MUST_BE_EMPTY = (
    "TransactionUID",
    "ProcedureStepProgressInformationSequence",
    "UnifiedProcedureStepPerformedProcedureSequence",
)
#: enumerated values checked at N-CREATE (others: 0x0106)
CREATE_ENUMERATED: Mapping[str, tuple[str, ...]] = {
    "ScheduledProcedureStepPriority": ("HIGH", "MEDIUM", "LOW"),
    "InputReadinessState": ("READY", "INCOMPLETE", "UNAVAILABLE"),
}


@dataclass
class Creation:
    """What the SCP makes of an N-CREATE data set (:func:`check_creation`).

    Attributes
    ----------
    status : int
        0x0000, B300 (created with the :attr:`changes`), or a failure (nothing created).
    dataset : Dataset
        The UPS as the SCP keeps it (failures: the request's data set).
    problems : list of str
        Why it failed (failures), in words, no values.
    changes : list of str
        What the SCP added or emptied (B300), in words.
    """

    status: int
    dataset: Dataset
    problems: list[str] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)


def _has_value(ds: Dataset, keyword: str) -> bool:
    if keyword not in ds:
        return False
    value = ds[keyword].value
    if isinstance(value, Sequence):
        return len(value) > 0
    return value is not None and str(value).strip() != ""


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def check_creation(request: Dataset, *, sop_instance_uid: str, worklist_label: str, now: datetime) -> Creation:
    """Check an N-CREATE data set against Table CC.2.5-3 and make the UPS the SCP keeps.

    Parameters
    ----------
    request : Dataset
        The N-CREATE Attribute List.
    sop_instance_uid : str
        The new UPS's SOP Instance UID (the request's Affected SOP Instance UID, or the SCP's).
    worklist_label : str
        The label given to a UPS created with an empty Worklist Label.
    now : datetime
        The creation time (Scheduled Procedure Step Modification DateTime).
    """
    problems: list[str] = []
    state = _text(request, "ProcedureStepState")
    if state != SCHEDULED:
        return Creation(Status.NOT_SCHEDULED, request, [f"Procedure Step State is {state or 'empty'}, not SCHEDULED"])
    for keyword in CREATE_TYPE1:
        if keyword not in request:
            return Creation(Status.MISSING_ATTRIBUTE, request, [f"{keyword} is missing (type 1)"])
        if not _has_value(request, keyword):
            problems.append(f"{keyword} is empty (type 1)")
    if problems:
        return Creation(Status.MISSING_ATTRIBUTE_VALUE, request, problems)
    for keyword, allowed in CREATE_ENUMERATED.items():
        if _text(request, keyword) not in allowed:
            problems.append(f"{keyword} is none of {', '.join(allowed)}")
    if problems:
        return Creation(Status.INVALID_ATTRIBUTE_VALUE, request, problems)
    ups = Dataset()
    ups.update(request)
    changes: list[str] = []
    for keyword in CREATE_TYPE2:
        if keyword not in ups:
            setattr(ups, keyword, [] if keyword.endswith("Sequence") else "")
            changes.append(f"{keyword} added empty")
    for keyword in CREATE_MUST_BE_EMPTY:
        if _has_value(ups, keyword):
            setattr(ups, keyword, [] if keyword.endswith("Sequence") else "")
            changes.append(f"{keyword} emptied (set by the performer, not at creation)")
    if "TransactionUID" in ups:
        del ups.TransactionUID
    if not _has_value(ups, "WorklistLabel"):
        ups.WorklistLabel = worklist_label
        changes.append("WorklistLabel set to the node's")
    ups.SOPClassUID = UPS_PUSH
    ups.SOPInstanceUID = sop_instance_uid
    ups.ScheduledProcedureStepModificationDateTime = now.strftime("%Y%m%d%H%M%S")
    status = Status.CREATED_WITH_MODIFICATIONS if changes else Status.SUCCESS
    return Creation(status, ups, [], changes)



# ---------------------------------------------------------------------------- N-SET (CC.2.6)

#: attributes N-SET may not change: the state (N-ACTION only) and the UPS's identity
SET_FORBIDDEN = ("ProcedureStepState", "SOPClassUID", "SOPInstanceUID")


def set_status(state: str | None, recorded_uid: str, modification: Dataset) -> tuple[int, str]:
    """The status of an N-SET on a UPS in ``state`` (None: absent), and why in words (``""`` when it may proceed).

    0x0000 means the modification may be applied (the SCP then replaces each attribute
    given, sequences whole, and drops the Transaction UID from what it keeps).
    """
    if state is None:
        return Status.NO_SUCH_UPS, "no such UPS"
    if state in (COMPLETED, CANCELED):
        return Status.MAY_NO_LONGER_BE_UPDATED, f"the UPS is {state}"
    given = _text(modification, "TransactionUID")
    if state == SCHEDULED and "TransactionUID" in modification:
        return Status.NOT_YET_IN_PROGRESS, "a Transaction UID was given for a SCHEDULED UPS"
    if state == IN_PROGRESS and (not given or given != recorded_uid):
        return Status.WRONG_TRANSACTION_UID, "the UPS's Transaction UID was not given"
    forbidden = [k for k in SET_FORBIDDEN if k in modification]
    if forbidden:
        return Status.INVALID_ATTRIBUTE_VALUE, f"{', '.join(forbidden)} cannot be set by N-SET"
    return Status.SUCCESS, ""


# ---------------------------------------------------------------------------- final states (CC.2.5.1.1)

#: Final State codes of Table CC.2.5-3 that the SCP checks: (path of keywords, code); R: required for both
#: final states, P: for COMPLETED, X: for CANCELED. A path through a sequence means "in its first item".
FINAL_STATE_REQUIREMENTS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("SOPClassUID",), "R"),
    (("SOPInstanceUID",), "R"),
    (("ScheduledProcedureStepPriority",), "R"),
    (("ScheduledProcedureStepModificationDateTime",), "R"),
    (("ScheduledProcedureStepStartDateTime",), "R"),
    (("InputReadinessState",), "R"),
    (("ProcedureStepProgressInformationSequence",), "X"),
    (("ProcedureStepProgressInformationSequence", "ProcedureStepCancellationDateTime"), "X"),
    (("ProcedureStepProgressInformationSequence", "ProcedureStepDiscontinuationReasonCodeSequence"), "X"),
    (("UnifiedProcedureStepPerformedProcedureSequence",), "P"),
    (("UnifiedProcedureStepPerformedProcedureSequence", "PerformedStationNameCodeSequence"), "P"),
    (("UnifiedProcedureStepPerformedProcedureSequence", "PerformedProcedureStepStartDateTime"), "P"),
    (("UnifiedProcedureStepPerformedProcedureSequence", "PerformedProcedureStepEndDateTime"), "P"),
    (("UnifiedProcedureStepPerformedProcedureSequence", "PerformedWorkitemCodeSequence"), "P"),
    # "if there are no relevant output objects, this sequence may have no items": present, maybe empty
    (("UnifiedProcedureStepPerformedProcedureSequence", "OutputInformationSequence"), "P-present"),
)

#: the discontinuation reason the SCP gives a UPS it cancels on request without one (CID 9300)
DEFAULT_DISCONTINUATION_REASON = ("110513", "DCM", "Discontinued for unspecified reason")


def final_state_problems(ups: Dataset, target: str) -> list[str]:
    """What ``ups`` lacks to be set to ``target`` (COMPLETED or CANCELED); empty when the requirements are met."""
    applies = {COMPLETED: ("R", "P", "P-present"), CANCELED: ("R", "X")}[target]
    problems = []
    for path, code in FINAL_STATE_REQUIREMENTS:
        if code not in applies:
            continue
        ds: Dataset | None = ups
        for keyword in path[:-1]:
            items = ds.get(keyword) if ds is not None else None
            ds = items[0] if items else None
        last = path[-1]
        if ds is None:
            missing = True
        elif code == "P-present":
            missing = last not in ds
        else:
            missing = not _has_value(ds, last)
        if missing:
            problems.append(f"{' > '.join(path)} has no value")
    return problems


def complete_cancellation(ups: Dataset, now: datetime, *, reason: Dataset | None = None) -> None:
    """Fill what the SCP may fill before CANCELED: a Progress Information item with the cancellation
    date and time (``now``) when absent; and, when the SCP cancels on request (``reason``: the Request
    UPS Cancel's action information), the reason given, else :data:`DEFAULT_DISCONTINUATION_REASON`."""
    if not _has_value(ups, "ProcedureStepProgressInformationSequence"):
        ups.ProcedureStepProgressInformationSequence = [Dataset()]
    item = ups.ProcedureStepProgressInformationSequence[0]
    if not _has_value(item, "ProcedureStepCancellationDateTime"):
        item.ProcedureStepCancellationDateTime = now.strftime("%Y%m%d%H%M%S")
    if reason is None:
        return
    if _has_value(reason, "ReasonForCancellation"):
        item.ReasonForCancellation = reason.ReasonForCancellation
    if _has_value(reason, "ProcedureStepDiscontinuationReasonCodeSequence"):
        item.ProcedureStepDiscontinuationReasonCodeSequence = reason.ProcedureStepDiscontinuationReasonCodeSequence
    elif not _has_value(item, "ProcedureStepDiscontinuationReasonCodeSequence"):
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = DEFAULT_DISCONTINUATION_REASON
        item.ProcedureStepDiscontinuationReasonCodeSequence = [code]
    uri = {k: reason.get(k) for k in ("ContactURI", "ContactDisplayName") if _has_value(reason, k)}
    if uri:
        contact = Dataset()
        for keyword, value in uri.items():
            setattr(contact, keyword, value)
        item.ProcedureStepCommunicationsURISequence = [contact]


# ---------------------------------------------------------------------------- inputs (CC.2.5.1.3, Table CC.2.5-2c)


@dataclass(frozen=True)
class InputReference:
    """One instance a UPS lists in its Input Information Sequence (Referenced Instances and Access Macro).

    Attributes
    ----------
    study_uid, series_uid, sop_class_uid, sop_instance_uid : str
        Where the instance is, and what it is ("" when the item does not say).
    retrieve_ae : str
        The AE title to retrieve it from (DICOM Retrieval Sequence > Retrieve AE Title), "" when none is given.
    """

    study_uid: str
    series_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    retrieve_ae: str


def input_references(ups: Dataset) -> list[InputReference]:
    """Every instance of the UPS's Input Information Sequence (0040,4021), in order; items of other types
    (Type of Instances other than DICOM) are left out."""
    out = []
    for item in ups.get("InputInformationSequence") or []:
        if _text(item, "TypeOfInstances") not in ("", "DICOM"):
            continue
        retrieval = item.get("DICOMRetrievalSequence") or []
        retrieve_ae = _text(retrieval[0], "RetrieveAETitle") if retrieval else ""
        for ref in item.get("ReferencedSOPSequence") or []:
            out.append(InputReference(_text(item, "StudyInstanceUID"), _text(item, "SeriesInstanceUID"),
                                      _text(ref, "ReferencedSOPClassUID"), _text(ref, "ReferencedSOPInstanceUID"),
                                      retrieve_ae))
    return out


def missing_inputs(ups: Dataset, have: Callable[[str], bool]) -> list[InputReference]:
    """The UPS's inputs the node does not have (``have(sop_instance_uid)`` is False): the ``ups_inputs``
    completeness rule (issue 19, item 4) says the study is complete for the UPS when this is empty, the UPS lists
    at least one input, and :func:`may_start` allows it."""
    return [ref for ref in input_references(ups) if not have(ref.sop_instance_uid)]


def may_start(ups: Dataset) -> bool:
    """Whether the performer may start on the UPS's inputs: only when its Input Readiness State is READY
    (INCOMPLETE: more inputs may be added; UNAVAILABLE: some cannot be had), and it lists an input."""
    return _text(ups, "InputReadinessState") == "READY" and bool(input_references(ups))
