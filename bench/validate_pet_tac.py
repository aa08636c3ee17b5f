"""Validation and timing of the PET kinetic models on the time-activity tier (issue 15).

``python bench/validate_pet_tac.py [--parts ABCD] [--replicates 300] [--seed S] [--tracers rb82,nh3,ucla,h2o]
[--sweep-tracers rb82] [--noise 0.05,0.10] [--other-noise 0.05] [--compare-weights] [--json out.json]
[--all-cores]``

Parts (the acceptance figures of reference note pet_mbf.md 8.3 and issue 15):

A. Noise-free recovery of F in {0.3, 0.5, 1, 2, 3, 4, 5} mL/min/g per model: with the exact
   (0.1 s) input and with only the LV frame means (the fitter's own input reconstruction), per
   frame schedule, max and 95th percentile of |error| over ``--shapes`` random input shapes;
   plus the bias of the reference note's two-stage global-TAC distribution volume.
B. Clinical noise (default 5 % relative SD on the last frame), ``--replicates`` rest/stress
   studies per tracer (each 17 segments): segment MBF and MFR mean bias, SD, 2.5/97.5
   percentiles, 95th percentile of |error|, share within the bounds (rest +-20 %, stress
   +-14 %, MFR +-25 %; at 10 % noise +-35 / +-25 %), global (mean of 17) figures, SE calibration
   (SD of error/SE), share of flagged fits. Bounds are Rb-82's; other tracers are informative.
   ``--compare-weights`` adds the same fits with the reference simulation's data weights.
C. Basis-function voxel method against the per-segment fit on noise-free TACs (max |difference|).
D. Timing on one core (pinned unless ``--all-cores``): a 17-segment fit (Rb-82 default model,
   with and without the territory/global TAC fits) against one ``np.convolve`` of the fine-grid
   input with an exponential kernel of the same length; a 128x128x47-voxel basis-function map
   (16 frames) against one ``np.convolve`` over the same number of samples and one pass over the
   data (``np.sum``), all in the same run.

Seeds are fresh unless ``--seed`` is given; they are printed (and stored in the JSON) so any
run can be repeated.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

if "--all-cores" not in sys.argv:  # single-threaded numerical libraries before numpy loads
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"

import numpy as np  # noqa: E402
from machine import pin_one_core  # noqa: E402  (bench/ is first on sys.path)

from node.imaging.volume import FrameSchedule  # noqa: E402
from node.quant import kinetics as K  # noqa: E402
from node.synth.pet import tac  # noqa: E402

FLOWS = np.array([0.3, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0])
MODELS = {"rb82": K.Rb82Lortie(), "nh3": K.NH3DeGrado(), "ucla": K.NH3UCLA(), "h2o": K.H2OIida()}
SHORT_FRAMES = {"nh3": ((24, 5.0), (4, 30.0), (4, 60.0)), "ucla": ((24, 5.0), (4, 30.0), (4, 60.0)),
                "h2o": ((30, 2.0), (3, 10.0), (3, 20.0), (4, 30.0))}
BOUNDS = {0.05: {"rest": 0.20, "stress": 0.14, "mfr": 0.25, "bias": 0.03},
          0.10: {"rest": 0.35, "stress": 0.25, "mfr": None, "bias": 0.05}}



def _rngs(seed: int, n: int) -> list[np.random.Generator]:
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(n)]


def _stats(errors: np.ndarray, bound: float | None) -> dict[str, float]:
    e = np.asarray(errors, dtype=float)
    out = {"n": int(e.size), "bias_pct": 100 * float(e.mean()), "sd_pct": 100 * float(e.std(ddof=1)),
           "p2_5_pct": 100 * float(np.percentile(e, 2.5)), "p97_5_pct": 100 * float(np.percentile(e, 97.5)),
           "abs95_pct": 100 * float(np.percentile(np.abs(e), 95))}
    if bound is not None:
        out["bound_pct"] = 100 * bound
        out["within_pct"] = 100 * float(np.mean(np.abs(e) <= bound))
    return out


def _row(label: str, s: dict[str, float]) -> str:
    within = f"{s['within_pct']:6.1f} % within +-{s['bound_pct']:.0f} %" if "within_pct" in s else ""
    return (f"  {label:28s} n={s['n']:5d}  bias {s['bias_pct']:+6.2f} %  SD {s['sd_pct']:5.2f} %  "
            f"95 % interval [{s['p2_5_pct']:+6.1f}, {s['p97_5_pct']:+6.1f}] %  |err|95 {s['abs95_pct']:5.1f} %  {within}")


# ------------------------------------------------------------------------------------------
def part_a(seed: int, shapes: int, tracers: list[str]) -> dict:
    print(f"\nA. noise-free recovery, F = {list(FLOWS)} mL/min/g, {shapes} random input shapes per row (seed {seed})")
    out: dict = {}
    rows = []
    for key in tracers:
        model = MODELS[key]
        variants = list(tac.FRAME_SCHEDULES[tac._tracer_key(model)])
        cases = [("exact input", "default", None, True)] + [(f"frame means, {v}", v, None, False) for v in variants]
        if key in SHORT_FRAMES:
            cases.append(("frame means, short first frames", None, FrameSchedule.from_durations(SHORT_FRAMES[key]), False))
        for label, variant, schedule, exact in cases:
            errs = []
            for rng in _rngs(seed, shapes):
                kwargs = {"schedule": schedule} if schedule is not None else {"schedule_variant": variant}
                study = tac.make_tac_study(model, np.resize(FLOWS, 17), rng, noise_level=0.0, **kwargs)
                extra = {"input_function": study.blood_input, "dt_s": 0.1} if exact else {}
                fit = K.fit_segments(model, study.schedule, study.blood_bq_per_ml, study.segment_tacs_bq_per_ml,
                                     fit_regional_tacs=False, **extra)
                e = np.abs(fit.segment_mbf_ml_per_min_per_g / study.truth.mbf_ml_per_min_per_g - 1)
                errs.append([e[np.isclose(study.truth.mbf_ml_per_min_per_g, f)].max() for f in FLOWS])
            errs = 100 * np.array(errs)
            mx, p95 = errs.max(axis=0), np.percentile(errs, 95, axis=0)
            out.setdefault(model.name, {})[label] = {"max_abs_pct": mx.tolist(), "p95_abs_pct": p95.tolist()}
            rows.append((model.name, label, mx, p95))
    print(f"  {'model':18s} {'input':34s} max |error| % at F = " + " ".join(f"{f:>5g}" for f in FLOWS))
    for name, label, mx, p95 in rows:
        print(f"  {name:18s} {label:34s} " + " ".join(f"{v:5.2f}" for v in mx)
              + f"   (p95 at F=5: {p95[-1]:.2f})")
    # distribution-volume variants, noise-free, exact input
    print("\n  Rb-82 one DV per study: joint fit ('study') vs the note's two-stage global-TAC DV ('global_tac')")
    dv_rows = {}
    flows = {"rest U(0.6,1.4)": lambda r: r.uniform(0.6, 1.4, 17), "stress U(1.5,4.5)": lambda r: r.uniform(1.5, 4.5, 17),
             "stress 3.0, LAD x0.4": lambda r: np.where(np.isin(np.arange(1, 18), (1, 2, 7, 8, 13, 14, 17)), 1.2, 3.0)}
    for label, draw in flows.items():
        for mode in ("study", "global_tac"):
            model = K.Rb82Lortie(distribution_volume=mode)
            errs, dv_errs = [], []
            for rng in _rngs(seed + 1, max(4, shapes // 2)):
                study = tac.make_tac_study(model, draw(rng), rng, noise_level=0.0)
                fit = K.fit_segments(model, study.schedule, study.blood_bq_per_ml, study.segment_tacs_bq_per_ml,
                                     input_function=study.blood_input, dt_s=0.1, fit_regional_tacs=False)
                errs.append(fit.segment_mbf_ml_per_min_per_g / study.truth.mbf_ml_per_min_per_g - 1)
                dv_errs.append(fit.distribution_volume_ml_per_g / study.truth.distribution_volume_ml_per_g - 1)
            e = 100 * np.concatenate(errs)
            dv_rows[f"{label} / {mode}"] = {"mbf_bias_pct": float(e.mean()), "mbf_max_abs_pct": float(np.abs(e).max()),
                                           "dv_bias_pct": 100 * float(np.mean(dv_errs))}
            print(f"    {label:22s} {mode:10s} MBF bias {e.mean():+6.2f} % (max |{np.abs(e).max():5.2f}| %), "
                  f"DV bias {100 * np.mean(dv_errs):+6.2f} %")
    out["distribution_volume"] = dv_rows
    return out


# ------------------------------------------------------------------------------------------
def part_b(seed: int, replicates: int, tracers: list[str], noises: list[float], other_noises: list[float],
           compare_weights: bool) -> dict:
    out: dict = {}
    for key in tracers:
        model = MODELS[key]
        for noise in (noises if key == "rb82" else other_noises):
            bounds = BOUNDS.get(noise, {"rest": None, "stress": None, "mfr": None, "bias": None})
            print(f"\nB. {model.name}: {replicates} rest/stress studies x 17 segments, {100 * noise:.0f} % noise on the "
                  f"last frame (seed {seed}; rest MBF U(0.6, 1.4), MFR U(2, 3.5), stress capped at 4.5 mL/min/g)")
            seg = {"rest": [], "stress": [], "mfr": []}
            glob = {"rest": [], "stress": [], "mfr": []}
            data_weights = {"rest": [], "stress": []}  # the reference's weights from the noisy data
            z, flagged, total = [], 0, 0
            t0 = time.perf_counter()
            for rng in _rngs(seed, replicates):
                rest, stress = tac.make_rest_stress(model, rng, noise_level=noise)
                fits = {}
                for state, study in (("rest", rest), ("stress", stress)):
                    fit = K.fit_segments(model, study.schedule, study.blood_bq_per_ml, study.segment_tacs_bq_per_ml,
                                         fit_regional_tacs=False)
                    fits[state] = fit
                    truth = study.truth.mbf_ml_per_min_per_g
                    seg[state].append(fit.segment_mbf_ml_per_min_per_g / truth - 1)
                    glob[state].append(fit.global_mbf_ml_per_min_per_g / truth.mean() - 1)
                    z.append((fit.segment_mbf_ml_per_min_per_g - truth) / fit.segment_mbf_se_ml_per_min_per_g)
                    flagged += sum(1 for f in fit.segment_flags if f)
                    total += 17
                    if compare_weights:
                        other = K.fit_segments(model, study.schedule, study.blood_bq_per_ml,
                                               study.segment_tacs_bq_per_ml, fit_regional_tacs=False,
                                               weights="counts_data")
                        data_weights[state].append(other.segment_mbf_ml_per_min_per_g / truth - 1)
                reserve = K.flow_reserve(fits["rest"], fits["stress"])
                true_mfr = stress.truth.mbf_ml_per_min_per_g / rest.truth.mbf_ml_per_min_per_g
                seg["mfr"].append(reserve.segment_mfr / true_mfr - 1)
                glob["mfr"].append(reserve.global_mfr / (stress.truth.mbf_ml_per_min_per_g.mean()
                                                         / rest.truth.mbf_ml_per_min_per_g.mean()) - 1)
            seconds = time.perf_counter() - t0
            result = {"noise": noise, "replicates": replicates, "seconds": seconds, "segment": {}, "global": {}}
            for cond in ("rest", "stress", "mfr"):
                s = _stats(np.concatenate(seg[cond]), bounds[cond])
                result["segment"][cond] = s
                print(_row(f"segment {'MBF ' + cond if cond != 'mfr' else 'MFR'}", s))
            for cond in ("rest", "stress", "mfr"):
                s = _stats(np.array(glob[cond]), None)
                result["global"][cond] = s
                print(_row(f"global {'MBF ' + cond if cond != 'mfr' else 'MFR'}", s))
            if compare_weights:
                result["data_weights"] = {}
                for cond in ("rest", "stress"):
                    s = _stats(np.concatenate(data_weights[cond]), bounds[cond])
                    result["data_weights"][cond] = s
                    print(_row(f"segment MBF {cond}, data weights", s))
            zz = np.concatenate(z)
            zz = zz[np.isfinite(zz)]
            result["z_sd"] = float(zz.std())
            result["flagged_pct"] = 100 * flagged / total
            checks = []
            if bounds["bias"] is not None:
                for cond in ("rest", "stress", "mfr"):
                    s = result["segment"][cond]
                    if bounds[cond] is not None:
                        checks.append(abs(s["bias_pct"]) <= 100 * bounds["bias"] and s["within_pct"] >= 95.0)
            result["meets_bounds"] = bool(all(checks)) if checks else None
            print(f"  SE calibration: SD of (error / SE) = {zz.std():.2f} (1 = calibrated); flagged segment fits "
                  f"{result['flagged_pct']:.2f} %; {seconds:.1f} s"
                  + ("" if result["meets_bounds"] is None else
                     f"; meets the {'' if key == 'rb82' else 'Rb-82 '}bounds: {result['meets_bounds']}"))
            out[f"{model.name}@{noise:g}"] = result
    return out


# ------------------------------------------------------------------------------------------
def part_c(seed: int, shapes: int, tracers: list[str]) -> dict:
    print(f"\nC. basis functions vs per-segment fit, noise-free, F = {list(FLOWS)}, {shapes} input shapes (seed {seed})")
    out: dict = {}
    for key in tracers:
        model = MODELS[key]
        region = K.Rb82Lortie(distribution_volume="region") if key == "rb82" else model
        worst = {"exact input": 0.0, "frame means": 0.0, "frame means, DV given (Rb-82)": 0.0}
        for rng in _rngs(seed, shapes):
            study = tac.make_tac_study(model, np.resize(FLOWS, 17), rng, noise_level=0.0)
            for label, extra in (("exact input", {"input_function": study.blood_input}), ("frame means", {})):
                nls = K.fit_segments(region, study.schedule, study.blood_bq_per_ml, study.segment_tacs_bq_per_ml,
                                     fit_regional_tacs=False, **extra).segment_mbf_ml_per_min_per_g
                bf = K.basis_function_map(region, study.schedule, study.blood_bq_per_ml, study.segment_tacs_bq_per_ml,
                                          **extra).mbf_ml_per_min_per_g
                worst[label] = max(worst[label], 100 * float(np.abs(bf / nls - 1).max()))
            if key == "rb82":
                fit = K.fit_segments(model, study.schedule, study.blood_bq_per_ml, study.segment_tacs_bq_per_ml,
                                     fit_regional_tacs=False)
                bf = K.basis_function_map(model, study.schedule, study.blood_bq_per_ml, study.segment_tacs_bq_per_ml,
                                          distribution_volume_ml_per_g=fit.distribution_volume_ml_per_g)
                worst["frame means, DV given (Rb-82)"] = max(worst["frame means, DV given (Rb-82)"], 100 * float(
                    np.abs(bf.mbf_ml_per_min_per_g / fit.segment_mbf_ml_per_min_per_g - 1).max()))
        if key != "rb82":
            worst.pop("frame means, DV given (Rb-82)")
        out[model.name] = worst
        print(f"  {model.name:18s} " + "; ".join(f"{k}: max |diff| {v:.3f} %" for k, v in worst.items()))
    return out


# ------------------------------------------------------------------------------------------
def part_d(seed: int, runs: int) -> dict:
    print(f"\nD. timing (median of {runs} runs, seed {seed})")
    rng = np.random.default_rng(seed)
    model = K.Rb82Lortie()
    study = tac.make_tac_study(model, rng.uniform(0.6, 1.4, 17), rng, noise_level=0.05)
    sched = study.schedule
    t_fine = K.fine_grid(sched.end_s[-1], 0.25)
    signal = rng.random(t_fine.size)
    kernel = np.exp(-0.003 * np.arange(t_fine.size))

    def timed(fn, n=runs):
        fn()  # warm-up
        values = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            values.append(time.perf_counter() - t0)
        return statistics.median(values)

    ref_conv = timed(lambda: np.convolve(signal, kernel), max(runs, 20))
    full = timed(lambda: K.fit_segments(model, sched, study.blood_bq_per_ml, study.segment_tacs_bq_per_ml))
    segs = timed(lambda: K.fit_segments(model, sched, study.blood_bq_per_ml, study.segment_tacs_bq_per_ml,
                                        fit_regional_tacs=False))
    region = timed(lambda: K.fit_segments(K.Rb82Lortie(distribution_volume="region"), sched, study.blood_bq_per_ml,
                                          study.segment_tacs_bq_per_ml, fit_regional_tacs=False))
    n_vox = 128 * 128 * 47
    pick = rng.integers(0, 17, n_vox)
    voxels = study.segment_tacs_bq_per_ml[:, pick] * rng.uniform(0.3, 1.2, n_vox)
    voxels += 0.05 * rng.standard_normal(voxels.shape) * voxels[-1]
    flat = voxels.reshape(-1)
    ref_pass = timed(lambda: flat.sum(), max(runs, 5))
    ref_conv_map = timed(lambda: np.convolve(flat, np.ones(sched.n_frames) / sched.n_frames, mode="same"), max(3, runs // 2))
    bf_runs = max(3, runs // 2)
    bf = timed(lambda: K.basis_function_map(model, sched, study.blood_bq_per_ml, voxels), bf_runs)
    mask_fraction = 0.05
    n_mask = int(mask_fraction * n_vox)
    bf_mask = timed(lambda: K.basis_function_map(model, sched, study.blood_bq_per_ml, voxels[:, :n_mask]), bf_runs)
    out = {
        "fine_grid_samples": int(t_fine.size),
        "reference_np_convolve_fine_grid_s": ref_conv,
        "fit_segments_with_regional_s": full,
        "fit_segments_17_only_s": segs,
        "fit_segments_17_k2_per_region_s": region,
        "map_voxels": n_vox, "map_frames": int(sched.n_frames),
        "reference_sum_pass_s": ref_pass,
        "reference_np_convolve_same_samples_s": ref_conv_map,
        "basis_function_map_s": bf,
        "basis_function_map_5pct_mask_s": bf_mask,
    }
    print(f"  reference: np.convolve of {t_fine.size} x {t_fine.size} samples      {1e3 * ref_conv:9.3f} ms")
    print(f"  fit_segments, 17 segments + 3 territories + global, DV per study {1e3 * full:9.1f} ms  x{full / ref_conv:8.0f}")
    print(f"  fit_segments, 17 segments only, DV per study               {1e3 * segs:9.1f} ms  x{segs / ref_conv:8.0f}")
    print(f"  fit_segments, 17 segments only, k2 per segment             {1e3 * region:9.1f} ms  x{region / ref_conv:8.0f}")
    print(f"  reference: one pass (sum) over {sched.n_frames} x {n_vox} samples       {1e3 * ref_pass:9.1f} ms")
    print(f"  reference: np.convolve over the same {flat.size} samples    {1e3 * ref_conv_map:9.1f} ms")
    print(f"  basis-function map, 128x128x47 voxels x {sched.n_frames} frames     {1e3 * bf:9.1f} ms  "
          f"x{bf / ref_conv_map:6.1f} convolve, x{bf / ref_pass:6.0f} sum")
    print(f"  basis-function map, 5 % of the voxels (a myocardial mask) {1e3 * bf_mask:9.1f} ms")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="ABCD")
    parser.add_argument("--replicates", type=int, default=300)
    parser.add_argument("--shapes", type=int, default=40, help="random input shapes for parts A and C")
    parser.add_argument("--runs", type=int, default=9, help="timing runs (part D)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--tracers", default="rb82,nh3,ucla,h2o")
    parser.add_argument("--sweep-tracers", default="rb82", help="tracers of part B (slow; default Rb-82)")
    parser.add_argument("--noise", default="0.05,0.10", help="noise levels of the Rb-82 sweep")
    parser.add_argument("--other-noise", default="0.05", help="noise levels of the other tracers' sweeps")
    parser.add_argument("--compare-weights", action="store_true",
                        help="part B: also fit every study with the reference's data weights (twice the time)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--all-cores", action="store_true")
    args = parser.parse_args()
    pin = "all cores" if args.all_cores else pin_one_core()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    print(f"machine: {os.cpu_count()} cores ({pin}); numpy {np.__version__}; seed {seed}")
    tracers = [t.strip() for t in args.tracers.split(",") if t.strip()]
    sweep = [t.strip() for t in args.sweep_tracers.split(",") if t.strip()]
    noises = [float(x) for x in args.noise.split(",")]
    report: dict = {"seed": seed, "command": " ".join(sys.argv), "pin": pin}
    t0 = time.perf_counter()
    if "A" in args.parts:
        report["A"] = part_a(seed, args.shapes, tracers)
    if "B" in args.parts:
        report["B"] = part_b(seed, args.replicates, sweep, noises, [float(x) for x in args.other_noise.split(",")],
                             args.compare_weights)
    if "C" in args.parts:
        report["C"] = part_c(seed, max(3, args.shapes // 4), tracers)
    if "D" in args.parts:
        report["D"] = part_d(seed, args.runs)
    report["seconds"] = time.perf_counter() - t0
    print(f"\ntotal {report['seconds']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
        print(f"JSON written to {args.json}")


if __name__ == "__main__":
    main()
