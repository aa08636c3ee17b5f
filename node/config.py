"""Node settings: one TOML file plus ``CARDIONODE_*`` environment variables.

Sources, highest priority first:

1. environment variables ``CARDIONODE_<FIELD>``; nested fields use ``__``
   (``CARDIONODE_TLS__CERT=/etc/cardionode/node.pem``,
   ``CARDIONODE_COMPLETENESS__DEFAULT__QUIET_PERIOD_S=30``); list fields take
   JSON (``CARDIONODE_PEERS='[{"name": "pacs", "ae_titles": ["PACS1"]}]'``);
2. the TOML file given by ``--config`` or ``$CARDIONODE_CONFIG``;
3. the embedded defaults below, which run a working node out of the box
   (listening on 127.0.0.1:11112 as ``CARDIONODE``, data under ``./var``,
   Celery broker and results in SQLite files there).

Relative paths are relative to the working directory of the process.

Processing reads its settings only through the node: ``models_dir``,
``templates_dir``, ``clinical_csv``, ``[outputs]`` and ``[pipelines.<name>]``
are turned into the values each step message carries to the workers
(:mod:`node.pipelines.configure`); unset folders mean the data shipped with the
package (:mod:`node.resources`). Each pipeline checks its own
``[pipelines.<name>]`` table (its options model), and :meth:`Settings.problems`
reports what it refuses.

Settings that have the wrong *type* fail loading with a
:class:`ConfigError`; everything else an administrator could get wrong
(ports, AE titles, certificate files, directories, duplicates) is reported by
:meth:`Settings.problems` so that ``cardionode config check`` can list every
problem at once. ``cardionode serve`` refuses to start while there are any.
"""

from __future__ import annotations

import argparse
import contextvars
import ipaddress
import json
import os
import socket
import sys
import uuid
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from node.uids import deterministic_uid, is_valid_uid

__all__ = [
    "ConfigError",
    "Peer",
    "Destination",
    "CompletenessRule",
    "TLSSettings",
    "RedisTLSSettings",
    "WorkerSpec",
    "SendRetry",
    "OutputOptions",
    "Settings",
    "config_path",
    "load_settings",
    "ae_title_problem",
    "config_main",
    "redact_url",
]

#: environment variable naming the TOML file when ``--config`` is not given
CONFIG_ENV = "CARDIONODE_CONFIG"

_toml_path: contextvars.ContextVar[Path | None] = contextvars.ContextVar("cardionode_toml_path", default=None)


class ConfigError(ValueError):
    """The configuration cannot be loaded; the message says where and why."""


def ae_title_problem(ae_title: str, where: str) -> str | None:
    """Return why ``ae_title`` is not a usable AE title, or None if it is.

    PS3.5 6.2: at most 16 characters of the default character repertoire,
    no backslash or control characters, not only spaces.
    """
    if not ae_title.strip():
        return f"{where}: AE title is empty"
    if len(ae_title) > 16:
        return f"{where}: AE title {ae_title!r} has {len(ae_title)} characters; DICOM allows at most 16"
    bad = sorted({c for c in ae_title if c == "\\" or not (32 <= ord(c) < 127)})
    if bad:
        return f"{where}: AE title {ae_title!r} contains characters DICOM does not allow: {bad!r}"
    return None


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Peer(_Model):
    """A DICOM peer allowed to open associations with the node.

    ``ae_titles`` lists every calling AE title the peer may use (a PACS often
    has several). When ``host`` is set, the association must also come from
    that IP address or host name (resolved when the association arrives).
    """

    name: str
    ae_titles: list[str]
    host: str | None = None


class Destination(_Model):
    """A DICOM node the results are sent to (C-STORE SCU)."""

    name: str
    ae_title: str
    host: str
    port: int = 104
    tls: bool = False


