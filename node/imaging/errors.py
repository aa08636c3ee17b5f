"""Errors raised when DICOM instances cannot be turned into usable volumes."""

from __future__ import annotations

__all__ = ["UnusableSeriesError"]


class UnusableSeriesError(ValueError):
    """A series (or instance) that cannot be used, with a reason a PACS administrator can act on.

    ``reason`` names the DICOM attribute at fault, e.g. ``"ImageType (0008,0008)
    value 3 is 'TOMO' (projections); a reconstruction (RECON TOMO or RECON
    GATED TOMO) is needed"``. ``attribute`` is the attribute keyword alone.
    """

    def __init__(self, reason: str, attribute: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.attribute = attribute
