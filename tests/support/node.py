"""The node in its own process, with a TOML configuration: the listener alone, or ``cardionode serve``.

One base class, :class:`NodeProcess`, and one variant per mode, as pynetdicom's app
tests do (``StoreSCPBase`` and its subclasses): :class:`ListenerProcess` (``mode =
"listener"``: spool and ledger only) and :class:`ServeProcess` (``mode = "serve"``:
listener, completeness, queue, workers, sending). ``NodeProcess(config, port,
mode=...)`` gives the variant of that mode. The command lines are in
:data:`COMMANDS`, and nowhere else.

Also the listener in the test's own process, for the ``dicom`` tests (:func:`listener_in_process`).
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, ClassVar

from pydicom import dcmread

from node.ledger import Ledger
from tests.support import PYTHON, REPO
from tests.support.ports import port_open, wait_for

__all__ = ["COMMANDS", "ListenerProcess", "NodeProcess", "RunningListener", "ServeProcess", "WorkerProcess",
           "node_env", "listener_in_process"]

#: the ``cardionode`` subcommand of each mode (run as ``python -m node.cli --config FILE <command>``)
COMMANDS: dict[str, tuple[str, ...]] = {
    "listener": ("listen",),
    "serve": ("serve",),
    "worker": ("worker", "--queues", "cpu,gpu,io", "--concurrency", "1"),
}


def node_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a node subprocess: no ``CARDIONODE_*`` variable of the caller, the repository
    on ``PYTHONPATH`` (so that ``pipeline_modules`` such as ``tests.support.pipelines.flowtest`` import), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARDIONODE_")}
    inherited = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([*inherited, str(REPO)])
    env.update(extra or {})
    return env


class NodeProcess:
    """A ``cardionode`` command in its own process: start, wait until it listens, stop (SIGTERM) or kill (SIGKILL).

    Its standard output and error go to ``log`` (default: ``<mode>-<port>.out`` beside the config).
    """

    mode: ClassVar[str] = ""
    #: seconds to wait for a clean exit after SIGTERM before SIGKILL
    stop_timeout_s: ClassVar[float] = 60.0
    #: a new session, so that a terminal's signals to pytest do not reach the node (and its workers)
    new_session: ClassVar[bool] = True

    def __new__(cls, *args: Any, mode: str | None = None, **kwargs: Any) -> NodeProcess:
        if cls is NodeProcess:
            variants = {c.mode: c for c in NodeProcess.__subclasses__()}
            if mode not in variants:
                raise ValueError(f"mode must be one of {sorted(variants)}, not {mode!r}")
            cls = variants[mode]
        return super().__new__(cls)

    def __init__(self, config: Path, port: int, log: Path | None = None, env: dict[str, str] | None = None,
                 *, mode: str | None = None) -> None:
        if mode is not None and mode != self.mode:
            raise ValueError(f"{type(self).__name__} runs mode {self.mode!r}, not {mode!r}")
        self.config, self.port = config, port
        self.log_path = log if log is not None else config.parent / f"{self.mode}-{port}.out"
        self.env = node_env(env)
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def cwd(self) -> Path:
        return REPO

    def command(self) -> list[str]:
        return [PYTHON, "-m", "node.cli", "--config", str(self.config), *COMMANDS[self.mode]]

    def start(self) -> NodeProcess:
        """Start the process and wait (60 s at most) until it accepts connections on ``port``."""
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(self.command(), cwd=self.cwd, env=self.env, stdout=self._log,
                                        stderr=subprocess.STDOUT, start_new_session=self.new_session)
        wait_for(self._listening, 60, f"the node ({self.mode}) to listen on {self.port}", 0.1)
        return self

    def _listening(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"the node ({self.mode}) exited with {self.process.returncode}: {self.output()[-3000:]}")
        return port_open(self.port)

    def memory_mib(self, field: str = "VmHWM") -> float:
        """``field`` of ``/proc/<pid>/status`` in MiB: ``VmHWM`` (default) is the peak resident set
        size since the process started, ``VmRSS`` the resident set size now."""
        if self.process is None:
            raise RuntimeError("the node is not started")
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024  # kB
        raise AssertionError(f"no {field} in /proc/{self.process.pid}/status")

    def output(self) -> str:
        """What the process wrote to its standard output and error so far."""
        if self._log is not None and not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> int | None:
        """SIGTERM, wait for a clean exit (SIGKILL after ``stop_timeout_s``); the exit status, None if it was killed."""
        try:
            if self.process is None or self.process.poll() is not None:
                return None if self.process is None else self.process.returncode
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
                return None
        finally:
            self._close_log()

    def kill(self) -> None:
        """SIGKILL, as a crash would (a node's local workers die with it: PR_SET_PDEATHSIG)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(30)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None and not self._log.closed:
            self._log.close()

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run another ``cardionode`` command (``status``, ``complete``, ...) with the same configuration."""
        return subprocess.run([PYTHON, "-m", "node.cli", "--config", str(self.config), *args],
                              cwd=REPO, env=self.env, capture_output=True, text=True, timeout=120)

    def __enter__(self) -> NodeProcess:
        if self.process is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ListenerProcess(NodeProcess):
    """The DICOM listener alone (spool and ledger; no completeness, queue or sending)."""

    mode = "listener"
    stop_timeout_s = 15.0
    new_session = False

    @property
    def cwd(self) -> Path:
        return self.config.parent


class ServeProcess(NodeProcess):
    """``cardionode serve``: listener, completeness, queue, local workers and sending."""

    mode = "serve"


class WorkerProcess(NodeProcess):
    """``cardionode worker`` on the queues cpu, gpu and io with one pool process, as on a worker machine.

    It listens on no port: ``port`` only names its default log, and :meth:`start` waits until
    Celery says the worker is ready (consuming its queues). :meth:`kill` kills its whole process
    group (main and pool processes) at once, as when the worker's machine dies: nobody is left
    to acknowledge or reject the task it holds.
    """

    mode = "worker"

    def _listening(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"the worker exited with {self.process.returncode}: {self.output()[-3000:]}")
        return " ready." in self.output()

    def kill(self) -> None:
        """SIGKILL to the worker's process group: its main process and its pool processes."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(30)
        self._close_log()


# --------------------------------------------------------------------------- in process
@dataclass
class RunningListener:
    """A :class:`node.dicom.scp.DicomListener` running in the test's process, with its ledger,
    the instances its ``on_instance_stored`` callback saw, and its audit log when it has one."""

    listener: Any
    ledger: Any
    stored: list[Any] = field(default_factory=list)
    audit: Any = None

    def audit_records(self) -> list[dict[str, Any]]:
        """The audit log's records so far (the listener must have been started with ``audit=True``)."""
        import json

        if self.audit is None:
            raise AssertionError("this listener has no audit log: start it with audit=True")
        return [json.loads(line) for line in self.audit.path.read_text().splitlines() if line.strip()]

    @property
    def port(self) -> int:
        return int(self.listener.port)

    def stop(self) -> None:
        self.listener.stop()
        self.ledger.close()
        if self.audit is not None:
            self.audit.close()


def listener_in_process(tmp: Path, record: bool = True, audit: bool = False, **overrides: Any) -> RunningListener:
    """A listener in this process on a free port (``port = 0`` unless overridden), configured by
    :func:`tests.support.config.listener_config` with ``overrides``; ``record``: collect the
    instances stored in ``stored``; ``audit``: write the audit log (``settings.audit_log_path``,
    read back by :meth:`RunningListener.audit_records`). Stop it with :meth:`RunningListener.stop`."""
    from node.config import load_settings
    from node.dicom.scp import DicomListener
    from node.ledger import Ledger
    from node.pipelines.routing import routing_attributes
    from tests.support.config import listener_config

    config, _ = listener_config(tmp, **{"port": 0, **overrides})
    settings = load_settings(config)
    ledger = Ledger.from_settings(settings)
    running = RunningListener(None, ledger)
    callback: dict[str, Any] = {"on_instance_stored": running.stored.append} if record else {}
    if audit:
        from node.dicom.audit import AuditLog

        running.audit = AuditLog(settings.audit_log_path, durable=False)
        callback["audit"] = running.audit
    running.listener = DicomListener(settings, ledger, routing_attributes, **callback)
    running.listener.start()
    return running


def assert_acknowledged_kept(data_dir: Path, acknowledged: Sequence[str | Path], seed: int) -> None:
    """Every acknowledged file is in the ledger of the node whose data directory is ``data_dir``, and its
    spooled copy holds the same instance and pixels (the node's promise after any crash)."""
    ledger = Ledger(f"sqlite:///{data_dir / 'ledger.sqlite'}")
    try:
        for path in acknowledged:
            sent = dcmread(path)
            row = ledger.instances.get(str(sent.SOPInstanceUID))
            assert row is not None, f"seed {seed}: {Path(path).name} acknowledged but not in the ledger"
            kept = dcmread(row.path)
            assert kept.SOPInstanceUID == sent.SOPInstanceUID and kept.PixelData == sent.PixelData
    finally:
        ledger.close()
