"""``cardionode serve``: the node process.

It runs, in one process:

* the DICOM listener (:class:`node.dicom.scp.DicomListener`), which spools
  instances and records them in the ledger, and is the UPS SCP when ``[ups] enabled``
  (:func:`ups_services`: :mod:`node.dicom.ups_scp` with the rules of :mod:`node.workflow.ups`);
* the work items loop (:class:`node.workflow.study_workitems.StudyWorkitems`: a UPS per study, with
  ``[ups] study_workitems``), every ``WORKITEMS_TICK_S``;
* the performer loop (:class:`node.workflow.performer.Performer`, with ``[ups.task_manager]``): the
  work items of a site's task manager, claimed, processed and completed; the listener receives the
  task manager's UPS events (:class:`node.dicom.ups_scu.UpsEventReceiver`);
* the conductor loop: completeness (:class:`node.workflow.completeness.Assembler`)
  and jobs (:class:`node.queue.conductor.Conductor`), every ``TICK_S`` seconds;
* the export loop (:class:`node.dicom.sender.Exporter`, with
  :func:`node.results.to_enhanced_sr` as its Enhanced SR fallback), every ``SEND_TICK_S``;
* the notify loop (:class:`node.ops.notify.Notifier`: ``[notify]`` hooks), every ``NOTIFY_TICK_S``,
  and the retention loop (:class:`node.ops.retention.RetentionKeeper`: ``[retention]`` passes);
* the operator web page, ``/metrics``, health probes and STOW-RS (:mod:`node.web`, uvicorn in a
  thread on ``[web] bind_address``:``port``) when ``[web] enabled``; an action taken there wakes
  the conductor and the sender at once;

and starts local Celery workers as subprocesses (setting ``workers``; an
empty list when remote workers consume the queues), restarting one that exits.
The workers die with the node (``PR_SET_PDEATHSIG``), so a killed node leaves
no orphan consuming tasks.

Start-up resumes everything unfinished: with the SQLite broker, messages
taken by workers that died with the previous node are restored before new
workers start; studies left ``processing`` without a job get one; queued and
running jobs continue from the step the ledger names; due sends go out.

Before anything starts, ``serve`` and ``listen`` take the data directory's node lock
(:mod:`node.ops.running`: `cardionode status` tells from it whether a node runs) and
make sure the listening port (and the web page's, when enabled) is free; a second node on the same data directory, or a
port another program holds, is refused in one line (exit status 2), not a traceback.

SIGTERM or SIGINT: stop accepting associations, let the loops finish their
tick, ask the workers to finish their current task (SIGTERM, then SIGKILL after
``WORKER_STOP_S``), close the ledger.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from node.config import Settings, WorkerSpec
    from node.ops.running import NodeLock

__all__ = ["Node", "serve_main", "listen_main", "ups_services"]

_log = logging.getLogger("node.service")

TICK_S = 0.5  # conductor loop period (s)
BUSY_TICK_S = 0.1  # conductor loop period while studies are receiving or jobs in flight (s)
BUSY_WAIT_FACTOR = 4.0  # a busy loop waits at least this many times its last tick (at most a fifth of a core)
SEND_TICK_S = 1.0  # export loop period (s); a reported job wakes it at once
WORKER_STOP_S = 30.0  # grace for workers to finish their task on shutdown (s)
WORKER_RESTART_S = 10.0  # least time between two starts of the same local worker (s)
STATUS_EVERY_S = 60.0  # period of the progress summary in the log (s)
NOTIFY_TICK_S = 2.0  # notify loop period (s)
RETENTION_TICK_S = 30.0  # how often the retention loop asks whether a pass is due (s)
WORKITEMS_TICK_S = 1.0  # how often the studies' work items follow the ledger's events (s)


def _die_with_parent() -> None:
    """In a child process: get SIGKILL when the node dies, so no orphan consumes tasks."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class _Loop(threading.Thread):
    """Calls ``step`` every ``period_s`` seconds until stopped; logs and survives errors.

    ``busy_period_s``: the period after a step that returned a true value (work in flight), but at
    least ``BUSY_WAIT_FACTOR`` times what that step took (with many jobs in flight a tick costs more,
    and the loop must not take the workers' CPU); ``wake``: an event that ends the wait at once (set
    by whoever has work for this loop).
    """

    def __init__(self, name: str, step: Callable[[], object], period_s: float, stop: threading.Event,
                 busy_period_s: float | None = None, wake: threading.Event | None = None) -> None:
        super().__init__(name=name, daemon=True)
        self.step, self.period_s, self.stop_event = step, period_s, stop
        self.busy_period_s, self.wake = busy_period_s, wake

    def run(self) -> None:
        while not self.stop_event.is_set():
            busy: object = False
            started = time.monotonic()
            try:
                busy = self.step()
            except Exception:
                _log.exception("%s loop: error (continuing)", self.name)
            period = self.period_s
            if busy and self.busy_period_s is not None:
                period = min(self.period_s, max(self.busy_period_s, BUSY_WAIT_FACTOR * (time.monotonic() - started)))
            if self.wake is None:
                self.stop_event.wait(period)
            else:
                self.wake.wait(period)
                self.wake.clear()


