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
* ``e2e``: LGE end to end with the node's own segmentation: per condition (SNR, magnitude or
  PSIR), a cohort cycling over the seven patterns; the LGE image as a
  :class:`~node.imaging.volume.ShortAxisStack` -> :func:`node.ai.cmr_segmentation.segment_short_axis`
  (the shipped ``cmr_segmentation`` bundle, or ``--model DIR``) -> :func:`node.quant.sax_segments.sax_segments`
  on the network's masks -> :func:`node.quant.lge.quantify_lge` (5 SD + rim + MVO) -> %LV against the
  sampled truth; myocardium Dice (3-D, against the truth mask, fraction >= 0.5). ``--grid small``: the
  grid above (128 x 128 pixels of 1.5 mm); ``--grid full``: the full-size study grid of
  :func:`node.synth.cmr.study.build_cmr_study` (256 x 256 pixels of 1.5 mm, FOV 384 mm; anatomy
  ``default_rng(seed)`` drawn on that grid, LGE ``default_rng(10000 + seed)``).
* ``border``: why 5 SD + rim over-reads at high SNR with truth contours: the over-read split into
  voxels at a scar border (truth scar fraction in (0, 1) or a neighbour of the other kind in the
  slice) and interior voxels, per SNR, with the threshold as a share of the scar contrast.
* ``patterns``: pattern labels, multifocal and RV-insertion flags of the scarred patterns (SNR 20).
* ``function``: :func:`node.quant.cmr_function.lv_function`, blood = partial-volume occupancy
  :func:`node.quant.cmr_function.blood_fraction` from the cine pixels inside a contour around every
  pixel with >= 10 % blood; myocardium = truth fractions (``mass_from``: also >= 0.5 masks).

Usage::

    .venv/bin/python bench/cmr_lge.py segments --n 60 --first-seed 100
    .venv/bin/python bench/cmr_lge.py lge --n 63 --snr 15,20,30 --first-seed 1000 [--psir]
    .venv/bin/python bench/cmr_lge.py e2e --n 63 --snr 15,20 --first-seed 5000 [--images magnitude,psir] [--grid full]
        [--model DIR] [--compare DIR] [--rows FILE.json]
    .venv/bin/python bench/cmr_lge.py border --n 63 --snr 15,20,30 --first-seed 1000
    .venv/bin/python bench/cmr_lge.py patterns --n 20 --first-seed 4000
    .venv/bin/python bench/cmr_lge.py function --n 60 --first-seed 2000
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from node.imaging.volume import ShortAxisStack
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


def _stack(image: np.ndarray, anatomy) -> ShortAxisStack:  # type: ignore[no-untyped-def]
    """A phantom's ``[slice, row, col]`` image as a one-phase stack with the phantom's slice positions."""
    st = anatomy.stack
    z = st.first_z_mm + st.spacing_mm * np.arange(st.n_slices, dtype=float)
    return ShortAxisStack(np.asarray(image, np.float64)[None], np.stack([np.zeros_like(z), np.zeros_like(z), z], axis=1),
                          np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0]), np.array([st.pixel_mm, st.pixel_mm]),
                          float(st.thickness_mm), np.full((1, st.n_slices), np.nan))


def e2e_phantom(seed: int, kind: str, snr: float, grid: str = "small"):  # type: ignore[no-untyped-def]
    """The LGE phantom of one e2e case (:func:`node.synth.cmr.phantom.lge_phantom`; module docstring for the grids)."""
    if grid == "full":
        anatomy = draw_anatomy(np.random.default_rng(seed), matrix=(256, 256), pixel_mm=1.5)
    else:
        anatomy = _anatomy(seed)
    rng = np.random.default_rng(10_000 + seed)
    return lge_phantom(anatomy, draw_pattern(kind, rng), rng, snr_scar=snr)


def e2e_measure(img, *, psir: bool = False, model_dir: Path | None = None) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """One phantom end to end: truth and measured 5 SD + rim %LV, myocardium Dice, quality problems, seconds."""
    from node.ai.cmr_segmentation import segment_short_axis
    from node.ai.metrics import dice

    tr, st = img.truth, img.anatomy.stack
    image = img.psir if psir else img.magnitude
    t0 = time.perf_counter()
    seg = segment_short_axis(_stack(image, img.anatomy), contrast="lge", model_dir=model_dir)
    t_seg = time.perf_counter() - t0
    myo, blood, rv = seg.myocardium(0), seg.blood_pool(0), seg.rv(0)
    spacing = (st.pixel_mm, st.pixel_mm)
    segments = sax_segments(blood, myo, rv if rv.any() else None, spacing)
    r = quantify_lge(image, myo, blood, segments, spacing, st.z_centres_mm, psir=psir,
                     slice_thickness_mm=float(st.thickness_mm))
    return {"truth": float(tr.scar_pct_sampled), "measured": float(r.primary.lge_pct_lv),
            "dice": float(dice(myo, tr.myocardium_mask)), "problems": list(seg.quality.problems),
            "segment_s": t_seg, "total_s": time.perf_counter() - t0}


