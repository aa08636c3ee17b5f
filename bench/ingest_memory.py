"""Ingest memory benchmark: the listener's peak RSS growth per hostile or large instance, against
dcmtk ``storescp`` receiving the same bytes in the same run.

For each scenario a fresh ``cardionode listen`` and a fresh ``storescp`` are started;
each gets one small warm-up instance, then the scenario's instances (the tests' own
builders, :mod:`tests.support.hostile_dicom`, sent raw with pynetdicom), and the growth
of the peak resident set size (``VmHWM`` of ``/proc/<pid>/status``) from just before
to just after sending is reported, with each status. ``storescp`` runs with
``+B`` (bit preserving: writes the data set as it arrives, the physical floor) and
``+xa`` (accepts deflated), with ``+xa`` and without ``+B`` in a second column
(its default: it decodes the data set in memory).

    .venv/bin/python -m bench.ingest_memory [--max-instance-mb 512] [--out bench-ingest-memory.json]

Bounded: five scenarios, one run each, about a minute on two cores; loopback only.
Run it as a module from the repository root.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from tests.support.config import listener_config
from tests.support.dicom_clients import encode, send_raw_answers
from tests.support.hostile_dicom import DEFLATED, deflate_bomb, malformed_cases, write_large_instance
from tests.support.nm import NM_STORAGE, nm_instance
from tests.support.node import NodeProcess
from tests.support.ports import free_port, wait_for_port

EXPLICIT = "1.2.840.10008.1.2.1"
Item = tuple[str, str, bytes | Path, str]


def _hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for {pid}")


def _send_parallel(port: int, groups: list[list[Item]]) -> list[str]:
    """Each group on its own association, all at once (storescp answers any called AE title)."""
    answers: list[str] = [""] * len(groups)

    def send(i: int) -> None:
        got = send_raw_answers(port, groups[i])
        answers[i] = ",".join(f"0x{s or 0:04X}" for s, _ in got)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(groups))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    return answers


def measure(pid: int, port: int, groups: list[list[Item]]) -> tuple[float, list[str]]:
    warm = nm_instance("1.2.826.0.1.3680043.10.999.1", "1.2.826.0.1.3680043.10.999.2", "1.2.826.0.1.3680043.10.999.3")
    send_raw_answers(port, [(NM_STORAGE, str(warm.SOPInstanceUID), encode(warm), EXPLICIT)])
    before = _hwm_mib(pid)
    answers = _send_parallel(port, groups)
    return round(_hwm_mib(pid) - before, 1), answers


def scenarios(work: Path) -> dict[str, Callable[[], list[list[Item]]]]:
    study, series = "1.2.826.0.1.3680043.10.998.1", "1.2.826.0.1.3680043.10.998.2"

    def bomb(n: int) -> list[list[Item]]:
        sops = [f"1.2.826.0.1.3680043.10.998.3.{i}" for i in range(n)]
        return [[(NM_STORAGE, sop, deflate_bomb(study, series, sop, 512), DEFLATED)] for sop in sops]

    def large(mib: int) -> list[list[Item]]:
        sop = f"1.2.826.0.1.3680043.10.998.4.{mib}"
        return [[(NM_STORAGE, sop, write_large_instance(work / f"{mib}.bin", study, series, sop, mib), EXPLICIT)]]

    def item_bomb() -> list[list[Item]]:
        case = next(c for c in malformed_cases(study, series, "1.2.826.0.1.3680043.10.998.5") if "parse bomb" in c.name)
        return [[(NM_STORAGE, case.sop_instance, case.payload, case.transfer_syntax)]]

    return {
        "deflate bomb 0.5 MiB -> 512 MiB": lambda: bomb(1),
        "3 deflate bombs in parallel": lambda: bomb(3),
        "256 MiB instance": lambda: large(256),
        "48 MiB instance": lambda: large(48),
        "400,000 empty sequence items (3 MiB)": item_bomb,
    }


def run_node(work: Path, max_instance_mb: float, groups: list[list[Item]]) -> tuple[float, list[str]]:
    node_dir = work / "node"
    shutil.rmtree(node_dir, ignore_errors=True)
    node_dir.mkdir()
    config, port = listener_config(node_dir, max_instance_mb=max_instance_mb)
    with NodeProcess(config, port, mode="listener") as node:
        assert node.process is not None
        return measure(node.process.pid, port, groups)


def run_storescp(work: Path, groups: list[list[Item]], bit_preserving: bool) -> tuple[float, list[str]]:
    out = work / "storescp"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    port = free_port()
    options = ["+xa", *(["+B"] if bit_preserving else [])]
    proc = subprocess.Popen(["storescp", *options, "-od", str(out), str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, 60, "storescp", process=proc, interval_s=0.05)
        return measure(proc.pid, port, groups)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-instance-mb", type=float, default=512.0, help="the node's max_instance_mb (default: its default)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if shutil.which("storescp") is None:
        print("storescp (dcmtk) is needed as the reference", file=sys.stderr)
        return 2
    results: dict[str, object] = {"platform": platform.platform(), "python": sys.version.split()[0],
                                  "max_instance_mb": args.max_instance_mb, "unit": "MiB of peak RSS growth", "scenarios": {}}
    with tempfile.TemporaryDirectory(prefix="bench-ingest-memory-") as tmp:
        work = Path(tmp)
        print(f"{'scenario':40s} {'node':>16s} {'storescp +B':>16s} {'storescp':>16s}  statuses (node | storescp +B)")
        for name, build in scenarios(work).items():
            groups = build()
            node = run_node(work, args.max_instance_mb, groups)
            floor = run_storescp(work, groups, bit_preserving=True)
            decoded = run_storescp(work, groups, bit_preserving=False)
            results["scenarios"][name] = {  # type: ignore[index]
                "node_mib": node[0], "node_status": node[1],
                "storescp_bit_preserving_mib": floor[0], "storescp_bit_preserving_status": floor[1],
                "storescp_mib": decoded[0], "storescp_status": decoded[1],
            }
            print(f"{name:40s} {node[0]:>16.1f} {floor[0]:>16.1f} {decoded[0]:>16.1f}  {' '.join(node[1])} | {' '.join(floor[1])}",
                  flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
