"""Build the synthetic CMR cohorts of issue 18 (node/synth/cmr/cohort.py) and print their summary (research use only).

    nice -n 15 python bench/cmr_cohort.py --cohorts large,small,test,external --processes 2
    python bench/cmr_cohort.py --summary             # summarise cohorts already written
    python bench/cmr_cohort.py --ef-check 40         # the node's cine EF error (sets EF_ERROR_MEAN/SD)

Each case: LGE + two-phase cine phantoms, the shipped cmr_segmentation model on both, the pipeline's
quantification, the network's basal frame and the event process (about 1.2-1.5 s of CPU per case).
Files go to ``default_cohort_dir()`` (``$CARDIONODE_CACHE`` or ``~/.cache/cardionode``) unless ``--out DIR``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from node.ai.metrics import auc
from node.synth.cmr.cohort import (
    COHORTS,
    LGE_CUTOFF_PCT,
    build_cmr_cohort,
    default_cohort_dir,
    event_rates,
    load_cmr_cohort,
    measure_cine_ef,
)

#: seeds of the EF check (disjoint from every cohort)
EF_CHECK_FIRST_SEED = 5_000_000


def summary(path: Path) -> dict[str, object]:
    """Population, measurement and event figures of one written cohort."""
    c = load_cmr_cohort(path)
    lge, meas = c.true_lge_pct.astype(float), c.measured_lge_pct.astype(float)
    ok = np.isfinite(meas)
    ef_ok = np.isfinite(c.measured_ef)
    rates = event_rates(lge, c.rv_involvement, c.septal, c.multifocal, c.true_ef, c.follow_up_y)
    person_years = float(np.sum(c.event_time_y))
    pos = lge > 0
    return {
        "cohort": str(c.meta["cohort"]), "n": len(c), "segmentation": f"{c.meta['segmentation_bundle']} "
        f"{c.meta['segmentation_version']}", "no_lge": round(float(np.mean(~pos)), 3),
        "lge_above_5_7": round(float(np.mean(c.lge_above)), 3), "mean_lge": round(float(lge.mean()), 2),
        "mean_lge_above": round(float(lge[c.lge_above == 1].mean()), 2) if c.lge_above.any() else None,
        "median_true_ef": round(float(np.median(c.true_ef)), 1),
        "measured_minus_true_lge": [round(float(np.mean(meas[ok] - lge[ok])), 2), round(float(np.std(meas[ok] - lge[ok])), 2)],
        "agreement_5_7": round(float(np.mean((meas[ok] > LGE_CUTOFF_PCT) == (lge[ok] > LGE_CUTOFF_PCT))), 3),
        "measured_minus_true_ef": [round(float(np.mean(c.measured_ef[ef_ok] - c.true_ef[ef_ok])), 2),
                                   round(float(np.std(c.measured_ef[ef_ok] - c.true_ef[ef_ok])), 2)],
        "measurement_failures": int((~ok).sum()), "ef_failures": int((~ef_ok).sum()),
        "segmentation_quality_ok": round(float(np.mean(c.segmentation_ok)), 3),
        "frame_ok": round(float(np.mean(c.frame_ok)), 3),
        "events": round(float(np.mean(c.event)), 3), "expected_events": round(rates["events"], 3),
        "observed_rate_without_lge_per_100py": round(100 * float(c.event[~pos].sum()) / float(c.event_time_y[~pos].sum()), 2),
        "observed_rate_with_lge_per_100py": round(100 * float(c.event[pos].sum()) / float(c.event_time_y[pos].sum()), 2),
        "person_years": round(person_years, 1),
        "expected_rate_without_lge_per_100py": round(100 * rates["rate_without_lge"], 2),
        "expected_rate_with_lge_per_100py": round(100 * rates["rate_with_lge"], 2),
        "oracle_auc_events": round(auc(c.event, c.event_probability), 3),
        "build": {k: c.meta.get(k) for k in ("build_wall_s", "build_cpu_s_main_process", "processes")},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cohorts", default="large,small,test,external", help="comma-separated names of COHORTS")
    parser.add_argument("--processes", type=int, default=1, help="worker processes (one thread each)")
    parser.add_argument("--out", type=Path, default=None, help="folder for the .npz files (default: the cache)")
    parser.add_argument("--n", type=int, default=None, help="override the cohort size (trial runs)")
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="cmr_segmentation bundle folder (default: the shipped one)")
    parser.add_argument("--summary", action="store_true", help="only summarise the written cohorts")
    parser.add_argument("--ef-check", type=int, default=0, metavar="N",
                        help="measure the node's cine EF on N phantoms (seeds 5,000,000+) and print its error")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.ef_check:
        rows = [measure_cine_ef(EF_CHECK_FIRST_SEED + i, "tiny") for i in range(args.ef_check)]
        err = np.array([m - t for t, m in rows])
        ok = np.isfinite(err)
        print(json.dumps({"n": args.ef_check, "failures": int((~ok).sum()), "mean": round(float(err[ok].mean()), 3),
                          "sd": round(float(err[ok].std(ddof=1)), 3), "min": round(float(err[ok].min()), 2),
                          "max": round(float(err[ok].max()), 2), "first_seed": EF_CHECK_FIRST_SEED}))
        return 0
    folder = args.out or default_cohort_dir()
    names = [n for n in args.cohorts.split(",") if n]
    for name in names:
        if name not in COHORTS:
            parser.error(f"unknown cohort {name!r}; known: {', '.join(COHORTS)}")
        path = folder / f"{name}.npz"
        if not args.summary:
            t0 = time.time()

            def progress(done: int, total: int, name: str = name, t0: float = t0) -> None:
                if done % 25 == 0 or done == total:
                    print(f"{name}: {done}/{total} cases, {time.time() - t0:.0f} s", file=sys.stderr, flush=True)

            build_cmr_cohort(name, n=args.n, out=path, processes=args.processes, model_dir=args.model_dir,
                             progress=progress)
        if path.is_file():
            print(json.dumps(summary(path)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
