"""The tracer of a received NM or PET instance: one rule, used by routing and by the loaders.

Kept apart from :mod:`node.imaging.radiopharmaceuticals` (plain tables that the
quantification may import) because it reads DICOM.
"""

from __future__ import annotations

from pydicom import Dataset

from node.imaging.radiopharmaceuticals import (
    pet_tracer_from_code,
    pet_tracer_from_text,
    tracer_from_code,
    tracer_from_text,
)

__all__ = ["tracer_of"]


def tracer_of(ds: Dataset) -> str | None:
    """The tracer key of an NM or PET instance, or None: the one rule routing and loading share.

    The first item of Radiopharmaceutical Information Sequence (0054,0016) decides: its
    Radiopharmaceutical Code Sequence value (SPECT tracers, then PET tracers), else its
    Radiopharmaceutical (0018,0031) text. Keys are those of :data:`TRACERS` and :data:`PET_TRACERS`.
    """
    seq = ds.get("RadiopharmaceuticalInformationSequence")
    if not seq:
        return None
    item = seq[0]
    codes = item.get("RadiopharmaceuticalCodeSequence")
    if codes:
        value = str(codes[0].get("CodeValue", "") or "")
        key = tracer_from_code(value) or pet_tracer_from_code(value)
        if key:
            return key
    text = str(item.get("Radiopharmaceutical", "") or "")
    return tracer_from_text(text) or pet_tracer_from_text(text)
