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

A relative ``data_dir`` is relative to the folder of the configuration file (to the working
directory when there is none: the embedded defaults keep ``./var``); other relative paths are
relative to the working directory of the process.

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
problem at once. ``cardionode serve`` refuses to start while there are any. A key
that no setting has fails loading too, named with the nearest known key;
``config check`` reports it beside every other problem instead (:func:`check_settings`).
What needs the network or this machine's state (host names that do not resolve, a
listening port already taken, destinations that do not answer C-ECHO) is checked by
:func:`environment_problems` and a C-ECHO to each destination, which ``config check``
(:mod:`node.ops.preflight`) runs and :func:`load_settings` never does.
"""

from __future__ import annotations

import contextvars
import ipaddress
import os
import socket
import uuid
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
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
    "RetentionSettings",
    "NotifySettings",
    "NotifyEvent",
    "NOTIFY_EVENTS",
    "UpsReceiver",
    "UpsSettings",
    "UpsTaskManager",
    "RetrieveSource",
    "Settings",
    "config_path",
    "load_settings",
    "ae_title_problem",
    "redact_url",
    "check_settings",
    "environment_problems",
    "listen_problem",
    "name_problem",
]

#: environment variable naming the TOML file when ``--config`` is not given
CONFIG_ENV = "CARDIONODE_CONFIG"

#: the configuration file's settings (known keys only) while :func:`load_settings` builds a :class:`Settings`
_file_data: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("cardionode_file_data", default=None)


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
      study has been quiet (no new instance) for ``settle_s`` seconds (0.5 s by default: senders
      send a study's instances back to back; a series that arrives later runs the study again);
    * ``quiet_period``: the study has been quiet for ``quiet_period_s`` seconds
      although required series are missing: process what is there (a study that
      no pipeline accepts is then recorded as ignored, with the reason);
    * ``force_deadline``: ``force_deadline_s`` seconds after the study's *first*
      instance it is still undecided: ``force_action`` says what happens,
      ``process`` what is there or ``give_up`` (state ``given_up``);
    * ``manual``: `cardionode complete STUDY`.
    """

    quiet_period_s: float = 10.0
    settle_s: float = 0.5
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
    map plus a table of the global results) for viewers that do not show SRs; ``results_screen``:
    the reading-monitor results screen (:mod:`node.results.screen`, one 1920x1080 Secondary
    Capture per page: maps, extent maps, scores, curves, model outputs, patient identification).
    These defaults are also :class:`node.results.content.ReportContext`'s.
    """

    pdf_summary: bool = True
    multiframe_screen: bool = False
    results_screen: bool = True


class RetentionSettings(_Model):
    """``[retention]``: how long received studies and results stay on disk (:mod:`node.ops.retention`).

    A study's files are pruned once it is finished and nothing needs them: the spool files
    (received instances) when no job of the study is queued or running, the outbox files
    (results) when none of them waits to be sent (``pending``, ``retrying``, or
    ``dead_letter`` of a job not discarded, which `cardionode retry` sends again). Then:

    * ``max_age_days``: its last activity (last instance received or last state change) is
      older than this many days (0: no age limit);
    * ``max_spool_gb`` / ``max_outbox_gb``: while the spool (or outbox) holds more than this
      many GB (10^9 bytes), the oldest prunable studies go first, those whose job failed
      (kept for `cardionode retry`) after the others (0: no size limit).

    Job artifacts (``<data_dir>/artifacts``) of jobs that are no longer queued or running are
    removed ``artifact_grace_h`` hours after they were written. ``cardionode serve`` runs a
    pass every ``interval_s`` seconds, and at once when free space falls below
    ``disk_watermark_mb``; ``cardionode prune [--dry-run]`` runs one on demand. The ledger's
    rows of a pruned study stay (its instances and results marked pruned), so its history
    and exactly-once hold; a pruned study sent again is stored and processed again.
    """

    enabled: bool = True
    max_age_days: float = 30.0
    max_spool_gb: float = 50.0
    max_outbox_gb: float = 10.0
    artifact_grace_h: float = 24.0
    interval_s: float = 3600.0


#: what a notification can be about (node.ops.notify): a study not processed, a result not delivered
NotifyEvent = Literal["study.ignored", "study.failed", "study.given_up", "send.dead_letter"]
NOTIFY_EVENTS: tuple[NotifyEvent, ...] = ("study.ignored", "study.failed", "study.given_up", "send.dead_letter")


class NotifySettings(_Model):
    """``[notify]``: tell someone outside the node when a study was not processed (:mod:`node.ops.notify`).

    On each study ``ignored``, ``failed`` or ``given_up`` and each send ``dead_letter``, a
    JSON object (event, study key, Study Instance UID when ``include_study_uid``, state,
    reason in plain words; never a patient name, ID or birth date) is POSTed to
    ``webhook_url`` and/or written to the standard input of ``command`` (an argument list,
    run without a shell), once per event. A hook that fails or takes longer than
    ``timeout_s`` is logged and not retried; the node carries on.
    """

    webhook_url: str | None = None
    command: list[str] = Field(default_factory=list)
    events: list[NotifyEvent] = Field(default_factory=lambda: list(NOTIFY_EVENTS))
    include_study_uid: bool = True
    timeout_s: float = 10.0

    @property
    def enabled(self) -> bool:
        return bool(self.webhook_url or self.command)


class WebSettings(_Model):
    """``[web]``: the operator web page, ``/metrics``, health probes and DICOMweb STOW-RS (:mod:`node.web`).

    ``cardionode serve`` starts it in the node process when ``enabled``; ``cardionode web``
    runs it alone (a node elsewhere, the same ledger). It listens on ``bind_address``:``port``
    (loopback by default: remote access is a deliberate setting, best behind the site's
    TLS reverse proxy). Every page, ``/metrics`` and STOW-RS need the access token: the
    contents of ``token_file`` (default ``<data_dir>/web/token``, created with a random token
    readable only by the node's user at first start) or the ``CARDIONODE_WEB__TOKEN``
    environment variable; a browser exchanges it once for a session cookie that lasts
    ``session_hours``. ``/healthz`` and ``/readyz`` answer without it (they carry no patient
    data). Pages show no patient name, ID or birth date unless ``show_identifiers`` is on.
    A STOW-RS request larger than ``stow_max_mb`` is refused (413) before it is stored.
    """

    enabled: bool = True
    bind_address: str = "127.0.0.1"
    port: int = 8080
    token: str | None = None
    token_file: Path | None = None
    session_hours: float = 8.0
    show_identifiers: bool = False
    stow_max_mb: float = 2048.0


class Worklist(_Model):
    """A Modality Worklist SCP the node asks about each study (``[[worklists]]``, :mod:`node.workflow`).

    The node queries it (C-FIND, Modality Worklist Information Model - FIND) by Accession
    Number, else by Patient ID with the study's modality and a window of ``window_days``
    around the study date, calling as the node's own AE title. A worklist that does not
    answer within ``timeout_s``, or has no match, never holds a study back.
    """

    name: str
    ae_title: str
    host: str
    port: int = 104
    timeout_s: float = 5.0
    window_days: int = 1
    pair_within_days: int = Field(
        default=7, ge=1, le=60,
        description="a two-day stress/rest protocol: how many days before today's study the other part may have been "
        "scheduled (node.workflow.pairing)",
    )


class RetrieveSource(_Model):
    """A Query/Retrieve SCP (the PACS) the node may fetch earlier studies from (``[[retrieve_from]]``,
    :mod:`node.workflow.pairing`): the rest part of a two-day stress/rest protocol that is not in the
    spool. Study Root C-FIND to find it, C-MOVE to ``move_destination`` (the node's own AE title when
    empty): the PACS must know that AE title (with the node's host and port) as a move destination.
    ``timeout_s`` bounds connecting and the wait for each response."""

    name: str
    ae_title: str
    host: str
    port: int = 104
    move_destination: str = ""
    timeout_s: float = 30.0


class UpsReceiver(_Model):
    """An AE the node's UPS SCP sends N-EVENT-REPORTs to (``[[ups.event_receivers]]``): its AE title,
    where it listens, and whether it is on the fallback list told of every restart of the SCP
    (SCP Status Change, PS3.4 CC.2.4.3) even when it subscribed to nothing."""

    ae_title: str
    host: str
    port: int = 104
    fallback: bool = True


class UpsTaskManager(_Model):
    """A site's task manager (UPS SCP, e.g. dcm4chee-arc) the node performs work items for (``[ups.task_manager]``,
    :mod:`node.workflow.performer`): its AE title and address; ``worklist_label``: the Worklist Label of the work
    items the node takes (C-FIND key); ``poll_s``: seconds between two queries (events only make it sooner);
    ``timeout_s``: bounds connecting and each response; ``max_in_progress``: work items the node holds at once;
    ``fetch_attempts``: C-MOVEs of missing inputs before the work item is CANCELED (110523, Object Set incomplete);
    ``subscribe``: subscribe the node's AE globally (UPS Watch, no deletion lock) so that a Cancel Requested
    reaches the node at once (the task manager must know the node's AE as an event receiver)."""

    ae_title: str
    host: str
    port: int = 104
    worklist_label: str = "CARDIONODE"
    poll_s: float = 10.0
    timeout_s: float = 30.0
    max_in_progress: int = 2
    fetch_attempts: int = 3
    subscribe: bool = True


class UpsSettings(_Model):
    """``[ups]``: the node as UPS SCP, task manager grouped with the task performer (:mod:`node.dicom.ups_scp`).

    ``enabled``: the listener accepts the UPS Push, Pull, Watch and Query SOP classes (N-CREATE,
    N-SET, N-GET, N-ACTION, C-FIND). ``worklist_label``: the Worklist Label of a UPS created without
    one. ``event_receivers``: the AEs that may subscribe to event reports (a subscription naming
    another Receiving AE is refused C308), with the address the node sends the reports to.
    ``retention_days``: a COMPLETED or CANCELED UPS is kept this many days (so that its requester
    can read the outputs with N-GET), longer while a subscriber holds a deletion lock on it.
    ``study_workitems``: `cardionode serve` keeps a UPS for every study it processes from plain
    C-STORE (:mod:`node.workflow.study_workitems`), so watchers see its completeness decision,
    progress and results.
    """

    enabled: bool = True
    worklist_label: str = "CARDIONODE"
    event_receivers: list[UpsReceiver] = Field(default_factory=list)
    retention_days: float = 7.0
    study_workitems: bool = True
    task_manager: UpsTaskManager | None = None


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
    ingest_journal: bool = Field(
        default=True,
        description="with durable_writes: make received instances durable through the spool journal (one fdatasync "
        "shared by concurrent associations) instead of an fsync of each spool file and its directory",
    )
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

    # -- data lifecycle (node.ops.retention) and notifications (node.ops.notify)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    notify: NotifySettings = Field(default_factory=NotifySettings)
    web: WebSettings = Field(default_factory=WebSettings)
    worklists: list[Worklist] = Field(default_factory=list, description="Modality Worklist SCPs asked about each study")
    retrieve_from: list[RetrieveSource] = Field(
        default_factory=list,
        description="Q/R SCPs (PACS) the earlier part of a two-day stress/rest protocol is fetched from (C-MOVE)",
    )
    ups: UpsSettings = Field(default_factory=UpsSettings)

    # -- logs (node.dicom.logs)
    log_max_mb: float = Field(default=10.0, description="a log file is rotated when it reaches this size (MiB)")
    log_backups: int = Field(default=5, description="rotated log files kept per component (<component>.log.1 ...)")
    log_level_libraries: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="WARNING",
        description="level of the libraries' own records (Celery, kombu, highdicom, pydicom, pynetdicom) in the node's logs; "
        "INFO also shows the Celery worker banner",
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
        data = _file_data.get()
        if data is not None:
            sources.append(InitSettingsSource(settings_cls, init_kwargs=data))
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
    def node_lock_path(self) -> Path:
        """The lock ``serve`` and ``listen`` hold while they run, with who holds it (:mod:`node.ops.running`)."""
        return self.data_dir / "node.pid"

    @property
    def web_cache_dir(self) -> Path:
        """PNG renderings of result images for the web page, one folder per study (removed with its results)."""
        return self.data_dir / "web" / "cache"

    @property
    def web_token_path(self) -> Path:
        """The web page's access token (``[web] token_file``, else ``<data_dir>/web/token``)."""
        return self.web.token_file or self.data_dir / "web" / "token"

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
        out += _ups_problems(self.ups)
        out += _destination_problems(self.destinations)
        out += _tls_problems(self.tls, bool(any(d.tls for d in self.destinations)))
        out += _storage_problems(self)
        out += _intake_limit_problems(self)
        out += _completeness_problems(self.completeness)
        out += _queue_problems(self)
        out += _redis_problems(self)
        out += _processing_problems(self)
        out += _lifecycle_problems(self)
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
        out += _lifecycle_warnings(self)
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
        if self.notify.webhook_url:
            data["notify"]["webhook_url"] = redact_url(self.notify.webhook_url)
        if self.web.token:
            data["web"]["token"] = "***"
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
    out = [p for p in (ae_title_problem(s.ae_title, "ae_title"), _port_problem(s.port, "port"),
                       _port_problem(s.web.port, "web.port")) if p]
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


def _ups_problems(ups: UpsSettings) -> list[str]:
    """``[ups]``: AE titles and ports of the event receivers (each AE title once), the labels, the retention."""
    out: list[str] = []
    if not ups.worklist_label.strip() or len(ups.worklist_label) > 64:
        out.append("ups.worklist_label must have 1 to 64 characters (DICOM LO)")
    if ups.retention_days < 0:
        out.append(f"ups.retention_days is {ups.retention_days}; it must be 0 or more (days)")
    tm = ups.task_manager
    if tm is not None:
        out += [p for p in (ae_title_problem(tm.ae_title, "ups.task_manager"), _port_problem(tm.port, "ups.task_manager"))
                if p]
        if not tm.worklist_label.strip() or len(tm.worklist_label) > 64:
            out.append("ups.task_manager.worklist_label must have 1 to 64 characters (DICOM LO)")
        if tm.poll_s <= 0 or tm.timeout_s <= 0 or tm.max_in_progress < 1 or tm.fetch_attempts < 1:
            out.append("ups.task_manager: poll_s and timeout_s must be more than 0, max_in_progress and "
                       "fetch_attempts at least 1")
    seen: set[str] = set()
    for i, receiver in enumerate(ups.event_receivers):
        where = f"ups.event_receivers[{i}]"
        out += [p for p in (ae_title_problem(receiver.ae_title, where), _port_problem(receiver.port, where)) if p]
        if receiver.ae_title.strip() in seen:
            out.append(f"{where}: AE title {receiver.ae_title!r} is listed twice")
        seen.add(receiver.ae_title.strip())
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
    try:  # permissions are not all: a read-only file system, or a folder no file can be made in
        import tempfile

        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        return f"{what} {path}: no file can be created in {probe} ({exc.strerror or exc})"
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


def _lifecycle_problems(s: Settings) -> list[str]:
    """Problems of ``[retention]``, ``[notify]`` and the log settings."""
    out: list[str] = []
    r = s.retention
    for name in ("max_age_days", "max_spool_gb", "max_outbox_gb", "artifact_grace_h"):
        if getattr(r, name) < 0:
            out.append(f"retention.{name} is {getattr(r, name):g}; it must be 0 (no limit) or more")
    if r.interval_s <= 0:
        out.append(f"retention.interval_s is {r.interval_s:g}; it must be more than 0 seconds")
    n = s.notify
    if n.webhook_url is not None and urlsplit(n.webhook_url).scheme not in ("http", "https"):
        out.append(f"notify.webhook_url {redact_url(n.webhook_url)!r} is not an http:// or https:// URL")
    if n.timeout_s <= 0:
        out.append(f"notify.timeout_s is {n.timeout_s:g}; it must be more than 0 seconds")
    if s.log_max_mb <= 0:
        out.append(f"log_max_mb is {s.log_max_mb:g}; it must be more than 0 (MiB)")
    if s.log_backups < 1:
        out.append(f"log_backups is {s.log_backups}; keep at least 1 rotated log file")
    return out


def _lifecycle_warnings(s: Settings) -> list[str]:
    """Retention that lets data pile up, or limits the disk cannot hold."""
    r = s.retention
    if not r.enabled or (r.max_age_days == 0 and r.max_spool_gb == 0 and r.max_outbox_gb == 0):
        return ["retention is off: received studies and results stay in data_dir until removed by hand "
                "(`cardionode prune` with limits in [retention])"]
    probe = s.data_dir
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    try:
        import shutil

        usable = shutil.disk_usage(probe).total / 1e9 - s.disk_watermark_mb * 2**20 / 1e9
    except OSError:
        return []
    limit = r.max_spool_gb + r.max_outbox_gb
    if r.max_spool_gb and r.max_outbox_gb and limit > usable:
        return [f"retention.max_spool_gb + max_outbox_gb ({limit:g} GB) exceed what the disk of {probe} holds above "
                f"disk_watermark_mb ({usable:.1f} GB): the listener would refuse studies before retention frees space"]
    return []


def _format_validation_error(exc: ValidationError, source: str, unknown: list[str]) -> str:
    lines = [f"the configuration ({source}) has {exc.error_count() + len(unknown)} error(s):"]
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        got = err.get("input")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  - {where}: {err['msg']}{shown}")
    lines += [f"  - {words}" for words in unknown]
    return "\n".join(lines)


def _nested_model(annotation: Any) -> tuple[type[BaseModel] | None, str]:
    """The settings model inside a field's annotation and how it is held: ``"one"`` (``Model`` or
    ``Model | None``), ``"list"`` (``list[Model]``) or ``"table"`` (``dict[str, Model]``); (None, "") otherwise."""
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, "one"
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is list and args:
        model, how = _nested_model(args[0])
        return (model, "list") if how == "one" else (None, "")
    if origin is dict and len(args) == 2:
        model, how = _nested_model(args[1])
        return (model, "table") if how == "one" else (None, "")
    for arg in args:  # X | None
        model, how = _nested_model(arg)
        if how == "one":
            return model, how
    return None, ""


def _unknown_key_words(where: str, key: str, known: list[str]) -> str:
    """``where``'s unknown ``key`` in words, with the nearest known key (:func:`difflib.get_close_matches`)."""
    import difflib

    name = f"{where}.{key}" if where else key
    near = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"did you mean {near[0]!r}?" if near else f"known here: {', '.join(known)}"
    return f"{name}: unknown setting; {hint}"


def _known_part(data: dict[str, Any], model: type[BaseModel], where: str = "") -> tuple[dict[str, Any], list[str]]:
    """``data`` without the keys ``model`` (and its nested settings models) does not know, and those keys in words."""
    known = list(model.model_fields)
    kept: dict[str, Any] = {}
    unknown: list[str] = []
    for key, value in data.items():
        if key not in model.model_fields:
            unknown.append(_unknown_key_words(where, key, known))
            continue
        inner, how = _nested_model(model.model_fields[key].annotation)
        here = f"{where}.{key}" if where else key
        if inner is not None and how == "one" and isinstance(value, dict):
            value, found = _known_part(value, inner, here)
            unknown += found
        elif inner is not None and how == "list" and isinstance(value, list):
            items = []
            for i, item in enumerate(value):
                if isinstance(item, dict):
                    item, found = _known_part(item, inner, f"{here}[{i}]")
                    unknown += found
                items.append(item)
            value = items
        elif inner is not None and how == "table" and isinstance(value, dict):
            table = {}
            for name, item in value.items():
                if isinstance(item, dict):
                    item, found = _known_part(item, inner, f"{here}.{name}")
                    unknown += found
                table[name] = item
            value = table
        kept[key] = value
    return kept, unknown


def config_path(path: Path | None = None) -> Path | None:
    """The configuration file: ``path`` (``--config``), else ``$CARDIONODE_CONFIG``, else None (defaults)."""
    if path is None and os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV])
    return path


