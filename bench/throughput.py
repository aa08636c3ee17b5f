"""Throughput benchmark: SPECT MPI studies per hour through the whole node, and where the time goes.

Sends ``--studies`` demo SPECT studies (100 by default) back to back, each on its own dcmtk
``storescu`` association, to ``cardionode serve`` (the shipped ``spect_mpi`` pipeline with its
default settings: analyse, models, results) and waits until every result object is in Orthanc.
The rate is the number of studies over the time from the first image received to the last result
stored by Orthanc (ledger timestamps); the send rate (how long the senders took) shows whether
the listener kept accepting while the workers were busy.

Set-ups (``--setups``):

* ``embedded``: the default, SQLite ledger, broker and result backend; the node's local workers
  (``--concurrency`` processes, default: the configuration's default);
* ``redis-postgresql``: the scaled-out set-up of the tests (:mod:`tests.support.scaleout`): the
  ledger on a fresh PostgreSQL database at 127.0.0.1:5432, broker, results and artifacts on Redis
  (database 11), two ``cardionode worker`` processes with their own data directories, all on this
  machine.

Per step, the CPU seconds (``time.process_time`` in the worker, from the line
:mod:`node.queue.tasks` logs at the end of each step) are summed over the studies: the
results step's CPU per study is one of the issue's figures.

    .venv/bin/python -m bench.throughput [--studies 100] [--setups embedded,redis-postgresql]
        [--concurrency N] [--json out.json]

Run it from the repository root (it uses :mod:`bench.latency`'s studies and node launcher).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/throughput.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.latency import (
    REDIS_URL,
    SHIPPED_DEFAULTS,
    Running,
    demo_studies,
    describe_machine,
    orthanc_destination,
    running_node,
    study_timing,
    wait_until_sent,
    worker_steps,
)
from node.config import load_settings
from node.ledger import Ledger
from tests.support.dicom_clients import storescu
from tests.support.orthanc import Orthanc
from tests.support.scaleout import scaled_out

__all__ = ["main"]

SETUPS = ("embedded", "redis-postgresql")


@contextmanager
def _scaled_out_node(folder: Path) -> Iterator[Running]:
    """The tests' scaled-out set-up (PostgreSQL ledger, Redis, two remote workers) sending to a new Orthanc."""
    orthanc = Orthanc(folder / "orthanc").start()
    try:
        redis_db = int(REDIS_URL.rsplit("/", 1)[1])
        with scaled_out(folder, [orthanc_destination(orthanc)], redis_db, **SHIPPED_DEFAULTS) as cluster:
            ledger = Ledger.from_settings(load_settings(cluster.node.config))
            try:
                # every process logs to its own data directory: the workers' step lines are collected below
                yield Running("redis-postgresql", cluster.node.port, orthanc, ledger, folder, cluster.node)
            finally:
                ledger.close()
    finally:
        orthanc.stop()


def _step_lines(running: Running) -> dict[tuple[str, str], tuple[float, float, float]]:
    """The step lines of every worker log under the set-up's folder (embedded: the node's log directory)."""
    folders = [running.log_dir] if running.setup == "embedded" else sorted(running.log_dir.glob("worker-*/data/logs"))
    lines: dict[tuple[str, str], tuple[float, float, float]] = {}
    for folder in folders:
        lines.update(worker_steps(folder))
    return lines


def run_setup(setup: str, studies: list[tuple[str, list[Path]]], folder: Path, concurrency: int | None,
              timeout_s: float) -> dict[str, Any]:
    """Send every study back to back to a fresh node of ``setup``; print and return the figures."""
    if setup == "embedded":
        extra = {} if concurrency is None else {"workers": [{"queues": "cpu,gpu,io", "concurrency": concurrency}]}
        context = running_node("embedded", folder, **extra)
    elif setup == "redis-postgresql":
        context = _scaled_out_node(folder)
    else:
        raise ValueError(f"unknown set-up {setup!r}; use one of {', '.join(SETUPS)}")
    with context as running:
        started = time.monotonic()
        for _, files in studies:
            storescu(running.port, files, check=True, verbose=False)
        send_s = time.monotonic() - started
        for study_uid, _ in studies:
            wait_until_sent(running, study_uid, timeout_s)
        time.sleep(0.5)  # the workers' last log lines
        lines = _step_lines(running)
        timings = [study_timing(running.ledger, uid, lines) for uid, _ in studies]
    span_s = max(t.in_orthanc for t in timings) - min(t.last_image for t in timings)
    rate = len(timings) / span_s * 3600
    cpu = {step: [t.worker_steps[step][2] for t in timings if step in t.worker_steps] for step in timings[0].sent_steps}
    label = setup if setup != "embedded" else f"embedded ({'default workers' if concurrency is None else f'concurrency {concurrency}'})"
    print(f"\n{label}: {len(timings)} studies in {span_s:.1f} s (first image -> last result in Orthanc): "
          f"{rate:.0f} studies/h")
    print(f"  senders: {send_s:.1f} s for all studies ({len(timings) / send_s * 3600:.0f} studies/h offered)")
    print(f"  per study, last image -> results in Orthanc: median {statistics.median(t.total_s for t in timings):.1f} s")
    for step, values in cpu.items():
        if values:
            print(f"  CPU of {step:<10} median {statistics.median(values):.2f} s, mean {statistics.fmean(values):.2f} s "
                  "per study (worker, time.process_time)")
    return {"setup": label, "studies": len(timings), "span_s": span_s, "studies_per_hour": rate, "send_s": send_s,
            "step_cpu_s": cpu, "total_s": [t.total_s for t in timings]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--studies", type=int, default=100, help="studies per set-up (default 100; fewer for a quick run)")
    parser.add_argument("--setups", default=",".join(SETUPS), help=f"comma-separated, of {', '.join(SETUPS)}")
    parser.add_argument("--concurrency", type=int, help="processes of the embedded set-up's local worker")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for one study's results")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    print(f"machine: {describe_machine()}")
    with tempfile.TemporaryDirectory(prefix="cardionode-throughput-") as tmp:
        studies = demo_studies(Path(tmp) / "studies", args.studies)
        results = [run_setup(setup, studies, Path(tmp) / setup, args.concurrency, args.timeout)
                   for setup in args.setups.split(",") if setup]
    print(f"machine after the run: {describe_machine()}")
    if args.json:
        args.json.write_text(json.dumps({"machine": describe_machine(), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
