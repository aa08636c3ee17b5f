"""The synthetic CMR cohorts of issue 18: population, event process and its oracle, one rendered case.

Population and event checks are analytic (covariate draws, no phantoms); one test renders and measures
cases with the shipped segmentation model (about 1 s of CPU each).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from node.ai.metrics import auc
from node.synth.cmr.cohort import (
    COHORT_KEYS,
    COHORTS,
    EVENT_PROCESS,
    LGE_CLASS_PROBABILITIES,
    LGE_CUTOFF_PCT,
    draw_covariates,
    draw_events,
    event_probability,
    event_rates,
    fit_pattern_burden,
    generate_case,
    load_cmr_cohort,
    pattern_flags,
    tiny_cmr_cohort,
    write_cmr_cohort,
)
from node.synth.cmr.phantom import draw_anatomy, draw_pattern, shape_for_ef


def _population(n: int, seed: int) -> dict[str, np.ndarray]:
    """``n`` covariate draws with the generator's (unscaled) pattern flags: the proxies of the true covariates."""
    rng = np.random.default_rng(seed)
    rows = []
    classes = []
    for _ in range(n):
        cov = draw_covariates(rng)
        pattern = draw_pattern(cov.pattern, rng)
        if cov.rv_septal:
            pattern = replace(pattern, rv_involvement=True)
        rows.append((cov.target_lge_pct, *pattern_flags(pattern), cov.ef_pct, cov.follow_up_y))
        classes.append(cov.lge_class)
    a = np.asarray(rows, dtype=float)
    return {"lge": a[:, 0], "rv": a[:, 1], "septal": a[:, 2], "multifocal": a[:, 3], "ef": a[:, 4],
            "follow_up": a[:, 5], "cls": np.asarray(classes)}


@pytest.fixture(scope="module")
def population() -> dict[str, np.ndarray]:
    return _population(3000, 2024)