def check_settings(path: Path | None = None) -> tuple[Settings, list[str]]:
    """The settings of :func:`config_path` of ``path`` without the keys no setting has, and those keys in
    words (each with the nearest known key), for ``config check`` to report beside every other problem.

    A relative ``data_dir`` is made relative to the configuration file's folder. Raises
    :class:`ConfigError` when the file is missing or not valid TOML, or a value has the wrong
    type (the message names the setting, and lists the unknown keys too).
    """
    path = config_path(path)
    source = str(path) if path is not None else "embedded defaults + environment"
    data: dict[str, Any] | None = None
    unknown: list[str] = []
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"configuration file {path} does not exist (from --config or ${CONFIG_ENV})")
        try:
            import tomllib

            data, unknown = _known_part(tomllib.loads(path.read_text(encoding="utf-8")), Settings)
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"configuration file {path} is not valid TOML: {exc}") from exc
    token = _file_data.set(data)
    try:
        settings = Settings()
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source, unknown)) from exc
    finally:
        _file_data.reset(token)
    if path is not None and not settings.data_dir.is_absolute():
        settings.data_dir = path.absolute().parent / settings.data_dir
    return settings, unknown


def load_settings(path: Path | None = None) -> Settings:
    """Load the settings from :func:`config_path` of ``path``, the environment and the defaults.

    Raises :class:`ConfigError` when the file is missing or not valid TOML, has a key that
    no setting has (named with the nearest known one), or a value has the wrong type; the
    message names the setting. A relative ``data_dir`` is relative to the file's folder.
    """
    settings, unknown = check_settings(path)
    if unknown:
        source = config_path(path)
        raise ConfigError(f"the configuration ({source}) has {len(unknown)} error(s):\n"
                          + "\n".join(f"  - {words}" for words in unknown))
    return settings