def e2e_summary(rows: list[dict[str, object]]) -> dict[str, float]:
    """Acceptance figures of a cohort of :func:`e2e_measure` rows (with ``pattern``; issue 17: bias within +-1 %LV,
    95 % of errors within +-3.5 %LV, agreement on 5.7 % >= 0.85, myocardium Dice >= 0.85)."""
    t = np.array([float(r["truth"]) for r in rows])  # type: ignore[arg-type]
    m = np.array([float(r["measured"]) for r in rows])  # type: ignore[arg-type]
    d = np.array([float(r["dice"]) for r in rows])  # type: ignore[arg-type]
    e = m - t
    free = np.isin([str(r["pattern"]) for r in rows], ("scar_free", "fat_pad_decoy"))
    lo, hi = np.percentile(e, [2.5, 97.5])
    return {"n": float(len(rows)), "bias": float(e.mean()), "sd": float(e.std(ddof=1)), "p2.5": float(lo), "p97.5": float(hi),
            "within_3.5": float(np.mean(np.abs(e) <= 3.5)), "within_2.5": float(np.mean(np.abs(e) <= 2.5)),
            "agreement_5.7": float(np.mean((m > LGE_CUTOFF_PCT_LV) == (t > LGE_CUTOFF_PCT_LV))),
            "dice_mean": float(d.mean()), "dice_min": float(d.min()), "dice_p5": float(np.percentile(d, 5)),
            "scar_free_mean": float(m[free].mean()) if free.any() else float("nan"),
            "quality_ok": float(np.mean([not r["problems"] for r in rows]))}


def _e2e_print(label: str, rows: list[dict[str, object]]) -> None:
    s = e2e_summary(rows)
    seg_s = np.mean([float(r["segment_s"]) for r in rows])  # type: ignore[arg-type]
    print(f"{label}: segmentation {seg_s:.2f} s/stack on 1 thread")
    print(f"  5SD+rim bias {s['bias']:+.2f} SD {s['sd']:.2f} %LV; 95 % of errors in [{s['p2.5']:+.2f}, {s['p97.5']:+.2f}]; "
          f"|error| <= 3.5: {s['within_3.5']:.3f} (<= 2.5: {s['within_2.5']:.3f}); agreement > {LGE_CUTOFF_PCT_LV} %: "
          f"{s['agreement_5.7']:.3f}; scar-free mean {s['scar_free_mean']:.2f}")
    print(f"  myocardium Dice mean {s['dice_mean']:.3f}, 5th pct {s['dice_p5']:.3f}, min {s['dice_min']:.3f}; "
          f"quality checks pass {s['quality_ok']:.3f}")
    for kind in PATTERNS:
        sel = [r for r in rows if r["pattern"] == kind]
        if not sel:
            continue
        e = np.array([float(r["measured"]) - float(r["truth"]) for r in sel])  # type: ignore[arg-type]
        print(f"    {kind:26s} n={len(sel):2d} truth {np.mean([r['truth'] for r in sel]):5.2f} %LV  bias {e.mean():+.2f} "
              f"SD {e.std(ddof=1) if e.size > 1 else 0.0:.2f}  worst {e[np.argmax(np.abs(e))]:+.2f}  "
              f"Dice {np.mean([r['dice'] for r in sel]):.3f}")


def e2e(n: int, first: int, snrs: list[float], images: list[str], grid: str = "small", model_dir: Path | None = None,
        compare: Path | None = None, rows_out: Path | None = None) -> None:
    """Per SNR, ``n`` phantoms (patterns in turn); each phantom's magnitude and/or PSIR image through the shipped
    (or ``model_dir``) segmentation and, with ``compare``, through a second bundle on the same images."""
    import torch

    torch.set_num_threads(1)
    models = {"model": model_dir} | ({"compare": compare} if compare is not None else {})
    everything: list[dict[str, object]] = []
    for snr in snrs:
        t0 = time.perf_counter()
        rows: dict[tuple[str, str], list[dict[str, object]]] = {}
        for i, seed in enumerate(range(first, first + n)):
            kind = PATTERNS[i % len(PATTERNS)]
            img = e2e_phantom(seed, kind, snr, grid)
            for view in images:
                for name, folder in models.items():
                    row = {"seed": seed, "pattern": kind, "snr": snr, "image": view, "grid": grid, "model": name,
                           **e2e_measure(img, psir=view == "psir", model_dir=folder)}
                    rows.setdefault((view, name), []).append(row)
                    everything.append(row)
        print(f"e2e SNR {snr:g} grid {grid}: n={n} seeds {first}-{first + n - 1} ({time.perf_counter() - t0:.0f} s)")
        for (view, name), rs in rows.items():
            folder = models[name]
            _e2e_print(f" {view} with {'the shipped bundle' if folder is None else folder}", rs)
    if rows_out is not None:
        rows_out.write_text(json.dumps(everything, indent=1))


