"""Phase analysis: gate-centre convention, exact recovery of pure sinusoids, histogram statistics.

Phantom-based accuracy at clinical noise (PSD +-3 deg, bandwidth +-10 deg, delayed lateral
wall) is in test_phase_phantom.py.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from node.quant.phase import PhaseParameters, analyse_phase, first_harmonic, phase_statistics
from node.quant.segments import DEFAULT_GRID


def _gate_curves(phases_deg: np.ndarray, n_gates: int, baseline: np.ndarray, amplitude: np.ndarray) -> np.ndarray:
    """c(k) = A0 + A1 cos(2 pi (k + 0.5)/N - phi): gate k centred at (k + 0.5)/N of the cycle; [gate, ...]."""
    t = (np.arange(n_gates) + 0.5) / n_gates
    shape = (n_gates,) + (1,) * phases_deg.ndim
    return baseline + amplitude * np.cos(2 * np.pi * t.reshape(shape) - np.radians(phases_deg))


@pytest.mark.parametrize("n_gates", [8, 16])
def test_135_degrees_recovered_exactly(n_gates: int) -> None:
    counts = _gate_curves(np.array([135.0]), n_gates, np.array([100.0]), np.array([30.0]))
    phase, amplitude = first_harmonic(counts)
    assert abs(phase[0] - 135.0) < 1e-9, phase
    assert abs(amplitude[0] - 30.0) < 1e-9, amplitude
    # the half-gate term matters: without it the answer is 180/N degrees off
    naive = np.mod(-np.degrees(np.angle(np.sum(counts[:, 0] * np.exp(-2j * np.pi * np.arange(n_gates) / n_gates)))), 360)
    assert abs(naive - (135.0 - 180.0 / n_gates)) < 1e-9


@pytest.mark.parametrize("n_gates", [8, 16])
def test_pure_sinusoids_recovered_within_1_degree(n_gates: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    phases = rng.uniform(0.0, 360.0, size=DEFAULT_GRID.shape)
    baseline = rng.uniform(20.0, 200.0, size=DEFAULT_GRID.shape)
    amplitude = baseline * rng.uniform(0.05, 0.5, size=DEFAULT_GRID.shape)
    maps = _gate_curves(phases, n_gates, baseline, amplitude)
    result = analyse_phase(maps, None, PhaseParameters(smoothing_cells=(0.0, 0.0)))
    error = np.abs(np.mod(result.phase_map - phases + 180.0, 360.0) - 180.0)
    assert error.max() < 1.0, f"seed {seed}: max phase error {error.max():.3g} deg"
    assert np.allclose(result.amplitude_map, amplitude, rtol=1e-9), f"seed {seed}"
    assert result.n_gates == n_gates
    assert result.phase_map.shape == DEFAULT_GRID.shape


@pytest.mark.parametrize("n_gates", [8, 16])
def test_uniform_phase_survives_polar_smoothing(n_gates: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    phi = rng.uniform(0.0, 360.0)
    baseline = rng.uniform(50.0, 150.0, size=DEFAULT_GRID.shape)
    maps = _gate_curves(np.full(DEFAULT_GRID.shape, phi), n_gates, baseline, 0.3 * baseline)
    stats = analyse_phase(maps, None, PhaseParameters(smoothing_cells=(6.0, 6.0))).statistics
    d = abs(np.mod(stats.peak_phase_deg - phi + 180.0, 360.0) - 180.0)
    assert d < 1e-6, f"seed {seed}: imposed {phi}, peak {stats.peak_phase_deg}"
    assert stats.psd_deg < 1e-6 and stats.bandwidth_deg < 1e-6 and stats.entropy == 0.0


def test_statistics_of_a_known_distribution_across_the_wrap(seed: int) -> None:
    """Normal phases (SD 10 deg) centred at 355 deg: re-centring must undo the wrap."""
    rng = np.random.default_rng(seed)
    centre, sd = 355.0, 10.0
    phases = np.mod(rng.normal(centre, sd, size=200_000), 360.0)
    for method in ("shortest", "central"):
        for recentre in ("mode", "circular_mean"):
            s = phase_statistics(phases, None, PhaseParameters(bandwidth_method=method, recentre=recentre))
            msg = f"seed {seed} {method}/{recentre}: {s.as_dict()}"
            assert abs(s.psd_deg - sd) < 0.2, msg
            assert abs(s.bandwidth_deg - 2 * 1.95996 * sd) < 1.0, msg
            assert abs(np.mod(s.mean_phase_deg - centre + 180, 360) - 180) < 0.3, msg
            assert abs(np.mod(s.peak_phase_deg - centre + 180, 360) - 180) < 2.0, msg
            assert abs(s.skewness) < 0.05 and abs(s.kurtosis - 3.0) < 0.1, msg
    # entropy of a discretised normal with 1-degree bins: (0.5 ln(2 pi e sd^2)) / ln(360)
    expected_entropy = 0.5 * np.log(2 * np.pi * np.e * sd**2) / np.log(360)
    assert abs(s.entropy - expected_entropy) < 0.01, f"seed {seed}: entropy {s.entropy} vs {expected_entropy}"
    assert abs(s.histogram.sum() - 1.0) < 1e-12 and s.histogram.size == 360


def test_shortest_and_central_bandwidth_differ_for_skewed_histograms(seed: int) -> None:
    rng = np.random.default_rng(seed)
    phases = 120.0 + rng.exponential(15.0, size=100_000)  # one-sided tail
    shortest = phase_statistics(phases, params=PhaseParameters(bandwidth_method="shortest"))
    central = phase_statistics(phases, params=PhaseParameters(bandwidth_method="central"))
    # exponential(15): shortest 95 % interval = [0, 15 ln 20] = 44.9; central = 15 (ln 40 - ln(1/0.975)) = 54.9
    assert abs(shortest.bandwidth_deg - 15 * np.log(20)) < 1.5, f"seed {seed}: {shortest.bandwidth_deg}"
    assert abs(central.bandwidth_deg - 15 * (np.log(40) - np.log(1 / 0.975))) < 1.5, f"seed {seed}: {central.bandwidth_deg}"
    assert shortest.skewness > 1.5


def test_weights_are_area_weights() -> None:
    phases = np.array([100.0, 200.0])
    s = phase_statistics(phases, np.array([3.0, 1.0]), PhaseParameters(recentre="circular_mean"))
    assert abs(s.mean_phase_deg - 125.0) < 1e-9
    assert abs(s.psd_deg - np.sqrt(0.75 * 25**2 + 0.25 * 75**2)) < 1e-9
    assert abs(s.histogram[100] - 0.75) < 1e-12 and abs(s.histogram[200] - 0.25) < 1e-12


def test_zero_weight_and_low_amplitude_samples_are_ignored(seed: int) -> None:
    rng = np.random.default_rng(seed)
    phases = np.full(DEFAULT_GRID.shape, 140.0)
    amplitude = np.full(DEFAULT_GRID.shape, 20.0)
    phases[:5] = rng.uniform(0, 360, size=(5, DEFAULT_GRID.n_psi))
    amplitude[:5] = 0.01  # no contraction signal
    maps = _gate_curves(phases, 8, np.full(DEFAULT_GRID.shape, 100.0), amplitude)
    raw = PhaseParameters(smoothing_cells=(0.0, 0.0), amplitude_weighting=0.0, basal_exclusion_fraction=0.0)
    stats = analyse_phase(maps, None, replace(raw, min_amplitude_fraction=0.2)).statistics
    assert stats.psd_deg < 1e-6, f"seed {seed}"
    weights = np.ones(DEFAULT_GRID.shape)
    weights[:5] = 0.0
    stats = analyse_phase(maps, weights, raw).statistics
    assert stats.psd_deg < 1e-6 and stats.n_samples == (DEFAULT_GRID.n_u - 5) * DEFAULT_GRID.n_psi


def test_basal_rows_are_left_out_by_default(seed: int) -> None:
    """The default basal_exclusion_fraction 0.15 zeroes the top 6 of 40 rows (apex -> base), whatever
    their phase; the phase map still covers every row."""
    rng = np.random.default_rng(seed)
    phases = np.full(DEFAULT_GRID.shape, 140.0)
    phases[-6:] = rng.uniform(0, 360, size=(6, DEFAULT_GRID.n_psi))  # base-plane motion: any phase
    maps = _gate_curves(phases, 16, np.full(DEFAULT_GRID.shape, 100.0), np.full(DEFAULT_GRID.shape, 20.0))
    result = analyse_phase(maps)
    assert result.statistics.psd_deg < 1e-6 and result.statistics.bandwidth_deg < 1e-6, f"seed {seed}"
    assert result.statistics.n_samples == (DEFAULT_GRID.n_u - 6) * DEFAULT_GRID.n_psi
    assert np.all(result.weights[-6:] == 0) and np.all(result.weights[:-6] > 0)
    error = np.abs(np.mod(result.phase_map - phases + 180.0, 360.0) - 180.0)
    assert error.max() < 1e-6, f"seed {seed}"
    every_row = analyse_phase(maps, None, PhaseParameters(basal_exclusion_fraction=0.0)).statistics
    assert every_row.psd_deg > 10.0 and every_row.n_samples == DEFAULT_GRID.n_u * DEFAULT_GRID.n_psi


def test_amplitude_weighting_downweights_flat_samples() -> None:
    phases = np.full(DEFAULT_GRID.shape, 150.0)
    amplitude = np.full(DEFAULT_GRID.shape, 30.0)
    phases[:, :18] = 250.0  # a quarter of the samples: another phase, 10x smaller amplitude
    amplitude[:, :18] = 3.0
    maps = _gate_curves(phases, 16, np.full(DEFAULT_GRID.shape, 100.0), amplitude)
    flat = PhaseParameters(smoothing_cells=(0.0, 0.0), amplitude_weighting=0.0)
    area = analyse_phase(maps, None, flat).statistics
    weighted = analyse_phase(maps, None, replace(flat, amplitude_weighting=1.0)).statistics
    assert abs(area.mean_phase_deg - 175.0) < 1e-6  # 0.75 * 150 + 0.25 * 250
    assert abs(weighted.mean_phase_deg - (0.75 * 30 * 150 + 0.25 * 3 * 250) / (0.75 * 30 + 0.25 * 3)) < 1e-6
    assert weighted.psd_deg < area.psd_deg


def test_boundary_validation_messages() -> None:
    with pytest.raises(ValueError, match="at least 3 gates"):
        analyse_phase(np.ones((2, 40, 72)))
    with pytest.raises(ValueError, match=r"\[gate, n_u, n_psi\]"):
        analyse_phase(np.ones((8, 40)))
    with pytest.raises(ValueError, match="weights must have shape"):
        analyse_phase(np.ones((8, 40, 72)), np.ones((40, 71)))
    with pytest.raises(ValueError, match="NaN"):
        first_harmonic(np.full((8, 3), np.nan))
    with pytest.raises(ValueError, match="divide 360"):
        PhaseParameters(bin_deg=7.0)
    with pytest.raises(ValueError, match="bandwidth_method"):
        PhaseParameters(bandwidth_method="widest")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="basal_exclusion_fraction"):
        PhaseParameters(basal_exclusion_fraction=1.0)
