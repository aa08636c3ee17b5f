"""Ingest benchmark: the node's C-STORE SCP against dcmtk ``storescp``, same instances, same run.

Sends the same set of synthetic NM instances with dcmtk ``storescu`` (one
association per round) alternately to ``storescp`` and to the node's
listener (``cardionode listen``, durable writes on: every instance
fsync'ed in the spool and committed to the SQLite ledger before Success),
several rounds, and prints instances/s and MB/s of each and the ratio
node/storescp of the medians. The node starts each round with an empty data
directory so that no instance is a duplicate; ``storescp`` writes without
fsync (it has no option to do otherwise).

Two network set-ups are measured, because they give very different pictures:

* ``dcmtk-defaults``: dcmtk as shipped by Debian leaves Nagle's algorithm on
  unless ``TCP_NODELAY=1`` is in its environment; every C-STORE then waits for
  delayed ACKs (tens of ms), which hides the receivers' own costs;
* ``tcp-nodelay``: ``TCP_NODELAY=1`` for storescu and storescp (the node always
  sets TCP_NODELAY on its sockets), so the receivers' own work is what is compared.

    .venv/bin/python -m bench.ingest [--instances 300] [--rounds 5] [--size 128] [--modes dcmtk-defaults,tcp-nodelay]

Run it as a module from the repository root: the instances, the dcmtk client and
the node's launcher are the tests' own (``tests.support``), so that the benchmark
measures exactly what the tests start.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support.config import write_config
from tests.support.dicom_clients import storescu
from tests.support.nm import write_nm_study
from tests.support.node import NodeProcess
from tests.support.ports import free_port, wait_for_port


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


MODES = {"dcmtk-defaults": {}, "tcp-nodelay": {"TCP_NODELAY": "1"}}


def send(port: int, called: str, files: list[Path], env: dict[str, str]) -> float:
    """Seconds for one storescu association sending ``files`` (quiet, all presentation contexts
    proposed, the environment of the mode); fails if any store failed."""
    start = time.perf_counter()
    storescu(port, files, called=called, calling="BENCHSCU", verbose=False, required_only=False,
             env={**os.environ, **env}, check=True, timeout_s=3600)
    return time.perf_counter() - start


class Node:
    """The node's listener (the tests' launcher, listener mode) with a fresh data directory each start."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.port = free_port()
        config = write_config(work / "node.toml", ae_title="CARDIONODE", port=self.port, data_dir=work / "var",
                              durable_writes=True, disk_watermark_mb=100, max_associations=4)
        self.process = NodeProcess(config, self.port, work / "listener.out", mode="listener")

    def start(self) -> None:
        shutil.rmtree(self.work / "var", ignore_errors=True)
        self.process.start()

    def stop(self) -> None:
        self.process.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", type=int, default=128, help="rows = columns of each instance (16-bit pixels)")
    parser.add_argument("--modes", default="dcmtk-defaults,tcp-nodelay", help="comma-separated: " + ", ".join(MODES))
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    for tool in ("storescu", "storescp"):
        if shutil.which(tool) is None:
            print(f"{tool} (dcmtk) is needed", file=sys.stderr)
            return 2

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        print(f"unknown mode(s) {unknown}; choose from {sorted(MODES)}", file=sys.stderr)
        return 2

    report: dict[str, object] = {
        "instances": args.instances,
        "rounds": args.rounds,
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs, {platform.platform()}",
        "load_average_1min_at_start": round(os.getloadavg()[0], 1),
    }
    with tempfile.TemporaryDirectory(prefix="cardionode-bench-") as tmp:
        work = Path(tmp)
        (work / "in").mkdir()
        files = write_nm_study(work / "in", args.instances, seed=1, size=args.size).paths
        total_mb = sum(f.stat().st_size for f in files) / 1e6
        report["megabytes"] = round(total_mb, 2)
        for mode in modes:
            report[mode] = run_mode(work, files, total_mb, args.rounds, MODES[mode], mode)
    report["load_average_1min_at_end"] = round(os.getloadavg()[0], 1)

    print(
        f"\n{args.instances} instances, {total_mb:.1f} MB, {args.rounds} rounds alternating per mode; "
        f"machine: {report['machine']}; load {report['load_average_1min_at_start']} -> {report['load_average_1min_at_end']}"
    )
    for mode in modes:
        r = report[mode]
        assert isinstance(r, dict)
        for target in ("storescp", "node"):
            t_ = r[target]
            print(f"{mode:15s} {target:9s} median {t_['median_s']:.2f} s  {t_['instances_per_s']:.1f} instances/s  {t_['mb_per_s']:.2f} MB/s")
        print(f"{mode:15s} ratio node/storescp (instances/s and MB/s alike): {r['ratio_node_over_storescp']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


def run_mode(work: Path, files: list[Path], total_mb: float, rounds: int, env: dict[str, str], label: str) -> dict[str, object]:
    """Alternate storescp and the node for ``rounds`` rounds; medians and the ratio."""
    scp_port = free_port()
    (work / "storescp").mkdir(exist_ok=True)
    storescp = subprocess.Popen(
        ["storescp", "-aet", "STORESCP", "-od", str(work / "storescp"), str(scp_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **env},
    )
    node = Node(work)
    times: dict[str, list[float]] = {"storescp": [], "node": []}
    try:
        wait_for_port(scp_port, 60, "storescp", process=storescp, interval_s=0.05)
        for rnd in range(rounds):
            order = ("storescp", "node") if rnd % 2 == 0 else ("node", "storescp")
            for target in order:
                if target == "node":
                    node.start()
                    times["node"].append(send(node.port, "CARDIONODE", files, env))
                    node.stop()
                else:
                    times["storescp"].append(send(scp_port, "STORESCP", files, env))
            print(f"{label} round {rnd + 1}: storescp {times['storescp'][-1]:.2f} s, node {times['node'][-1]:.2f} s", flush=True)
    finally:
        node.stop()
        stop(storescp)
    n = len(files)
    result: dict[str, object] = {}
    for target, series in times.items():
        median = statistics.median(series)
        result[target] = {
            "median_s": round(median, 3),
            "instances_per_s": round(n / median, 1),
            "mb_per_s": round(total_mb / median, 2),
            "all_s": [round(x, 3) for x in series],
        }
    result["ratio_node_over_storescp"] = round(statistics.median(times["storescp"]) / statistics.median(times["node"]), 3)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
