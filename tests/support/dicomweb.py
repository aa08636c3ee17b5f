"""STOW-RS requests written by hand (for the malformed and hostile ones no client library sends) and
their answers read back: one ``multipart/related`` writer, the Store Instances Response read as UIDs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID

__all__ = ["BOUNDARY", "failed", "multipart", "part10", "referenced", "stow_content_type"]

#: the boundary of the bodies written here
BOUNDARY = "cardionode-test-8f3a0c"


def stow_content_type(boundary: str = BOUNDARY, root_type: str | None = "application/dicom") -> str:
    """The request's ``Content-Type``: ``multipart/related`` with ``type`` (left out when None) and ``boundary``."""
    kind = f'; type="{root_type}"' if root_type is not None else ""
    return f"multipart/related{kind}; boundary={boundary}"


def multipart(parts: Sequence[bytes | Path | tuple[str | None, bytes | Path]], boundary: str = BOUNDARY,
              close: bool = True) -> bytes:
    """A ``multipart/related`` body: one part per item, a file's bytes or bytes, with ``Content-Type:
    application/dicom`` unless an item is ``(content_type, data)`` (None: no Content-Type header);
    ``close``: end with the close delimiter (False: a truncated body)."""
    out = bytearray(b"preamble, ignored\r\n")
    for item in parts:
        content_type, data = item if isinstance(item, tuple) else ("application/dicom", item)
        payload = data.read_bytes() if isinstance(data, Path) else data
        out += f"--{boundary}\r\n".encode()
        if content_type is not None:
            out += f"Content-Type: {content_type}\r\n".encode()
        out += f"Content-Length: {len(payload)}\r\n\r\n".encode()
        out += payload + b"\r\n"
    if close:
        out += f"--{boundary}--\r\nepilogue, ignored\r\n".encode()
    return bytes(out)


def part10(data_set: bytes, sop_class: str, sop_instance: str, transfer_syntax: str) -> bytes:
    """A Part 10 file of an encoded data set, as it is (the hostile ones of :mod:`tests.support.hostile_dicom`
    too): preamble, ``DICM`` and a File Meta naming ``sop_class``, ``sop_instance`` and ``transfer_syntax``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = UID("1.2.826.0.1.3680043.10.1")
    buffer = DicomBytesIO()
    buffer.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return bytes(buffer.getvalue()) + data_set


def _items(body: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    return list(body.get(tag, {}).get("Value", []))


def _value(item: dict[str, Any], tag: str) -> Any:
    values = item.get(tag, {}).get("Value") or [""]
    return values[0]


def referenced(body: dict[str, Any]) -> list[str]:
    """SOP Instance UIDs of the Referenced SOP Sequence (0008,1199) of a Store Instances Response (DICOM JSON)."""
    return [str(_value(item, "00081155")) for item in _items(body, "00081199")]


def failed(body: dict[str, Any]) -> list[tuple[str, int]]:
    """(SOP Instance UID, Failure Reason) of each item of the Failed SOP Sequence (0008,1198)."""
    return [(str(_value(item, "00081155")), int(_value(item, "00081197"))) for item in _items(body, "00081198")]
