"""Benchmark and validation figures of the SPECT quantification.

``python bench/quant.py time [--runs 5] [--all-cores]``
    Times ``cardionode process`` (in-process :func:`node.pipelines.process.process_folder`) on one
    synthetic stress + rest study, gated (8 gates) and summed, 64^3 voxels of 6.4 mm, split by
    step, median of ``--runs`` runs, pinned to one core unless ``--all-cores``. The reference
    run in the same process is reading the study's DICOM bytes with pydicom (the physical
    floor: every byte read and decoded once); the report gives each step's ratio to it. Target: the
    quantification (``analyse``) under 2 s on one core.

``python bench/quant.py validate [--seeds 10]``
    Orientation, sampling and function errors against the phantom truth over fresh random
    seeds (printed), as mean and worst |error| — the figures quoted in docs/validation.md.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

if "--all-cores" not in sys.argv:  # single-threaded numerical libraries before numpy loads
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"

import numpy as np  # noqa: E402
from machine import pin_one_core  # noqa: E402  (bench/ is first on sys.path)

from node.synth.anatomy import Defect  # noqa: E402
from node.synth.spect.phantom import PhantomSpec, make_acquisition, make_study, territory_defect  # noqa: E402
from node.synth.spect.study import write_study  # noqa: E402


def bench_time(runs: int, all_cores: bool) -> None:
    import pydicom

    from node.pipelines.process import process_folder

    pin = "all cores" if all_cores else pin_one_core()
    print(f"machine: {os.cpu_count()} cores ({pin}); numpy {np.__version__}")
    seed = random.SystemRandom().randrange(2**31)
    rng = np.random.default_rng(seed)
    spec = PhantomSpec(n_gates=8, matrix=64, voxel_mm=6.4, defects=(territory_defect("LAD", 0.5, reversible=True),))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "study"
        write_study(make_study(spec, rng), folder, seed=seed)
        files = sorted(folder.glob("*.dcm"))
        print(f"study: seed {seed}, {len(files)} NM files, {sum(f.stat().st_size for f in files) / 1e6:.1f} MB "
              "(stress + rest, gated 8 x 64^3 + summed 64^3 each)")
        rows: dict[str, list[float]] = {}
        for run in range(runs + 1):  # first run warms imports and caches; not counted
            t0 = time.perf_counter()
            for f in files:
                _ = pydicom.dcmread(f).pixel_array  # every byte read and decoded once
            reference = time.perf_counter() - t0
            out = Path(tmp) / f"out{run}"
            t0 = time.perf_counter()
            outcomes = process_folder(folder, out, models=False, progress=lambda _line: None)
            total = time.perf_counter() - t0
            outcome = outcomes[0]
            if outcome.error:
                raise SystemExit(f"process failed: {outcome.error}")
            if run == 0:
                continue
            timings = dict(outcome.timings_s)
            timings.update({f"analyse.{k}": v for k, v in outcome.result.timings_s.items()})
            timings["total"] = total
            timings["reference: read+decode DICOM"] = reference
            for key, value in timings.items():
                rows.setdefault(key, []).append(value)
    ref = statistics.median(rows["reference: read+decode DICOM"])
    print(f"\nmedian of {runs} runs (s), ratio to the reference read:")
    for key in ["reference: read+decode DICOM", "read", "analyse"] + sorted(k for k in rows if k.startswith("analyse.")) + [
        "report", "preview", "total"
    ]:
        if key in rows:
            med = statistics.median(rows[key])
            print(f"  {key:38s} {med:7.3f}   x{med / ref:7.1f}")
    analyse = statistics.median(rows["analyse"])
    print(f"\nquantification (analyse) {analyse:.2f} s: {'meets' if analyse < 2.0 else 'misses'} the 2 s one-core target")


def _axis_error(location, frame) -> float:
    return float(np.degrees(np.arccos(np.clip(location.frame.long_axis @ frame.long_axis, -1, 1))))


def validate(n_seeds: int) -> None:
    from node.quant.function import measure_function
    from node.quant.orientation import locate_lv
    from node.quant.polar_map import sample_polar_map
    from node.quant.segments import TERRITORY_SEGMENTS
    from node.synth.geometry import SMALL

    seeds = [random.SystemRandom().randrange(2**31) for _ in range(n_seeds)]
    print(f"seeds: {seeds}")
    axis_err, samp_err, flag_ok, samp_noisy = [], [], [], []
    ef_clean, edv_clean, esv_clean, ef_noisy, edv_noisy, esv_noisy = [], [], [], [], [], []
    small_ef, small_edv, small_esv, apical_err = [], [], [], []
    territories = ["LAD", "LCx", "RCA"]
    for i, seed in enumerate(seeds):
        rng = np.random.default_rng(seed)
        territory = territories[i % 3]
        acq = make_acquisition(PhantomSpec(n_gates=8, defects=(territory_defect(territory, 0.5),)), "stress", rng)
        loc = locate_lv(acq.frames)
        axis_err.append(_axis_error(loc, acq.truth.frame))
        uptake = sample_polar_map(acq.frames, loc).segment_uptake_pct()
        samp_noisy.append(np.abs(uptake - acq.truth.segment_uptake_blurred_pct))
        flagged = {k + 1 for k in range(17) if uptake[k] < 70.0}
        flag_ok.append(flagged <= set(TERRITORY_SEGMENTS[territory]) and len(flagged) > 0)
        loc0 = locate_lv(acq.expected)
        samp_err.append(np.abs(sample_polar_map(acq.expected, loc0).segment_uptake_pct() - acq.truth.segment_uptake_blurred_pct))
        rest = make_acquisition(PhantomSpec(n_gates=8), "rest", rng)
        t = rest.truth
        for vol, ef, edv, esv in ((rest.expected, ef_clean, edv_clean, esv_clean), (rest.frames, ef_noisy, edv_noisy, esv_noisy)):
            f = measure_function(vol, locate_lv(vol))
            ef.append(f.lvef_pct - t.ef_pct)
            edv.append(100 * (f.edv_ml / t.edv_ml - 1))
            esv.append(100 * (f.esv_ml / t.esv_ml - 1))
        if i < max(2, n_seeds // 3):
            apical = make_acquisition(
                PhantomSpec(n_gates=0, defects=(Defect((17, int(rng.integers(13, 17))), float(rng.uniform(0.3, 0.6))),)),
                "stress", rng,
            )
            loc_a = locate_lv(apical.expected)
            apical_err.append(np.abs(sample_polar_map(apical.expected, loc_a).segment_uptake_pct()
                                     - apical.truth.segment_uptake_blurred_pct).max())
            small = make_acquisition(PhantomSpec(shape=SMALL, n_gates=8), "rest", rng)
            f = measure_function(small.frames, locate_lv(small.frames))
            small_ef.append(f.lvef_pct - small.truth.ef_pct)
            small_edv.append(100 * (f.edv_ml / small.truth.edv_ml - 1))
            small_esv.append(100 * (f.esv_ml / small.truth.esv_ml - 1))
        print(f"  seed {seed}: axis {axis_err[-1]:.2f} deg, sampling worst {samp_err[-1].max():.2f} %, "
              f"{territory} flagged ok={flag_ok[-1]}, EF err clean {ef_clean[-1]:+.1f} noisy {ef_noisy[-1]:+.1f}")

    def line(name: str, values: list[float], unit: str) -> None:
        v = np.asarray(values, dtype=float)
        print(f"  {name:44s} mean {v.mean():+7.2f} {unit}  mean|.| {np.abs(v).mean():6.2f}  worst {v[np.argmax(np.abs(v))]:+7.2f} {unit}")

    print(f"\nover {n_seeds} seeds (64^3, 6.4 mm, FWHM 12 mm, Tc-99m clinical counts, pose jitter +-15 deg):")
    line("long-axis error (clinical noise)", axis_err, "deg")
    all_samp = np.concatenate(samp_err)
    print(f"  {'sampling |segment error| (noise-free)':44s} mean {all_samp.mean():.2f} % of max, worst {all_samp.max():.2f} %")
    noisy = np.concatenate(samp_noisy)
    print(f"  {'sampling |segment error| (clinical noise)':44s} mean {noisy.mean():.2f} % of max, worst {noisy.max():.2f} %")
    print(f"  territory defects flagged only in territory: {sum(flag_ok)}/{len(flag_ok)}")
    print(f"  {'sampling worst segment error, apical-cap defect':44s} mean {np.mean(apical_err):.2f} % of max, "
          f"worst {np.max(apical_err):.2f} % ({len(apical_err)} seeds, noise-free)")
    line("LVEF error, noise-free", ef_clean, "pts")
    line("EDV error, noise-free", edv_clean, "%")
    line("ESV error, noise-free", esv_clean, "%")
    line("LVEF error, clinical noise", ef_noisy, "pts")
    line("EDV error, clinical noise", edv_noisy, "%")
    line("ESV error, clinical noise", esv_noisy, "%")
    line("small heart LVEF bias, clinical noise", small_ef, "pts")
    line("small heart EDV bias, clinical noise", small_edv, "%")
    line("small heart ESV bias, clinical noise", small_esv, "%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("time")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--all-cores", action="store_true")
    p = sub.add_parser("validate")
    p.add_argument("--seeds", type=int, default=10)
    args = parser.parse_args()
    if args.command == "time":
        bench_time(args.runs, args.all_cores)
    else:
        validate(args.seeds)


if __name__ == "__main__":
    main()
