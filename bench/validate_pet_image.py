"""Image-tier validation of PET MBF (issue 15): phantoms -> node.quant.mbf -> truth.

Part A (acceptance cohort): ``--n`` still phantoms plus ``--moved`` phantoms with a 10 mm shift in
one state (U(90, 240) s), seeds ``--seed`` + i, Rb-82 (default model, septal RV spill-over on,
as the phantoms have RV blood next to the septum). Phantom kinds cycle normal / LAD / LCx /
RCA defect / diffuse (:func:`node.synth.pet.phantom.make_pet_study`). Reports, over the still
phantoms, global rest and stress MBF and global MFR relative errors (mean +- SD, share within
the acceptance bounds), the impaired-territory call (territory MFR < 2.0 against the truth's
territory MFR < 2.0: sensitivity, specificity, and for defect phantoms whether the called
territories are exactly the defect's), and the motion flag over moved and still series.

Part B (why the MBF bias): noise-free phantoms analysed at several resolutions (the phantom's
blur and the analysis's FWHM together) and wall-band widths: the MBF bias follows the
partial-volume balance ``recovery + spill-over != 1`` (reference 5.9), and MFR cancels it.

Usage::

    .venv/bin/python bench/validate_pet_image.py --n 200 --moved 50 --processes 2
    .venv/bin/python bench/validate_pet_image.py --part B

Prints a Markdown summary (and ``--json FILE`` writes every phantom's numbers).
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

from node.quant.kinetics import default_model, flow_reserve
from node.quant.mbf import TYPICAL_FWHM_MM, analyse_dynamic, study_flags
from node.synth.pet.phantom import PetPhantomSpec, make_pet_study

KINDS = ("normal", "LAD", "LCx", "RCA", "diffuse")
TERRITORIES = ("LAD", "LCx", "RCA")


def run_phantom(args: tuple[int, int, bool, str, tuple[float, float], bool]) -> dict[str, Any]:
    """One phantom study of part A; returns its truth and measured values.

    The phantom's blur is drawn from ``fwhm_range`` (own RNG stream of the seed); the analysis
    always assumes the tracer's default resolution (a site setting), never the phantom's.
    """
    index, seed, moved, tracer, fwhm_range, pv = args
    rng = np.random.default_rng(seed)
    fwhm = float(np.random.default_rng([seed, 1]).uniform(*fwhm_range))
    kind = KINDS[index % len(KINDS)]
    moved_state = ("stress" if index % 2 else "rest") if moved else None
    spec = PetPhantomSpec(tracer=tracer, fwhm_mm=fwhm)
    model = default_model(tracer)
    t0 = time.perf_counter()
    study = make_pet_study(rng, spec=spec, model=model, defect_territory=kind if kind in TERRITORIES else None,
                           diffuse=kind == "diffuse", moved_state=moved_state)
    t1 = time.perf_counter()
    states = {}
    for series in (study.rest, study.stress):
        states[series.truth.state] = analyse_dynamic(series.volume, state=series.truth.state, model=model,
                                                     rv_spillover=True, partial_volume_correction=pv)
    t2 = time.perf_counter()
    rest, stress = states["rest"], states["stress"]
    reserve = flow_reserve(rest.fit, stress.fit)
    flags = [f.code for f in rest.flags + stress.flags + study_flags(rest, stress)]
    return {
        "index": index, "seed": seed, "kind": kind, "moved_state": moved_state, "phantom_fwhm_mm": fwhm,
        "wall_thickness_mm": [s.partial_volume.wall_thickness_mm if s.partial_volume else None for s in (rest, stress)],
        "mean_recovery": [float(s.partial_volume.recovery_map.mean()) if s.partial_volume else None for s in (rest, stress)],
        "truth_rest": study.rest.truth.global_mbf_ml_per_min_per_g,
        "truth_stress": study.stress.truth.global_mbf_ml_per_min_per_g,
        "truth_mfr": study.truth.global_mfr,
        "rest": rest.fit.global_mbf_ml_per_min_per_g, "stress": stress.fit.global_mbf_ml_per_min_per_g,
        "mfr": reserve.global_mfr,
        "truth_impaired": list(study.truth.impaired_territories),
        "called_impaired": [t for t in TERRITORIES if reserve.territory_impaired[t]],
        "truth_territory_mfr": study.truth.territory_mfr,
        "territory_mfr": reserve.territory_mfr,
        "motion_rest": rest.motion_mm, "motion_stress": stress.motion_mm,
        "motion_flag_rest": any(f.code == "motion" for f in rest.flags),
        "motion_flag_stress": any(f.code == "motion" for f in stress.flags),
        "flags": flags,
        "phantom_s": t1 - t0, "analysis_s": (t2 - t1) / 2.0,
    }


def _stats(errors: np.ndarray, bound: float) -> str:
    return (f"{100 * errors.mean():+.1f} % +- {100 * errors.std(ddof=1):.1f} % (n = {errors.size}); "
            f"within +-{100 * bound:.0f} %: {100 * np.mean(np.abs(errors) <= bound):.1f} %")


def part_a(n: int, moved: int, seed: int, processes: int, tracer: str, json_path: str | None,
           fwhm_range: tuple[float, float], pv: bool, progress_path: str | None) -> None:
    """Run the cohort (moved phantoms interleaved with the still ones, so that a partial run covers both) and
    summarise it; ``progress_path`` gets one JSON line per phantom as it finishes."""
    still_jobs = [(i, seed + i, False, tracer, fwhm_range, pv) for i in range(n)]
    moved_jobs = [(n + i, seed + n + i, True, tracer, fwhm_range, pv) for i in range(moved)]
    every = max(n // max(moved, 1), 1)
    jobs: list[tuple[int, int, bool, str, tuple[float, float], bool]] = []
    for k, job in enumerate(still_jobs):
        jobs.append(job)
        if (k + 1) % every == 0 and moved_jobs:
            jobs.append(moved_jobs.pop(0))
    jobs += moved_jobs
    t0 = time.perf_counter()
    rows = []
    progress = open(progress_path, "a") if progress_path else None  # noqa: SIM115 (closed below)
    try:
        with ProcessPoolExecutor(max(processes, 1)) as pool:
            for row in pool.map(run_phantom, jobs, chunksize=1):
                rows.append(row)
                if progress:
                    progress.write(json.dumps(row, default=float) + "\n")
                    progress.flush()
    finally:
        if progress:
            progress.close()
    summarise(rows, f"{tracer}, seeds {seed}..{seed + n + moved - 1}, {processes} processes, "
                    f"{time.perf_counter() - t0:.0f} s wall; phantom FWHM U({fwhm_range[0]:g}, {fwhm_range[1]:g}) mm, "
                    f"analysis at the default; partial-volume correction {'on' if pv else 'off'}", json_path)


def summarise(rows: list[dict[str, Any]], label: str, json_path: str | None = None) -> None:
    """Print the part-A statistics of ``rows`` (as :func:`run_phantom` returns them)."""
    still = [r for r in rows if r["moved_state"] is None]
    moving = [r for r in rows if r["moved_state"] is not None]
    err = {k: np.array([r[k] / r[f"truth_{k}"] - 1.0 for r in still]) for k in ("rest", "stress", "mfr")}
    tp = fn = tn = fp = 0
    exact = []
    for r in still:
        for t in TERRITORIES:
            truth, called = t in r["truth_impaired"], t in r["called_impaired"]
            tp += truth and called
            fn += truth and not called
            fp += called and not truth
            tn += not truth and not called
        if r["kind"] in TERRITORIES and r["truth_impaired"] == [r["kind"]]:
            exact.append(r["called_impaired"] == [r["kind"]])
    moved_flagged = [r[f"motion_flag_{r['moved_state']}"] for r in moving]
    still_series_flagged = [r["motion_flag_rest"] for r in still] + [r["motion_flag_stress"] for r in still]
    other_still = [r[f"motion_flag_{'rest' if r['moved_state'] == 'stress' else 'stress'}"] for r in moving]
    print(f"## Part A: {len(still)} still + {len(moving)} moved phantoms; {label}")
    print(f"- global rest MBF error: {_stats(err['rest'], 0.20)}")
    print(f"- global stress MBF error: {_stats(err['stress'], 0.20)}")
    print(f"- global MFR error: {_stats(err['mfr'], 0.15)}")
    print(f"- impaired territory (MFR < 2.0) vs truth: sensitivity {tp / max(tp + fn, 1):.3f} ({tp}/{tp + fn}), "
          f"specificity {tn / max(tn + fp, 1):.3f} ({tn}/{tn + fp})")
    print(f"- territory-defect phantoms (defect territory's true MFR < 2.0) whose impaired call is exactly that territory: "
          f"{100 * np.mean(exact):.1f} % ({sum(exact)}/{len(exact)})")
    print(f"- motion flag: moved series {100 * np.mean(moved_flagged):.1f} % ({sum(moved_flagged)}/{len(moved_flagged)}); "
          f"still series {100 * np.mean(still_series_flagged + other_still):.1f} % "
          f"({sum(still_series_flagged + other_still)}/{len(still_series_flagged + other_still)})")
    moved_mm = [r[f"motion_{r['moved_state']}"] for r in moving]
    still_mm = [r["motion_rest"] for r in still] + [r["motion_stress"] for r in still]
    if moved_mm:
        print(f"- motion_mm: moved {np.mean(moved_mm):.1f} +- {np.std(moved_mm):.1f} (min {np.min(moved_mm):.1f}); "
              f"still {np.mean(still_mm):.2f} +- {np.std(still_mm):.2f} (max {np.max(still_mm):.1f})")
    counts: dict[str, int] = {}
    for r in still:
        for code in r["flags"]:
            counts[code] = counts.get(code, 0) + 1
    print(f"- flags raised on still phantoms (count over {len(still)} studies): {counts or 'none'}")
    print(f"- time per phantom study: generation {np.mean([r['phantom_s'] for r in rows]):.2f} s, "
          f"analysis {np.mean([r['analysis_s'] for r in rows]):.2f} s per state (loaded machine)")
    if json_path:
        with open(json_path, "w") as fh:
            json.dump(rows, fh, indent=1, default=float)


def part_b(n: int, seed: int, tracer: str) -> None:
    """Noise-free phantoms: bias against the phantom's blur, with the analysis at the default resolution or at the
    phantom's, partial-volume correction off and on."""
    model = default_model(tracer)
    default = TYPICAL_FWHM_MM[model.tracer.name]
    print(f"## Part B: noise-free {tracer} phantoms (n = {n} per row, seeds {seed}..{seed + n - 1}): partial volume")
    print("| phantom blur (mm) | analysis FWHM (mm) | PV correction | rest MBF bias | stress MBF bias | MFR bias |")
    print("|---|---|---|---|---|---|")
    rows = [(9.0, 9.0, False), (6.5, 6.5, False), (2.0, 2.0, False)]
    rows += [(b, default, True) for b in (7.0, 8.0, 9.0, 10.0, 11.0)] + [(6.5, 6.5, True), (2.0, 2.0, True)]
    for blur, fwhm, pv in rows:
        errors = []
        for i in range(n):
            study = make_pet_study(np.random.default_rng(seed + i),
                                   spec=PetPhantomSpec(tracer=tracer, fwhm_mm=blur, noise_level=0.0), model=model)
            out = []
            for series in (study.rest, study.stress):
                r = analyse_dynamic(series.volume, state=series.truth.state, model=model, rv_spillover=True, fwhm_mm=fwhm,
                                    partial_volume_correction=pv)
                out.append(r.fit.global_mbf_ml_per_min_per_g / series.truth.global_mbf_ml_per_min_per_g - 1.0)
            out.append((1 + out[1]) / (1 + out[0]) - 1.0)
            errors.append(out)
        e = 100 * np.asarray(errors)
        print(f"| {blur:g} | {fwhm:g} | {'on' if pv else 'off'} | {e[:, 0].mean():+.1f} +- {e[:, 0].std(ddof=1):.1f} % | "
              f"{e[:, 1].mean():+.1f} +- {e[:, 1].std(ddof=1):.1f} % | {e[:, 2].mean():+.1f} +- {e[:, 2].std(ddof=1):.1f} % |",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("A", "B", "AB"), default="A")
    parser.add_argument("--n", type=int, default=200, help="still phantoms (part A)")
    parser.add_argument("--moved", type=int, default=50, help="moved phantoms (part A)")
    parser.add_argument("--seed", type=int, default=150_000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--tracer", default="Rb-82")
    parser.add_argument("--n-b", type=int, default=6, help="phantoms per row of part B")
    parser.add_argument("--json", default=None)
    parser.add_argument("--phantom-fwhm", default="8,10",
                        help="range 'LO,HI' (mm) of the phantoms' blur (part A); the analysis assumes the default")
    parser.add_argument("--no-pv", action="store_true", help="partial-volume correction off (part A)")
    parser.add_argument("--progress", default=None, help="append one JSON line per phantom to this file (part A)")
    parser.add_argument("--summarise", default=None, help="only summarise the JSON lines of a --progress file")
    args = parser.parse_args()
    if args.summarise:
        with open(args.summarise) as fh:
            rows = [json.loads(line) for line in fh if line.strip()]
        summarise(rows, f"from {args.summarise}", args.json)
        return
    if "A" in args.part:
        lo, hi = (float(v) for v in args.phantom_fwhm.split(","))
        part_a(args.n, args.moved, args.seed, args.processes, args.tracer, args.json, (lo, hi), not args.no_pv,
               args.progress)
    if "B" in args.part:
        part_b(args.n_b, args.seed + 50_000, args.tracer)


if __name__ == "__main__":
    main()
