"""Query/Retrieve SCU: find studies (C-FIND) and have them sent to the node (C-MOVE).

Study Root Query/Retrieve Information Model only (PS3.4 C.6.2): ``STUDY_ROOT_FIND``
(``1.2.840.10008.5.1.4.1.2.2.1``) and ``STUDY_ROOT_MOVE`` (``1.2.840.10008.5.1.4.1.2.2.2``).
One association per operation, proposing that one SOP class with the uncompressed transfer
syntaxes. This module knows no medicine and no policy: which study to look for and why is
the caller's (:mod:`node.workflow.pairing`).

**C-MOVE, not C-GET.** The node asks the Q/R SCP to send the study to a move destination
(normally the node's own AE title): the SCP opens its own association to the node's
listener, so the instances arrive as any C-STORE does (spool, fsync, ledger) and nothing
here stores anything. The SCP must know the node's AE title as a move destination (Orthanc:
``DicomModalities``; dcm4chee: an AE entry), or it answers ``0xA801`` (move destination
unknown). C-GET (instances on the same association) is not implemented.

What goes wrong is a :class:`RetrieveUnavailable` (:class:`node.dicom.find.PeerUnavailable`:
a ``kind`` and the node's words).
A C-MOVE that ends with failed sub-operations is not an exception: :class:`MoveOutcome`
counts them. ``timeout_s`` bounds connecting, negotiation and the wait for each response
(a C-MOVE's pending responses come after each sub-operation, so a large study does not
need a large timeout). Identifiers in the query are redacted from logs meanwhile.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from pydicom import Dataset

from node.dicom.find import PENDING, PeerUnavailable, c_find, open_for, where
from node.dicom.logs import PatientIdentifiers, silence_pynetdicom
from node.dicom.sender import Target

__all__ = [
    "STUDY_ROOT_FIND",
    "STUDY_ROOT_MOVE",
    "MoveOutcome",
    "RetrieveUnavailable",
    "find_studies",
    "move_study",
]

#: Study Root Query/Retrieve Information Model - FIND
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
#: Study Root Query/Retrieve Information Model - MOVE
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"

_log = logging.getLogger(__name__)


class RetrieveUnavailable(PeerUnavailable):
    """The Q/R SCP gave no (complete) answer; ``kind``: ``unreachable``, ``refused``, ``timeout`` or
    ``failed``; the message is the node's words (never the peer's text, never an identifier)."""


@dataclass(frozen=True)
class MoveOutcome:
    """The end of one C-MOVE: the final ``status`` (``0x0000`` success, ``0xB000`` some sub-operations
    failed, ...), the sub-operations ``completed``, ``failed`` and ``warning``, ``elapsed_s`` from
    connecting to the final response."""

    status: int
    completed: int
    failed: int
    warning: int
    elapsed_s: float

    @property
    def ok(self) -> bool:
        """Every sub-operation completed (Success, or Warning with no failure)."""
        return self.status in (0x0000, 0xB000) and self.failed == 0 and self.completed + self.warning > 0

    def words(self) -> str:
        """``C-MOVE status 0x0000: 12 instance(s) sent, 0 failed, 0 warning(s) in 830 ms``."""
        return (f"C-MOVE status 0x{self.status:04X}: {self.completed} instance(s) sent, {self.failed} failed, "
                f"{self.warning} warning(s) in {self.elapsed_s * 1000:.0f} ms")


def find_studies(
    target: Target,
    identifier: Dataset,
    *,
    calling_ae: str,
    timeout_s: float = 10.0,
    identifiers: PatientIdentifiers | None = None,
) -> list[Dataset]:
    """One Study Root C-FIND at ``STUDY`` level; the matches in the order received.

    ``identifier``: matching keys with values, return keys empty; ``QueryRetrieveLevel`` is set to
    ``STUDY`` here. ``identifiers``: the patient identifiers the query carries (redacted from logs).

    Raises
    ------
    RetrieveUnavailable
        No association, a refusal, no response in time, or a failure status.
    """
    silence_pynetdicom()
    patients = identifiers or PatientIdentifiers()
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    for element in identifier:
        query.add(element)
    with patients.active():
        assoc = open_for(target, STUDY_ROOT_FIND, calling_ae=calling_ae, timeout_s=timeout_s, patients=patients,
                         error=RetrieveUnavailable, peer="Q/R", service="Study Root FIND")
        return c_find(assoc, query, STUDY_ROOT_FIND, timeout_s=timeout_s, error=RetrieveUnavailable,
                      name=f"Q/R {where(target)}")


def move_study(
    target: Target,
    study_uid: str,
    *,
    destination_ae: str,
    calling_ae: str,
    timeout_s: float = 30.0,
) -> MoveOutcome:
    """Ask ``target`` to send every instance of ``study_uid`` to ``destination_ae`` (Study Root C-MOVE,
    ``STUDY`` level); returns when the SCP gives its final response.

    Raises
    ------
    RetrieveUnavailable
        No association, a refusal, or no response within ``timeout_s`` (between two responses).
    """
    silence_pynetdicom()
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_uid
    name = f"Q/R {where(target)}"
    started = time.monotonic()
    assoc = open_for(target, STUDY_ROOT_MOVE, calling_ae=calling_ae, timeout_s=timeout_s, patients=PatientIdentifiers(),
                     error=RetrieveUnavailable, peer="Q/R", service="Study Root MOVE")
    last: Dataset | None = None
    try:
        for status, _ in assoc.send_c_move(query, destination_ae, STUDY_ROOT_MOVE):
            code = getattr(status, "Status", None)
            if code is None:
                raise RetrieveUnavailable("timeout", f"{name}: no C-MOVE response within {timeout_s:g} s "
                                                     "or association aborted")
            last = status
            if int(code) not in PENDING:
                break
    finally:
        if assoc.is_established:
            assoc.release()
    if last is None:
        raise RetrieveUnavailable("failed", f"{name}: C-MOVE ended without a final response")

    def count(keyword: str) -> int:
        value = last.get(keyword) if last is not None else None
        return int(value) if value not in (None, "") else 0

    outcome = MoveOutcome(int(last.Status), count("NumberOfCompletedSuboperations"),
                          count("NumberOfFailedSuboperations"), count("NumberOfWarningSuboperations"),
                          time.monotonic() - started)
    _log.debug("%s: %s", name, outcome.words())
    return outcome