def border(n: int, first: int, snrs: list[float]) -> None:
    """5 SD + rim with truth contours: where the over-read comes from (border vs interior voxels)."""
    print("border: voxel classes inside the truth myocardium; 'border' = truth scar fraction in (0.02, 0.98) "
          "or, in-plane, a 4-neighbour of the other kind (scar >= 0.5 vs < 0.5); %LV = voxel volume share of the LV mass")
    print("  SNR | threshold / scar contrast | error %LV | over-read at border | under-read at border | interior over | "
          "interior under | rest (fractions outside the truth mask) | border voxels counted: mean truth scar fraction")
    for snr in snrs:
        err, ob, ub, oi, ui, levels, frac_counted = [], [], [], [], [], [], []
        for i, seed in enumerate(range(first, first + n)):
            kind = PATTERNS[i % len(PATTERNS)]
            rng = np.random.default_rng(10_000 + seed)
            img = lge_phantom(_anatomy(seed), draw_pattern(kind, rng), rng, snr_scar=snr)
            fr, tr, st = img.fractions, img.truth, img.anatomy.stack
            blood = fr.of("lv_blood") >= 0.5
            seg = sax_segments(blood, tr.myocardium_mask, _rv(fr), (st.pixel_mm, st.pixel_mm))
            r = quantify_lge(img.magnitude, tr.myocardium_mask, blood, seg, (st.pixel_mm, st.pixel_mm), st.z_centres_mm)
            myo = tr.myocardium_mask
            f = np.clip(fr.lv_scar / np.maximum(fr.lv_myocardium, 1e-9), 0.0, 1.0) * myo
            hard = f >= 0.5
            ring = np.zeros_like(hard)
            for k in range(hard.shape[0]):
                ring[k] = (ndimage.binary_dilation(hard[k]) & ~hard[k]) | (hard[k] & ~ndimage.binary_erosion(hard[k]))
            is_border = myo & (((f > 0.02) & (f < 0.98)) | ring)
            counted = r.primary.mask.astype(float)
            per_voxel = 100.0 / max(float(myo.sum()), 1.0)  # %LV of one voxel (equal volumes, LV = truth mask)
            diff = (counted - f) * myo
            err.append(r.primary.lge_pct_lv - tr.scar_pct_sampled)
            ob.append(per_voxel * float(np.clip(diff, 0, None)[is_border].sum()))
            ub.append(per_voxel * float(np.clip(-diff, 0, None)[is_border].sum()))
            oi.append(per_voxel * float(np.clip(diff, 0, None)[myo & ~is_border].sum()))
            ui.append(per_voxel * float(np.clip(-diff, 0, None)[myo & ~is_border].sum()))
            if tr.scar_pct_sampled > 0:
                levels.append((r.primary.threshold - r.remote.mean) / (abs(tr.signal_truth["scar"]) - r.remote.mean))
                sel = is_border & (counted > 0)
                if sel.any():
                    frac_counted.append(float(f[sel].mean()))
        rest = np.mean(err) - (np.mean(ob) - np.mean(ub) + np.mean(oi) - np.mean(ui))
        print(f"  {snr:4g} | {np.median(levels):.2f} | {np.mean(err):+.2f} | {np.mean(ob):+.2f} | {-np.mean(ub):+.2f} | "
              f"{np.mean(oi):+.2f} | {-np.mean(ui):+.2f} | {rest:+.2f} | {np.mean(frac_counted):.2f}   "
              f"(n={n}, seeds {first}-{first + n - 1})")


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
    ap.add_argument("what", choices=("segments", "lge", "e2e", "border", "patterns", "function"))
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--first-seed", type=int, default=1000)
    ap.add_argument("--snr", default="15,30")
    ap.add_argument("--psir", action="store_true", help="lge: quantify the PSIR image (no FWHM)")
    ap.add_argument("--images", default="magnitude", help="e2e: magnitude, psir or both (comma-separated), same phantoms")
    ap.add_argument("--compare", type=Path, default=None, help="e2e: a second cmr_segmentation bundle on the same images")
    ap.add_argument("--grid", choices=("small", "full"), default="small", help="e2e: phantom grid (module docstring)")
    ap.add_argument("--model", type=Path, default=None, help="e2e: cmr_segmentation bundle folder (default: shipped)")
    ap.add_argument("--rows", type=Path, default=None, help="e2e: write every phantom's row as JSON here")
    args = ap.parse_args()
    if args.what == "segments":
        segments(args.n, args.first_seed)
    elif args.what == "lge":
        lge(args.n, args.first_seed, [float(s) for s in args.snr.split(",")], args.psir)
    elif args.what == "e2e":
        e2e(args.n, args.first_seed, [float(s) for s in args.snr.split(",")], args.images.split(","), args.grid, args.model,
            args.compare, args.rows)
    elif args.what == "border":
        border(args.n, args.first_seed, [float(s) for s in args.snr.split(",")])
    elif args.what == "patterns":
        patterns(args.n, args.first_seed)
    else:
        function(args.n, args.first_seed)


if __name__ == "__main__":
    main()
