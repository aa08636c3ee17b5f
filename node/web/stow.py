"""DICOMweb STOW-RS ingest (PS3.18 10.5): ``POST /dicom-web/studies`` and ``POST /dicom-web/studies/{study}``.

A STOW-RS request enters the node exactly as a C-STORE association does: every instance goes
through :meth:`node.dicom.storage.StorageService.store_file` (the same checks, spool, journal,
ledger, rejection records, metrics with ``source="stowrs"`` and the callback that wakes the
completeness assembler), and the answer is sent only once each stored instance is durable
and in the ledger. Authentication is the web app's (:mod:`node.web.auth`: Bearer token, or
HTTP Basic with the token as password); these routes never run for an unauthenticated request.

The request
    ``Content-Type: multipart/related; type="application/dicom"; boundary=...``, one DICOM
    Part 10 file per part (the preamble may be missing; the transfer syntax is the File
    Meta's). Parts without a Content-Type are taken as ``application/dicom``. The body is
    read as it arrives, each part written to a file in the spool's incoming folder (emptied
    when the listener starts), never held in memory; the whole multipart framing is checked
    before any part is stored, so a malformed request stores nothing.

The answer (HTTP status, body)
    * 200: every instance stored (a duplicate counts as stored, as with C-STORE);
      202: some stored, some failed; 409: none stored. The body is
      ``application/dicom+json``: the Store Instances Response Module (PS3.18 Annex I),
      Referenced SOP Sequence (0008,1199) for the stored instances, Failed SOP Sequence
      (0008,1198) with Failure Reason (0008,1197) = the DIMSE status a C-STORE of that
      instance is answered with (:class:`node.dicom.storage.Status`), Retrieve URL (0008,1190)
      empty (the node keeps no archive to retrieve from);
    * 400: malformed multipart (no boundary, no part, no close delimiter, bad part headers);
      413: body over ``[web] stow_max_mb``; 415: not ``multipart/related`` of
      ``application/dicom`` parts; 503: the web app runs without the node's listener
      (``cardionode web``); 507: free disk below ``disk_watermark_mb``. These carry a JSON
      ``{"detail": ...}`` and store nothing.

Every request is logged and audited (``stowrs.request`` with the counts and studies, or
``stowrs.refused`` with the reason); refused instances are recorded in the ledger like
refused C-STOREs, with calling AE ``STOW-RS`` and the client's address.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import IO, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from node.dicom.audit import AuditLog
from node.dicom.services import Peer, audit_quietly
from node.dicom.storage import SOURCE_STOWRS, StorageService, StoreOutcome, disk_space_problem
from node.web.context import WebContext

__all__ = [
    "MAX_BOUNDARY_CHARS",
    "MAX_PARTS",
    "MAX_PART_HEADER_BYTES",
    "STOW_CALLING_AE",
    "STOW_CONCURRENCY",
    "MultipartError",
    "MultipartSpooler",
    "stow_response",
    "stow_routes",
]

_log = logging.getLogger("node.web.stow")

#: calling AE title of instances received by STOW-RS (in the ledger, the spooled File Meta and the audit log)
STOW_CALLING_AE = "STOW-RS"
#: instances of one request stored at once (they share the journal's group commit)
STOW_CONCURRENCY = 4
#: the most bytes of headers one part may have
MAX_PART_HEADER_BYTES = 16 * 1024
#: the longest boundary accepted (RFC 2046 allows 70 characters; Orthanc's DICOMweb client writes longer ones)
MAX_BOUNDARY_CHARS = 256
#: the most parts (instances) one request may have
MAX_PARTS = 100_000
_DICOM = "application/dicom"
_DICOM_JSON = "application/dicom+json"
_MiB = 2**20
_WHITESPACE = b" \t"


class MultipartError(Exception):
    """A request the multipart reader refuses; ``status`` is the HTTP status to answer (400, 413, 415)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class _Part:
    """One part being received or received: its file in the incoming folder and its headers."""

    path: Path
    headers: dict[str, str] = field(default_factory=dict)
    size_bytes: int = 0


