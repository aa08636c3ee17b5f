"""Time to process one rest + stress dynamic PET study, split by step, against reading its pixels once.

``python bench/pet_study.py [--runs 3] [--matrix 47 128 128] [--voxel-mm 3.2] [--schedule fast] [--all-cores]``

One synthetic Rb-82 study (image-tier phantom, :mod:`node.synth.pet.phantom`; schedule ``fast`` =
12x5, 6x10, 2x30, 1x60, 1x120 s, 22 frames) is written as PET Image Storage files (one per slice
per frame; Siemens timing, shuffled), then, per run, in one process pinned to one core (unless
``--all-cores``):

* **reference**: reading every file with pydicom and decoding its pixels once (the physical floor
  of any processing of the study);
* **analyse** (:meth:`node.pipelines.pet_mbf.PetMbfPipeline.analyse` on the datasets read by the
  reference; its split: per state ``load`` (classify and build the 4-D volume), ``locate`` (LV on
  the summed late frames), ``sample``, ``regions``, ``fit`` (17 segments + territories + global),
  ``maps`` (polar and voxel MBF by basis functions), ``motion``);
* **report** (:meth:`~node.pipelines.base.Pipeline.report`: SR, bull's-eyes, curves, segment table,
  Parametric Maps, PDF).

Prints the median of ``--runs`` runs with each step's ratio to the reference, and the machine; the
top-level steps also in CPU seconds of this process (``time.process_time``), which other processes
on a loaded machine disturb much less than the wall clock.
Target of issue 15: reading + analyse under 5 s on one core including the voxel maps.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

if "--all-cores" not in sys.argv:  # single-threaded numerical libraries before numpy loads
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"

import numpy as np  # noqa: E402
from machine import pin_one_core  # noqa: E402  (bench/ is first on sys.path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--matrix", type=int, nargs=3, default=(47, 128, 128), metavar=("SLICES", "ROWS", "COLS"))
    parser.add_argument("--voxel-mm", type=float, default=3.2)
    parser.add_argument("--schedule", default="fast", help="Rb-82 frame schedule of node.synth.pet.tac")
    parser.add_argument("--all-cores", action="store_true")
    args = parser.parse_args(argv)

    import pydicom

    from node.pipelines.pet_mbf import PIPELINE
    from node.results.content import ReportContext
    from node.synth.pet.phantom import PetPhantomSpec, make_pet_study
    from node.synth.pet.study import build_phantom_pet_study, write_pet_study

    context = ReportContext(device_uid="1.2.826.0.1.3680043.8.498.4712", device_name="cardionode-bench")

    pin = "all cores" if args.all_cores else pin_one_core()
    seed = random.SystemRandom().randrange(2**31)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores ({pin}); "
          f"numpy {np.__version__}; load average {os.getloadavg()[0]:.2f}; seed {seed}")
    spec = PetPhantomSpec(matrix=tuple(args.matrix), voxel_mm=args.voxel_mm, schedule_variant=args.schedule)
    t0 = time.perf_counter()
    phantom = make_pet_study(np.random.default_rng(seed), spec=spec, defect_territory="LAD")
    study = build_phantom_pet_study(phantom, vendor="siemens", shuffle=True, key=f"bench-{seed}",
                                    when=datetime(2026, 1, 1, 9, 0, 0))
    n_frames = phantom.stress.volume.voxels.shape[0]
    print(f"study: 2 series x {n_frames} frames x {args.matrix[0]} slices of {args.matrix[1]}x{args.matrix[2]} "
          f"({len(study.datasets)} instances), {args.voxel_mm:g} mm voxels; made in {time.perf_counter() - t0:.1f} s")
    rows: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        files = write_pet_study(study, Path(tmp) / "study")
        paths = [p for p in files.paths if p.suffix == ".dcm"]
        for run in range(args.runs):
            t0, c0 = time.perf_counter(), time.process_time()
            pixels = [pydicom.dcmread(p).pixel_array for p in paths]
            rows.setdefault("reference: read + decode pixels", []).append(time.perf_counter() - t0)
            cpu.setdefault("reference: read + decode pixels", []).append(time.process_time() - c0)
            del pixels
            t0, c0 = time.perf_counter(), time.process_time()
            datasets = [pydicom.dcmread(p) for p in paths]  # as a worker gets them: read, pixels not decoded
            rows.setdefault("read files (pixels not decoded)", []).append(time.perf_counter() - t0)
            cpu.setdefault("read files (pixels not decoded)", []).append(time.process_time() - c0)
            t0, c0 = time.perf_counter(), time.process_time()
            result = PIPELINE.analyse(datasets)
            rows.setdefault("analyse", []).append(time.perf_counter() - t0)
            cpu.setdefault("analyse", []).append(time.process_time() - c0)
            for step, seconds in sorted(result.timings_s.items()):
                rows.setdefault(f"  {step}", []).append(seconds)
            t0 = time.perf_counter()
            outputs = PIPELINE.report(result, context)
            rows.setdefault("report", []).append(time.perf_counter() - t0)
            print(f"run {run + 1}: analyse {rows['analyse'][-1]:.2f} s, report {rows['report'][-1]:.2f} s "
                  f"({len(outputs)} objects); global MFR {result.reserve.global_mfr:.2f} "
                  f"(truth {phantom.truth.global_mfr:.2f})" if result.reserve is not None else "")
    reference = statistics.median(rows["reference: read + decode pixels"])
    print(f"\nmedian of {args.runs} runs | seconds | ratio to the reference")
    for name, values in rows.items():
        median = statistics.median(values)
        print(f"{name:40s} | {median:7.3f} | {median / reference:6.2f}")
    total = statistics.median([r + a for r, a in zip(rows["read files (pixels not decoded)"], rows["analyse"])])
    print(f"\nread files + analyse: {total:.2f} s = {total / reference:.2f} x the reference "
          "(target: under 5 s on one core)")
    cpu_reference = statistics.median(cpu["reference: read + decode pixels"])
    print(f"\nCPU seconds of this process, median of {args.runs} runs | seconds | ratio to the reference")
    for name, values in cpu.items():
        print(f"{name:40s} | {statistics.median(values):7.3f} | {statistics.median(values) / cpu_reference:6.2f}")
    cpu_total = statistics.median([r + a for r, a in zip(cpu["read files (pixels not decoded)"], cpu["analyse"])])
    print(f"read files + analyse, CPU: {cpu_total:.2f} s = {cpu_total / cpu_reference:.2f} x the reference; "
          f"load average now {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
