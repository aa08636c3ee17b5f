"""Time to process one cine + LGE cardiac MR study, split by step, against reading its pixels once.

``python bench/cmr_study.py [--runs 3] [--slices 12] [--phases 25] [--seed 5] [--pattern NAME] [--no-report] [--all-cores]``

One synthetic study of :func:`node.synth.cmr.study.build_cmr_study` (``standard`` layout, GE-like, one
classic MR file per slice and phase; 256 x 256 pixels of 1.5 mm; cine ``--phases`` phases, LGE magnitude
and PSIR, TI scout, long-axis cine) with ``--slices`` short-axis slices (the phantom's slice plan extended
toward the apex to that count; the issue's benchmark is 25 phases x 12 slices) is written as Part 10 files,
then, per run, in one process pinned to one core with one torch thread (unless ``--all-cores``):

* **reference**: reading every file with pydicom and decoding its pixels once;
* **read files** (pixels not decoded, as a worker gets them);
* **analyse** (:meth:`node.pipelines.cmr_lge.CmrLgePipeline.analyse`: roles and short-axis stacks,
  :func:`node.imaging.mr.load_cmr_study`);
* **predict** (:meth:`~node.pipelines.cmr_lge.CmrLgePipeline.predict`), split into ``segment.lge`` (the
  LGE stack through :func:`node.ai.cmr_segmentation.segment_short_axis`), ``segment.cine`` (every phase
  of the middle slices to find ED and ES, then the whole stack at ED and ES) and the quantification
  (AHA segments, LGE, function: the rest of the step);
* **report** (SR, bull's-eyes, PDF, Segmentation, contour overlays; ``--no-report`` skips it).

Prints the median of ``--runs`` runs with each step's ratio to the reference, the CPU seconds of this process
(``time.process_time``, which other processes on a loaded machine disturb much less than the wall clock),
the machine and its load. Target of issue 17: one study under 5 s on one core including segmentation
(read files + analyse + predict).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

if "--all-cores" not in sys.argv:  # single-threaded numerical libraries before numpy loads
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"

import numpy as np  # noqa: E402
from machine import pin_one_core  # noqa: E402  (bench/ is first on sys.path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--slices", type=int, default=12)
    parser.add_argument("--phases", type=int, default=25)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--pattern", default="ischaemic_transmural_mvo")
    parser.add_argument("--no-report", action="store_true")
    parser.add_argument("--all-cores", action="store_true")
    args = parser.parse_args(argv)

    import pydicom
    import torch

    from node.pipelines.cmr_lge import PIPELINE
    from node.results.content import ReportContext
    from node.synth.cmr import phantom as cmr_phantom
    from node.synth.cmr import study as cmr_study

    pin = "all cores" if args.all_cores else pin_one_core()
    if not args.all_cores:
        torch.set_num_threads(1)
    context = ReportContext(device_uid="1.2.826.0.1.3680043.8.498.4712", device_name="cardionode-bench")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores ({pin}); torch threads "
          f"{torch.get_num_threads()}; numpy {np.__version__}, torch {torch.__version__}; load average "
          f"{os.getloadavg()[0]:.2f}")
    t0 = time.perf_counter()
    # the study's slice plan with --slices slices (build_cmr_study draws just enough to cover the LV, 8-10)
    original = cmr_study.draw_anatomy
    cmr_study.draw_anatomy = partial(cmr_phantom.draw_anatomy, n_slices=args.slices)
    try:
        study = cmr_study.build_cmr_study("standard", args.seed, pattern=args.pattern, n_phases=args.phases)
    finally:
        cmr_study.draw_anatomy = original
    truth = study.truth
    print(f"study: seed {args.seed}, {args.pattern}; cine {args.phases} phases x {args.slices} slices of 256 x 256 "
          f"(1.5 mm), LGE {args.slices} slices; {len(study.datasets)} instances in all; made in "
          f"{time.perf_counter() - t0:.1f} s")
    rows: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}

    def record(name: str, wall: float, used: float | None = None) -> None:
        rows.setdefault(name, []).append(wall)
        if used is not None:
            cpu.setdefault(name, []).append(used)

    with tempfile.TemporaryDirectory() as tmp:
        cmr_study.save_cmr_study(study, Path(tmp) / "study")
        paths = sorted(Path(tmp, "study").rglob("*.dcm"))
        del study
        for run in range(args.runs):
            t0, c0 = time.perf_counter(), time.process_time()
            pixels = [pydicom.dcmread(p).pixel_array for p in paths]
            record("reference: read + decode pixels", time.perf_counter() - t0, time.process_time() - c0)
            del pixels
            t0, c0 = time.perf_counter(), time.process_time()
            datasets = [pydicom.dcmread(p) for p in paths]
            record("read files (pixels not decoded)", time.perf_counter() - t0, time.process_time() - c0)
            t0, c0 = time.perf_counter(), time.process_time()
            analysed = PIPELINE.analyse(datasets)
            record("analyse: roles + stacks", time.perf_counter() - t0, time.process_time() - c0)
            t0, c0 = time.perf_counter(), time.process_time()
            result = PIPELINE.predict(analysed)
            predict_wall = time.perf_counter() - t0
            record("predict: segmentation + quantification", predict_wall, time.process_time() - c0)
            seg_lge, seg_cine = result.timings_s.get("segment.lge", 0.0), result.timings_s.get("segment.cine", 0.0)
            record("  segment.lge", seg_lge)
            record("  segment.cine (ED/ES search + ED, ES)", seg_cine)
            record("  quantification (AHA, LGE, function)", predict_wall - seg_lge - seg_cine)
            if not args.no_report:
                t0, c0 = time.perf_counter(), time.process_time()
                outputs = PIPELINE.report(result, context)
                record("report: SR, SEG, SC, PDF", time.perf_counter() - t0, time.process_time() - c0)
            lge, fn = result.lge, result.function
            print(f"run {run + 1}: read {rows['read files (pixels not decoded)'][-1]:.2f} s, analyse "
                  f"{rows['analyse: roles + stacks'][-1]:.2f} s, predict {predict_wall:.2f} s"
                  + ("" if args.no_report else f", report {rows['report: SR, SEG, SC, PDF'][-1]:.2f} s ({len(outputs)} objects)")
                  + (f"; LGE {lge.primary.lge_pct_lv:.2f} %LV (truth {truth.lge.scar_pct_sampled:.2f})" if lge else "")
                  + (f"; EF {fn.ef_pct:.1f} (truth {truth.cine.ef_pct_sampled:.1f})" if fn else ""))
            del datasets, analysed, result
    reference = statistics.median(rows["reference: read + decode pixels"])
    print(f"\nmedian of {args.runs} runs, wall | seconds | ratio to the reference")
    for name, values in rows.items():
        median = statistics.median(values)
        print(f"{name:45s} | {median:7.3f} | {median / reference:6.2f}")
    keys = ("read files (pixels not decoded)", "analyse: roles + stacks", "predict: segmentation + quantification")
    total = statistics.median([sum(v) for v in zip(*(rows[k] for k in keys))])
    print(f"\nread files + analyse + predict: {total:.2f} s = {total / reference:.2f} x the reference "
          "(target: under 5 s on one core including segmentation)")
    cpu_reference = statistics.median(cpu["reference: read + decode pixels"])
    print(f"\nCPU seconds of this process, median of {args.runs} runs | seconds | ratio to the reference")
    for name, values in cpu.items():
        print(f"{name:45s} | {statistics.median(values):7.3f} | {statistics.median(values) / cpu_reference:6.2f}")
    cpu_total = statistics.median([sum(v) for v in zip(*(cpu[k] for k in keys))])
    print(f"read files + analyse + predict, CPU: {cpu_total:.2f} s = {cpu_total / cpu_reference:.2f} x the reference; "
          f"load average now {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
