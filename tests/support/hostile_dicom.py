"""Hostile and malformed C-STORE data sets for the listener's refusal and memory tests.

Every builder streams: a deflate bomb of 512 MiB or an instance of 80 MiB is made
without holding it in the test's memory. The encoded data sets are sent as they
are with :func:`tests.support.dicom_clients.send_raw_answers`.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

from tests.support.dicom_clients import encode
from tests.support.nm import nm_instance

__all__ = [
    "DEFLATED",
    "MalformedCase",
    "deflate_bomb",
    "image_header",
    "malformed_cases",
    "write_large_instance",
]

DEFLATED = "1.2.840.10008.1.2.1.99"
_MiB = 2**20
_ZEROS = bytes(_MiB)


def image_header(study: str, series: str, sop: str, pixel_bytes: int) -> bytes:
    """An NM data set (Explicit VR Little Endian) up to and including the header of a Pixel Data
    (OW) of ``pixel_bytes`` bytes (a multiple of 2 MiB: 1024 x 1024 x 16 bits per frame); the value follows."""
    ds = nm_instance(study, series, sop)
    del ds.PixelData
    ds.Rows, ds.Columns, ds.NumberOfFrames = 1024, 1024, max(1, pixel_bytes // (2 * _MiB))
    return encode(ds) + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, pixel_bytes)


def _zero_chunks(nbytes: int) -> Iterator[bytes]:
    for start in range(0, nbytes, _MiB):
        yield _ZEROS[: min(_MiB, nbytes - start)]


def deflate_bomb(study: str, series: str, sop: str, inflated_mib: int = 512) -> bytes:
    """A valid Deflated Explicit VR Little Endian NM data set of about ``inflated_mib`` MiB once
    inflated (zero pixels), about 1/1000 of that deflated (0.5 MiB for 512 MiB)."""
    pixel_bytes = inflated_mib * _MiB
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    out = [deflater.compress(image_header(study, series, sop, pixel_bytes))]
    out += [deflater.compress(chunk) for chunk in _zero_chunks(pixel_bytes)]
    out.append(deflater.flush())
    return b"".join(out)


def write_large_instance(path: Path, study: str, series: str, sop: str, pixel_mib: int) -> Path:
    """Write the encoded data set (no File Meta) of an NM instance with ``pixel_mib`` MiB of
    zero pixels to ``path``, in chunks; returns ``path``."""
    with open(path, "wb") as out:
        out.write(image_header(study, series, sop, pixel_mib * _MiB))
        for chunk in _zero_chunks(pixel_mib * _MiB):
            out.write(chunk)
    return path


class MalformedCase(NamedTuple):
    """One malformed C-STORE: what is wrong, the request's SOP Instance UID, the bytes, the
    transfer syntax, and the statuses the conformance statement allows for it."""

    name: str
    sop_instance: str
    payload: bytes
    transfer_syntax: str
    allowed: frozenset[int]


def _element(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH2sH", group, elem, vr, len(value)) + value


def _replace(encoded: bytes, tag: tuple[int, int], new: bytes) -> bytes:
    """``encoded`` with the (short-length) element ``tag`` replaced by ``new``."""
    i = encoded.index(struct.pack("<HH", *tag))
    (length,) = struct.unpack("<H", encoded[i + 6:i + 8])
    return encoded[:i] + new + encoded[i + 8 + length:]


def _nested_sequences(levels: int) -> bytes:
    """``levels`` Content Sequences of undefined length, each in an item of undefined length, never closed."""
    head = struct.pack("<HH2sHI", 0x0040, 0xA730, b"SQ", 0, 0xFFFFFFFF) + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    tail = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return head * levels + tail * levels


def _item_bomb(items: int) -> bytes:
    """An undefined-length Radiopharmaceutical Information Sequence of ``items`` empty items
    (8 bytes each on the wire, about 0.7 KiB each once pydicom parses them)."""
    return (struct.pack("<HH2sHI", 0x0054, 0x0016, b"SQ", 0, 0xFFFFFFFF) + struct.pack("<HHI", 0xFFFE, 0xE000, 0) * items
            + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))


def malformed_cases(study: str, series: str, uid_root: str) -> list[MalformedCase]:
    """The malformed kinds the listener must refuse as the sender's problem (never 0xA700).

    ``uid_root``: a UID prefix for the instances (each case gets its own SOP Instance UID).
    Allowed statuses follow docs/conformance.md: 0xC000 for what cannot be parsed or read,
    0xC001 for a missing or invalid UID, 0xC002 for what is over a size limit, 0xA900 for an
    image whose pixel header cannot be read.
    """
    cannot_parse, bad_uid, too_large = frozenset({0xC000}), frozenset({0xC001}), frozenset({0xC002})
    cases: list[MalformedCase] = []

    def add(name: str, build: bytes | Callable[[bytes], bytes], allowed: frozenset[int],
            syntax: str = "1.2.840.10008.1.2.1") -> None:
        sop = f"{uid_root}.{len(cases) + 1}"
        encoded = encode(nm_instance(study, series, sop))
        payload = build(encoded) if callable(build) else build
        cases.append(MalformedCase(name, sop, payload, syntax, allowed))

    def deflated(data: bytes) -> bytes:
        deflater = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        return deflater.compress(data) + deflater.flush()

    pixel_tag = struct.pack("<HH", 0x7FE0, 0x0010)
    add("truncated inside a value", lambda e: e[:-100], cannot_parse)
    add("truncated inside an element header", lambda e: e[:e.index(pixel_tag) + 6], cannot_parse)
    add("3 GB length claim", lambda e: e[:e.index(pixel_tag)] + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, 3_000_000_000)
        + bytes(64), cannot_parse)
    add("length past the end of a short element", lambda e: e + struct.pack("<HH2sH", 0x0009, 0x1010, b"LO", 4000) + b"x" * 10,
        cannot_parse)
    add("US value of 3 bytes (Rows)", lambda e: _replace(e, (0x0028, 0x0010), _element(0x0028, 0x0010, b"US", b"\x10\x00\x00")),
        cannot_parse)
    add("US value of 3 bytes (Bits Allocated)",
        lambda e: _replace(e, (0x0028, 0x0100), _element(0x0028, 0x0100, b"US", b"\x10\x00\x00")), cannot_parse)
    add("SOP Instance UID with letters", lambda e: _replace(e, (0x0008, 0x0018), _element(0x0008, 0x0018, b"UI", b"1.2.abc\x00")),
        bad_uid)
    add("Study Instance UID missing", lambda e: _replace(e, (0x0020, 0x000D), b""), bad_uid)
    add("recursion bomb (3000 nested sequences)", lambda e: e + _nested_sequences(3000), cannot_parse)
    add("sequences nested 65 deep", lambda e: e + _nested_sequences(65), cannot_parse)
    add("sequence never closed", lambda e: e + struct.pack("<HH2sHI", 0x0040, 0xA730, b"SQ", 0, 0xFFFFFFFF)
        + struct.pack("<HHI", 0xFFFE, 0xE000, 0), cannot_parse)
    add("item outside a sequence", lambda e: e + struct.pack("<HHI", 0xFFFE, 0xE000, 4) + b"abcd", cannot_parse)
    add("item delimiter at the top level", lambda e: e + struct.pack("<HHI", 0xFFFE, 0xE00D, 0), cannot_parse)
    add("not DICOM at all", b"\xff" * 64, cannot_parse)
    add("corrupt deflate stream", lambda e: b"\x78\x9c" + e[:200], cannot_parse, DEFLATED)
    add("truncated deflate stream", lambda e: deflated(e)[:300], cannot_parse, DEFLATED)
    add("sequence of 400,000 empty items (parse bomb)", lambda e: e + _item_bomb(400_000), too_large)
    add("deflated sequence of 400,000 empty items", lambda e: deflated(e + _item_bomb(400_000)), too_large, DEFLATED)
    return cases