class CompletenessRule(_Model):
    """When a study counts as complete for one pipeline (the ledger records which rule decided).

    * ``expected_series``: every series the pipeline requires is present and the
      study has been quiet (no new instance) for ``settle_s`` seconds;
    * ``quiet_period``: the study has been quiet for ``quiet_period_s`` seconds
      although required series are missing: process what is there (a study that
      no pipeline accepts is then recorded as ignored, with the reason);
    * ``force_deadline``: ``force_deadline_s`` seconds after the study's *first*
      instance it is still undecided: ``force_action`` says what happens,
      ``process`` what is there or ``give_up`` (state ``given_up``);
    * ``manual``: `cardionode complete STUDY`.
    """

    quiet_period_s: float = 10.0
    settle_s: float = 2.0
    force_deadline_s: float = 3600.0
    force_action: Literal["process", "give_up"] = "process"


class WorkerSpec(_Model):
    """A local Celery worker started by `cardionode serve`: its ``queues`` (comma-separated
    ``cpu``, ``gpu``, ``io``) and ``concurrency`` (processes)."""

    queues: str = "cpu,gpu,io"
    concurrency: int = 1


class SendRetry(_Model):
    """Backoff for transient C-STORE failures: first wait ``initial_s`` seconds, doubling up
    to ``max_s``; after ``max_attempts`` attempts the send is dead-lettered."""

    initial_s: float = 5.0
    max_s: float = 300.0
    max_attempts: int = 10


class TLSSettings(_Model):
    """DICOM TLS (PS3.15 B.9 / BCP 195) for listening and sending.

    The listener speaks TLS only when ``cert`` and ``key`` are set; plain TCP
    is then refused. ``ca`` verifies peers: with ``require`` a client must
    present a certificate signed by ``ca`` (mutual TLS). For sending, ``ca``
    verifies destinations and ``cert``/``key`` are offered as client identity.
    """

    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None
    require: bool = False

    @property
    def enabled(self) -> bool:
        return self.cert is not None and self.key is not None


class RedisTLSSettings(_Model):
    """TLS to Redis, for every ``rediss://`` URL (broker, result backend, artifact store).

    The server's certificate is always verified: against ``ca`` (a PEM file of the CA
    that signed it) or, when ``ca`` is unset, the system's CAs; with ``check_hostname``
    it must also name the URL's host. ``cert``/``key`` are the client certificate and key
    the node and its workers present to a Redis with ``tls-auth-clients yes``. The
    password goes in the URL (``rediss://:PASSWORD@host:6379/0``, or ``USER:PASSWORD``
    for a Redis ACL user), best through ``CARDIONODE_BROKER_URL`` rather than the file.
    """

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    check_hostname: bool = True


class OutputOptions(_Model):
    """Which result objects a pipeline run makes besides its SR and bull's-eye SC images.

    ``pdf_summary``: an Encapsulated PDF one-page summary (SOP class 1.2.840.10008.5.1.4.1.1.104.1);
    ``multiframe_screen``: a multi-frame true-colour Secondary Capture "result screen" (every
    map plus a table of the global results) for viewers that do not show SRs. These defaults are
    also :class:`node.results.content.ReportContext`'s.
    """

    pdf_summary: bool = True
    multiframe_screen: bool = False


def _default_completeness() -> dict[str, CompletenessRule]:
    return {"default": CompletenessRule()}