def _media_type(value: str) -> tuple[str, Message]:
    """The media type of a Content-Type value (lower case) and its parsed header (for parameters)."""
    header = Message()
    header["content-type"] = value
    return header.get_content_type().lower(), header


class MultipartSpooler:
    """Reads a ``multipart/related`` body as it arrives (RFC 2046 5.1), writing each part's
    body to its own file in ``directory``.

    Feed it the body chunk by chunk (:meth:`feed`), then :meth:`finish`; either raises
    :class:`MultipartError` (400 malformed, 413 over ``limit_bytes``, 415 a part that is not
    ``default_type``) and then deletes every file it wrote. Memory holds one chunk plus a
    boundary's length at a time (and one part's headers, at most :data:`MAX_PART_HEADER_BYTES`).
    The caller deletes the parts' files (:meth:`remove`) once done with them.
    """

    def __init__(self, boundary: str, directory: Path, limit_bytes: int, default_type: str = _DICOM) -> None:
        if not boundary or len(boundary) > MAX_BOUNDARY_CHARS:
            raise MultipartError(400, f"the multipart boundary is missing or longer than {MAX_BOUNDARY_CHARS} characters")
        self.delimiter = b"\r\n--" + boundary.encode("latin-1")
        self.directory = directory
        self.limit_bytes = limit_bytes
        self.default_type = default_type
        self.parts: list[_Part] = []
        self.received_bytes = 0
        self._buffer = b"\r\n"  # so that a delimiter at the very start of the body is found like the others
        self._state = "preamble"  # preamble | after-delimiter | headers | body | epilogue
        self._file: IO[bytes] | None = None

    # ------------------------------------------------------------------ feeding
    def feed(self, chunk: bytes) -> None:
        """Take the next bytes of the body."""
        self.received_bytes += len(chunk)
        if self.received_bytes > self.limit_bytes:
            self._fail(413, f"request body over stow_max_mb ({self.limit_bytes / _MiB:g} MiB)")
        self._buffer += chunk
        try:
            self._advance()
        except MultipartError:
            self.remove()
            raise

    def finish(self) -> list[_Part]:
        """The body ended: the parts received, in order (files closed)."""
        if self._state != "epilogue":
            self._fail(400, "the multipart body ends before its close delimiter")
        if not self.parts:
            self._fail(400, "the multipart body has no part")
        return self.parts

    def remove(self) -> None:
        """Delete every part's file (and close the one being written)."""
        self._close_file()
        for part in self.parts:
            part.path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ the reader
    def _fail(self, status: int, reason: str) -> None:
        self.remove()
        raise MultipartError(status, reason)

    def _advance(self) -> None:
        while True:
            if self._state in ("preamble", "body"):
                at = self._buffer.find(self.delimiter)
                if at < 0:
                    keep = len(self.delimiter) - 1
                    if self._state == "body" and len(self._buffer) > keep:
                        self._write(self._buffer[: len(self._buffer) - keep])
                        self._buffer = self._buffer[len(self._buffer) - keep :]
                    elif self._state == "preamble":
                        self._buffer = self._buffer[-keep:]
                    return
                if self._state == "body":
                    self._write(self._buffer[:at])
                    self._close_file()
                self._buffer = self._buffer[at + len(self.delimiter) :]
                self._state = "after-delimiter"
            elif self._state == "after-delimiter":
                if len(self._buffer) < 2:
                    return
                if self._buffer.startswith(b"--"):
                    self._state, self._buffer = "epilogue", b""
                    continue
                end = self._buffer.find(b"\r\n")
                if end < 0:
                    if len(self._buffer) > 256:
                        self._fail(400, "a multipart delimiter line is not followed by a line end")
                    return
                if self._buffer[:end].strip(_WHITESPACE):
                    self._fail(400, "text after a multipart delimiter on its line")
                self._buffer = self._buffer[end + 2 :]
                self._state = "headers"
            elif self._state == "headers":
                if self._buffer.startswith(b"\r\n"):  # a part without headers
                    block, self._buffer = b"", self._buffer[2:]
                else:
                    end = self._buffer.find(b"\r\n\r\n")
                    if end < 0:
                        if len(self._buffer) > MAX_PART_HEADER_BYTES:
                            self._fail(400, f"a part's headers are longer than {MAX_PART_HEADER_BYTES} bytes")
                        return
                    block, self._buffer = self._buffer[:end], self._buffer[end + 4 :]
                self._start_part(block)
                self._state = "body"
            else:  # epilogue: ignored
                self._buffer = b""
                return

    def _start_part(self, block: bytes) -> None:
        if len(self.parts) >= MAX_PARTS:
            self._fail(400, f"more than {MAX_PARTS} parts")
        headers: dict[str, str] = {}
        for line in block.split(b"\r\n") if block else []:
            name, colon, value = line.partition(b":")
            if not colon or not name.strip() or name != name.strip() or line[:1] in (b" ", b"\t"):
                self._fail(400, "a part's header line is not 'Name: value'")
            headers[name.decode("latin-1").lower()] = value.decode("latin-1").strip()
        media_type, _ = _media_type(headers.get("content-type", self.default_type))
        if media_type != self.default_type:
            self._fail(415, f"a part is {media_type[:64]}, not {self.default_type}")
        encoding = headers.get("content-transfer-encoding", "binary").lower()
        if encoding not in ("binary", "8bit", "7bit"):
            self._fail(415, f"a part's Content-Transfer-Encoding is {encoding[:32]}, not binary")
        part = _Part(self.directory / f"stow-{secrets.token_hex(8)}.part", headers)
        self.parts.append(part)
        self._file = open(part.path, "xb")

    def _write(self, data: bytes) -> None:
        if data and self._file is not None:
            self._file.write(data)
            self.parts[-1].size_bytes += len(data)

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _uid_element(value: str) -> dict[str, Any]:
    """A UI element in the DICOM JSON model (empty when ``value`` is)."""
    return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}


