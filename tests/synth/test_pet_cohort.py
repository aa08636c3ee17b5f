"""The synthetic PET flow-reserve cohort (node.synth.pet.cohort): seeding, splits, planted signatures, files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from node.quant.segments import DEFAULT_GRID, TERRITORY_SEGMENTS
from node.synth.pet import cohort as C


def _designs(first: int, n: int, split: str = "development") -> list[C.CaseDesign]:
    return [C.draw_design(s, split) for s in range(first, first + n)]


def _ripple_amplitude(polar: np.ndarray) -> float:
    """Mean amplitude (relative) of the planted ripple's frequency over the three rings of a polar map."""
    seg = DEFAULT_GRID.segment_ids()[:, 0]
    psi = np.radians(DEFAULT_GRID.psi_centres_deg)
    amps = []
    for rows, n in (((seg >= 13) & (seg <= 16), 4), ((seg >= 7) & (seg <= 12), 6), (seg <= 6, 6)):
        x = polar[rows] / polar[rows].mean(axis=1, keepdims=True) - 1.0
        amps.append(abs(2.0 * np.mean(x * np.exp(-1j * n * psi))))
    return float(np.mean(amps))


def test_designs_are_seeded_and_splits_disjoint(seed: int) -> None:
    a, b = C.draw_design(seed, "test"), C.draw_design(seed, "test")
    assert a.traits == b.traits and a.stenoses == b.stenoses and a.ripple == b.ripple and a.spot == b.spot
    np.testing.assert_array_equal(a.rest_mbf, b.rest_mbf)
    np.testing.assert_array_equal(a.stress_mbf, b.stress_mbf)
    other = C.draw_design(seed + 1, "test")
    assert not np.array_equal(a.rest_mbf, other.rest_mbf)
    ranges = sorted((C.SPLIT_FIRST_SEED[s], C.SPLIT_FIRST_SEED[s] + C.SPLIT_SEED_SPAN) for s in C.SPLITS)
    assert all(hi <= lo for (_, hi), (lo, _) in zip(ranges, ranges[1:], strict=False))
    assert C.ACQUISITIONS["external"].fwhm_mm[0] >= C.ACQUISITIONS["test"].fwhm_mm[1]
    assert C.ACQUISITIONS["external"].noise_level > C.ACQUISITIONS["test"].noise_level
    with pytest.raises(ValueError):
        C.draw_design(seed, "training")


def test_prevalences_and_segment_level_signatures(seed: int) -> None:
    """4,000 designs (no images): trait prevalences, label noise, impaired share, trait effects on the flows."""
    first = C.SPLIT_FIRST_SEED["development"] + seed % 50_000
    designs = _designs(first, 4000)
    true = np.array([d.true_traits for d in designs])
    recorded = np.array([d.traits for d in designs])
    for k, trait in enumerate(C.TRAITS):
        p = C.TRAIT_PREVALENCE[trait]
        assert abs(true[:, k].mean() - p) < 4.5 * np.sqrt(p * (1 - p) / len(designs)), trait
    flips = (true != recorded).mean()
    assert abs(flips - C.TRAIT_LABEL_FLIP) < 0.01
    impaired = np.array([np.any(d.stress_mbf / d.rest_mbf < 2.0) for d in designs])
    assert 0.52 < impaired.mean() < 0.68  # the truth; measurement noise lifts it to about two thirds
    female, diabetes = true[:, 0] == 1, true[:, 1] == 1
    healthy = np.array([d.disease == "none" for d in designs])
    rest = np.array([d.rest_mbf.mean() for d in designs])
    mfr = np.array([(d.stress_mbf / d.rest_mbf).mean() for d in designs])
    ratio = rest[female & healthy].mean() / rest[~female & healthy].mean()
    assert 1.08 < ratio < 1.24  # x 1.15 (and x 1.03 hypertension in both groups)
    assert mfr[female & healthy & ~diabetes].mean() < mfr[~female & healthy & ~diabetes].mean() * 0.95
    assert mfr[diabetes & healthy & ~female].mean() < mfr[~diabetes & healthy & ~female].mean() * 0.9
    assert all((d.ripple is not None) == bool(d.true_traits[0]) for d in designs)
    assert all((d.spot is not None) == bool(d.true_traits[4]) for d in designs)
    kinds = {d.disease for d in designs}
    assert kinds == set(C.DISEASE_PROBABILITIES)
    single = [d for d in designs if d.disease == "single"]
    assert all(d.defect_territory in TERRITORY_SEGMENTS for d in single)
    assert all(d.defect_territory == "" for d in designs if d.disease in ("none", "multi", "diffuse"))