class Node:
    """The node: listener, loops and local workers, started and stopped together."""

    def __init__(self, settings: Settings, config_path: Path | None = None) -> None:
        self.settings = settings
        self.config_path = config_path
        self.stop_event = threading.Event()
        self.workers: list[subprocess.Popen[bytes]] = []
        self._worker_spec: dict[int, tuple[WorkerSpec, float]] = {}  # pid -> (spec, monotonic start time)
        self._own_worker_pids: set[int] = set()  # every local worker this node started (main pids)
        self.threads: list[_Loop] = []
        self.listener: Any = None
        self._last_status = 0.0
        self.send_due = threading.Event()  # set when a job's results are in the outbox: the sender runs at once
        self.conduct_due = threading.Event()  # set by an operator's action on the web page: the conductor ticks at once
        self.web: Any = None  # the operator web page (node.web.server.WebServer) when [web] enabled
        self.performer: Any = None  # node.workflow.performer.Performer when [ups.task_manager] is set
        self.perform_due = threading.Event()  # set by a UPS event from the task manager: the performer runs at once

    # ------------------------------------------------------------------ start
    def start(self) -> None:
        from node.dicom.audit import AuditLog
        from node.dicom.scp import DicomListener
        from node.dicom.sender import Exporter, RetryPolicy, destination_targets
        from node.ledger import Ledger, utcnow
        from node.ops.notify import Notifier
        from node.ops.retention import RetentionKeeper
        from node.pipelines import registry
        from node.pipelines.routing import routing_attributes
        from node.queue.app import QueueSettings
        from node.queue.conductor import Conductor
        from node.queue.dispatch import JobQueue
        from node.queue.recovery import restore_unfinished, unfinished_steps
        from node.results import to_enhanced_sr
        from node.workflow.completeness import Assembler

        s = self.settings
        self.ledger = Ledger.from_settings(s)
        self.audit = AuditLog(s.audit_log_path, durable=s.durable_writes)
        for module, error in registry.load_modules(s.pipeline_modules).items():
            _log.error("pipeline module %s not loaded: %s", module, error)
        names = [p.name for p in registry.all_pipelines()]
        _log.info("pipelines: %s", ", ".join(names) or "none (every study will be ignored)")

        queue_settings = QueueSettings.from_settings(s)
        self.queue = JobQueue(queue_settings, s.effective_device_uid())
        self.queue.declare_queues()
        specs = list(s.workers)
        restored = 0
        if queue_settings.broker_is_sqlite and specs:
            restored, deleted = restore_unfinished(self.queue.app, queue_settings.broker_url,
                                                   unfinished_steps(self.ledger))
            _log.info("broker: %d unfinished task(s) restored, %d finished message(s) removed", restored, deleted)
        # quiet periods of studies received before this start count from now (senders resend after a restart)
        self.assembler = Assembler(self.ledger, s, self.audit, listening_since=utcnow())
        recreated = self.assembler.recover()
        if recreated:
            _log.info("resumed: %d job(s) re-created for studies left processing", recreated)
        self.conductor = Conductor(
            self.ledger, self.queue, s, self.audit, job_timeout_s=s.job_timeout_s,
            step_start_timeout_s=s.step_start_timeout_s, restart_worker=self._kill_stalled_worker,
            # restored messages reach the new workers within this; their steps' old owners are dead
            redelivery_until=time.time() + s.step_start_timeout_s if restored else 0.0,
            own_worker=self._own_worker_pids.__contains__, on_reported=self.send_due.set,
        )
        targets = destination_targets(s)
        self.exporter = Exporter(
            self.ledger, targets, calling_ae=s.ae_title, retry=RetryPolicy.from_settings(s),
            timeout_s=float(s.network_timeout_s), audit=self.audit, enhanced_sr=to_enhanced_sr,
        )
        for spec in specs:
            self._start_worker(spec)

        self.ups_services = ups_services(s, self.ledger, self.audit)
        performer_services: list[Any] = []
        if s.ups.task_manager is not None:  # the node performs a site's task manager's work items
            from node.dicom.ups_scu import UpsEventReceiver
            from node.workflow.performer import Performer

            self.performer = Performer(self.ledger, s, wake=self.perform_due)
            performer_services.append(UpsEventReceiver(self.performer.on_event))
        self.listener = DicomListener(s, self.ledger, routing_attributes, audit=self.audit,
                                      services=self.ups_services + performer_services)
        if s.web.enabled:  # before the listener: once the DICOM port answers, so does the page
            self._start_web()
        self.listener.start()
        self.audit.record("node.started", ae_title=s.ae_title, port=self.listener.port)
        _log.info(
            "listening as %s on %s:%s; %d local worker group(s); destinations: %s",
            s.ae_title, s.bind_address, self.listener.port, len(self.workers),
            ", ".join(targets) or "none (outbox only)",
        )
        self.threads = [
            _Loop("conductor", self._conduct, TICK_S, self.stop_event, busy_period_s=BUSY_TICK_S, wake=self.conduct_due),
            _Loop("sender", self.exporter.run_once, SEND_TICK_S, self.stop_event, wake=self.send_due),
            # [notify] hooks on ignored/failed studies and dead letters; [retention] passes
            _Loop("notify", Notifier(self.ledger, s).run_once, NOTIFY_TICK_S, self.stop_event),
            _Loop("retention", RetentionKeeper(self.ledger, s).run_due, RETENTION_TICK_S, self.stop_event),
        ]
        if self.ups_services and s.ups.study_workitems:  # a UPS per study processed (node.workflow.study_workitems)
            from node.workflow.study_workitems import StudyWorkitems

            tracker = StudyWorkitems(self.ledger, s, self.ups_services[0])
            self.threads.append(_Loop("workitems", tracker.run_once, WORKITEMS_TICK_S, self.stop_event))
        if self.performer is not None:  # [ups.task_manager]: node.workflow.performer
            from node.workflow.performer import PERFORMER_TICK_S

            self.threads.append(_Loop("performer", self.performer.run_once, PERFORMER_TICK_S, self.stop_event,
                                      wake=self.perform_due))
        for thread in self.threads:
            thread.start()

    def _start_web(self) -> None:
        """The operator web page, /metrics, health and STOW-RS in this process (:mod:`node.web`); raises
        :class:`node.web.server.WebServerError` when its port cannot be had."""
        from node.web.context import WebContext
        from node.web.probes import LiveProbe
        from node.web.server import WebServer

        context = WebContext(self.settings, self.ledger, LiveProbe(self), audit=self.audit,
                             storage=self.listener.storage, on_change=self.wake)
        self.web = WebServer(context)
        self.web.start()

    def wake(self) -> None:
        """Let the conductor and the sender look at the ledger now (an operator changed it)."""
        self.conduct_due.set()
        self.send_due.set()

    def _start_worker(self, spec: WorkerSpec) -> None:
        command = [sys.executable, "-m", "node.cli"]
        if self.config_path is not None:
            command += ["--config", str(self.config_path)]
        command += ["worker", "--queues", spec.queues, "--concurrency", str(spec.concurrency)]
        process = subprocess.Popen(command, preexec_fn=_die_with_parent)  # noqa: S603 (own command)
        self.workers.append(process)
        self._worker_spec[process.pid] = (spec, time.monotonic())
        self._own_worker_pids.add(process.pid)
        _log.info("worker started: queues %s, %d process(es), pid %d", spec.queues, spec.concurrency, process.pid)

    def _conduct(self) -> bool:
        """One conductor tick; whether studies are receiving or jobs in flight (then the next comes sooner)."""
        self.assembler.tick()
        jobs = self.conductor.tick()
        self._check_workers()
        now = time.monotonic()
        if now - self._last_status >= STATUS_EVERY_S:
            self._last_status = now
            self._log_progress()
        return bool(self.assembler.examined or jobs)

    def _kill_stalled_worker(self, main_pid: int) -> None:
        """SIGKILL a local worker whose main process took a step and did not start it (a wedged
        pool process), with its pool processes; :meth:`_check_workers` starts it again."""
        process = next((p for p in self.workers if p.pid == main_pid and p.poll() is None), None)
        if process is None:  # not one of ours (a remote worker), or already gone
            return
        children = Path(f"/proc/{main_pid}/task/{main_pid}/children")
        try:
            pool = [int(pid) for pid in children.read_text().split()]
        except OSError:
            pool = []
        _log.error("worker pid %d (queues %s) took a step and did not start it; killing it",
                   main_pid, self._worker_spec[main_pid][0].queues)
        for pid in pool:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        process.kill()

    def _check_workers(self) -> None:
        """Restart a local worker that exited (at most once per ``WORKER_RESTART_S`` per worker)."""
        for process in list(self.workers):
            if process.poll() is None or self.stop_event.is_set():
                continue
            spec, started = self._worker_spec[process.pid]
            if time.monotonic() - started < WORKER_RESTART_S:
                continue
            _log.error("worker pid %d (queues %s) exited with status %s; restarting it",
                       process.pid, spec.queues, process.returncode)
            self.workers.remove(process)
            del self._worker_spec[process.pid]
            self._start_worker(spec)

    def _log_progress(self) -> None:
        studies: dict[str, int] = {}
        for study in self.ledger.studies.find():
            studies[study.state] = studies.get(study.state, 0) + 1
        jobs: dict[str, int] = {}
        for job in self.ledger.jobs.find():
            jobs[job.state] = jobs.get(job.state, 0) + 1
        sends = {st: len(self.ledger.sends.find(states=(st,))) for st in ("pending", "retrying", "dead_letter")}
        _log.info("progress: studies %s; jobs %s; sends %s", studies or "none", jobs or "none", sends)

    # ------------------------------------------------------------------ stop
    def wait(self) -> None:
        """Block until :meth:`request_stop` is called (e.g. by SIGTERM)."""
        while not self.stop_event.wait(1.0):
            pass

    def request_stop(self, *_: object) -> None:
        self.stop_event.set()
        self.send_due.set()
        self.conduct_due.set()

    def stop(self) -> None:
        """Stop everything in order; safe to call once after :meth:`start`."""
        self.stop_event.set()
        self.send_due.set()
        self.conduct_due.set()
        _log.info("stopping: listener, loops, %d worker group(s)", len(self.workers))
        if self.web is not None:
            self.web.stop()
        if self.listener is not None:
            self.listener.stop()
        for service in getattr(self, "ups_services", []):
            service.close()
        for thread in self.threads:
            thread.join(timeout=60)
        if getattr(self, "assembler", None) is not None:
            self.assembler.worklist.close()  # worklist lookups under way end within their timeouts
            self.assembler.pairer.close()  # so do stress-rest pairings (their C-FIND/C-MOVE timeouts)
        for process in self.workers:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + WORKER_STOP_S
        for process in self.workers:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _log.warning("worker pid %d did not stop in %.0f s; killing it", process.pid, WORKER_STOP_S)
                process.kill()
                process.wait()
        for name in ("audit", "queue", "ledger"):  # whatever start() got to open
            resource = getattr(self, name, None)
            if resource is None:
                continue
            if name == "audit":
                resource.record("node.stopped")
            resource.close()
        _log.info("stopped")


