"""Ingest benchmark: the node's C-STORE SCP against dcmtk ``storescp`` and Orthanc, same instances, same run.

Sends the same synthetic NM instances with dcmtk ``storescu`` to each target, over one
association and over eight concurrent associations (the instances split evenly between
them), several rounds with the order of the targets rotating from round to round, and
prints instances/s of each target (median round), the ratios node/storescp and
node/Orthanc, and the physical bound of the disk: a bare loop writing one instance's
bytes and calling ``fdatasync`` (the flushes per second a durable receiver can make),
appending to a file and overwriting one, before and after the rounds.

Targets:

* ``storescp``: dcmtk's receiver, no fsync (it has no option to fsync);
* ``orthanc``: Debian's Orthanc with its default durability (its own SQLite index and
  storage area), a fresh storage folder each round;
* ``node``: the node's listener (``cardionode listen``) with ``durable_writes`` and the
  spool journal (one ``fdatasync`` shared by the associations waiting at that moment),
  an empty data directory each round; the journal's counts (instances, fdatasync calls)
  are read from the listener's log at its stop;
* ``node-fsync`` (only when asked): the listener with ``ingest_journal = false``, the
  earlier write path (each spool file and its directory fsync'ed).

``TCP_NODELAY=1`` is in the environment of storescu, storescp and Orthanc (both DCMTK
based); the node always sets TCP_NODELAY on its sockets.

    .venv/bin/python -m bench.ingest [--instances 320] [--rounds 3] [--size 128]
        [--targets storescp,orthanc,node] [--associations 1,8] [--json out.json]

Run it as a module from the repository root: the instances, the dcmtk client, Orthanc and
the node's launcher are the tests' own (``tests.support``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
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
from tests.support.orthanc import Orthanc
from tests.support.ports import free_port, wait_for_port

TARGETS = ("storescp", "orthanc", "node", "node-fsync")
NODELAY = {"TCP_NODELAY": "1"}
_JOURNAL_LINE = re.compile(r"spool journal: (\d+) instance\(s\) made durable by (\d+) fdatasync")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def send(port: int, called: str, groups: list[list[Path]]) -> float:
    """Seconds until every group of files is sent, each group on its own storescu association,
    all at once (quiet, all presentation contexts proposed, TCP_NODELAY); fails if a store failed."""
    env = {**os.environ, **NODELAY}
    start = time.perf_counter()
    if len(groups) == 1:
        storescu(port, groups[0], called=called, calling="BENCHSCU", verbose=False, required_only=False,
                 env=env, check=True, timeout_s=3600)
        return time.perf_counter() - start
    processes = [
        subprocess.Popen(["storescu", "-aet", f"BENCHSCU{k}", "-aec", called, "127.0.0.1", str(port), *map(str, group)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        for k, group in enumerate(groups)
    ]
    failed = []
    for process in processes:
        _, err = process.communicate(timeout=3600)
        if process.returncode != 0:
            failed.append(err.decode(errors="replace")[-500:])
    elapsed = time.perf_counter() - start
    if failed:
        raise RuntimeError(f"{len(failed)} storescu failed: {failed[0]}")
    return elapsed


class Node:
    """The node's listener (the tests' launcher, listener mode) with a fresh data directory each start."""

    def __init__(self, work: Path, journal: bool) -> None:
        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log = work / "listener.out"
        config = write_config(work / "node.toml", ae_title="CARDIONODE", port=self.port, data_dir=work / "var",
                              durable_writes=True, ingest_journal=journal, disk_watermark_mb=100, max_associations=16)
        self.process = NodeProcess(config, self.port, self.log, mode="listener")

    def start(self) -> None:
        shutil.rmtree(self.work / "var", ignore_errors=True)
        self.process.start()

    def stop(self) -> tuple[int, int] | None:
        """Stop; the journal's (instances, fdatasync calls) of this run, from the listener's log."""
        self.process.stop()
        found = _JOURNAL_LINE.findall(self.log.read_text(errors="replace")) if self.log.exists() else []
        return (int(found[-1][0]), int(found[-1][1])) if found else None


def fdatasync_bound(folder: Path, size_bytes: int, count: int, overwrite: bool = False) -> dict[str, float]:
    """A bare loop: write ``size_bytes`` and ``fdatasync``, ``count`` times, in ``folder``; the
    flushes per second (the most instances/s one association can be acknowledged durably).
    Appending to a new file (``overwrite`` False) or overwriting a file written and fsync'ed
    beforehand, as the journal's reused segments are (no file size to commit)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = os.urandom(size_bytes)
    path = folder / "fdatasync-bound.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        if overwrite:
            for _ in range(count):
                os.write(fd, data)
            os.fsync(fd)
            os.lseek(fd, 0, os.SEEK_SET)
        start = time.perf_counter()
        for _ in range(count):
            os.write(fd, data)
            os.fdatasync(fd)
        elapsed = time.perf_counter() - start
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    return {"flushes_per_s": round(count / elapsed, 1), "ms_per_flush": round(1000 * elapsed / count, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=320, help="instances per round (split between the associations)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=128, help="rows = columns of each instance (16-bit pixels)")
    parser.add_argument("--targets", default="storescp,orthanc,node", help="comma-separated: " + ", ".join(TARGETS))
    parser.add_argument("--associations", default="1,8", help="comma-separated counts of concurrent associations")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    for tool in ("storescu", "storescp"):
        if shutil.which(tool) is None:
            print(f"{tool} (dcmtk) is needed", file=sys.stderr)
            return 2
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = sorted(set(targets) - set(TARGETS))
    if unknown:
        print(f"unknown target(s) {unknown}; choose from {TARGETS}", file=sys.stderr)
        return 2
    counts = [int(a) for a in args.associations.split(",")]

    report: dict[str, object] = {
        "instances": args.instances,
        "rounds": args.rounds,
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs, {platform.platform()}",
        "load_average_1min_at_start": round(os.getloadavg()[0], 1),
    }
    with tempfile.TemporaryDirectory(prefix="cardionode-bench-", dir=os.environ.get("BENCH_DIR")) as tmp:
        work = Path(tmp)
        (work / "in").mkdir()
        files = write_nm_study(work / "in", args.instances, seed=1, size=args.size).paths
        total_mb = sum(f.stat().st_size for f in files) / 1e6
        report["megabytes"] = round(total_mb, 2)
        size = files[0].stat().st_size
        report["bound_before"] = fdatasync_bound(work / "bound", size, 200)
        report["bound_overwrite_before"] = fdatasync_bound(work / "bound", size, 200, overwrite=True)
        for n in counts:
            groups = [files[k::n] for k in range(n)]
            report[f"associations_{n}"] = run_setup(work, groups, len(files), total_mb, args.rounds, targets)
        report["bound_after"] = fdatasync_bound(work / "bound", size, 200)
        report["bound_overwrite_after"] = fdatasync_bound(work / "bound", size, 200, overwrite=True)
    report["load_average_1min_at_end"] = round(os.getloadavg()[0], 1)
    print_report(report, counts, targets)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


def print_report(report: dict[str, object], counts: list[int], targets: list[str]) -> None:
    print(
        f"\n{report['instances']} instances, {report['megabytes']} MB per round, {report['rounds']} rounds, target order "
        f"rotating; machine: {report['machine']}; load {report['load_average_1min_at_start']} -> "
        f"{report['load_average_1min_at_end']}"
    )
    print(f"bare append+fdatasync loop: {report['bound_before']} before, {report['bound_after']} after")
    print(f"bare overwrite+fdatasync loop: {report['bound_overwrite_before']} before, {report['bound_overwrite_after']} after")
    for n in counts:
        r = report[f"associations_{n}"]
        assert isinstance(r, dict)
        for target in targets:
            t_ = r[target]
            flushes = f"  {t_['fdatasync_per_instance']:.3f} fdatasync/instance" if "fdatasync_per_instance" in t_ else ""
            print(f"{n} association(s) {target:10s} median {t_['median_s']:.2f} s  {t_['instances_per_s']:.1f} instances/s{flushes}")
        for key, value in r.items():
            if key.startswith("ratio_"):
                print(f"{n} association(s) {key}: {value:.2f}")


def run_setup(work: Path, groups: list[list[Path]], n: int, total_mb: float, rounds: int, targets: list[str]) -> dict[str, object]:
    """``rounds`` rounds of every target, the order rotating; medians, journal counts and ratios."""
    scp_port = free_port()
    received = work / "storescp"
    received.mkdir(exist_ok=True)
    storescp = subprocess.Popen(
        ["storescp", "-aet", "STORESCP", "-od", str(received), str(scp_port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **NODELAY},
    )
    nodes = {t: Node(work / t, journal=(t == "node")) for t in targets if t.startswith("node")}
    times: dict[str, list[float]] = {t: [] for t in targets}
    flushes: dict[str, list[tuple[int, int]]] = {t: [] for t in nodes}
    previous = os.environ.get("TCP_NODELAY")
    os.environ["TCP_NODELAY"] = "1"  # Orthanc (DCMTK inside) inherits it
    try:
        wait_for_port(scp_port, 60, "storescp", process=storescp, interval_s=0.05)
        for rnd in range(rounds):
            order = targets[rnd % len(targets):] + targets[: rnd % len(targets)]
            for target in order:
                if target in nodes:
                    node = nodes[target]
                    node.start()
                    try:
                        times[target].append(send(node.port, "CARDIONODE", groups))
                    finally:
                        counted = node.stop()
                    if counted is not None:
                        flushes[target].append(counted)
                elif target == "orthanc":
                    folder = work / f"orthanc-{rnd}"
                    orthanc = Orthanc(folder).start()
                    try:
                        times[target].append(send(orthanc.dicom_port, orthanc.ae_title, groups))
                    finally:
                        orthanc.stop()
                        shutil.rmtree(folder, ignore_errors=True)
                else:
                    times[target].append(send(scp_port, "STORESCP", groups))
                    shutil.rmtree(received, ignore_errors=True)
                    received.mkdir()
            print(f"{len(groups)} association(s) round {rnd + 1}: "
                  + ", ".join(f"{t} {times[t][-1]:.2f} s" for t in order), flush=True)
    finally:
        if previous is None:
            os.environ.pop("TCP_NODELAY", None)
        else:
            os.environ["TCP_NODELAY"] = previous
        for node in nodes.values():
            node.stop()
        stop(storescp)
    result: dict[str, object] = {}
    for target, series in times.items():
        median = statistics.median(series)
        entry: dict[str, object] = {
            "median_s": round(median, 3),
            "instances_per_s": round(n / median, 1),
            "mb_per_s": round(total_mb / median, 2),
            "all_s": [round(x, 3) for x in series],
        }
        if flushes.get(target):
            instances = sum(i for i, _ in flushes[target])
            syncs = sum(f for _, f in flushes[target])
            entry["fdatasync_per_instance"] = round(syncs / instances, 3) if instances else None
        result[target] = entry
    medians = {t: statistics.median(s) for t, s in times.items()}
    for ours in (t for t in targets if t.startswith("node")):
        for reference in (t for t in targets if not t.startswith("node")):
            result[f"ratio_{ours}_over_{reference}"] = round(medians[reference] / medians[ours], 3)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
