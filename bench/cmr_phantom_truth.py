"""Sampled versus continuous truth of the CMR phantoms, and the phantom's speed.

``python bench/cmr_phantom_truth.py [--seeds 30] [--first-seed 100] [--phases 20]``

For each seed: a random heart on a 128 x 128 grid of 1.5 mm pixels, 8 mm slices with 2 mm gaps and
a random base position (:func:`node.synth.cmr.phantom.draw_anatomy`), a cine phantom and an LGE
phantom of the pattern ``PATTERNS[seed % 7]``. Prints, as mean +- SD (range):

* sampled truth (partial-volume fractions, Simpson summation) minus continuous truth: EF (points),
  EDV (%), LV myocardium (%), scar (%LV);
* the same for binary masks (fraction >= 0.5) instead of fractions: EF and EDV (the discretisation
  that makes tests compare with sampled truth, reference ``cmr_lge.md`` section 4.4);

then the median time of one 12-slice 256 x 256 LGE phantom with its truth (5 runs; wall and CPU of
this process, which other processes on a loaded machine disturb less).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from node.synth.cmr.phantom import PATTERNS, cine_phantom, draw_anatomy, draw_pattern, lge_phantom


def _line(name: str, values: list[float]) -> str:
    x = np.asarray(values)
    return f"{name:28s} {x.mean():+.2f} +- {x.std(ddof=1):.2f} ({x.min():+.2f} .. {x.max():+.2f}), n = {x.size}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=30)
    parser.add_argument("--first-seed", type=int, default=100)
    parser.add_argument("--phases", type=int, default=20)
    args = parser.parse_args()
    rows: dict[str, list[float]] = {k: [] for k in ("EF points", "EDV %", "LV myocardium %", "scar %LV",
                                                    "binary EF points", "binary EDV %")}
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        anatomy = draw_anatomy(np.random.default_rng(seed), matrix=(128, 128), pixel_mm=1.5)
        cine = cine_phantom(anatomy, np.random.default_rng(20_000 + seed), n_phases=args.phases).truth
        rng = np.random.default_rng(10_000 + seed)
        lge = lge_phantom(anatomy, draw_pattern(PATTERNS[seed % len(PATTERNS)], rng), rng).truth
        rows["EF points"].append(cine.ef_pct_sampled - cine.ef_pct)
        rows["EDV %"].append(100.0 * (cine.edv_ml_sampled / cine.edv_ml - 1.0))
        rows["LV myocardium %"].append(100.0 * (lge.myocardium_ml_sampled / lge.myocardium_ml_continuous - 1.0))
        if lge.scar_ml_continuous > 0:
            rows["scar %LV"].append(lge.scar_pct_sampled - lge.scar_pct_continuous)
        st = anatomy.stack
        voxel_ml = st.pixel_mm**2 * st.spacing_mm / 1000.0
        ed, es = cine.blood_mask_ed.sum() * voxel_ml, cine.blood_mask_es.sum() * voxel_ml
        rows["binary EF points"].append(100.0 * (ed - es) / ed - cine.ef_pct)
        rows["binary EDV %"].append(100.0 * (ed / cine.edv_ml - 1.0))
    print("sampled minus continuous truth (8 mm slices, 2 mm gap, random base position)")
    for name, values in rows.items():
        if values:
            print(_line(name, values))
    rng = np.random.default_rng(1)
    anatomy = draw_anatomy(rng, n_slices=12)
    pattern = draw_pattern("sarcoid_multifocal_rv", rng)
    times, cpu = [], []
    for _ in range(5):
        start, start_cpu = time.perf_counter(), time.process_time()
        lge_phantom(anatomy, pattern, rng)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    print(f"one 12-slice 256 x 256 LGE phantom with truth: median {float(np.median(times)):.2f} s wall, "
          f"{float(np.median(cpu)):.2f} s CPU of this process")


if __name__ == "__main__":
    main()