def _args(p: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return p["lge"], p["rv"], p["septal"], p["multifocal"], p["ef"], p["follow_up"]


def test_population_matches_the_seed_within_sampling_error(population: dict[str, np.ndarray]) -> None:
    n = population["lge"].size
    for cls, expected in LGE_CLASS_PROBABILITIES.items():
        share = float(np.mean(population["cls"] == cls))
        assert abs(share - expected) < 3.5 * np.sqrt(expected * (1 - expected) / n), (cls, share)
    lge = population["lge"]
    assert np.all(lge[population["cls"] == "none"] == 0)
    assert np.all((lge[population["cls"] == "low"] > 0) & (lge[population["cls"] == "low"] <= LGE_CUTOFF_PCT))
    high = lge[population["cls"] == "high"]
    assert np.all(high > LGE_CUTOFF_PCT) and 9.0 < high.mean() < 15.0  # seed: 12 (SD 12)
    assert 1.8 < lge.mean() < 4.0  # seed: 3.2
    assert 57.0 < np.median(population["ef"]) < 61.0  # seed: median LVEF 59
    assert np.all((population["follow_up"] >= 4.8) & (population["follow_up"] <= 5.9))


def test_event_process_is_calibrated_to_the_published_rates(population: dict[str, np.ndarray]) -> None:
    rates = event_rates(*_args(population))
    assert abs(rates["rate_without_lge"] - 0.011) < 0.001, rates  # Coleman 2017: 1.1 / 100 patient-years
    assert abs(rates["events"] - 0.20) < 0.015, rates  # the seed: 23 / 116 over a median 5.4 years
    assert 0.08 < rates["rate_with_lge"] < 0.12, rates  # Coleman: 11.9 (see the module docstring)


def test_event_probability_is_the_simulated_event_frequency(population: dict[str, np.ndarray]) -> None:
    args = _args(population)
    p = event_probability(*args)
    rng = np.random.default_rng(5)
    events = np.mean([draw_events(*args, rng)[0] for _ in range(40)], axis=0)
    for lo, hi in ((0.0, 0.1), (0.1, 0.3), (0.3, 1.0)):
        sel = (p >= lo) & (p < hi)
        expected, observed = p[sel].mean(), events[sel].mean()
        se = np.sqrt(expected * (1 - expected) / (40 * sel.sum()))
        assert abs(observed - expected) < 4 * se + 0.005, (lo, hi, expected, observed)
    # without frailty the oracle is the closed form
    still = replace(EVENT_PROCESS, frailty_sd=0.0)
    from node.synth.cmr.cohort import hazard_per_year
    lam = hazard_per_year(args[0], args[1], args[2], args[3], args[4], process=still)
    np.testing.assert_allclose(event_probability(*args, process=still), 1 - np.exp(-lam * args[5]), rtol=1e-10)


def test_hazard_rises_with_burden_rv_multifocal_septal_and_falling_ef() -> None:
    def p(lge: float = 3.0, rv: int = 0, septal: int = 0, multifocal: int = 0, ef: float = 55.0) -> float:
        one = np.array
        return float(event_probability(one([lge]), one([rv]), one([septal]), one([multifocal]), one([ef]), one([5.0]))[0])

    p0 = p()
    assert p(lge=10.0) > p0 and p(rv=1) > p0 and p(septal=1) > p0 and p(multifocal=1) > p0 and p(ef=35.0) > p0
    assert p(ef=70.0) == pytest.approx(p0)  # no benefit above EF 55


def test_oracle_beats_the_covariate_baselines_on_a_sample(population: dict[str, np.ndarray]) -> None:
    args = _args(population)
    event, _ = draw_events(*args, np.random.default_rng(11))
    oracle = auc(event, event_probability(*args))
    noisy_lge = np.clip(population["lge"] + np.random.default_rng(3).normal(0, 1.0, event.size), 0, None)
    for name, score in (("true LGE", population["lge"]), ("measured-like LGE", noisy_lge),
                        ("LGE rule", (noisy_lge > LGE_CUTOFF_PCT).astype(float)), ("EF", -population["ef"])):
        assert oracle >= auc(event, score), name
    assert 0.75 < oracle < 0.95


@pytest.mark.parametrize("name,target", [("sarcoid_midwall_septal", 2.0), ("sarcoid_epicardial", 8.0),
                                         ("sarcoid_multifocal_rv", 20.0), ("ischaemic_transmural_mvo", 12.0)])
def test_patterns_are_scaled_to_the_target_burden(name: str, target: float) -> None:
    from node.synth.cmr.cohort import _burden_pct

    rng = np.random.default_rng(7)
    anatomy = draw_anatomy(rng, shape_for_ef(55.0), matrix=(96, 96), pixel_mm=1.8)
    fitted = fit_pattern_burden(anatomy, draw_pattern(name, rng), target)
    # the coarse quadrature (5 deg azimuth steps) moves in steps, so the fit lands within about 10 %
    assert _burden_pct(anatomy, fitted) == pytest.approx(target, rel=0.1)
    assert all(3.0 <= p.half_width_deg <= 90.0 for p in fitted.patches)
    assert all(0.0 <= p.depth_range[0] < p.depth_range[1] <= 1.0 for p in fitted.patches)


def test_cohort_seed_ranges_are_disjoint() -> None:
    ranges = sorted((s.first_seed, s.first_seed + s.n) for s in COHORTS.values())
    assert all(a[1] <= b[0] for a, b in zip(ranges, ranges[1:], strict=False))
    assert COHORTS["small"].n == 116 and COHORTS["large"].n >= 1000
    assert COHORTS["test"].n >= 300 and COHORTS["external"].n >= 300
    assert COHORTS["external"].acquisition != COHORTS["test"].acquisition


def test_a_rendered_case_is_deterministic_and_the_cohort_round_trips(tmp_path: Path) -> None:
    cohort = tiny_cmr_cohort(2, seed=1)
    assert len(cohort) == 2 and cohort.meta["segmentation_bundle"] == "cmr_segmentation"
    for key, dtype in COHORT_KEYS.items():
        assert getattr(cohort, key).dtype == np.dtype(dtype), key
        assert getattr(cohort, key).shape[0] == 2, key
    f = cohort.frames.shape[-1]
    assert cohort.frames.shape == (2, 1, f, f) and cohort.lge_mask.shape == (2, f, f)
    assert cohort.myocardium_mask.any(axis=(1, 2)).all() and cohort.frame_ok.all()
    np.testing.assert_array_equal(cohort.lge_above, (cohort.true_lge_pct > LGE_CUTOFF_PCT).astype(np.int8))
    again = generate_case(int(cohort.seed[1]), "tiny")
    np.testing.assert_array_equal(again.frame, cohort.frames[1])
    assert again.measured_lge_pct == pytest.approx(float(cohort.measured_lge_pct[1]), abs=1e-5)
    assert again.event == cohort.event[1] and again.event_probability == pytest.approx(float(cohort.event_probability[1]))
    back = load_cmr_cohort(write_cmr_cohort(cohort, tmp_path / "tiny.npz"))
    for key in COHORT_KEYS:
        np.testing.assert_array_equal(getattr(back, key), getattr(cohort, key))
    assert back.meta == cohort.meta
