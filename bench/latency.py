"""Latency benchmark: last image of a SPECT study -> its results in Orthanc, and where the seconds go.

Starts Debian's Orthanc and ``cardionode serve`` in temporary folders, sends demo SPECT MPI
studies (``node.synth``: stress and rest, gated and ungated, 64³ by default) to the node one at
a time with dcmtk ``storescu``, waits until the node has sent every result object to Orthanc
(Orthanc answers a C-STORE only after storing it) and checks that Orthanc holds them. The shipped
``spect_mpi`` pipeline runs with the configuration's defaults (completeness rule
``expected_series`` with its default settle time, one local worker on ``cpu,gpu,io``).

Set-ups (``--setups``):

* ``embedded``: the default, SQLite ledger, SQLite kombu broker and result backend, the worker
  started by the node;
* ``redis``: broker, result backend and artifact store on Redis (127.0.0.1:6379, database 11,
  emptied before and after), SQLite ledger, the worker started by the node.

The split comes from the ledger's event timestamps and the worker's log (one clock: all run here)::

    last image received -> study complete            settle (completeness rule)
    study complete      -> job queued                assembler
    job queued          -> analyse sent              conductor dispatch (inputs to the artifact store)
    <step> sent         -> <step> started (worker)   broker delivery
    <step> started      -> <step> finished (worker)  the step itself (wall; CPU in the worker's log)
    <step> finished     -> next step sent            conductor noticing the result
    report finished     -> job reported              outbox written, sends created
    job reported        -> results in Orthanc        export (sender loop, association, C-STOREs)

    .venv/bin/python -m bench.latency [--studies 10] [--setups embedded,redis] [--json out.json]

Run it from the repository root (Orthanc, storescu and the node launcher are the tests' own,
``tests.support``). The machine and its load average are printed with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/latency.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import redis

from node.config import CompletenessRule, load_settings
from node.ledger import Ledger
from node.synth.spect.demo import demo_spec, save_datasets
from node.synth.spect.phantom import make_study
from node.synth.spect.study import build_study_datasets
from tests.support.config import serve_settings, write_config
from tests.support.dicom_clients import storescu
from tests.support.node import NodeProcess
from tests.support.orthanc import Orthanc
from tests.support.ports import free_port, wait_for

__all__ = ["SHIPPED_DEFAULTS", "Running", "StudyTiming", "demo_studies", "describe_machine", "node_settings",
           "orthanc_destination", "running_node", "study_timing", "wait_until_sent", "worker_steps"]

SETUPS = ("embedded", "redis")
#: Redis database of the ``redis`` set-up (the tests use 12 to 15)
REDIS_URL = "redis://127.0.0.1:6379/11"
#: a worker log line that starts a step: "<time> INFO node.queue.tasks [...] job <key>: <pipeline> <version> step <step>"
_STEP_START = re.compile(r"^(\S+ \S+) INFO node\.queue\.tasks .*job (\S+): \S+ \S+ step (\w+)")
#: the same worker's line at a step's end (:mod:`node.queue.tasks`)
_STEP_END = re.compile(r"^(\S+ \S+) INFO node\.queue\.tasks .*job (\S+): step (\w+) finished in ([\d.]+) s, "
                       r"([\d.]+) s CPU")


def describe_machine() -> str:
    """CPU model, cores, memory, kernel and the load averages now (one line)."""
    model = ""
    try:
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "")
    except OSError:
        pass
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{model or platform.processor()} x{os.cpu_count()}, {memory_gib:.1f} GiB, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}; load average {load}")


def demo_studies(folder: Path, count: int, phantoms: int = 2, seed: int = 1) -> list[tuple[str, list[Path]]]:
    """``count`` demo SPECT studies as files under ``folder``: ``(StudyInstanceUID, files)`` each.

    ``phantoms`` phantoms are simulated (seeds ``seed``, ``seed + 1`` ...) and reused with new
    UIDs (``build_study_datasets``' ``key``), so that many studies cost few simulations.
    """
    made = [make_study(demo_spec(defect, "tc99m_sestamibi"), np.random.default_rng(seed + k), orientation="short_axis")
            for k, defect in zip(range(phantoms), ("LAD", "none", "RCA", "LCx"), strict=False)]
    studies = []
    for index in range(count):
        datasets, truth = build_study_datasets(made[index % len(made)], key=f"bench-{seed}-{index}")
        files = save_datasets(datasets, truth, folder / f"study-{index:04d}")
        studies.append((str(truth["study_instance_uid"]), files))
    return studies


#: what the benchmarks change in :func:`tests.support.config.serve_settings`: the shipped pipelines only
#: (not the tests' flow pipeline) and the default completeness rule (not the tests' short times)
SHIPPED_DEFAULTS: dict[str, Any] = {"pipeline_modules": [], "completeness": {"default": CompletenessRule().model_dump()}}


def orthanc_destination(orthanc: Orthanc) -> dict[str, Any]:
    """The ``destinations`` entry of ``orthanc``."""
    return {"name": "pacs", "ae_title": orthanc.ae_title, "host": "127.0.0.1", "port": orthanc.dicom_port}


def node_settings(setup: str, data_dir: Path, port: int, orthanc: Orthanc, **extra: Any) -> dict[str, Any]:
    """``cardionode serve`` settings of ``setup`` (``embedded`` or ``redis``): :data:`SHIPPED_DEFAULTS`,
    Orthanc the destination, ``extra`` on top."""
    settings = serve_settings(data_dir, port, [orthanc_destination(orthanc)], **{**SHIPPED_DEFAULTS, **extra})
    if setup == "redis":
        settings.update(broker_url=REDIS_URL, result_backend=REDIS_URL, artifact_store=REDIS_URL)
    elif setup != "embedded":
        raise ValueError(f"unknown set-up {setup!r}; use one of {', '.join(SETUPS)}")
    return settings


@dataclass
class Running:
    """A running node (and its Orthanc): where to send, and its ledger to read the timings from."""

    setup: str
    port: int
    orthanc: Orthanc
    ledger: Ledger
    log_dir: Path
    node: NodeProcess


@contextmanager
def running_node(setup: str, folder: Path, **extra: Any) -> Iterator[Running]:
    """Orthanc and ``cardionode serve`` of ``setup`` under ``folder``, stopped (and Redis emptied) at the end."""
    with ExitStack() as stack:
        if setup == "redis":
            client = redis.Redis.from_url(REDIS_URL)
            client.flushdb()
            stack.callback(client.close)
            stack.callback(client.flushdb)
        orthanc = Orthanc(folder / "orthanc").start()
        stack.callback(orthanc.stop)
        port = free_port()
        config = write_config(folder / "node.toml", **node_settings(setup, folder / "data", port, orthanc, **extra))
        node = NodeProcess(config, port, folder / "node.out", mode="serve")
        stack.callback(node.stop)
        node.start()
        settings = load_settings(config)
        ledger = Ledger.from_settings(settings)
        stack.callback(ledger.close)
        yield Running(setup, port, orthanc, ledger, settings.log_dir, node)


def _epoch(moment: datetime) -> float:
    """Seconds since the epoch of a naive UTC ledger time."""
    return moment.replace(tzinfo=UTC).timestamp()


def _log_epoch(stamp: str) -> float:
    """Seconds since the epoch of a log line's local ``asctime`` (``2026-12-07 16:20:01,123``)."""
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def wait_until_sent(running: Running, study_uid: str, timeout_s: float) -> None:
    """Block until the study is done and every send of its job is ``sent`` (raises on failure or timeout)."""
    def finished() -> bool:
        study = running.ledger.studies.get(study_uid)
        if study is None or study.state in ("failed", "ignored", "given_up"):
            if study is not None:
                raise RuntimeError(f"study {study_uid} is {study.state}: {study.reason}")
            return False
        jobs = running.ledger.jobs.find(study_uid=study_uid)
        if not jobs or jobs[0].state not in ("reported", "sent"):
            if jobs and jobs[0].state == "failed":
                raise RuntimeError(f"job {jobs[0].id} failed: {jobs[0].reason}")
            return False
        sends = running.ledger.sends.find(job_id=jobs[0].id)
        return bool(sends) and all(send.state == "sent" for send in sends)

    wait_for(finished, timeout_s, f"the results of study {study_uid}", interval_s=0.05)


@dataclass
class StudyTiming:
    """One study's moments (seconds since the epoch) and what the bench derived from them."""

    study_uid: str
    last_image: float
    complete: float
    queued: float
    sent_steps: dict[str, float] = field(default_factory=dict)  # step -> moment the conductor sent it
    worker_steps: dict[str, tuple[float, float, float]] = field(default_factory=dict)  # step -> (start, wall, CPU)
    reported: float = 0.0
    in_orthanc: float = 0.0

    @property
    def total_s(self) -> float:
        """Last image received -> last result object stored by Orthanc (s)."""
        return self.in_orthanc - self.last_image

    def phases(self) -> dict[str, float]:
        """Seconds per phase, in order (see the module's table); they add up to :attr:`total_s`."""
        out = {"settle": self.complete - self.last_image, "assembler": self.queued - self.complete}
        steps = list(self.sent_steps)
        mark = self.queued
        for index, step in enumerate(steps):
            sent = self.sent_steps[step]
            out["dispatch" if index == 0 else f"notice {steps[index - 1]}"] = sent - mark
            start, wall, _cpu = self.worker_steps.get(step, (sent, 0.0, 0.0))
            out[f"deliver {step}"] = start - sent
            out[f"run {step}"] = wall
            mark = start + wall
        out[f"notice {steps[-1]} + outbox" if steps else "outbox"] = self.reported - mark
        out["export"] = self.in_orthanc - self.reported
        return out


def worker_steps(log_dir: Path) -> dict[tuple[str, str], tuple[float, float, float]]:
    """``(job key, step) -> (start, wall s, CPU s)`` from every worker log in ``log_dir``."""
    starts: dict[tuple[str, str], float] = {}
    out: dict[tuple[str, str], tuple[float, float, float]] = {}
    for path in sorted(log_dir.glob("worker-*.log")):
        for line in path.read_text(errors="replace").splitlines():
            if (match := _STEP_START.match(line)) is not None:
                starts[(match[2], match[3])] = _log_epoch(match[1])
            elif (match := _STEP_END.match(line)) is not None:
                key = (match[2], match[3])
                wall = float(match[4])
                out[key] = (starts.get(key, _log_epoch(match[1]) - wall), wall, float(match[5]))
    return out


def study_timing(ledger: Ledger, study_uid: str, step_lines: dict[tuple[str, str], tuple[float, float, float]]
                 ) -> StudyTiming:
    """The moments of a processed and sent study, from the ledger's events and the workers' step lines
    (:func:`worker_steps`)."""
    study = ledger.studies.get(study_uid)
    assert study is not None
    complete = next(e.at for e in ledger.events.find("study", study_uid) if e.to_state == "complete")
    job = ledger.jobs.find(study_uid=study_uid)[0]
    events = ledger.events.find("job", job.id)
    timing = StudyTiming(study_uid, _epoch(study.last_received_at), _epoch(complete),
                         _epoch(next(e.at for e in events if e.to_state == "queued")))
    for event in events:
        if event.to_state == "running" and " on queue " in event.reason:
            timing.sent_steps.setdefault(event.reason.split(" ", 1)[0], _epoch(event.at))
        elif event.to_state == "reported":
            timing.reported = _epoch(event.at)
    key = next((k for (k, _step) in step_lines if k.endswith(f"-{job.id}.1")), "")
    timing.worker_steps = {step: step_lines[(key, step)] for step in timing.sent_steps if (key, step) in step_lines}
    sent = [e.at for send in ledger.sends.find(job_id=job.id) for e in ledger.events.find("send", send.id)
            if e.to_state == "sent"]
    timing.in_orthanc = _epoch(max(sent))
    return timing


def _spread(values: list[float]) -> str:
    """``median (min-max)`` of seconds."""
    return f"{statistics.median(values):5.2f} ({min(values):.2f}-{max(values):.2f})"


def run_setup(setup: str, studies: list[tuple[str, list[Path]]], folder: Path, timeout_s: float) -> dict[str, Any]:
    """Send ``studies`` one at a time to a fresh node of ``setup``; print and return the figures."""
    with running_node(setup, folder) as running:
        for study_uid, files in studies:
            storescu(running.port, files, check=True, verbose=False)
            wait_until_sent(running, study_uid, timeout_s)
            stored = len(running.orthanc.study_instances(study_uid))  # only results are sent to Orthanc
            sends = sum(len(running.ledger.sends.find(job_id=job.id)) for job in running.ledger.jobs.find(study_uid=study_uid))
            if stored != sends:
                raise RuntimeError(f"Orthanc holds {stored} result objects of {study_uid}, the node sent {sends}")
        time.sleep(0.5)  # the worker's last log lines
        steps = worker_steps(running.log_dir)
        timings = [study_timing(running.ledger, uid, steps) for uid, _ in studies]
    totals = [t.total_s for t in timings]
    phases = {name: [t.phases()[name] for t in timings] for name in timings[0].phases()}
    cpu = {step: [t.worker_steps[step][2] for t in timings if step in t.worker_steps] for step in timings[0].sent_steps}
    print(f"\n{setup}: last image -> results in Orthanc, {len(timings)} studies: median {_spread(totals)} s")
    for name, values in phases.items():
        print(f"  {name:<28} {_spread(values)} s")
    for step, values in cpu.items():
        if values:
            print(f"  CPU of {step:<21} {_spread(values)} s (worker, time.process_time)")
    print(f"  load average now: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return {"setup": setup, "total_s": totals, "phases_s": phases, "step_cpu_s": cpu}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--studies", type=int, default=10, help="studies per set-up (default 10)")
    parser.add_argument("--setups", default=",".join(SETUPS), help=f"comma-separated, of {', '.join(SETUPS)}")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for one study's results")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    setups = [s for s in args.setups.split(",") if s]
    print(f"machine: {describe_machine()}")
    with tempfile.TemporaryDirectory(prefix="cardionode-latency-") as tmp:
        studies = demo_studies(Path(tmp) / "studies", args.studies)
        results = [run_setup(setup, studies, Path(tmp) / setup, args.timeout) for setup in setups]
    print(f"machine after the run: {describe_machine()}")
    if args.json:
        args.json.write_text(json.dumps({"machine": describe_machine(), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
