"""Reading DICOM values fast and the same way for every modality's loader (NM, PET, MR).

A dynamic PET or cine MR series has thousands of instances; pydicom's conversion of their
per-instance elements and of native Pixel Data is most of the loading time. These readers take
the hot elements and native pixels straight from the bytes as read, giving exactly what pydicom
would give, and leave everything unusual to pydicom, so refusals and their words do not change.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

from node.imaging.errors import UnusableSeriesError

__all__ = ["as_list", "decoded_pixels", "instance_words", "native_stored_values", "raw_number", "text_value"]


def text_value(ds: Dataset, keyword: str) -> str:
    """``keyword`` of ``ds`` as stripped text ('' when absent); one ASCII value is read from the raw bytes."""
    tag = tag_for_keyword(keyword)
    elem = ds.get_item(tag) if tag is not None else None
    if (isinstance(elem, RawDataElement) and elem.value and b"\\" not in elem.value
            and (elem.VR if elem.VR not in (None, "UN") else dictionary_VR(tag)) in _ASCII_TEXT):
        try:  # one value of an ASCII-only VR, not yet converted: what pydicom would give, without its conversion
            return elem.value.decode("ascii").strip(" \x00").strip()
        except UnicodeDecodeError:
            pass
    return str(ds.get(keyword, "") or "").strip()


def as_list(value: Any) -> list[Any]:
    """A DICOM value as a list: [] for None, [value] for one value, the values of a multi-valued one."""
    if value is None:
        return []
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        return [value]
    return list(value)


#: Value representations :func:`raw_number` parses from the raw bytes itself (the hot per-instance elements).
_ASCII_NUMBERS = frozenset({"DS", "IS"})
_BINARY_UNSIGNED = frozenset({"US", "UL"})
#: Value representations whose single values :func:`text_value` reads from the raw bytes (ASCII only, no character set).
_ASCII_TEXT = frozenset({"UI", "CS", "DA", "TM", "DT"})


def raw_number(ds: Dataset, keyword: str, multi: bool = False) -> Any:
    """``ds.get(keyword)`` for the hot numeric elements of a dynamic series, read from the raw bytes.

    A not yet converted little-endian DS / IS element becomes a float / int (a list of them when
    multi-valued), a US / UL element an int, exactly the numbers pydicom would give; pydicom's
    conversion of each of the ~25 elements of thousands of instances is most of the loading time.
    Anything else (already converted, empty, big-endian, other VRs, a value that does not parse)
    is left to ``ds.get``, so refusals and their words are unchanged; so is a multi-valued one
    unless ``multi``.
    """
    tag = tag_for_keyword(keyword)
    elem = ds.get_item(tag) if tag is not None else None
    if not isinstance(elem, RawDataElement) or not elem.value or not elem.is_little_endian:
        return ds.get(keyword)
    vr = elem.VR if elem.VR not in (None, "UN") else dictionary_VR(tag)
    value = elem.value
    try:
        if vr in _ASCII_NUMBERS:
            parts = value.decode("ascii").strip(" \x00").split("\\")
            numbers = [float(v) if vr == "DS" else int(v) for v in parts]
            if vr == "DS" and not all(math.isfinite(v) for v in numbers):
                return ds.get(keyword)
            if len(numbers) == 1:
                return numbers[0]
            return numbers if multi else ds.get(keyword)
        if vr in _BINARY_UNSIGNED and len(value) == (2 if vr == "US" else 4):
            return int.from_bytes(value, "little")
    except (UnicodeDecodeError, ValueError):
        pass
    return ds.get(keyword)


def instance_words(ds: Dataset) -> str:
    """``instance <SOP Instance UID>``, how a refusal names the image it is about."""
    return f"instance {text_value(ds, 'SOPInstanceUID') or '?'}"




#: Transfer syntaxes whose Pixel Data are the stored values as they are (Implicit / Explicit VR Little Endian).
_NATIVE_LITTLE_ENDIAN = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"})
_PIXEL_DATA = 0x7FE00010


def native_stored_values(ds: Dataset) -> np.ndarray | None:
    """Stored values ``[rows, columns]`` (``[frames, rows, columns]`` when Number of Frames > 1) read straight
    from native little-endian Pixel Data of one sample per pixel with Bits Stored = Bits Allocated (8, 16
    or 32); None for anything else (compressed, big-endian, packed or masked bits, colour), which pydicom's
    decoders handle. A dynamic study has thousands of such instances: this skips the decoder machinery
    that each ``pixel_array`` call sets up (about half of the per-instance loading time)."""
    meta = getattr(ds, "file_meta", None)
    if meta is None or text_value(meta, "TransferSyntaxUID") not in _NATIVE_LITTLE_ENDIAN:
        return None
    bits, stored = raw_number(ds, "BitsAllocated"), raw_number(ds, "BitsStored")
    rows, columns, frames = raw_number(ds, "Rows"), raw_number(ds, "Columns"), int(raw_number(ds, "NumberOfFrames") or 1)
    if bits not in (8, 16, 32) or stored != bits or int(raw_number(ds, "SamplesPerPixel") or 1) != 1 or not rows or not columns:
        return None
    dtype = np.dtype(f"{'<i' if raw_number(ds, 'PixelRepresentation') == 1 else '<u'}{bits // 8}")
    count = int(rows) * int(columns) * frames
    raw = ds.get_item(_PIXEL_DATA)  # the bytes as read (pydicom's conversion of native OB/OW returns them as they are)
    data = raw.value if isinstance(raw, RawDataElement) and raw.is_little_endian else ds.PixelData
    if not isinstance(data, bytes) or len(data) < count * dtype.itemsize:
        return None
    values = np.frombuffer(data, dtype=dtype, count=count)
    return values.reshape(int(rows), int(columns)) if frames == 1 else values.reshape(frames, int(rows), int(columns))


def decoded_pixels(ds: Dataset) -> np.ndarray:
    """Stored values of ``ds`` as float64 (native pixels read directly, anything else by pydicom); a missing
    or undecodable Pixel Data is an :class:`~node.imaging.errors.UnusableSeriesError` naming it."""
    if "PixelData" not in ds:
        raise UnusableSeriesError(f"PixelData (7FE0,0010) is missing in {instance_words(ds)}", "PixelData")
    native = native_stored_values(ds)
    if native is not None:
        return native.astype(np.float64)
    try:
        return np.asarray(ds.pixel_array, dtype=np.float64)
    except Exception as exc:  # decoders raise many types
        raise UnusableSeriesError(f"PixelData (7FE0,0010) cannot be decoded: {type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0][:200] if str(exc) else ''}", "PixelData") from None