def listen_problem(address: str, port: int) -> str | None:
    """Why the listener cannot listen on ``address:port`` now (taken, not allowed, not this machine's
    address), tried with a socket bound as the listener binds it; None when it can."""
    import errno

    try:
        family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    except ValueError:
        return None  # not an IP address: a problem of the settings already
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as pynetdicom's server: TIME_WAIT is no obstacle
        try:
            sock.bind((address, port))
        except OSError as exc:
            why = {
                errno.EADDRINUSE: f"the port is already in use by another program (`ss -ltnp 'sport = :{port}'` "
                                  "shows which); stop it, or set another port",
                errno.EACCES: "permission denied (ports below 1024 need privileges); set a port of 1024 or more",
                errno.EADDRNOTAVAIL: "the address is not one of this machine's; set bind_address",
            }.get(exc.errno or 0, exc.strerror or str(exc))
            return f"cannot listen on {address}:{port}: {why}"
    return None


def _url_hosts(s: Settings) -> list[tuple[str, str]]:
    """(setting, host) of the ledger, broker, result backend and artifact store URLs that name a host."""
    out = []
    for name, url in (("ledger_url", s.effective_ledger_url), ("broker_url", s.effective_broker_url),
                      ("result_backend", s.effective_result_backend), ("artifact_store", s.effective_artifact_store)):
        if "://" not in url:
            continue  # a directory
        try:
            host = urlsplit(url).hostname
        except ValueError:
            continue  # a problem of the settings already
        if host:
            out.append((name, host))
    return out


