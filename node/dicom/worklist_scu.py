"""Modality Worklist C-FIND SCU: match keys in, scheduled procedure steps out.

One association per query, proposing only the Modality Worklist Information Model -
FIND SOP class (:data:`MODALITY_WORKLIST_FIND`, ``1.2.840.10008.5.1.4.31``) with the
uncompressed transfer syntaxes; each pending response (``0xFF00``/``0xFF01``) is one
scheduled procedure step (PS3.4 K.6.1.2.1). The identifier is the caller's: this
module knows no medicine and no policy (which keys, which answer matches: see
:mod:`node.workflow.worklist`).

What goes wrong is a :class:`WorklistUnavailable` with the node's words and a
``kind``: ``unreachable`` (connection refused, host unreachable, connect timeout),
``refused`` (association rejected, SOP class not accepted), ``timeout`` (no response
within the timeout, association aborted) or ``failed`` (a failure status, e.g.
``0xA700`` out of resources, ``0xA900`` identifier does not match SOP class,
``0xC000`` unable to process). ``timeout_s`` bounds connecting, association
negotiation and the wait for each response (pynetdicom's connection, ACSE, DIMSE and
network timeouts).

The identifier holds patient identifiers (patient ID, accession number): pynetdicom is
kept from logging identifiers (:func:`node.dicom.logs.silence_pynetdicom`) and the
caller's ``identifiers`` are redacted from every log record while the association runs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import build_context

from node.dicom.logs import PatientIdentifiers, silence_pynetdicom
from node.dicom.sender import Target, _associate

__all__ = [
    "MODALITY_WORKLIST_FIND",
    "WORKLIST_FAILURE_KINDS",
    "WorklistAnswer",
    "WorklistUnavailable",
    "find_scheduled_steps",
]

#: Modality Worklist Information Model - FIND (PS3.4 K.6.1)
MODALITY_WORKLIST_FIND = "1.2.840.10008.5.1.4.31"
#: the kinds of :class:`WorklistUnavailable`
WORKLIST_FAILURE_KINDS = ("unreachable", "refused", "timeout", "failed")

_PENDING = (0xFF00, 0xFF01)

_log = logging.getLogger(__name__)


class WorklistUnavailable(RuntimeError):
    """The worklist gave no (complete) answer; ``kind`` is one of :data:`WORKLIST_FAILURE_KINDS`,
    the message the node's words (never the peer's text, never an identifier)."""

    def __init__(self, kind: str, words: str) -> None:
        super().__init__(words)
        self.kind = kind


@dataclass(frozen=True)
class WorklistAnswer:
    """The matches of one query: one data set per scheduled procedure step, in the order received;
    ``elapsed_s`` from connecting to the final response."""

    matches: tuple[Dataset, ...]
    elapsed_s: float


def find_scheduled_steps(
    target: Target,
    identifier: Dataset,
    *,
    calling_ae: str,
    timeout_s: float = 5.0,
    identifiers: PatientIdentifiers | None = None,
) -> WorklistAnswer:
    """Send one Modality Worklist C-FIND with ``identifier`` to ``target`` and collect the matches.

    Parameters
    ----------
    target : node.dicom.sender.Target
        The worklist SCP (AE title, host, port, optional TLS context).
    identifier : pydicom.Dataset
        Matching keys with values and return keys empty (PS3.4 K.6.1.2.2).
    calling_ae : str
        The node's AE title.
    timeout_s : float
        Seconds allowed for connecting, negotiating and each response.
    identifiers : PatientIdentifiers or None
        The patient identifiers the query carries, redacted from logs meanwhile.

    Raises
    ------
    WorklistUnavailable
        No association, a refusal, no response in time, or a failure status.
    """
    silence_pynetdicom()
    patients = identifiers or PatientIdentifiers()
    started = time.monotonic()
    contexts = [build_context(MODALITY_WORKLIST_FIND, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])]
    where = f"{target.ae_title}@{target.host}:{target.port}"
    with patients.active():
        assoc, (_, words) = _associate(target, calling_ae, timeout_s, contexts, patients)
        if assoc is None:
            kind = "refused" if "rejected" in words else "timeout" if "aborted" in words else "unreachable"
            raise WorklistUnavailable(kind, f"worklist {where}: {words}")
        matches: list[Dataset] = []
        try:
            if not any(c.abstract_syntax == MODALITY_WORKLIST_FIND for c in assoc.accepted_contexts):
                raise WorklistUnavailable("refused", f"worklist {where} does not accept the Modality Worklist "
                                                     "Information Model - FIND SOP class")
            for status, found in assoc.send_c_find(identifier, MODALITY_WORKLIST_FIND):
                code = getattr(status, "Status", None)
                if code is None:
                    raise WorklistUnavailable("timeout", f"worklist {where}: no response within {timeout_s:g} s "
                                                         "or association aborted")
                if int(code) in _PENDING:
                    if found is not None:
                        matches.append(found)
                    continue
                if int(code) == 0x0000:
                    break
                if int(code) == 0xFE00:
                    raise WorklistUnavailable("failed", f"worklist {where}: query cancelled (status 0xFE00)")
                raise WorklistUnavailable("failed", f"worklist {where} answered status 0x{int(code):04X}")
        finally:
            if assoc.is_established:
                assoc.release()
    elapsed = time.monotonic() - started
    _log.debug("worklist %s: %d scheduled steps in %.0f ms", where, len(matches), elapsed * 1000)
    return WorklistAnswer(tuple(matches), elapsed)
