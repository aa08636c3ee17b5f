"""Notifications: tell the sender's side when a study was not processed or a result not delivered (``[notify]``).

An ignored study is otherwise invisible to the PACS side: nothing comes back. With
``[notify] webhook_url`` and/or ``command`` set, the node sends one JSON object per event:

* ``study.ignored``, ``study.failed``, ``study.given_up``: a study entered that state;
  ``reason`` says why in plain words first (``planar whole-body images received;
  reconstructed stress and rest SPECT (spect_mpi) ... needed. Details: ...``);
* ``send.dead_letter``: results of a study could not be delivered to a destination
  (one object per study and destination among the events read together).

The payload (:func:`payload`) carries the event, the node's AE title, the time (UTC), the
study key (:func:`node.dicom.logs.hash_identifier` of the Study Instance UID, as in the
node's logs), the Study Instance UID itself unless ``include_study_uid = false`` (the
audit log's policy: study-level UIDs yes), the state and the reason. Never a patient name,
ID or birth date: the ledger, which the notifications are read from, holds none, and the
reason passes :func:`node.dicom.logs.redact` on its way out.

Delivery: the webhook gets an HTTP POST (``Content-Type: application/json``; any 2xx is
success); the command (an argument list, no shell) gets the JSON on its standard input
(exit status 0 is success). Each event is delivered once: :class:`Notifier` follows the
ledger's events from the last id it handled (kept in ``<data_dir>/notify/cursor.json``,
advanced after each event, so only a crash between a delivery and its record repeats one).
A hook that fails, answers an error or exceeds ``timeout_s`` is logged in one line (host and
port or command name, and why) and not retried; the node carries on. A node started
without a cursor begins at the latest event: it does not notify the past.
"""

from __future__ import annotations

import json
import logging
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from node.config import NotifySettings, Settings, redact_url
from node.dicom.logs import hash_identifier, redact
from node.dicom.spool import write_file_atomic
from node.ledger import Event, Ledger

__all__ = ["Notification", "Notifier", "deliver", "payload"]

_log = logging.getLogger(__name__)

#: study states that make a notification (the event name is ``study.<state>``)
STUDY_EVENTS = ("ignored", "failed", "given_up")
#: events read from the ledger per :meth:`Notifier.run_once`
BATCH = 500
_CURSOR = Path("notify") / "cursor.json"


@dataclass(frozen=True)
class Notification:
    """One thing to tell: ``event`` (``study.ignored`` ...), the study, when (naive UTC), the state,
    the reason, and for ``send.dead_letter`` the destination and how many results it missed."""

    event: str
    study_uid: str
    at: datetime
    state: str
    reason: str
    destination: str | None = None
    results: int | None = None


def payload(notification: Notification, ae_title: str, include_study_uid: bool = True) -> dict[str, Any]:
    """The JSON object of ``notification`` (keys in the module docstring; no patient data)."""
    body: dict[str, Any] = {
        "event": notification.event,
        "node": ae_title,
        "at": notification.at.isoformat(timespec="seconds") + "Z",
        "study_key": hash_identifier(notification.study_uid),
    }
    if include_study_uid:
        body["study_instance_uid"] = notification.study_uid
    body["state"] = notification.state
    body["reason"] = redact(notification.reason)
    if notification.destination is not None:
        body["destination"] = notification.destination
        body["results"] = notification.results
    body["software"] = "CardioNode, research use only: not for diagnostic use"
    return body


def deliver(settings: NotifySettings, body: dict[str, Any]) -> list[str]:
    """Send ``body`` to the webhook and the command of ``settings``; what failed, in words ([] if all went)."""
    data = json.dumps(body, ensure_ascii=True).encode("ascii")
    problems: list[str] = []
    if settings.webhook_url:
        problem = _post(settings.webhook_url, data, settings.timeout_s)
        if problem:
            problems.append(problem)
    if settings.command:
        problem = _run(settings.command, data, settings.timeout_s)
        if problem:
            problems.append(problem)
    return problems


