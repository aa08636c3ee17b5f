"""Hit and false-flag rates of the quality flag ``rv_peak_after_lv`` (issue 15, reference note 7.2).

Image tier: ``--n`` Rb-82 rest phantoms per RV lead (:func:`node.synth.pet.phantom.make_pet_series`
with ``rv_lead_s``; negative = the RV curve after the LV's), seeds ``--seed`` + i, analysed by
:func:`node.quant.mbf.analyse_dynamic`; prints the measured delay (RV half-rise time minus the LV
input's, :func:`node.quant.mbf.half_rise_time_s`), the share of RV-region voxels in the true RV
blood pool and the share flagged. TAC tier: ``--n-tac`` noisy curve pairs per lead and Rb-82
schedule (:func:`node.synth.pet.tac.make_tac_study`, 5 % noise on the tissue, half on the blood).

Usage::

    .venv/bin/python bench/pet_rv_flag.py --n 40 --leads 4,2,0,-5,-10,-15 --n-tac 300
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from node.quant.kinetics import Rb82Lortie
from node.quant.mbf import analyse_dynamic, half_rise_time_s
from node.synth.pet import phantom as P
from node.synth.pet.tac import make_tac_study

MODEL = Rb82Lortie()
RV_BLOOD = P.LABELS.index("rv_blood")


def image_tier(n: int, leads: list[float], seed: int) -> None:
    print("| RV lead (s; < 0: after the LV) | n | RV - LV half-rise (s), mean +- SD | RV region in RV blood (min) | flagged |")
    print("|---|---|---|---|---|")
    for lead in leads:
        delays, purity, flagged = [], [], []
        for i in range(n):
            rng = np.random.default_rng(seed + i)
            series = P.make_pet_series(rng.uniform(0.8, 1.2, 17), rng, state="rest", rv_lead_s=lead)
            result = analyse_dynamic(series.volume, state="rest", model=MODEL, rv_spillover=True)
            flagged.append(any(f.code == "rv_peak_after_lv" for f in result.flags))
            if result.rv_bq_per_ml is None or result.rv_region is None:
                continue
            schedule = series.truth.schedule
            delays.append(half_rise_time_s(schedule, result.rv_bq_per_ml) - half_rise_time_s(schedule, result.blood_bq_per_ml))
            purity.append(float(np.mean(series.truth.labels[tuple(result.rv_region.voxel_index.T)] == RV_BLOOD)))
        d = np.array(delays)
        print(f"| {lead:+g} | {n} | {d.mean():+.1f} +- {d.std(ddof=1):.1f} | {min(purity):.2f} | "
              f"{sum(flagged)}/{n} |", flush=True)


def tac_tier(n: int, leads: list[float], seed: int) -> None:
    rng = np.random.default_rng(seed)
    print("\n| RV lead (s) | " + " | ".join(f"{v}: flagged" for v in ("default", "short", "fast")) + " |")
    print("|---|---|---|---|")
    for lead in leads:
        shares = []
        for variant in ("default", "short", "fast"):
            hits = 0
            for _ in range(n):
                study = make_tac_study(MODEL, np.ones(17), rng, rv_lead_s=lead, schedule_variant=variant, noise_level=0.05)
                hits += half_rise_time_s(study.schedule, study.rv_bq_per_ml) > half_rise_time_s(study.schedule,
                                                                                                 study.blood_bq_per_ml)
            shares.append(f"{100 * hits / n:.1f} %")
        print(f"| {lead:+g} | " + " | ".join(shares) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=40, help="image phantoms per lead (0: skip)")
    parser.add_argument("--n-tac", type=int, default=300, help="TAC-tier curve pairs per lead and schedule (0: skip)")
    parser.add_argument("--leads", default="4,2,0,-5,-10,-15")
    parser.add_argument("--seed", type=int, default=1000)
    args = parser.parse_args()
    leads = [float(v) for v in args.leads.split(",")]
    t0 = time.perf_counter()
    if args.n:
        image_tier(args.n, leads, args.seed)
    if args.n_tac:
        tac_tier(args.n_tac, leads, args.seed)
    print(f"\n{time.perf_counter() - t0:.0f} s wall")


if __name__ == "__main__":
    main()