def test_planted_patterns_on_the_grid(seed: int) -> None:
    """The ripple cancels in every segment mean of the polar grid; the smoking spot is focal."""
    designs = _designs(C.SPLIT_FIRST_SEED["development"] + seed % 50_000, 300)
    uu, pp = np.meshgrid(DEFAULT_GRID.u_centres, DEFAULT_GRID.psi_centres_deg, indexing="ij")
    female = next(d for d in designs if d.ripple is not None and d.spot is None)
    for state in ("rest", "stress"):
        m = C.pattern_multiplier(female, state, uu, pp, DEFAULT_GRID.u_cap)
        assert m.std() > 0.1
        np.testing.assert_allclose(DEFAULT_GRID.segment_means(m), 1.0, atol=1e-9)
    smoker = next(d for d in designs if d.spot is not None and d.ripple is None)
    np.testing.assert_allclose(C.pattern_multiplier(smoker, "rest", uu, pp, DEFAULT_GRID.u_cap), 1.0)
    m = C.pattern_multiplier(smoker, "stress", uu, pp, DEFAULT_GRID.u_cap)
    assert m.min() < 1.0 - 0.9 * smoker.spot[0]  # type: ignore[index]
    planted, trait = C.planted_masks(smoker)
    assert 0 < trait.sum() < 0.08 * trait.size
    assert len(np.unique(DEFAULT_GRID.segment_ids()[trait])) <= 4
    if not smoker.defect_territory:
        np.testing.assert_array_equal(planted, trait)
    plain = next(d for d in designs if d.disease == "single" and d.spot is None)
    planted, trait = C.planted_masks(plain)
    assert not trait.any()
    np.testing.assert_array_equal(planted, np.isin(DEFAULT_GRID.segment_ids(), TERRITORY_SEGMENTS[plain.defect_territory]))


def test_generate_case_is_deterministic_and_truthful(seed: int) -> None:
    first = C.SPLIT_FIRST_SEED["development"] + seed % 50_000
    case = next(s for s in range(first, first + 300)
                if C.draw_design(s, "development").ripple is not None and C.draw_design(s, "development").spot is not None)
    design = C.draw_design(case, "development")
    study, traits, planted = C.generate_case(case, "development")
    again, traits2, planted2 = C.generate_case(case, "development")
    np.testing.assert_array_equal(study.stress.volume.voxels, again.stress.volume.voxels)
    np.testing.assert_array_equal(traits, traits2)
    np.testing.assert_array_equal(planted, planted2)
    np.testing.assert_array_equal(traits, design.traits)
    assert 8.0 <= study.spec.resolution_fwhm_mm <= 10.0
    # the ripple leaves the voxel truth's segment means within 3 % of the design; the spot lowers stress in its segments
    rest_ratio = study.rest.truth.segment_mbf_ml_per_min_per_g / design.rest_mbf
    assert np.all(np.abs(rest_ratio - 1.0) < 0.03)
    stress_ratio = study.stress.truth.segment_mbf_ml_per_min_per_g / design.stress_mbf
    _, trait_mask = C.planted_masks(design)
    spot_segments = np.unique(DEFAULT_GRID.segment_ids()[trait_mask]) - 1
    assert stress_ratio[spot_segments].min() < 0.97 and np.all(stress_ratio < 1.03)
    np.testing.assert_allclose(study.truth.segment_mfr, study.stress.truth.segment_mbf_ml_per_min_per_g
                               / study.rest.truth.segment_mbf_ml_per_min_per_g)
    # the noise-free volumes differ from a pattern-free phantom only in the myocardium's neighbourhood
    assert study.rest.volume.voxels.dtype == np.float32 and np.isfinite(study.rest.volume.voxels).all()


def test_measured_maps_carry_the_ripple(seed: int) -> None:
    """A handful of cases through the node's analysis: the female ripple survives blur and noise."""
    first = C.SPLIT_FIRST_SEED["development"] + seed % 50_000
    designs = {s: C.draw_design(s, "development") for s in range(first, first + 200)}
    females = [s for s, d in designs.items() if d.ripple is not None and d.spot is None][:2]
    males = [s for s, d in designs.items() if d.ripple is None and d.spot is None][:2]
    amp = {}
    for s in females + males:
        row = C.case_arrays(s, "development")
        assert row["maps"].shape == (3, 40, 72) and row["maps"].dtype == np.float32
        assert row["map_valid"].mean() > 0.95
        assert int(row["impaired"]) == int(np.any(row["segment_mfr"] < 2.0))
        amp[s] = np.mean([_ripple_amplitude(np.where(row["map_valid"], row["maps"][c], np.nan)) for c in (0, 1)])
    print({s: round(a, 3) for s, a in amp.items()})
    assert min(amp[s] for s in females) > 0.07 > max(amp[s] for s in males)


def test_build_write_load_and_resume(tmp_path: Path, seed: int) -> None:
    first = C.SPLIT_FIRST_SEED["test"] + seed % 50_000
    out = tmp_path / "test.npz"
    path = C.build_cohort("test", 1, first_seed=first, out=out)
    cohort = C.load_cohort(path)
    assert len(cohort) == 1 and cohort.version == C.PET_COHORT_VERSION
    seen = []
    path = C.build_cohort("test", 2, first_seed=first, out=out, progress=lambda d, n, s, cpu, e: seen.append(s))
    assert len(seen) == 1 and seen[0] > first  # the first case was resumed from its part
    cohort = C.load_cohort(path)
    assert len(cohort) == 2 and list(cohort.split) == ["test", "test"] and cohort.seed[0] == first
    assert cohort.maps.shape == (2, 3, 40, 72) and cohort.territory_impaired.shape == (2, 3)
    assert cohort.traits.shape == (2, 5) and cohort.planted_mask.shape == (2, 40, 72)
    partial = C.load_parts("test", out)
    np.testing.assert_array_equal(partial.maps, cohort.maps)
    old: dict[str, Any] = {k: np.asarray(v) for k, v in vars(cohort).items() if k != "version"}
    np.savez(tmp_path / "old.npz", **old, version=np.asarray("cardionode-pet-cohort-0.9"))
    with pytest.raises(ValueError, match="version"):
        C.load_cohort(tmp_path / "old.npz")
