"""A result destination in the test's process whose answer the test sets: refuse for good, then accept.

A pynetdicom Storage SCP on a free loopback port. While :attr:`Destination.refusing` is set it
answers every C-STORE with :attr:`Destination.refusal_status` (0xA900 by default: a permanent
refusal, which the node dead-letters at once) and, when given, an Error Comment; otherwise it
answers Success and keeps the SOP Instance UID. That is how a test makes a dead letter and
then sees an operator's retry delivered, without mocking the node's sender.
"""

from __future__ import annotations

import threading
from typing import Any

from pydicom import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt

from tests.support.ports import free_port

__all__ = ["Destination"]


class Destination:
    """A Storage SCP called ``ae_title`` on 127.0.0.1; refusing or accepting as the test says."""

    def __init__(self, ae_title: str = "ARCHIVE", *, refusing: bool = True, refusal_status: int = 0xA900,
                 error_comment: str = "") -> None:
        self.ae_title, self.port = ae_title, free_port()
        self.refusing, self.refusal_status, self.error_comment = refusing, refusal_status, error_comment
        self.refused: list[str] = []  # SOP Instance UIDs refused, in order (repeats included)
        self.stored: list[str] = []  # SOP Instance UIDs accepted
        self._lock = threading.Lock()
        self._server: Any = None

    def as_setting(self, name: str) -> dict[str, Any]:
        """The node's ``[[destinations]]`` entry for this SCP, named ``name``."""
        return {"name": name, "ae_title": self.ae_title, "host": "127.0.0.1", "port": self.port}

    def _on_store(self, event: Any) -> int | Dataset:
        uid = str(event.request.AffectedSOPInstanceUID)
        with self._lock:
            if not self.refusing:
                self.stored.append(uid)
                return 0x0000
            self.refused.append(uid)
        if not self.error_comment:
            return self.refusal_status
        status = Dataset()
        status.Status, status.ErrorComment = self.refusal_status, self.error_comment[:64]
        return status

    def start(self) -> Destination:
        ae = AE(ae_title=self.ae_title)
        ae.supported_contexts = AllStoragePresentationContexts
        self._server = ae.start_server(("127.0.0.1", self.port), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def __enter__(self) -> Destination:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