def _post(url: str, data: bytes, timeout_s: float) -> str | None:
    parts = urlsplit(url)
    where = f"webhook {parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
    request = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 (http(s) only: config check)
            if 200 <= response.status < 300:
                return None
            return f"{where} answered HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        return f"{where} answered HTTP {exc.code}"
    except urllib.error.URLError as exc:
        return f"{where}: {getattr(exc.reason, 'strerror', None) or exc.reason}"
    except (OSError, ValueError) as exc:  # timeouts, resets, a URL that does not parse
        return f"{where}: {type(exc).__name__}: {exc} ({redact_url(url)})"


def _run(command: list[str], data: bytes, timeout_s: float) -> str | None:
    where = f"command {Path(command[0]).name}"
    try:
        done = subprocess.run(command, input=data, capture_output=True, timeout=timeout_s, check=False)  # noqa: S603
    except subprocess.TimeoutExpired:
        return f"{where} did not finish within {timeout_s:g} s"
    except OSError as exc:
        return f"{where} cannot run: {exc.strerror or exc}"
    return None if done.returncode == 0 else f"{where} exited with status {done.returncode}"


class Notifier:
    """Follows the ledger's events and delivers a notification for each one ``[notify]`` asks for
    (:meth:`run_once`, called by ``cardionode serve``'s notify loop)."""

    def __init__(self, ledger: Ledger, settings: Settings) -> None:
        self.ledger, self.settings = ledger, settings
        self.cursor_path = settings.data_dir / _CURSOR
        self.cursor = self._read_cursor()

    def _read_cursor(self) -> int:
        try:
            return int(json.loads(self.cursor_path.read_text(encoding="ascii"))["event_id"])
        except (OSError, ValueError, KeyError, TypeError):
            cursor = self.ledger.events.last_id()  # a new node does not notify the past
            self._write_cursor(cursor)
            return cursor

    def _write_cursor(self, event_id: int) -> None:
        write_file_atomic(self.cursor_path, json.dumps({"event_id": event_id}).encode("ascii"), durable=True)

    def run_once(self) -> int:
        """Deliver the notifications of the events since the cursor; returns how many were attempted."""
        config = self.settings.notify
        events = self.ledger.events.after(self.cursor, BATCH)
        if not events:
            return 0
        attempted = 0
        for last_id, notification in self._notifications(events):
            if config.enabled and notification.event in config.events:
                attempted += 1
                body = payload(notification, self.settings.ae_title, config.include_study_uid)
                for problem in deliver(config, body):
                    _log.warning("notification %s of study %s not delivered: %s",
                                 notification.event, body["study_key"], problem)
            self.cursor = last_id
            self._write_cursor(last_id)
        if self.cursor < events[-1].id:
            self.cursor = events[-1].id
            self._write_cursor(self.cursor)
        return attempted

    def _notifications(self, events: list[Event]) -> list[tuple[int, Notification]]:
        """``(last event id it covers, notification)`` for the events that make one, in order; the
        dead letters of one study and destination among ``events`` make one notification."""
        found: list[tuple[int, Notification]] = []
        dead: dict[tuple[str, str], int] = {}  # (study, destination) -> index in found
        for event in events:
            if event.entity == "study" and event.to_state in STUDY_EVENTS and event.from_state != event.to_state:
                found.append((event.id, Notification(f"study.{event.to_state}", event.entity_id, event.at,
                                                     event.to_state, event.reason)))
            elif event.entity == "send" and event.to_state == "dead_letter" and event.from_state != "dead_letter":
                send = self._send(int(event.entity_id))
                if send is None:
                    continue
                study_uid, destination = send
                key = (study_uid, destination)
                if key in dead:
                    index = dead[key]
                    _, earlier = found[index]
                    found[index] = (event.id, Notification(earlier.event, study_uid, earlier.at, "dead_letter",
                                                           earlier.reason, destination, (earlier.results or 0) + 1))
                else:
                    dead[key] = len(found)
                    found.append((event.id, Notification("send.dead_letter", study_uid, event.at, "dead_letter",
                                                         f"results not delivered to {destination}: {event.reason}",
                                                         destination, 1)))
        found.sort(key=lambda item: item[0])
        return found

    def _send(self, send_id: int) -> tuple[str, str] | None:
        """The study and destination of a send, or None if it is gone."""
        send = self.ledger.sends.get(send_id)
        output = self.ledger.outputs.get(send.output_uid) if send is not None else None
        return (output.study_uid, send.destination) if send is not None and output is not None else None
