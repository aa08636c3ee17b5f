"""Where the CAD model's heat map points: hit rates per defect territory and size (docs/validation.md).

    .venv/bin/python bench/validate_ai_localisation.py [--cases 3200] [--seed 2026] [--phantom-seeds 0] [--json out.json]

Test cohort: the ``test`` split of the synthetic CAD cohort (``node.synth.spect.cohort.make_cad_cohort``,
seed 2026 = the shipped ``cad_polar`` bundle's seed; the first 800 cases are the bundle's own held-out test
cases, the default draws 3200 of that stream to have enough large defects),
scored against the normal limits of the generator's ``normal_db`` split as in training. Only patients
with exactly one diseased territory (latent truth, not the noisy label) and a visible defect (true
defect burden >= 2 % of the LV) are used, binned by defect size (true TPD 2-5 %, 5-10 %, >= 10 %).

For each case the heat map the node would report (``node.ai.inference.predict_studies``, the
``gradcam_cad`` MapImage) is checked two ways against the defect's AHA territory
(``node.quant.segments.TERRITORY_SEGMENTS``):

* **maximum**: the cell of highest attention lies in the territory;
* **top 10 %**: at least half of the attention mass of the 10 % highest cells lies in the territory.

A miss is the complement. With ``--phantom-seeds N`` the same is measured on the node's own maps of
full-volume phantoms (``node.synth.spect.demo.demo_spec``, the ``cardionode demo`` studies: 50 %
reversible LAD, LCx or RCA defect, Tc-99m, sex M on odd seeds) through the SPECT pipeline's ``analyse``
and ``node.ai.predict_spect``; there the maximum is also checked against the measured stress defect
(cells below the node's normal limits, ``deficit_map > 0``, inside the territory). Synthetic data only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable

import numpy as np

from node.ai.inference import StudyInputs, predict_studies
from node.quant.segments import DEFAULT_GRID, TERRITORIES, TERRITORY_SEGMENTS
from node.synth.spect import cohort as cohorts

#: (label, lowest true TPD %, highest true TPD %) of the defect-size bins
SIZE_BINS: tuple[tuple[str, float, float], ...] = (("small 2-5 %", 2.0, 5.0), ("medium 5-10 %", 5.0, 10.0),
                                                   ("large >= 10 %", 10.0, float("inf")))
TOP_FRACTION = 0.10


def territory_mask(territory: str) -> np.ndarray:
    """Boolean ``[n_u, n_psi]`` mask of an AHA territory on the canonical grid."""
    return np.isin(DEFAULT_GRID.segment_ids(), TERRITORY_SEGMENTS[territory])


def heat_hits(cam: np.ndarray, mask: np.ndarray) -> tuple[bool, bool]:
    """``(maximum in mask, >= half of the top-10 % cells' attention mass in mask)`` of one heat map ``[n_u, n_psi]``."""
    cam = np.asarray(cam, dtype=float)
    peak = np.unravel_index(int(np.argmax(cam)), cam.shape)
    cut = np.quantile(cam, 1.0 - TOP_FRACTION)
    top = cam >= cut
    mass = cam[top].sum()
    share = cam[top & mask].sum() / mass if mass > 0 else 0.0
    return bool(mask[peak]), bool(share >= 0.5)


def cohort_cases(n: int, seed: int) -> tuple[list[StudyInputs], list[str], list[float]]:
    """StudyInputs, defect territory and true TPD (%) of the single-territory visible defects of a test cohort."""
    c = cohorts.make_cad_cohort(n, "test", seed)
    limits = cohorts.normal_limits(seed, n_per_group=120)
    deficit, severity, _ = cohorts.quantitative_maps(c.maps["stress_perfusion"], c.tracer, c.features["sex_male"], limits)
    studies, territories, sizes = [], [], []
    for i in range(len(c)):
        diseased = [t for t in TERRITORIES if c.truth[f"cad_{t.lower()}"][i] == 1]
        if len(diseased) != 1 or c.truth["true_tpd"][i] < SIZE_BINS[0][1]:
            continue
        studies.append(StudyInputs(
            key=c.case_ids[i], tracer=str(c.tracer[i]), age=float(c.features["age"][i]), sex_male=float(c.features["sex_male"][i]),
            stress_perfusion=c.maps["stress_perfusion"][i], stress_motion=c.maps["stress_motion"][i],
            stress_thickening=c.maps["stress_thickening"][i], stress_deficit=deficit[i], stress_severity=severity[i],
            edv=float(c.features["edv"][i]), esv=float(c.features["esv"][i])))
        territories.append(diseased[0])
        sizes.append(float(c.truth["true_tpd"][i]))
    return studies, territories, sizes


def _size_bin(tpd: float) -> str:
    return next(label for label, lo, hi in SIZE_BINS if lo <= tpd < hi)


def _rate(hits: Iterable[bool]) -> str:
    values = list(hits)
    return f"{sum(values)}/{len(values)} ({100.0 * sum(values) / len(values):.0f} %)" if values else "-"


def measure_cohort(n: int, seed: int) -> list[dict]:
    """One row per case: territory, size bin, p(CAD), hit by maximum and by top-10 % mass."""
    studies, territories, sizes = cohort_cases(n, seed)
    preds = predict_studies(studies, models=("cad_polar",), batch_independent=False)
    rows = []
    for study, territory, size, pred in zip(studies, territories, sizes, preds):
        cam = next(im.values for im in pred.images if im.key == "gradcam_cad")
        by_max, by_top = heat_hits(cam, territory_mask(territory))
        rows.append({"case": study.key, "territory": territory, "size": _size_bin(size), "true_tpd": size,
                     "p_cad": pred.probabilities["cad"], "hit_max": by_max, "hit_top10": by_top})
    return rows


def measure_phantoms(seeds: Iterable[int], territories: Iterable[str] = TERRITORIES) -> list[dict]:
    """One row per phantom study (one per defect territory and seed) through the SPECT pipeline."""
    import node.ai as ai
    from node.pipelines.spect_mpi import SpectMpiPipeline
    from node.synth.spect import phantom as ph
    from node.synth.spect.demo import demo_spec
    from node.synth.spect.study import build_study_datasets

    pipe = SpectMpiPipeline()
    rows = []
    for seed in seeds:
        sex = "M" if seed % 2 else "F"
        for territory in territories:
            study = ph.make_study(demo_spec(territory, "tc99m_sestamibi", sex=sex), np.random.default_rng(seed), orientation="short_axis")
            datasets, _ = build_study_datasets(study)
            result = pipe.analyse(datasets)
            groups, images, _ = ai.predict_spect(result)
            cam = next(im.values for im in images if im.key == "gradcam_cad")
            mask = territory_mask(territory)
            by_max, by_top = heat_hits(cam, mask)
            scores = result.stress.scores if result.stress is not None else None
            if scores is None:
                raise RuntimeError(f"seed {seed} {territory}: the pipeline scored no stress map")
            measured = scores.deficit_map > 0
            peak = np.unravel_index(int(np.argmax(cam)), cam.shape)
            p = next(g.measurements[0].value for g in groups if g.finding == "obstructive_cad" and g.site == "heart")
            rows.append({"seed": seed, "sex": sex, "territory": territory, "p_cad": float(p), "hit_max": by_max,
                         "hit_top10": by_top, "max_on_measured_defect": bool((measured & mask)[peak]),
                         "max_segment": int(DEFAULT_GRID.segment_ids()[peak])})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--cases", type=int, default=3200, help="size of the test cohort drawn (default 3200; its first 800 are the bundle's test cases)")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--phantom-seeds", type=int, default=0, help="also N phantom seeds through the pipeline (slow)")
    parser.add_argument("--first-phantom-seed", type=int, default=3000)
    parser.add_argument("--phantom-defects", nargs="+", default=list(TERRITORIES), choices=TERRITORIES,
                        help="phantom defect territories (default: all three)")
    parser.add_argument("--json", help="write every case's row as JSON to this path")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    rows = measure_cohort(args.cases, args.seed)
    print(f"# validate_ai_localisation: cad_polar heat map, test cohort seed {args.seed}, {args.cases} drawn, "
          f"{len(rows)} single-territory defects (synthetic data only; {time.perf_counter() - t0:.0f} s)")
    print("| defect | n | maximum in territory | top-10 % mass in territory |")
    print("|---|---|---|---|")
    groups: list[tuple[str, list[dict]]] = [(t, [r for r in rows if r["territory"] == t]) for t in TERRITORIES]
    groups += [(label, [r for r in rows if r["size"] == label]) for label, _, _ in SIZE_BINS]
    groups.append(("all", rows))
    for label, sel in groups:
        print(f"| {label} | {len(sel)} | {_rate(r['hit_max'] for r in sel)} | {_rate(r['hit_top10'] for r in sel)} |")
    phantoms: list[dict] = []
    if args.phantom_seeds:
        seeds = range(args.first_phantom_seed, args.first_phantom_seed + args.phantom_seeds)
        phantoms = measure_phantoms(seeds, args.phantom_defects)
        print(f"\n# full-volume phantoms through the pipeline, seeds {seeds.start}..{seeds.stop - 1}")
        print("| defect | n | maximum in territory | top-10 % mass in territory | maximum on the measured defect | "
              "AHA segment of the maximum (count) |")
        print("|---|---|---|---|---|---|")
        for t in args.phantom_defects:
            sel = [r for r in phantoms if r["territory"] == t]
            segments = np.bincount([r["max_segment"] for r in sel], minlength=18)
            where = ", ".join(f"{k}: {n}" for k, n in enumerate(segments) if n)
            print(f"| {t} | {len(sel)} | {_rate(r['hit_max'] for r in sel)} | {_rate(r['hit_top10'] for r in sel)} | "
                  f"{_rate(r['max_on_measured_defect'] for r in sel)} | {where} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"cohort": rows, "phantoms": phantoms}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
