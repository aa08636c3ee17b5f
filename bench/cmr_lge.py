"""CMR quantification against phantom truth (issue 17 items 3-5): AHA segments, LGE with truth contours, cine function.

Phantoms: :mod:`node.synth.cmr.phantom` on the small grid the tests use (128 x 128 pixels of
1.5 mm, 8 mm slices, 2 mm gap; the same seeds as ``tests/support/cmr.py``: anatomy
``default_rng(seed)``, LGE ``default_rng(10000 + seed)``, cine ``default_rng(20000 + seed)``).
Errors are measured - sampled truth (reference note ``cmr_lge.md`` 0.7 and 4.4).

* ``segments``: share of truth-myocardium voxels (fraction >= 0.5) whose segment from
  :func:`node.quant.sax_segments.sax_segments` (truth LV masks + RV mask) equals the truth segment.
* ``lge``: per SNR, a cohort cycling over the seven patterns of
  :data:`node.synth.cmr.phantom.PATTERNS`; :func:`node.quant.lge.quantify_lge` on the magnitude
  image with the truth masks; %LV error of 5SD + rim (primary), 2/3/6SD and FWHM; agreement on
  the 5.7 % cut-off; scar-free and fat-decoy mean.
* ``patterns``: pattern labels, multifocal and RV-insertion flags of the scarred patterns (SNR 20).
* ``function``: :func:`node.quant.cmr_function.lv_function`, blood = partial-volume occupancy
  :func:`node.quant.cmr_function.blood_fraction` from the cine pixels inside a contour around every
  pixel with >= 10 % blood; myocardium = truth fractions (``mass_from``: also >= 0.5 masks).

Usage::

    .venv/bin/python bench/cmr_lge.py segments --n 60 --first-seed 100
    .venv/bin/python bench/cmr_lge.py lge --n 63 --snr 15,20,30 --first-seed 1000 [--psir]
    .venv/bin/python bench/cmr_lge.py patterns --n 20 --first-seed 4000
    .venv/bin/python bench/cmr_lge.py function --n 60 --first-seed 2000
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from node.quant.cmr_function import blood_fraction, lv_function
from node.quant.lge import LGE_CUTOFF_PCT_LV, quantify_lge
from node.quant.sax_segments import sax_segments
from node.synth.cmr.phantom import PATTERNS, Sampling, cine_phantom, draw_anatomy, draw_pattern, lge_phantom


def _anatomy(seed: int):  # type: ignore[no-untyped-def]
    return draw_anatomy(np.random.default_rng(seed), matrix=(128, 128), pixel_mm=1.5, gap_mm=2.0, thickness_mm=8.0)


def _rv(fr) -> np.ndarray:  # type: ignore[no-untyped-def]
    return (fr.of("rv_blood") + fr.of("rv_wall") + fr.of("rv_scar")) >= 0.5


def segments(n: int, first: int) -> None:
    hits = total = 0
    per: list[float] = []
    angle_err: list[float] = []
    for seed in range(first, first + n):
        rng = np.random.default_rng(10_000 + seed)
        lge = lge_phantom(_anatomy(seed), draw_pattern("scar_free", rng), rng)
        fr, tr, st = lge.fractions, lge.truth, lge.anatomy.stack
        s = sax_segments(fr.of("lv_blood") >= 0.5, tr.myocardium_mask, _rv(fr), (st.pixel_mm, st.pixel_mm))
        m = tr.myocardium_mask & (tr.segments > 0)
        h = int(np.sum(s.segments[m] == tr.segments[m]))
        hits, total = hits + h, total + int(m.sum())
        per.append(h / m.sum())
        d = np.radians(s.psi_deg - fr.aha_psi_deg)
        for k in np.flatnonzero(tr.myocardium_mask.any(axis=(1, 2))):
            mk = tr.myocardium_mask[k]
            angle_err.append(abs(np.degrees(np.angle(np.mean(np.exp(1j * d[k][mk]))))))
    p = np.array(per)
    a = np.array(angle_err)
    print(f"segments: slice angle error (circular mean of psi - truth psi over the slice's myocardium): "
          f"median {np.median(a):.1f} deg, 95th pct {np.percentile(a, 95):.1f} deg, slices <= 10 deg: {np.mean(a <= 10):.3f} "
          f"(n={a.size})")
    print(f"segments: n={n} seeds {first}-{first + n - 1}: pooled share {hits / total:.4f}; per phantom mean {p.mean():.4f}, "
          f"min {p.min():.4f}, 5th pct {np.percentile(p, 5):.4f}; phantoms >= 0.95: {np.mean(p >= 0.95):.3f}")


def lge(n: int, first: int, snrs: list[float], psir: bool = False) -> None:
    names = ["5SD", "2SD", "3SD", "6SD"] + ([] if psir else ["FWHM"])
    for snr in snrs:
        t0 = time.perf_counter()
        truth, meas, kinds, levels = [], [], [], []
        for i, seed in enumerate(range(first, first + n)):
            kind = PATTERNS[i % len(PATTERNS)]
            rng = np.random.default_rng(10_000 + seed)
            img = lge_phantom(_anatomy(seed), draw_pattern(kind, rng), rng, snr_scar=snr)
            fr, tr, st = img.fractions, img.truth, img.anatomy.stack
            blood = fr.of("lv_blood") >= 0.5
            seg = sax_segments(blood, tr.myocardium_mask, _rv(fr), (st.pixel_mm, st.pixel_mm))
            r = quantify_lge(img.psir if psir else img.magnitude, tr.myocardium_mask, blood, seg,
                             (st.pixel_mm, st.pixel_mm), st.z_centres_mm, psir=psir)
            by = {k.split("+")[0]: v.lge_pct_lv for k, v in r.secondary.items()}
            meas.append([r.primary.lge_pct_lv] + [by[k] for k in names[1:]])
            contrast = abs(tr.signal_truth["scar"]) - r.remote.mean
            levels.append((r.primary.threshold - r.remote.mean) / contrast)
            truth.append(tr.scar_pct_sampled)
            kinds.append(kind)
        t = np.array(truth)
        m = np.array(meas)
        e = m - t[:, None]
        free = np.isin(kinds, ("scar_free", "fat_pad_decoy"))
        print(f"lge {'PSIR' if psir else 'magnitude'} SNR {snr:g}: n={n} seeds {first}-{first + n - 1} ({time.perf_counter() - t0:.0f} s); 5SD threshold "
              f"above remote = {np.median(levels):.2f} of the dense-scar contrast (median)")
        for j, name in enumerate(names):
            lo, hi = np.percentile(e[:, j], [2.5, 97.5])
            print(f"  {name:5s} bias {e[:, j].mean():+.2f} SD {e[:, j].std(ddof=1):.2f} %LV; 95 % of errors in "
                  f"[{lo:+.2f}, {hi:+.2f}]; |error| <= 2.5: {np.mean(np.abs(e[:, j]) <= 2.5):.3f}; scar-free mean "
                  f"{m[free, j].mean():.2f}; agreement > {LGE_CUTOFF_PCT_LV} %: "
                  f"{np.mean((m[:, j] > LGE_CUTOFF_PCT_LV) == (t > LGE_CUTOFF_PCT_LV)):.3f}")
        for kind in PATTERNS:
            sel = np.array(kinds) == kind
            print(f"    {kind:26s} n={sel.sum():2d} truth {t[sel].mean():5.2f} %LV  5SD bias {e[sel, 0].mean():+.2f} "
                  f"SD {e[sel, 0].std(ddof=1):.2f}" + ("" if psir else f"  FWHM bias {e[sel, 4].mean():+.2f}"))


def patterns(n: int, first: int) -> None:
    for kind in PATTERNS:
        if kind in ("scar_free", "fat_pad_decoy"):
            continue
        counts: dict[tuple[str, ...], int] = {}
        multifocal = rv_insertion = 0
        truth_pattern = None
        for seed in range(first, first + n):
            rng = np.random.default_rng(10_000 + seed)
            img = lge_phantom(_anatomy(seed), draw_pattern(kind, rng), rng)
            fr, tr, st = img.fractions, img.truth, img.anatomy.stack
            blood = fr.of("lv_blood") >= 0.5
            seg = sax_segments(blood, tr.myocardium_mask, _rv(fr), (st.pixel_mm, st.pixel_mm))
            r = quantify_lge(img.magnitude, tr.myocardium_mask, blood, seg, (st.pixel_mm, st.pixel_mm), st.z_centres_mm)
            counts[r.pattern.labels] = counts.get(r.pattern.labels, 0) + 1
            multifocal += r.pattern.multifocal == tr.pattern.multifocal
            rv_insertion += r.pattern.rv_insertion
            truth_pattern = tr.pattern
        assert truth_pattern is not None
        print(f"patterns {kind} (truth {truth_pattern.labels}, multifocal {truth_pattern.multifocal}, RV "
              f"{truth_pattern.rv_involvement}): n={n} seeds {first}-{first + n - 1}: labels {counts}; multifocal "
              f"agrees {multifocal}/{n}; rv_insertion flagged {rv_insertion}/{n}")


def function(n: int, first: int) -> None:
    rows = []
    for seed in range(first, first + n):
        c = cine_phantom(_anatomy(seed), np.random.default_rng(20_000 + seed), n_phases=8,
                         sampling=Sampling(in_plane=2, through=4))
        tr, st = c.truth, c.anatomy.stack
        es = tr.es_phase
        fr = (c.ed_fractions, c.es_fractions)
        masks_m = np.stack([tr.myocardium_mask_ed, tr.myocardium_mask_es])
        blood = np.stack([blood_fraction(c.images[p], f.of("lv_blood") >= 0.1, m)
                          for p, f, m in ((0, fr[0], masks_m[0]), (es, fr[1], masks_m[1]))])
        myo_f = np.stack([f.lv_myocardium for f in fr])
        spacing = (st.pixel_mm, st.pixel_mm)
        a = lv_function(blood, myo_f, spacing, st.z_centres_mm, ed_phase=0, es_phase=1)
        b = lv_function(blood, masks_m, spacing, st.z_centres_mm, ed_phase=0, es_phase=1)
        rows.append([100 * (a.edv_ml / tr.edv_ml_sampled - 1), 100 * (a.esv_ml / tr.esv_ml_sampled - 1),
                     a.ef_pct - tr.ef_pct_sampled, 100 * (a.lv_mass_g / tr.lv_mass_g_sampled - 1),
                     100 * (b.lv_mass_g / tr.lv_mass_g_sampled - 1), 100 * (a.edv_ml / tr.edv_ml - 1),
                     a.ef_pct - tr.ef_pct])
    r = np.array(rows)
    labels = ["EDV %", "ESV %", "EF points", "mass % (fractions)", "mass % (>= 0.5 masks)",
              "EDV % vs continuous", "EF points vs continuous"]
    print(f"function: n={n} seeds {first}-{first + n - 1} (against sampled truth unless marked)")
    for j, name in enumerate(labels):
        print(f"  {name:26s} bias {r[:, j].mean():+.2f} SD {r[:, j].std(ddof=1):.2f} "
              f"range [{r[:, j].min():+.2f}, {r[:, j].max():+.2f}]")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("segments", "lge", "patterns", "function"))
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--first-seed", type=int, default=1000)
    ap.add_argument("--snr", default="15,30")
    ap.add_argument("--psir", action="store_true", help="lge: quantify the PSIR image (no FWHM)")
    args = ap.parse_args()
    if args.what == "segments":
        segments(args.n, args.first_seed)
    elif args.what == "lge":
        lge(args.n, args.first_seed, [float(s) for s in args.snr.split(",")], args.psir)
    elif args.what == "patterns":
        patterns(args.n, args.first_seed)
    else:
        function(args.n, args.first_seed)


if __name__ == "__main__":
    main()
