"""Modality Worklist C-FIND SCU: match keys in, scheduled procedure steps out.

One association per query, proposing only the Modality Worklist Information Model -
FIND SOP class (:data:`MODALITY_WORKLIST_FIND`, ``1.2.840.10008.5.1.4.31``) with the
uncompressed transfer syntaxes; each pending response (``0xFF00``/``0xFF01``) is one
scheduled procedure step (PS3.4 K.6.1.2.1). The identifier is the caller's: this
module knows no medicine and no policy (which keys, which answer matches: see
:mod:`node.workflow.worklist`).

What goes wrong is a :class:`WorklistUnavailable` (:class:`node.dicom.find.PeerUnavailable`:
a ``kind`` and the node's words). ``timeout_s`` bounds connecting, association
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

from node.dicom.find import FAILURE_KINDS, PeerUnavailable, c_find, open_for, where
from node.dicom.logs import PatientIdentifiers, silence_pynetdicom
from node.dicom.sender import Target

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
WORKLIST_FAILURE_KINDS = FAILURE_KINDS

_log = logging.getLogger(__name__)


class WorklistUnavailable(PeerUnavailable):
    """The worklist gave no (complete) answer; ``kind`` is one of :data:`WORKLIST_FAILURE_KINDS`,
    the message the node's words (never the peer's text, never an identifier)."""


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
    with patients.active():
        assoc = open_for(target, MODALITY_WORKLIST_FIND, calling_ae=calling_ae, timeout_s=timeout_s,
                         patients=patients, error=WorklistUnavailable, peer="worklist",
                         service="Modality Worklist Information Model - FIND")
        matches = c_find(assoc, identifier, MODALITY_WORKLIST_FIND, timeout_s=timeout_s,
                         error=WorklistUnavailable, name=f"worklist {where(target)}")
    elapsed = time.monotonic() - started
    _log.debug("worklist %s: %d scheduled steps in %.0f ms", where(target), len(matches), elapsed * 1000)
    return WorklistAnswer(tuple(matches), elapsed)