def name_problem(host: str, where: str) -> str | None:
    """Why ``host`` (a name, not an address) does not resolve; None when it does or is an IP address."""
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    try:
        socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        return f"{where}: host name {host!r} does not resolve ({getattr(exc, 'strerror', None) or exc})"
    return None


def environment_problems(s: Settings) -> list[str]:
    """What the settings name that does not work on this machine and network now, in words (``config check``
    only; :func:`load_settings` never looks): host names of destinations, peers and the ledger, broker,
    result backend and artifact store URLs that do not resolve, and the listening port when another
    program holds it (the node running with these settings holds it rightly: see :mod:`node.ops.running`).
    ``config check`` adds a C-ECHO to each destination (:mod:`node.ops.preflight`).
    """
    from node.ops.running import running_node

    named = [(f"destinations[{i}] ({d.name})", d.host) for i, d in enumerate(s.destinations)]
    named += [(f"peers[{i}] ({p.name})", p.host) for i, p in enumerate(s.peers) if p.host]
    named += _url_hosts(s)
    out = [problem for where, host in named if (problem := name_problem(host, where))]
    holder = running_node(s.node_lock_path)
    if holder is None or holder.port != s.port:
        problem = listen_problem(s.bind_address, s.port)
        if problem:
            out.append(f"port: {problem}")
        if s.web.enabled:  # a running node holds its web port too
            problem = listen_problem(s.web.bind_address, s.web.port)
            if problem:
                out.append(f"web.port: {problem}")
    return out