class Settings(BaseSettings):
    """The effective configuration of one node. See the module docstring for sources."""

    model_config = SettingsConfigDict(
        env_prefix="CARDIONODE_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    # -- DICOM listener
    ae_title: str = "CARDIONODE"
    port: int = 11112
    bind_address: str = Field(
        default="127.0.0.1", description="address to listen on; 0.0.0.0 to accept connections from other machines"
    )
    peers: list[Peer] = Field(
        default_factory=list,
        description="allowed calling peers; an EMPTY list accepts any calling AE title (fine on a laptop, not on a hospital network)",
    )
    max_associations: int = 10
    disk_watermark_mb: float = Field(default=500.0, description="refuse new associations when free space in data_dir is below this (MiB)")
    max_instance_mb: float = Field(
        default=512.0,
        description="largest data set stored (MiB), as received and, for Deflated Explicit VR Little Endian, once inflated; larger: 0xC002",
    )
    max_inflight_mb: float = Field(
        default=256.0, description="memory (MiB) all associations together may use to parse received data sets (node.dicom.intake)"
    )
    inflight_wait_s: float = Field(
        default=10.0, description="how long an instance waits for its share of max_inflight_mb before it is refused 0xA700 (busy)"
    )
    acse_timeout_s: float = Field(
        default=10.0,
        description="ARTIM: seconds from a connection (after TLS) until its whole A-ASSOCIATE-RQ has arrived; also the wait for a release to end",
    )
    tls_handshake_timeout_s: float = Field(default=10.0, description="seconds a peer has to complete the TLS handshake")
    pdu_timeout_s: float = Field(
        default=30.0,
        description="seconds a peer has to send one PDU from its first byte (at most the maximum PDU size, 1 MiB); "
        "the idle time between PDUs is network_timeout_s, so a long transfer is not limited",
    )
    dimse_timeout_s: float = 60.0
    network_timeout_s: float = 60.0
    durable_writes: bool = Field(default=True, description="fsync every spooled instance before answering Success")
    tls: TLSSettings = Field(default_factory=TLSSettings)

    # -- results
    destinations: list[Destination] = Field(default_factory=list)

    # -- storage and queue
    data_dir: Path = Path("var")
    ledger_url: str | None = None  # default sqlite:///<data_dir>/ledger.sqlite
    broker_url: str | None = None  # default sqla+sqlite:///<data_dir>/broker.sqlite
    result_backend: str | None = None  # default db+sqlite:///<data_dir>/results.sqlite
    artifact_store: str | None = None  # default <data_dir>/artifacts (a directory); or redis://...
    redis_tls: RedisTLSSettings = Field(default_factory=RedisTLSSettings)

    # -- processing
    completeness: dict[str, CompletenessRule] = Field(default_factory=_default_completeness)
    pipeline_modules: list[str] = Field(default_factory=list, description="extra modules imported at start (they register pipelines)")
    workers: list[WorkerSpec] = Field(
        default_factory=lambda: [WorkerSpec()], description="local workers started by serve; [] = remote workers only"
    )
    visibility_timeout_s: float = Field(default=3600.0, description="Redis broker: seconds before an unacknowledged task is redelivered")
    job_timeout_s: float = Field(default=3600.0, description="a job step not finished after this many seconds fails as timed out")
    step_start_timeout_s: float = Field(
        default=20.0, description="a step a local worker took but did not start within this many seconds is sent again and the worker restarted"
    )
    send_retry: SendRetry = Field(default_factory=SendRetry)
    models_dir: Path | None = Field(
        default=None, description="folder of the MONAI bundles, one sub-folder per bundle; unset: the bundles shipped with the package"
    )
    templates_dir: Path | None = Field(
        default=None, description="folder of the output templates (*.toml); unset: the templates shipped with the package"
    )
    clinical_csv: Path | None = Field(
        default=None, description="CSV of QRS duration, LBBB and NYHA class by accession number for the CRT model (docs/training.md); unset: none"
    )
    outputs: OutputOptions = Field(default_factory=OutputOptions)
    pipelines: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="[pipelines.<name>]: options of one pipeline, checked by that pipeline's options model",
    )

    # -- identity of the node in its outputs
    device_uid: str | None = None  # default: generated once and kept in <data_dir>/device_uid
    device_name: str = "CardioNode"
    institution: str = ""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _toml_path.get()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    # -- derived locations -------------------------------------------------
    @property
    def spool_dir(self) -> Path:
        """Received instances: ``<spool>/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm``."""
        return self.data_dir / "spool"

    @property
    def outbox_dir(self) -> Path:
        """Result objects written (fsync) before they are sent."""
        return self.data_dir / "outbox"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def audit_log_path(self) -> Path:
        """Append-only JSON-lines audit log."""
        return self.data_dir / "audit" / "audit.jsonl"

    @property
    def refusal_counts_path(self) -> Path:
        """The listener's refusals by reason since it started (JSON, node.dicom.refusals), read by ``status``."""
        return self.data_dir / "listener" / "refusals.json"

    @property
    def effective_ledger_url(self) -> str:
        return self.ledger_url or f"sqlite:///{self.data_dir.resolve() / 'ledger.sqlite'}"

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{self.data_dir.resolve() / 'broker.sqlite'}"

    @property
    def effective_result_backend(self) -> str:
        """``result_backend``, else the broker's Redis when the broker is Redis, else a SQLite file.

        A remote worker cannot write the node's SQLite files, so a Redis broker
        implies Redis for results too unless configured otherwise.
        """
        if self.result_backend:
            return self.result_backend
        if self.broker_is_redis:
            return self.effective_broker_url
        return f"db+sqlite:///{self.data_dir.resolve() / 'results.sqlite'}"

    @property
    def effective_artifact_store(self) -> str:
        """``artifact_store``, else the broker's Redis when the broker is Redis, else ``<data_dir>/artifacts``."""
        if self.artifact_store:
            return self.artifact_store
        if self.broker_is_redis:
            return self.effective_broker_url
        return str(self.data_dir.resolve() / "artifacts")

    @property
    def broker_is_redis(self) -> bool:
        return self.effective_broker_url.startswith(("redis://", "rediss://"))

    def completeness_for(self, pipeline: str) -> CompletenessRule:
        """The completeness rule of ``pipeline``, else the ``default`` one."""
        return self.completeness.get(pipeline) or self.completeness.get("default") or CompletenessRule()

    def effective_device_uid(self) -> str:
        """``device_uid`` if configured, else the UID generated once for this install.

        The generated UID is stored in ``<data_dir>/device_uid`` the first time
        it is needed; if the directory cannot be written, a UID derived from the
        host name and the absolute data directory is used (stable as well).
        """
        if self.device_uid:
            return self.device_uid
        path = self.data_dir / "device_uid"
        try:
            stored = path.read_text(encoding="ascii").strip()
            if is_valid_uid(stored):
                return stored
        except OSError:
            pass
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            uid = f"2.25.{uuid.uuid4().int}"
            tmp = path.with_suffix(".tmp")
            tmp.write_text(uid + "\n", encoding="ascii")
            os.replace(tmp, path)
            return path.read_text(encoding="ascii").strip()
        except OSError:
            return deterministic_uid("cardionode-device", socket.gethostname(), str(self.data_dir.resolve()))

    # -- checks ---------------------------------------------------------------
    def problems(self) -> list[str]:
        """Every problem an administrator must fix, in words; empty when fine."""
        out: list[str] = []
        out += _listener_problems(self)
        out += _peer_problems(self.peers)
        out += _destination_problems(self.destinations)
        out += _tls_problems(self.tls, bool(any(d.tls for d in self.destinations)))
        out += _storage_problems(self)
        out += _intake_limit_problems(self)
        out += _completeness_problems(self.completeness)
        out += _queue_problems(self)
        out += _redis_problems(self)
        out += _processing_problems(self)
        return out

    def warnings(self) -> list[str]:
        """Things that work but deserve a look (e.g. an open allow-list on a public address)."""
        out: list[str] = []
        if not self.peers:
            out.append(
                "peers is empty: ANY calling AE title may store to this node "
                "(set [[peers]] to restrict it)"
            )
        if not self.destinations:
            out.append(f"no destinations: results are only written to the outbox {self.outbox_dir}")
        if self.bind_address not in ("127.0.0.1", "::1", "localhost") and not self.tls.enabled:
            out.append(f"listening on {self.bind_address} without TLS")
        if not self.durable_writes:
            out.append("durable_writes is off: an acknowledged instance may be lost on power failure")
        out += _redis_warnings(self)
        if os.environ.get("CARDIONODE_TEMPLATES"):
            out.append("CARDIONODE_TEMPLATES is no longer read: set CARDIONODE_TEMPLATES_DIR (setting templates_dir)")
        return out

    def redacted(self) -> dict[str, Any]:
        """The effective configuration as plain data, passwords in URLs hidden."""
        data = self.model_dump(mode="json")
        data["device_uid"] = self.device_uid or "(generated, kept in data_dir/device_uid)"
        data["ledger_url"] = redact_url(self.effective_ledger_url)
        data["broker_url"] = redact_url(self.effective_broker_url)
        data["result_backend"] = redact_url(self.effective_result_backend)
        data["artifact_store"] = redact_url(self.effective_artifact_store)
        data["spool_dir"] = str(self.spool_dir)
        data["outbox_dir"] = str(self.outbox_dir)
        data["audit_log"] = str(self.audit_log_path)
        return data


