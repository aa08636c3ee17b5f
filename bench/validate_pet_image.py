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

``--cross-segment on|both`` (part A; default off): the cross-segment correction of
:mod:`node.quant.mbf` (step 2b). ``both`` analyses every phantom once with it and refits the
uncorrected segment TACs (:func:`bench.pet_territory_sensitivity.uncorrected_fit`), one row per
setting, so that the settings are compared on the same phantoms and noise; the summary is given
per setting.

Usage::

    .venv/bin/python bench/validate_pet_image.py --n 200 --moved 50 --processes 2
    .venv/bin/python bench/validate_pet_image.py --n 40 --moved 0 --processes 1 --cross-segment both --progress rows.jsonl
    .venv/bin/python bench/validate_pet_image.py --part B

Prints a Markdown summary (and ``--json FILE`` writes every phantom's numbers).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/validate_pet_image.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from bench.pet_territory_sensitivity import uncorrected_fit  # noqa: E402
from node.quant.kinetics import SegmentFit, default_model, flow_reserve  # noqa: E402
from node.quant.mbf import TYPICAL_FWHM_MM, StateMBF, _fit_flags, analyse_dynamic, study_flags  # noqa: E402
from node.synth.pet.phantom import PetPhantomSpec, make_pet_study  # noqa: E402

KINDS = ("normal", "LAD", "LCx", "RCA", "diffuse")
TERRITORIES = ("LAD", "LCx", "RCA")


Job = tuple[int, int, bool, str, tuple[float, float], bool, str]


def run_phantom(args: Job) -> list[dict[str, Any]]:
    """One phantom study of part A; returns its truth and measured values (one row per cross-segment setting).

    The phantom's blur is drawn from ``fwhm_range`` (own RNG stream of the seed); the analysis
    always assumes the tracer's default resolution (a site setting), never the phantom's.
    """
    index, seed, moved, tracer, fwhm_range, pv, cross = args
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
                                                     rv_spillover=True, partial_volume_correction=pv,
                                                     cross_segment_correction=cross != "off")
    t2 = time.perf_counter()
    rest, stress = states["rest"], states["stress"]
    rows = [_row(index, seed, kind, moved_state, fwhm, study, rest, stress, rest.fit, stress.fit, t1 - t0, t2 - t1,
                 cross != "off")]
    if cross == "both":
        rows.append(_row(index, seed, kind, moved_state, fwhm, study, rest, stress, uncorrected_fit(rest, model),
                         uncorrected_fit(stress, model), t1 - t0, t2 - t1, False))
    return rows


def _row(index: int, seed: int, kind: str, moved_state: str | None, fwhm: float, study: Any, rest: StateMBF,
         stress: StateMBF, rest_fit: SegmentFit, stress_fit: SegmentFit, phantom_s: float, analysis_s: float,
         cross_segment: bool) -> dict[str, Any]:
    reserve = flow_reserve(rest_fit, stress_fit)
    rest, stress = (rest, stress) if cross_segment or rest.cross_segment is None else (
        _refitted(rest, rest_fit), _refitted(stress, stress_fit))
    flags = [f.code for f in rest.flags + stress.flags + study_flags(rest, stress)]
    condition = [s.cross_segment.condition_number for s in (rest, stress) if s.cross_segment is not None]
    return {
        "index": index, "seed": seed, "kind": kind, "moved_state": moved_state, "phantom_fwhm_mm": fwhm,
        "cross_segment": cross_segment, "condition_number": float(np.mean(condition)) if condition else None,
        "wall_thickness_mm": [s.partial_volume.wall_thickness_mm if s.partial_volume else None for s in (rest, stress)],
        "mean_recovery": [float(s.partial_volume.recovery_map.mean()) if s.partial_volume else None for s in (rest, stress)],
        "truth_rest": study.rest.truth.global_mbf_ml_per_min_per_g,
        "truth_stress": study.stress.truth.global_mbf_ml_per_min_per_g,
        "truth_mfr": study.truth.global_mfr,
        "rest": rest_fit.global_mbf_ml_per_min_per_g, "stress": stress_fit.global_mbf_ml_per_min_per_g,
        "mfr": reserve.global_mfr,
        "truth_impaired": list(study.truth.impaired_territories),
        "called_impaired": [t for t in TERRITORIES if reserve.territory_impaired[t]],
        "truth_territory_mfr": study.truth.territory_mfr,
        "territory_mfr": reserve.territory_mfr,
        "motion_rest": rest.motion_mm, "motion_stress": stress.motion_mm,
        "motion_flag_rest": any(f.code == "motion" for f in rest.flags),
        "motion_flag_stress": any(f.code == "motion" for f in stress.flags),
        "flags": flags,
        "truth_segment_rest": [float(v) for v in study.rest.truth.segment_mbf_ml_per_min_per_g],
        "truth_segment_stress": [float(v) for v in study.stress.truth.segment_mbf_ml_per_min_per_g],
        "segment_rest": [float(v) for v in rest_fit.segment_mbf_ml_per_min_per_g],
        "segment_stress": [float(v) for v in stress_fit.segment_mbf_ml_per_min_per_g],
        "phantom_s": phantom_s, "analysis_s": analysis_s / 2.0,
    }


