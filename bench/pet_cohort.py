"""Build the synthetic PET flow-reserve cohort of issue 16 (:mod:`node.synth.pet.cohort`).

Research use only (phantoms). One ``.npz`` per split in ``--out`` (default
``$CARDIONODE_CACHE/cohorts/<version>/``); resumable (finished cases are kept in
``<split>.npz.parts/``). Run single-threaded and niced on shared machines::

    OMP_NUM_THREADS=1 nice -n 15 .venv/bin/python bench/pet_cohort.py --split development --n 1000 --processes 1
    OMP_NUM_THREADS=1 nice -n 15 .venv/bin/python bench/pet_cohort.py --split test --n 250 --split external --n 250

Prints one line per case (seed, CPU seconds, error if refused) and the total CPU time.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

from node.synth.pet.cohort import SPLITS, build_cohort, default_cohort_dir  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", action="append", choices=SPLITS, required=True, help="split(s), in order")
    parser.add_argument("--n", action="append", type=int, required=True, help="cases per split (one per --split)")
    parser.add_argument("--out", default=None, help="output directory (default: the cohort cache directory)")
    parser.add_argument("--processes", type=int, default=1)
    args = parser.parse_args(argv)
    if len(args.n) != len(args.split):
        parser.error("give one --n per --split")
    out_dir = args.out or str(default_cohort_dir())
    cpu = {"total": 0.0}

    def progress(done: int, n: int, seed: int, seconds: float, error: str) -> None:
        cpu["total"] += seconds
        print(f"{time.strftime('%H:%M:%S')} {done}/{n} seed {seed} cpu {seconds:.1f} s {error}", flush=True)

    for split, n in zip(args.split, args.n, strict=True):
        t0 = time.time()
        path = build_cohort(split, n, out=f"{out_dir}/{split}.npz", processes=args.processes, progress=progress)
        print(f"wrote {path} ({n} cases, {time.time() - t0:.0f} s wall)", flush=True)
    print(f"worker CPU this run: {cpu['total'] / 60:.1f} core-minutes", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
