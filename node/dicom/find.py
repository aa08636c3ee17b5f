"""What every query SCU of the node shares: opening a one-SOP-class association and a C-FIND loop.

The modality worklist SCU (:mod:`node.dicom.worklist_scu`) and the Query/Retrieve SCU
(:mod:`node.dicom.retrieve`) differ only in their SOP class, their identifier and the words
of their errors; the association (one per operation, that one SOP class, uncompressed
transfer syntaxes), the pending/final response handling and the classification of what
goes wrong are decided here once.

What goes wrong is a :class:`PeerUnavailable` (each SCU raises its own subclass) with the
node's words and a ``kind`` from :data:`FAILURE_KINDS`: ``unreachable`` (connection refused,
host unreachable, connect timeout), ``refused`` (association rejected, SOP class not
accepted), ``timeout`` (no response within the timeout, association aborted) or ``failed``
(a failure or cancel status). Never the peer's text, never an identifier.
"""

from __future__ import annotations

from pydicom import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import build_context
from pynetdicom.association import Association

from node.dicom.logs import PatientIdentifiers
from node.dicom.sender import Target, _associate

__all__ = ["FAILURE_KINDS", "PENDING", "PeerUnavailable", "c_find", "open_for", "where"]

#: the kinds of :class:`PeerUnavailable`
FAILURE_KINDS = ("unreachable", "refused", "timeout", "failed")
#: C-FIND / C-MOVE pending statuses (one match, or one sub-operation done)
PENDING = (0xFF00, 0xFF01)

_SYNTAXES: list[str | UID] = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]


class PeerUnavailable(RuntimeError):
    """A peer gave no (complete) answer; ``kind`` is one of :data:`FAILURE_KINDS`."""

    def __init__(self, kind: str, words: str) -> None:
        super().__init__(words)
        self.kind = kind


def where(target: Target) -> str:
    """``AE@host:port``, as the node names a peer in its words."""
    return f"{target.ae_title}@{target.host}:{target.port}"


def open_for(target: Target, sop_class: str, *, calling_ae: str, timeout_s: float, patients: PatientIdentifiers,
             error: type[PeerUnavailable], peer: str, service: str) -> Association:
    """An established association with ``target`` proposing ``sop_class`` only.

    ``peer`` names the peer in messages (``worklist``, ``Q/R``), ``service`` the SOP class
    (``Modality Worklist Information Model - FIND``). Raises ``error`` when there is none or
    the SOP class was not accepted.
    """
    assoc, (_, words) = _associate(target, calling_ae, timeout_s, [build_context(sop_class, _SYNTAXES)], patients)
    if assoc is None:
        kind = "refused" if "rejected" in words else "timeout" if "aborted" in words else "unreachable"
        raise error(kind, f"{peer} {where(target)}: {words}")
    if not any(c.abstract_syntax == sop_class for c in assoc.accepted_contexts):
        assoc.release()
        raise error("refused", f"{peer} {where(target)} does not accept the {service} SOP class")
    return assoc


def c_find(assoc: Association, identifier: Dataset, sop_class: str, *, timeout_s: float,
           error: type[PeerUnavailable], name: str) -> list[Dataset]:
    """Send one C-FIND on ``assoc`` and collect the matches in the order received; the association
    is released afterwards whatever happens. ``name``: the peer in messages (``worklist AE@host:port``).
    Raises ``error`` on no response within ``timeout_s``, an abort, a cancel (``0xFE00``) or a
    failure status."""
    found: list[Dataset] = []
    try:
        for status, match in assoc.send_c_find(identifier, sop_class):
            code = getattr(status, "Status", None)
            if code is None:
                raise error("timeout", f"{name}: no C-FIND response within {timeout_s:g} s or association aborted")
            if int(code) in PENDING:
                if match is not None:
                    found.append(match)
                continue
            if int(code) == 0x0000:
                break
            if int(code) == 0xFE00:
                raise error("failed", f"{name}: query cancelled (status 0xFE00)")
            raise error("failed", f"{name} answered C-FIND status 0x{int(code):04X}")
    finally:
        if assoc.is_established:
            assoc.release()
    return found