def ups_services(settings: Settings, ledger: Any, audit: Any) -> list[Any]:
    """The UPS SCP (:class:`node.dicom.ups_scp.UpsService`) when ``[ups] enabled``, deciding with the rules of
    :mod:`node.workflow.ups` (given here: the listener knows no medicine); else none."""
    if not settings.ups.enabled:
        return []
    from node.dicom.ups_scp import UpsService
    from node.workflow import ups

    return [UpsService(settings, ledger, ups, audit=audit)]


def _settings_or_exit(args: argparse.Namespace, command: str) -> tuple[Settings | None, Path | None]:
    """The checked settings of ``--config`` (or $CARDIONODE_CONFIG); None after printing the problems."""
    from node.config import ConfigError, config_path, load_settings

    path = config_path(getattr(args, "config", None))
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        print(f"cardionode {command}: {exc}", file=sys.stderr)
        return None, path
    problems = settings.problems()
    if problems:
        for problem in problems:
            print(f"PROBLEM: {problem}", file=sys.stderr)
        print(f"cardionode {command}: fix these problems first (`cardionode config check`)", file=sys.stderr)
        return None, path
    return settings, path


def _claim_or_exit(settings: Settings, command: str) -> NodeLock | None:
    """The data directory's node lock (:mod:`node.ops.running`), held, when this node may start: no other
    node runs with the data directory and the listening port is free; None after saying why not in one line."""
    from node.config import listen_problem
    from node.ops.running import NodeAlreadyRunning, NodeLock

    lock = NodeLock(settings.node_lock_path)
    try:
        lock.acquire(command, settings.bind_address, settings.port)
    except NodeAlreadyRunning as exc:
        print(f"cardionode {command}: {exc}; stop it first", file=sys.stderr)
        return None
    problem = listen_problem(settings.bind_address, settings.port)
    if not problem and command == "serve" and settings.web.enabled:
        web_problem = listen_problem(settings.web.bind_address, settings.web.port)
        problem = f"web page: {web_problem}; set [web] port, or [web] enabled = false" if web_problem else None
    if problem:
        lock.release()
        print(f"cardionode {command}: {problem}", file=sys.stderr)
        return None
    return lock