def redact_url(url: str) -> str:
    """``url`` without secrets, for logs and messages: a password becomes ``***`` (a user name stays),
    a lone credential (``redis://SECRET@host``) and a ``password=`` query value too. A URL that cannot
    be parsed is not shown at all."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<a URL that cannot be parsed>"
    shown = url
    if "@" in parts.netloc:
        credentials, host = parts.netloc.rsplit("@", 1)
        hidden = f"{credentials.split(':', 1)[0]}:***@{host}" if ":" in credentials else f"***@{host}"
        shown = shown.replace(parts.netloc, hidden, 1)
    if parts.query:
        query = "&".join(f"{item.split('=', 1)[0]}=***" if item.split("=", 1)[0].lower() == "password" else item
                         for item in parts.query.split("&"))
        shown = shown.replace(f"?{parts.query}", f"?{query}", 1)
    return shown


def _port_problem(port: int, where: str) -> str | None:
    if not 1 <= port <= 65535:
        return f"{where}: port {port} is out of range (1-65535)"
    return None


def _listener_problems(s: Settings) -> list[str]:
    out = [p for p in (ae_title_problem(s.ae_title, "ae_title"), _port_problem(s.port, "port")) if p]
    try:
        ipaddress.ip_address(s.bind_address)
    except ValueError:
        out.append(f"bind_address {s.bind_address!r} is not an IP address (use 127.0.0.1, 0.0.0.0 or a local address)")
    if s.max_associations < 1:
        out.append(f"max_associations is {s.max_associations}; it must be at least 1")
    if s.disk_watermark_mb < 0:
        out.append(f"disk_watermark_mb is {s.disk_watermark_mb}; it must be 0 or more (MiB)")
    for name in ("acse_timeout_s", "tls_handshake_timeout_s", "pdu_timeout_s", "dimse_timeout_s", "network_timeout_s"):
        if getattr(s, name) <= 0:
            out.append(f"{name} must be more than 0 seconds")
    if s.device_uid is not None and not is_valid_uid(s.device_uid):
        out.append(f"device_uid {s.device_uid!r} is not a valid DICOM UID (digits and dots, at most 64 characters)")
    return out


def _peer_problems(peers: list[Peer]) -> list[str]:
    out: list[str] = []
    seen_names: set[str] = set()
    owner: dict[str, str] = {}
    for i, peer in enumerate(peers):
        where = f"peers[{i}] ({peer.name})"
        if peer.name in seen_names:
            out.append(f"{where}: another peer has the same name {peer.name!r}")
        seen_names.add(peer.name)
        if not peer.ae_titles:
            out.append(f"{where}: ae_titles is empty; list the calling AE titles this peer uses")
        for ae in peer.ae_titles:
            problem = ae_title_problem(ae, where)
            if problem:
                out.append(problem)
            elif ae.strip() in owner and owner[ae.strip()] != peer.name:
                out.append(f"{where}: calling AE {ae!r} is also listed for peer {owner[ae.strip()]!r}")
            owner.setdefault(ae.strip(), peer.name)
    return out


def _destination_problems(destinations: list[Destination]) -> list[str]:
    out: list[str] = []
    names: set[str] = set()
    endpoints: dict[tuple[str, str, int], str] = {}
    for i, d in enumerate(destinations):
        where = f"destinations[{i}] ({d.name})"
        if d.name in names:
            out.append(f"{where}: another destination has the same name {d.name!r}")
        names.add(d.name)
        for problem in (ae_title_problem(d.ae_title, where), _port_problem(d.port, where)):
            if problem:
                out.append(problem)
        if not d.host.strip():
            out.append(f"{where}: host is empty")
        key = (d.ae_title.strip(), d.host.strip().lower(), d.port)
        if key in endpoints:
            out.append(
                f"{where}: same AE title, host and port as destination {endpoints[key]!r}; "
                "results would be sent twice"
            )
        endpoints.setdefault(key, d.name)
    return out


def _readable_file_problem(path: Path | None, what: str) -> str | None:
    if path is None:
        return None
    if not path.exists():
        return f"{what} {path} does not exist"
    if not path.is_file():
        return f"{what} {path} is not a file"
    if not os.access(path, os.R_OK):
        return f"{what} {path} cannot be read by user id {os.getuid()}"
    return None


def _tls_problems(tls: TLSSettings, destinations_use_tls: bool) -> list[str]:
    out: list[str] = []
    if (tls.cert is None) != (tls.key is None):
        out.append("tls: set both tls.cert and tls.key (PEM files), or neither")
    if tls.require and tls.ca is None:
        out.append("tls.require is on but tls.ca is not set: cannot verify client certificates")
    if tls.require and not tls.enabled:
        out.append("tls.require is on but the listener has no tls.cert/tls.key")
    if destinations_use_tls and tls.ca is None:
        out.append("a destination uses TLS but tls.ca is not set: cannot verify the destination's certificate")
    for path, what in ((tls.cert, "tls.cert"), (tls.key, "tls.key"), (tls.ca, "tls.ca")):
        problem = _readable_file_problem(path, what)
        if problem:
            out.append(problem)
    if not out and tls.enabled:
        import ssl

        try:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(tls.cert), str(tls.key))
        except (ssl.SSLError, OSError) as exc:
            out.append(f"tls: certificate {tls.cert} and key {tls.key} cannot be loaded together: {exc}")
    return out


def _writable_dir_problem(path: Path, what: str) -> str | None:
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        return f"{what} {path}: {probe} exists and is not a directory"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{what} {path} is not writable by user id {os.getuid()} (check {probe})"
    return None


def _storage_problems(s: Settings) -> list[str]:
    out = [p for p in (_writable_dir_problem(s.data_dir, "data_dir"),) if p]
    for name, url, ok in (
        ("ledger_url", s.effective_ledger_url, ("sqlite:", "postgresql")),
        ("broker_url", s.effective_broker_url, ("sqla+", "redis://", "rediss://", "amqp://", "memory://")),
        ("result_backend", s.effective_result_backend, ("db+", "redis://", "rediss://", "rpc://")),
    ):
        if not url.startswith(ok):
            out.append(f"{name} {redact_url(url)!r} is not supported; use one starting with {' or '.join(ok)}")
    return out


def _intake_limit_problems(s: Settings) -> list[str]:
    """Problems of the limits on received data sets (max_instance_mb, max_inflight_mb, inflight_wait_s)."""
    out: list[str] = []
    if s.max_instance_mb <= 0:
        out.append(f"max_instance_mb is {s.max_instance_mb:g}; it must be more than 0 (MiB)")
    if s.max_inflight_mb < 8:
        out.append(f"max_inflight_mb is {s.max_inflight_mb:g}; it must be at least 8 (MiB) so that an ordinary instance can be parsed")
    if s.inflight_wait_s < 0:
        out.append(f"inflight_wait_s is {s.inflight_wait_s:g}; it must be 0 or more seconds")
    return out


def _completeness_problems(rules: dict[str, CompletenessRule]) -> list[str]:
    out: list[str] = []
    for name, rule in rules.items():
        where = f"completeness.{name}"
        if rule.quiet_period_s < 0:
            out.append(f"{where}.quiet_period_s must be 0 or more seconds")
        if rule.settle_s < 0:
            out.append(f"{where}.settle_s must be 0 or more seconds")
        if rule.force_deadline_s <= 0:
            out.append(f"{where}.force_deadline_s must be more than 0 seconds")
        elif rule.force_deadline_s < rule.quiet_period_s:
            out.append(
                f"{where}: force_deadline_s ({rule.force_deadline_s:g} s) is shorter than "
                f"quiet_period_s ({rule.quiet_period_s:g} s); the quiet period would never apply"
            )
    return out


def _queue_problems(s: Settings) -> list[str]:
    out: list[str] = []
    for i, worker in enumerate(s.workers):
        queues = [q.strip() for q in worker.queues.split(",") if q.strip()]
        unknown = sorted(set(queues) - {"cpu", "gpu", "io"})
        if not queues or unknown:
            out.append(f"workers[{i}].queues {worker.queues!r}: use a comma-separated list of cpu, gpu, io")
        if worker.concurrency < 1:
            out.append(f"workers[{i}].concurrency is {worker.concurrency}; it must be at least 1")
    for name in ("visibility_timeout_s", "job_timeout_s", "step_start_timeout_s"):
        if getattr(s, name) <= 0:
            out.append(f"{name} must be more than 0 seconds")
    r = s.send_retry
    if r.initial_s <= 0 or r.max_s < r.initial_s:
        out.append(f"send_retry: need 0 < initial_s <= max_s (got {r.initial_s:g} and {r.max_s:g} s)")
    if r.max_attempts < 1:
        out.append(f"send_retry.max_attempts is {r.max_attempts}; it must be at least 1")
    return out


_LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
# ssl_cert_reqs values that turn off the verification of the server's certificate
_UNVERIFIED = ("none", "cert_none", "optional", "cert_optional")


def _redis_urls(s: Settings) -> dict[str, list[str]]:
    """The Redis URLs of the broker, result backend and artifact store, each with the settings that use it."""
    urls: dict[str, list[str]] = {}
    for name, url in (("broker_url", s.effective_broker_url), ("result_backend", s.effective_result_backend),
                      ("artifact_store", s.effective_artifact_store)):
        if url.startswith(("redis://", "rediss://")):
            urls.setdefault(url, []).append(name)
    return urls


def _redis_problems(s: Settings) -> list[str]:
    """Redis URLs that cannot work (host, port, database, certificate checks turned off) and redis_tls files."""
    out: list[str] = []
    for url, names in _redis_urls(s).items():
        where = f"{' and '.join(names)} {redact_url(url)}"
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 (parsing the port raises ValueError when it is not a number in range)
        except ValueError as exc:
            out.append(f"{where}: not a valid Redis URL ({exc}); use redis[s]://[[USER]:PASSWORD@]HOST[:PORT][/DB]")
            continue
        if not parts.hostname:
            out.append(f"{where}: no host; use redis[s]://[[USER]:PASSWORD@]HOST[:PORT][/DB]")
        database = parts.path.strip("/")
        if database and not database.isdigit():
            out.append(f"{where}: the database {database!r} must be a number (e.g. /0)")
        query = {k.lower(): v for k, v in parse_qs(parts.query).items()}
        if any(v.lower() in _UNVERIFIED for v in query.get("ssl_cert_reqs", [])):
            out.append(f"{where}: ssl_cert_reqs turns off the check of the Redis server's certificate; remove it "
                       "(the node always verifies) and set redis_tls.ca to the CA that signed the server's certificate")
        if parts.scheme == "redis" and any(k.startswith("ssl") for k in query):
            out.append(f"{where}: TLS options on a plain redis:// URL; use rediss:// and the redis_tls settings")
    tls = s.redis_tls
    if (tls.cert is None) != (tls.key is None):
        out.append("redis_tls: set both redis_tls.cert and redis_tls.key (PEM files), or neither")
    files = [_readable_file_problem(path, f"redis_tls.{what}") for path, what in
             ((tls.ca, "ca"), (tls.cert, "cert"), (tls.key, "key"))]
    out += [p for p in files if p]
    if not any(files):
        import ssl

        try:
            context = ssl.create_default_context(cafile=str(tls.ca) if tls.ca else None)
            if tls.cert is not None and tls.key is not None:
                context.load_cert_chain(str(tls.cert), str(tls.key))
        except (ssl.SSLError, OSError, ValueError) as exc:
            out.append(f"redis_tls: the CA file, certificate or key cannot be loaded ({exc})")
    return out


def _redis_warnings(s: Settings) -> list[str]:
    """Redis set-ups that work but expose the queue: no password, or no TLS off this machine."""
    out: list[str] = []
    urls = _redis_urls(s)
    for url, names in urls.items():
        try:
            parts = urlsplit(url)
        except ValueError:
            continue  # a problem already
        if (parts.hostname or "") in _LOOPBACK_HOSTS:
            continue
        where = f"{' and '.join(names)} {redact_url(url)}"
        if parts.password is None and "password" not in parts.query.lower():
            out.append(f"{where} has no password: anyone who reaches that Redis can read and change the node's "
                       "queue, results and artifacts; set one in Redis (requirepass or an ACL user) and in the URL")
        if parts.scheme == "redis":
            out.append(f"{where} is not encrypted: the password and study data cross the network in clear; "
                       "use rediss:// (TLS) with redis_tls.ca")
    if (s.redis_tls.ca or s.redis_tls.cert) and not any(u.startswith("rediss://") for u in urls):
        out.append("redis_tls is set but no broker, result backend or artifact store URL uses rediss://; it is not used")
    return out


def _folder_problem(path: Path | None, what: str) -> str | None:
    if path is None:
        return None
    if not path.is_dir():
        return f"{what} {path} is not a folder" if path.exists() else f"{what} {path} does not exist"
    return None


def _processing_problems(s: Settings) -> list[str]:
    out = [
        p
        for p in (
            _folder_problem(s.models_dir, "models_dir"),
            _folder_problem(s.templates_dir, "templates_dir"),
            _readable_file_problem(s.clinical_csv, "clinical_csv"),
        )
        if p
    ]
    if s.pipelines:
        # Each pipeline declares its options, so checking [pipelines.<name>] means loading the
        # pipelines (as serve and the workers do); the only import of the pipeline layer here.
        from node.pipelines import registry

        registry.load_modules(s.pipeline_modules)
        out += registry.option_problems(s.pipelines)
    return out


def _format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"the configuration ({source}) has {exc.error_count()} error(s):"]
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        got = err.get("input")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  - {where}: {err['msg']}{shown}")
    return "\n".join(lines)


def config_path(path: Path | None = None) -> Path | None:
    """The configuration file: ``path`` (``--config``), else ``$CARDIONODE_CONFIG``, else None (defaults)."""
    if path is None and os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV])
    return path


def load_settings(path: Path | None = None) -> Settings:
    """Load the settings from :func:`config_path` of ``path``, the environment and the defaults.

    Raises :class:`ConfigError` when the file is missing or not valid TOML, or
    a value has the wrong type; the message names the setting.
    """
    path = config_path(path)
    source = str(path) if path is not None else "embedded defaults + environment"
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"configuration file {path} does not exist (from --config or ${CONFIG_ENV})")
        try:
            import tomllib

            tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"configuration file {path} is not valid TOML: {exc}") from exc
    token = _toml_path.set(path)
    try:
        return Settings()
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from exc
    finally:
        _toml_path.reset(token)


def config_main(args: argparse.Namespace) -> int:
    """``cardionode config check``: print the effective configuration and its problems; 1 if any."""
    try:
        settings = load_settings(getattr(args, "config", None))
    except ConfigError as exc:
        print(f"PROBLEM: {exc}", file=sys.stderr)
        return 1
    print("# effective configuration")
    print(json.dumps(settings.redacted(), indent=2))
    for warning in settings.warnings():
        print(f"WARNING: {warning}")
    problems = settings.problems()
    for problem in problems:
        print(f"PROBLEM: {problem}")
    if problems:
        print(f"{len(problems)} problem(s); the node will not start until they are fixed.")
        return 1
    print("configuration OK")
    return 0
