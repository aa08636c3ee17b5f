"""DICOM UID validation and deterministic UID derivation.

UIDs arrive from the network and may later name files and directories, so they
are validated before use (PS3.5 section 9.1: digits and dots, no leading zero
in a component, at most 64 characters).

Output UIDs are derived deterministically from their inputs (study, pipeline,
model version, content digest) so that a re-run produces the same instances and
a PACS never stores duplicates. They use the ``2.25`` root (PS3.5 B.2): the
decimal form of a 128-bit number taken from a SHA-256 digest.
"""

from __future__ import annotations

import hashlib
import re

__all__ = ["InvalidUIDError", "is_valid_uid", "validate_uid", "deterministic_uid"]

_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")


class InvalidUIDError(ValueError):
    """A UID that does not follow PS3.5 9.1 and must not be used as a name."""


def is_valid_uid(uid: object) -> bool:
    """Return True if ``uid`` is a syntactically valid DICOM UID."""
    return isinstance(uid, str) and 0 < len(uid) <= 64 and bool(_UID_RE.match(uid))


def validate_uid(uid: object, attribute: str = "UID") -> str:
    """Return ``uid`` unchanged if valid, else raise :class:`InvalidUIDError`.

    ``attribute`` names the DICOM attribute in the error message, e.g.
    ``"SOPInstanceUID (0008,0018)"``.
    """
    if not is_valid_uid(uid):
        shown = repr(uid)[:80]
        raise InvalidUIDError(
            f"{attribute} {shown} is not a valid DICOM UID "
            "(digits and dots, no leading zeros, at most 64 characters)"
        )
    return str(uid)


def deterministic_uid(*parts: str | bytes | int | float) -> str:
    """Derive a stable ``2.25.<n>`` UID from ``parts``.

    The same parts, in the same order, always give the same UID; any change in
    any part gives another. Parts are joined unambiguously (length-prefixed).
    """
    digest = hashlib.sha256()
    for part in parts:
        raw = part if isinstance(part, bytes) else str(part).encode("utf-8")
        digest.update(len(raw).to_bytes(8, "big"))
        digest.update(raw)
    number = int.from_bytes(digest.digest()[:16], "big")
    return f"2.25.{number}"