def stow_response(outcomes: list[StoreOutcome]) -> tuple[int, dict[str, Any]]:
    """The HTTP status and the Store Instances Response Module (PS3.18 Annex I, DICOM JSON) of
    the outcomes of a request's instances, in request order."""
    stored = [o for o in outcomes if o.stored]
    failed = [o for o in outcomes if not o.stored]
    body: dict[str, Any] = {"00081190": {"vr": "UR"}}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": [
            {"00081150": _uid_element(o.sop_class_uid), "00081155": _uid_element(o.sop_instance_uid),
             "00081197": {"vr": "US", "Value": [o.status]}}
            for o in failed
        ]}
    if stored:
        body["00081199"] = {"vr": "SQ", "Value": [
            {"00081150": _uid_element(o.sop_class_uid), "00081155": _uid_element(o.sop_instance_uid)} for o in stored
        ]}
    status = 200 if not failed else 202 if stored else 409
    return status, body


class _Stow:
    """The STOW-RS endpoint of one web app."""

    def __init__(self, context: WebContext) -> None:
        self.context = context

    @property
    def audit(self) -> AuditLog | None:
        storage = self.context.storage
        return self.context.audit or (storage.audit if storage is not None else None)

    def _refuse(self, request: Request, status: int, reason: str) -> Response:
        address = request.client.host if request.client else ""
        _log.warning("STOW-RS request from %s refused: %d %s", address, status, reason)
        audit_quietly(self.audit, "stowrs.refused", address=address, http_status=status, reason=reason)
        return JSONResponse({"detail": reason}, status_code=status)

    async def store(self, request: Request) -> Response:
        """``POST /dicom-web/studies[/{study}]``."""
        storage = self.context.storage
        if storage is None:
            return self._refuse(request, 503, "this web app runs without the node's listener: STOW-RS is not available here")
        study = request.path_params.get("study")
        media_type, header = _media_type(request.headers.get("content-type", ""))
        if media_type != "multipart/related":
            return self._refuse(request, 415, f'Content-Type must be multipart/related; type="{_DICOM}"')
        root_type = str(header.get_param("type") or _DICOM).lower()
        if root_type != _DICOM:
            return self._refuse(request, 415, f"multipart/related of {root_type[:64]} is not accepted, only {_DICOM}")
        boundary = header.get_param("boundary")
        if not isinstance(boundary, str) or not boundary:
            return self._refuse(request, 400, "Content-Type has no boundary parameter")
        limit = int(self.context.settings.web.stow_max_mb * _MiB)
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return self._refuse(request, 413, f"request body of {int(declared) / _MiB:.0f} MiB over stow_max_mb")
        low = disk_space_problem(self.context.settings.data_dir, self.context.settings.disk_watermark_mb)
        if low:
            return self._refuse(request, 507, low)
        try:
            spooler = MultipartSpooler(boundary, storage.spool.incoming_dir, limit)
            parts = await self._receive(spooler, request.stream())
        except MultipartError as error:
            return self._refuse(request, error.status, error.reason)
        except ClientDisconnect:
            return self._refuse(request, 400, "the client disconnected before the end of the body")
        address = request.client.host if request.client else ""
        try:
            outcomes = await self._store_all(storage, [p.path for p in parts], address, study)
        finally:
            spooler.remove()
        status, body = stow_response(outcomes)
        counts = {
            "stored": sum(1 for o in outcomes if o.stored and o.new),
            "duplicates": sum(1 for o in outcomes if o.stored and not o.new),
            "refused": sum(1 for o in outcomes if not o.stored),
        }
        studies = sorted({o.study_uid for o in outcomes if o.stored})
        counted = ", ".join(f"{n} {counter}" for counter, n in counts.items())
        _log.info("STOW-RS request from %s: %d part(s), %s -> %d", address, len(parts), counted, status)
        audit_quietly(self.audit, "stowrs.request", calling_ae=STOW_CALLING_AE, address=address,
                      http_status=status, **counts, study_uids=studies)
        return JSONResponse(body, status_code=status, media_type=_DICOM_JSON)

    @staticmethod
    async def _receive(spooler: MultipartSpooler, stream: AsyncIterator[bytes]) -> list[_Part]:
        """The parts of the body, each in its file; nothing is kept when the body is refused or cut short."""
        try:
            async for chunk in stream:
                spooler.feed(chunk)
            return spooler.finish()
        except BaseException:
            spooler.remove()
            raise

    @staticmethod
    async def _store_all(storage: StorageService, paths: list[Path], address: str, study: str | None) -> list[StoreOutcome]:
        """Store each part through the storage service, :data:`STOW_CONCURRENCY` at a time, in worker
        threads; the outcomes in part order."""
        gate = asyncio.Semaphore(STOW_CONCURRENCY)

        async def one(path: Path) -> StoreOutcome:
            peer = Peer(STOW_CALLING_AE, address, dict.fromkeys(StorageService.counters, 0))
            async with gate:
                outcome = await run_in_threadpool(
                    storage.store_file, path, source=SOURCE_STOWRS, peer=peer, study_uid=study
                )
            path.unlink(missing_ok=True)
            return outcome

        return list(await asyncio.gather(*(one(p) for p in paths)))


def stow_routes(context: WebContext) -> list[BaseRoute]:
    """The STOW-RS routes for the web app of ``context`` (mounted under the API prefix ``/dicom-web``)."""
    stow = _Stow(context)
    return [
        Route("/dicom-web/studies", stow.store, methods=["POST"]),
        Route("/dicom-web/studies/{study}", stow.store, methods=["POST"]),
    ]
