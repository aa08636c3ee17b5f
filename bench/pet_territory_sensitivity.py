"""Impaired-territory detection of PET MFR by true-MFR band, and the ceiling that noise and blur set (issue 15).

Image-tier phantoms (:func:`node.synth.pet.phantom.make_pet_study`, Rb-82) of the acceptance
cohort's abnormal kinds (LAD / LCx / RCA territory defect with stress F x U(0.35, 0.7), diffuse
disease with every segment's MFR U(1.3, 1.9)), analysed by :func:`node.quant.mbf.analyse_dynamic`
(septal RV term, partial-volume correction) at the phantom's own resolution unless
``--analysis-fwhm`` is given, and :func:`node.quant.kinetics.flow_reserve` (territory MFR =
ratio of the territory means of segment MBF, impaired when below 2.0, the truth's rule on the
true values).

For every condition (phantom blur FWHM x noise level) it prints, per band of the *true*
territory MFR: the number of territories, the measured/true MFR error (mean and SD) and the
share called impaired. Noise-free phantoms give the systematic error (blur mixing the normal
neighbours into a defect territory, partial volume); noisy ones add the spread.

**Ceiling**: a territory with true MFR ``m`` measured by any method without bias and with the
relative spread ``s`` that the noise leaves (the SD of ``ln(measured / true)`` on noisy
phantoms, less the noise-free part in quadrature) is called impaired with probability
``Phi((ln 2.0 - ln m) / s)``. Averaged over the cohort's impaired territories this is the best
sensitivity any unbiased territory rule reaches on that cohort at that noise; the same for the
territories with true MFR within X % below 2.0 shows why borderline defects cannot all be found.

Usage::

    .venv/bin/python bench/pet_territory_sensitivity.py --n 24 --fwhm 9 --noise 0.2 --processes 2
    .venv/bin/python bench/pet_territory_sensitivity.py --n 8 --fwhm 2,9 --noise 0 --processes 2
    .venv/bin/python bench/pet_territory_sensitivity.py --summarise rows.jsonl
    .venv/bin/python bench/pet_territory_sensitivity.py --cohort-ceiling 100000   # no images, seconds

``--progress FILE`` appends every study's rows as JSON lines (a partial run can be summarised).

``--cross-segment on|off|both`` (default off): the cross-segment correction of
:mod:`node.quant.mbf` (geometric transfer matrix of the 17 segments, step 2b). ``both`` analyses
every phantom once with the correction and refits its uncorrected segment TACs
(:func:`uncorrected_fit`: the same TACs, input and fit as the analysis without the correction),
so the two settings are compared on the same phantoms and noise; every condition then also
reports the segment MBF and MFR spread (noise amplification) and the transfer matrix's
condition number.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
from scipy import stats

from node.quant.kinetics import KineticModel, SegmentFit, default_model, fit_segments, flow_reserve
from node.quant.mbf import StateMBF, _segment_operator, analyse_dynamic
from node.quant.segments import DEFAULT_GRID, TERRITORY_SEGMENTS
from node.synth.pet.phantom import PetPhantomSpec, draw_study_flows, make_pet_study

KINDS = ("LAD", "LCx", "RCA", "diffuse")
TERRITORIES = ("LAD", "LCx", "RCA")
THRESHOLD = 2.0
BANDS = (0.0, 1.6, 1.8, 1.9, 2.0, 2.2, 2.6, 10.0)


def uncorrected_fit(result: StateMBF, model: KineticModel, rv_spillover: bool = True) -> SegmentFit:
    """The segment fit that :func:`analyse_dynamic` makes without the cross-segment correction, from a result made
    with it: the band-mean polar TACs divided by ``rho`` (when the partial-volume correction was applied), their
    segment means, the same input, RV curve and fit (phantoms: decay-corrected volumes)."""
    polar = result.polar_tacs_bq_per_ml
    if polar is None:
        raise ValueError("the result carries no polar TACs")
    if result.partial_volume is not None:
        polar = polar / result.partial_volume.recovery_map[None]
    n_f = polar.shape[0]
    if polar.shape[1:] != DEFAULT_GRID.shape:
        raise ValueError(f"uncorrected_fit needs the default polar grid, got {polar.shape[1:]}")
    tacs = polar.reshape(n_f, -1) @ _segment_operator(DEFAULT_GRID)
    use_rv = bool(rv_spillover and result.rv_bq_per_ml is not None)
    return fit_segments(model, result.schedule, result.blood_bq_per_ml, tacs,
                        rv_bq_per_ml=result.rv_bq_per_ml if use_rv else None, rv_spillover=use_rv)


def _rows(seed: int, kind: str, fwhm: float, noise: float, study: Any, fits: list[SegmentFit], cross_segment: bool,
          condition_number: float, seconds: float) -> list[dict[str, Any]]:
    reserve = flow_reserve(*fits, impaired_below=THRESHOLD)
    truth_rest = study.rest.truth.segment_mbf_ml_per_min_per_g
    truth_stress = study.stress.truth.segment_mbf_ml_per_min_per_g
    return [{"seed": seed, "kind": kind, "fwhm_mm": fwhm, "noise": noise, "territory": t, "cross_segment": cross_segment,
             "defect": kind == t or kind == "diffuse", "true_mfr": float(study.truth.territory_mfr[t]),
             "mfr": float(reserve.territory_mfr[t]), "called": bool(reserve.territory_impaired[t]),
             "true_segment_mfr": [float(study.truth.segment_mfr[s - 1]) for s in TERRITORY_SEGMENTS[t]],
             "segment_mfr": [float(reserve.segment_mfr[s - 1]) for s in TERRITORY_SEGMENTS[t]],
             "segment_rest_ratio": [float(fits[0].segment_mbf_ml_per_min_per_g[s - 1] / truth_rest[s - 1])
                                    for s in TERRITORY_SEGMENTS[t]],
             "segment_stress_ratio": [float(fits[1].segment_mbf_ml_per_min_per_g[s - 1] / truth_stress[s - 1])
                                      for s in TERRITORY_SEGMENTS[t]],
             "global_rest_ratio": float(fits[0].global_mbf_ml_per_min_per_g / study.rest.truth.global_mbf_ml_per_min_per_g),
             "global_stress_ratio": float(fits[1].global_mbf_ml_per_min_per_g
                                          / study.stress.truth.global_mbf_ml_per_min_per_g),
             "global_mfr_ratio": float(reserve.global_mfr / study.truth.global_mfr),
             "condition_number": condition_number, "seconds": seconds} for t in TERRITORIES]


def run_study(args: tuple[int, int, float, float, float | None, str]) -> list[dict[str, Any]]:
    """One rest + stress study; one row per territory and cross-segment setting."""
    index, seed, fwhm, noise, analysis_fwhm, cross = args
    kind = KINDS[index % len(KINDS)]
    spec = PetPhantomSpec(fwhm_mm=fwhm, noise_level=noise)
    model = default_model(spec.tracer)
    t0 = time.perf_counter()
    study = make_pet_study(np.random.default_rng(seed), spec=spec, model=model,
                           defect_territory=kind if kind in TERRITORIES else None, diffuse=kind == "diffuse")
    results = [analyse_dynamic(s.volume, state=s.truth.state, model=model, rv_spillover=True,
                               fwhm_mm=analysis_fwhm if analysis_fwhm is not None else fwhm,
                               cross_segment_correction=cross != "off")
               for s in (study.rest, study.stress)]
    seconds = time.perf_counter() - t0
    conditions = [r.cross_segment.condition_number for r in results if r.cross_segment is not None]
    condition = float(np.mean(conditions)) if conditions else float("nan")
    rows = _rows(seed, kind, fwhm, noise, study, [r.fit for r in results], cross != "off", condition, seconds)
    if cross == "both":
        rows += _rows(seed, kind, fwhm, noise, study, [uncorrected_fit(r, model) for r in results], False,
                      float("nan"), seconds)
    return rows


def _band(m: float) -> str:
    for lo, hi in zip(BANDS[:-1], BANDS[1:]):
        if lo <= m < hi:
            return f"{lo:.1f}-{hi:.1f}" if hi < 10 else f">= {lo:.1f}"
    return "?"


def summarise(rows: list[dict[str, Any]]) -> None:
    """Markdown tables per condition, and the ceiling of an unbiased method."""
    for r in rows:
        r.setdefault("cross_segment", False)
    settings = sorted({r["cross_segment"] for r in rows})
    for cross in settings:
        if len(settings) > 1:
            print(f"\n## cross-segment correction {'on' if cross else 'off'}")
        _summarise_setting([r for r in rows if r["cross_segment"] == cross])
    if len(settings) > 1:
        _compare(rows)


def _compare(rows: list[dict[str, Any]]) -> None:
    """Paired comparison (same phantoms) of the settings: segment and global spread, territory calls."""
    print("\n### With against without the cross-segment correction (same phantoms)\n")
    print("| phantom blur, noise | setting | n studies | segment rest MBF: mean, SD of ln(meas/true) | stress | "
          "segment MFR | global rest / stress / MFR: mean, SD | territory sens / spec | cond(G) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for fwhm, noise in sorted({(r["fwhm_mm"], r["noise"]) for r in rows}):
        for cross in (False, True):
            sel = [r for r in rows if r["fwhm_mm"] == fwhm and r["noise"] == noise and r["cross_segment"] == cross]
            if not sel or "segment_rest_ratio" not in sel[0]:
                continue

            def ln(key: str, sel: list[dict[str, Any]] = sel) -> np.ndarray:
                return np.log(np.concatenate([r[key] for r in sel]))

            seg_mfr = np.log(np.concatenate([np.divide(r["segment_mfr"], r["true_segment_mfr"]) for r in sel]))
            studies = {r["seed"]: r for r in sel}.values()
            glob = {k: np.log([r[k] for r in studies]) for k in ("global_rest_ratio", "global_stress_ratio",
                                                                  "global_mfr_ratio")}
            imp = [r for r in sel if r["true_mfr"] < THRESHOLD]
            nor = [r for r in sel if r["true_mfr"] >= THRESHOLD]
            cond = [r["condition_number"] for r in studies if np.isfinite(r["condition_number"])]

            def ms(x: np.ndarray) -> str:
                return f"{100 * x.mean():+.1f} %, {100 * x.std(ddof=1) if x.size > 1 else 0:.1f} %"

            print(f"| {fwhm:g} mm, {noise:g} | {'on' if cross else 'off'} | {len(studies)} | {ms(ln('segment_rest_ratio'))} | "
                  f"{ms(ln('segment_stress_ratio'))} | {ms(seg_mfr)} | "
                  f"{ms(glob['global_rest_ratio'])} / {ms(glob['global_stress_ratio'])} / {ms(glob['global_mfr_ratio'])} | "
                  f"{np.mean([r['called'] for r in imp]) if imp else float('nan'):.3f} ({len(imp)}) / "
                  f"{np.mean([not r['called'] for r in nor]) if nor else float('nan'):.3f} ({len(nor)}) | "
                  f"{np.mean(cond) if cond else float('nan'):.2f} |")


def _summarise_setting(rows: list[dict[str, Any]]) -> None:
    conditions = sorted({(r["fwhm_mm"], r["noise"]) for r in rows})
    spread: dict[float, float] = {}
    bias_free: dict[float, float] = {}
    for fwhm, noise in conditions:
        sel = [r for r in rows if r["fwhm_mm"] == fwhm and r["noise"] == noise]
        n_studies = len({r["seed"] for r in sel})
        print(f"\n### phantom blur {fwhm:g} mm, noise {noise:g} ({n_studies} studies, {len(sel)} territories)\n")
        print("| true territory MFR | n | measured / true - 1: mean | SD | called impaired |")
        print("|---|---|---|---|---|")
        for lo, hi in zip(BANDS[:-1], BANDS[1:]):
            band = [r for r in sel if lo <= r["true_mfr"] < hi]
            if not band:
                continue
            err = np.array([r["mfr"] / r["true_mfr"] - 1 for r in band])
            called = np.mean([r["called"] for r in band])
            sd = f"{100 * err.std(ddof=1):.1f} %" if err.size > 1 else "-"
            print(f"| {_band(lo)} | {err.size} | {100 * err.mean():+.1f} % | {sd} | {100 * called:.0f} % |")
        log_err = np.array([math.log(r["mfr"] / r["true_mfr"]) for r in sel])
        impaired = [r for r in sel if r["true_mfr"] < THRESHOLD]
        normal = [r for r in sel if r["true_mfr"] >= THRESHOLD]
        sens = np.mean([r["called"] for r in impaired]) if impaired else float("nan")
        spec_ = np.mean([not r["called"] for r in normal]) if normal else float("nan")
        defects = np.array([math.log(r["mfr"] / r["true_mfr"]) for r in sel if r["defect"]])
        print(f"\nsensitivity {sens:.3f} ({sum(r['called'] for r in impaired)}/{len(impaired)}), specificity "
              f"{spec_:.3f} ({sum(not r['called'] for r in normal)}/{len(normal)}); ln(measured/true) over all "
              f"territories {log_err.mean():+.3f} +- {log_err.std(ddof=1):.3f}, over abnormal territories "
              f"{defects.mean():+.3f} +- {defects.std(ddof=1):.3f}")
        if noise == 0:
            bias_free[fwhm] = float(log_err.std(ddof=1))
        else:
            spread[fwhm] = float(log_err.std(ddof=1))
    print("\n### Ceiling of an unbiased territory rule (threshold 2.0)\n")
    print("| phantom blur | noise spread s (ln MFR) | true MFR 1.9-2.0 | 1.8-1.9 | 1.6-1.8 | < 1.6 | "
          "this run's impaired territories: measured / ceiling |")
    print("|---|---|---|---|---|---|---|")
    for fwhm, s_total in sorted(spread.items()):
        s = math.sqrt(max(s_total ** 2 - bias_free.get(fwhm, 0.0) ** 2, 1e-12))

        def p(m: float, s: float = s) -> float:
            return float(stats.norm.cdf((math.log(THRESHOLD) - math.log(m)) / s))

        bands = [np.mean([p(m) for m in np.linspace(lo, hi, 21)[:-1]]) for lo, hi in ((1.9, 2.0), (1.8, 1.9), (1.6, 1.8))]
        imp = [r for r in rows if r["fwhm_mm"] == fwhm and r["noise"] > 0 and r["true_mfr"] < THRESHOLD]
        ceiling = np.mean([p(r["true_mfr"]) for r in imp]) if imp else float("nan")
        measured = np.mean([r["called"] for r in imp]) if imp else float("nan")
        low = np.mean([p(m) for m in np.linspace(1.0, 1.6, 31)])
        print(f"| {fwhm:g} mm | {s:.3f} | {100 * bands[0]:.0f} % | {100 * bands[1]:.0f} % | {100 * bands[2]:.0f} % | "
              f"{100 * low:.0f} % | {measured:.3f} / {ceiling:.3f} (n = {len(imp)}) |")


def cohort_ceiling(n: int, seed: int, spreads: list[float]) -> None:
    """The acceptance cohort's true territory MFRs (no images: :func:`draw_study_flows` as the cohort draws them)
    and the sensitivity / specificity an unbiased rule with relative spread ``s`` reaches on them."""
    kinds = ("normal", "LAD", "LCx", "RCA", "diffuse")
    rng = np.random.default_rng(seed)
    true_mfr: list[float] = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        rest, stress, _ = draw_study_flows(rng, defect_territory=kind if kind in TERRITORIES else None,
                                           diffuse=kind == "diffuse")
        for t in TERRITORIES:
            idx = [s - 1 for s in TERRITORY_SEGMENTS[t]]
            true_mfr.append(float(stress[idx].mean() / rest[idx].mean()))
    m = np.array(true_mfr)
    impaired, normal = m[m < THRESHOLD], m[m >= THRESHOLD]
    print(f"\n### The acceptance cohort's territories ({n} studies drawn as bench/validate_pet_image.py draws them, "
          f"seed {seed}: {impaired.size} impaired, {normal.size} not)\n")
    for lo, hi in ((1.9, 2.0), (1.8, 1.9), (1.6, 1.8), (0.0, 1.6)):
        print(f"- impaired territories with true MFR {lo:.1f}-{hi:.1f}: {100 * np.mean((impaired >= lo) & (impaired < hi)):.1f} %")
    for lo, hi in ((2.0, 2.2), (2.2, 10.0)):
        print(f"- other territories with true MFR {lo:.1f}-{hi:.1f}: {100 * np.mean((normal >= lo) & (normal < hi)):.1f} %")
    print("\n| spread s of ln(measured MFR) | ceiling of sensitivity | of specificity |\n|---|---|---|")
    for spread in spreads:
        z = (math.log(THRESHOLD) - np.log(m)) / spread
        p = stats.norm.cdf(z)
        print(f"| {spread:.3f} | {p[m < THRESHOLD].mean():.3f} | {1 - p[m >= THRESHOLD].mean():.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=24, help="studies per condition (kinds cycle LAD, LCx, RCA, diffuse)")
    parser.add_argument("--fwhm", default="9", help="phantom blur(s), mm FWHM, comma-separated")
    parser.add_argument("--noise", default="0.2", help="noise level(s) of the phantom (0 = noise-free), comma-separated")
    parser.add_argument("--analysis-fwhm", type=float, default=None, help="analysis resolution (default: the phantom's)")
    parser.add_argument("--seed", type=int, default=310000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--progress", default=None, help="append rows as JSON lines to this file")
    parser.add_argument("--summarise", default=None, help="only summarise the rows of this JSON-lines file")
    parser.add_argument("--cohort-ceiling", type=int, default=0, metavar="N",
                        help="only the ceiling on N studies of the acceptance cohort's true MFRs (no images)")
    parser.add_argument("--spreads", default="0.03,0.05,0.07,0.086,0.10", help="spreads for --cohort-ceiling")
    parser.add_argument("--cross-segment", choices=("off", "on", "both"), default="off",
                        help="cross-segment correction of the analysis (both: with it, and the refit without it)")
    args = parser.parse_args()
    if args.cohort_ceiling:
        cohort_ceiling(args.cohort_ceiling, args.seed, [float(v) for v in args.spreads.split(",")])
        return
    if args.summarise:
        with open(args.summarise, encoding="utf-8") as handle:
            summarise([json.loads(line) for line in handle if line.strip()])
        return
    jobs = [(i, args.seed + i, float(f), float(nz), args.analysis_fwhm, args.cross_segment)
            for f in args.fwhm.split(",") for nz in args.noise.split(",") for i in range(args.n)]
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max(args.processes, 1)) as pool:
        for study_rows in pool.map(run_study, jobs):
            rows.extend(study_rows)
            if args.progress:
                with open(args.progress, "a", encoding="utf-8") as handle:
                    handle.writelines(json.dumps(r) + "\n" for r in study_rows)
    print(f"{len(jobs)} studies, seeds {args.seed}..{args.seed + args.n - 1} per condition, "
          f"{time.perf_counter() - t0:.0f} s wall, {args.processes} processes")
    summarise(rows)


if __name__ == "__main__":
    main()