def _port_taken(exc: OSError, settings: Settings) -> bool:
    """Whether ``exc`` is the listener's port taken after :func:`_claim_or_exit` found it free; if so, logged in one line."""
    from node.config import listen_problem

    if exc.errno != errno.EADDRINUSE:
        return False
    _log.error("%s", listen_problem(settings.bind_address, settings.port) or exc)
    return True


def serve_main(args: argparse.Namespace) -> int:
    """``cardionode serve``: run the node until SIGTERM/SIGINT; 2 if the configuration has problems,
    another node runs with the same data directory or another program holds the port (one line each),
    a Redis server of the queue refuses the node (wrong or missing password, TLS failure), or the
    ledger is at another schema revision (:mod:`node.ledger.schema`; `cardionode db upgrade`)."""
    settings, config_path = _settings_or_exit(args, "serve")
    if settings is None:
        return 2
    lock = _claim_or_exit(settings, "serve")
    if lock is None:
        return 2
    try:
        return _serve(settings, config_path)
    finally:
        lock.release()


def _serve(settings: Settings, config_path: Path | None) -> int:
    """:func:`serve_main` once the configuration is checked and the node lock held."""
    from node.dicom.logs import LogOptions, setup_logging

    setup_logging(settings.log_dir, "node", options=LogOptions.from_settings(settings))
    for warning in settings.warnings():
        _log.warning("%s", warning)
    from node.queue.app import QueueSettings, connection_problems

    refused, unreachable = connection_problems(QueueSettings.from_settings(settings))
    for problem in unreachable:  # Celery keeps trying to connect
        _log.warning("%s; retrying", problem)
    if refused:
        for problem in refused:
            _log.error("%s", problem)
            print(f"PROBLEM: {problem}", file=sys.stderr)
        print("cardionode serve: the queue's Redis refused the node; fix redis_tls or the password in the URL", file=sys.stderr)
        return 2
    from node.ledger import LedgerSchemaError
    from node.web.server import WebServerError

    node = Node(settings, config_path.resolve() if config_path else None)
    signal.signal(signal.SIGTERM, node.request_stop)
    signal.signal(signal.SIGINT, node.request_stop)
    try:
        node.start()
        node.wait()
    except LedgerSchemaError as exc:  # a ledger at another schema revision: `cardionode db upgrade`
        _log.error("%s", exc)
        print(f"cardionode serve: {exc}", file=sys.stderr)
        return 2
    except WebServerError as exc:  # its port taken since the check, or no access token to be had
        _log.error("%s", exc)
        print(f"cardionode serve: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if not _port_taken(exc, settings):
            raise
        return 2
    finally:
        node.stop()
    return 0


def listen_main(args: argparse.Namespace) -> int:
    """``cardionode listen``: the DICOM listener alone (spool and ledger; no completeness, queue or sending).

    For ingest tests and benchmarks, and for a site that runs the listener on its own
    machine beside a shared ledger. 2 if the configuration has problems, another node runs with the same
    data directory, another program holds the port (one line each), or the ledger is at another
    schema revision (`cardionode db upgrade`).
    """
    from node.dicom.audit import AuditLog
    from node.dicom.logs import LogOptions, setup_logging
    from node.dicom.scp import DicomListener
    from node.ledger import Ledger, LedgerSchemaError
    from node.pipelines.routing import routing_attributes

    settings, _ = _settings_or_exit(args, "listen")
    if settings is None:
        return 2
    lock = _claim_or_exit(settings, "listen")
    if lock is None:
        return 2
    setup_logging(settings.log_dir, "listener", options=LogOptions.from_settings(settings))
    try:
        ledger = Ledger.from_settings(settings)
    except LedgerSchemaError as exc:  # a ledger at another schema revision: `cardionode db upgrade`
        _log.error("%s", exc)
        print(f"cardionode listen: {exc}", file=sys.stderr)
        lock.release()
        return 2
    try:
        with AuditLog(settings.audit_log_path, durable=settings.durable_writes) as audit:
            services = ups_services(settings, ledger, audit)
            try:
                DicomListener(settings, ledger, routing_attributes, audit=audit, services=services).serve_forever()
            finally:
                for service in services:
                    service.close()
    except OSError as exc:
        if not _port_taken(exc, settings):
            raise
        return 2
    finally:
        ledger.close()
        lock.release()
    return 0