def _refitted(result: StateMBF, fit: SegmentFit) -> StateMBF:
    """``result`` with the segment fit made without the cross-segment correction (its flags follow that fit)."""
    kept = tuple(f for f in result.flags if f.code not in ("unstable_fit", "blood_fraction_high"))
    flags = kept + tuple(_fit_flags(fit, default_model(result.tracer), result.state))
    return replace(result, fit=fit, flags=flags, cross_segment=None)


def _stats(errors: np.ndarray, bound: float) -> str:
    return (f"{100 * errors.mean():+.1f} % +- {100 * errors.std(ddof=1):.1f} % (n = {errors.size}); "
            f"within +-{100 * bound:.0f} %: {100 * np.mean(np.abs(errors) <= bound):.1f} %")


def part_a(n: int, moved: int, seed: int, processes: int, tracer: str, json_path: str | None,
           fwhm_range: tuple[float, float], pv: bool, progress_path: str | None, cross: str = "off") -> None:
    """Run the cohort (moved phantoms interleaved with the still ones, so that a partial run covers both) and
    summarise it; ``progress_path`` gets one JSON line per phantom as it finishes."""
    still_jobs: list[Job] = [(i, seed + i, False, tracer, fwhm_range, pv, cross) for i in range(n)]
    moved_jobs: list[Job] = [(n + i, seed + n + i, True, tracer, fwhm_range, pv, cross) for i in range(moved)]
    every = max(n // max(moved, 1), 1)
    jobs: list[Job] = []
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
            for phantom_rows in pool.map(run_phantom, jobs, chunksize=1):
                rows.extend(phantom_rows)
                if progress:
                    progress.writelines(json.dumps(row, default=float) + "\n" for row in phantom_rows)
                    progress.flush()
    finally:
        if progress:
            progress.close()
    summarise(rows, f"{tracer}, seeds {seed}..{seed + n + moved - 1}, {processes} processes, "
                    f"{time.perf_counter() - t0:.0f} s wall; phantom FWHM U({fwhm_range[0]:g}, {fwhm_range[1]:g}) mm, "
                    f"analysis at the default; partial-volume correction {'on' if pv else 'off'}", json_path)


def summarise(rows: list[dict[str, Any]], label: str, json_path: str | None = None) -> None:
    """Print the part-A statistics of ``rows`` (as :func:`run_phantom` returns them), per cross-segment setting."""
    settings = sorted({bool(r.get("cross_segment", False)) for r in rows})
    for cross in settings:
        _summarise_setting([r for r in rows if bool(r.get("cross_segment", False)) == cross],
                           f"{label}; cross-segment correction {'on' if cross else 'off'}")
    if len(settings) > 1:
        _compare_segments(rows)
    if json_path:
        with open(json_path, "w") as fh:
            json.dump(rows, fh, indent=1, default=float)


def _compare_segments(rows: list[dict[str, Any]]) -> None:
    """Segment MBF and MFR error spread of the still phantoms per setting (noise amplification of the correction).

    ``ln(measured / true)`` per segment, split into the systematic part (the SD over the 17 segment positions of
    their mean error over the phantoms) and the random part (the pooled SD about those means); the territory calls
    that differ from the truth, by the territory's true MFR.
    """
    print("\n| setting | still phantoms | segment rest MBF ln(meas/true): mean; SD systematic, random | stress | "
          "segment MFR | territory MFR ln(meas/true): true < 2.0; true >= 2.4 (mean, SD) | cond(G): mean, max |")
    print("|---|---|---|---|---|---|---|")
    misses: dict[bool, tuple[list[float], list[float]]] = {}
    for cross in (False, True):
        still = [r for r in rows if bool(r.get("cross_segment", False)) == cross and r["moved_state"] is None
                 and "segment_rest" in r]
        if not still:
            continue
        rest = np.log([np.divide(r["segment_rest"], r["truth_segment_rest"]) for r in still])  # [phantoms, 17]
        stress = np.log([np.divide(r["segment_stress"], r["truth_segment_stress"]) for r in still])

        def split(e: np.ndarray) -> str:
            position = e.mean(axis=0)
            random = (e - position).std(ddof=1) if e.shape[0] > 1 else 0.0
            return f"{100 * e.mean():+.1f} %; {100 * position.std(ddof=1):.1f} %, {100 * random:.1f} %"

        def ms(x: list[float]) -> str:
            a = np.asarray(x)
            return f"{100 * a.mean():+.1f} %, {100 * a.std(ddof=1) if a.size > 1 else 0:.1f} % (n = {a.size})" if a.size else "-"

        territory = [(r["truth_territory_mfr"][t], math.log(r["territory_mfr"][t] / r["truth_territory_mfr"][t]))
                     for r in still for t in TERRITORIES]
        low = [e for m, e in territory if m < 2.0]
        normal = [e for m, e in territory if m >= 2.4]
        cond = [r["condition_number"] for r in still if r.get("condition_number")]
        cond_text = f"{np.mean(cond):.2f}, {np.max(cond):.2f}" if cond else "-"
        print(f"| {'on' if cross else 'off'} | {len(still)} | {split(rest)} | {split(stress)} | {split(stress - rest)} | "
              f"{ms(low)}; {ms(normal)} | {cond_text} |")
        missed = sorted(r["truth_territory_mfr"][t] for r in still for t in TERRITORIES
                        if t in r["truth_impaired"] and t not in r["called_impaired"])
        false = sorted(r["truth_territory_mfr"][t] for r in still for t in TERRITORIES
                       if t in r["called_impaired"] and t not in r["truth_impaired"])
        misses[cross] = (missed, false)
    for cross, (missed, false) in misses.items():
        print(f"- {'with' if cross else 'without'} the correction: missed territories' true MFR "
              f"{', '.join(f'{m:.2f}' for m in missed) or 'none'}; false calls' true MFR "
              f"{', '.join(f'{m:.2f}' for m in false) or 'none'}")


def _summarise_setting(rows: list[dict[str, Any]], label: str) -> None:
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
    if moved_flagged:
        print(f"- motion flag: moved series {100 * np.mean(moved_flagged):.1f} % ({sum(moved_flagged)}/{len(moved_flagged)}); "
              f"still series {100 * np.mean(still_series_flagged + other_still):.1f} % "
              f"({sum(still_series_flagged + other_still)}/{len(still_series_flagged + other_still)})")
    else:
        print(f"- motion flag: still series {sum(still_series_flagged)}/{len(still_series_flagged)} (no moved phantoms)")
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
    parser.add_argument("--cross-segment", choices=("off", "on", "both"), default="off",
                        help="cross-segment correction (part A; both: with it, and the refit without it)")
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
               args.progress, args.cross_segment)
    if "B" in args.part:
        part_b(args.n_b, args.seed + 50_000, args.tracer)


if __name__ == "__main__":
    main()
