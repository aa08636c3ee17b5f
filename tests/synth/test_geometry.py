"""Analytic LV geometry: preset volumes (reference 7.1), volume conservation, waveform, phase helpers."""

from __future__ import annotations

import numpy as np
import pytest

from node.synth.geometry import (
    DILATED,
    LATERAL_DELAY,
    NORMAL,
    SMALL,
    delay_profile_deg,
    gate_times,
    geometry_at,
    motion_waveform,
)
from node.synth.truth import first_harmonic_phase, truth_phase_statistics

# (shape, EDV mL, ESV mL, EF %) from the reference note section 7.1
PRESETS = [(NORMAL, 106.7, 48.6, 54.5), (DILATED, 217.1, 160.8, 25.9), (SMALL, 37.7, 13.5, 64.3)]


@pytest.mark.parametrize("shape,edv,esv,ef", PRESETS, ids=lambda v: getattr(v, "name", str(v)))
def test_preset_volumes_match_the_reference(shape, edv, esv, ef):
    assert shape.edv_ml == pytest.approx(edv, abs=0.1)
    assert shape.esv_ml == pytest.approx(esv, abs=0.1)
    assert shape.ef_pct == pytest.approx(ef, abs=0.1)


def test_normal_heart_myocardium_and_end_systolic_wall():
    assert NORMAL.myocardial_volume_ml == pytest.approx(120.1, abs=0.05)
    assert NORMAL.es_wall_mm == pytest.approx(13.55, abs=0.01)
    es = geometry_at(NORMAL, 0.35)
    assert es.cavity_volume_ml == pytest.approx(NORMAL.esv_ml, rel=1e-9)
    assert es.apex_wall_mm == pytest.approx(13.55, abs=0.01)


@pytest.mark.parametrize("n_gates", [8, 16])
@pytest.mark.parametrize("shape", [NORMAL, SMALL, DILATED], ids=lambda s: s.name)
def test_myocardial_volume_is_conserved_in_every_gate_even_with_regional_delays(shape, n_gates):
    delays = delay_profile_deg((LATERAL_DELAY,), np.array([[5.0, -3.0], [2.0, 1.0]]))
    volumes = [geometry_at(shape, t, delays).myocardial_volume_ml for t in gate_times(n_gates)]
    assert np.ptp(volumes) / shape.myocardial_volume_ml < 1e-6
    assert np.mean(volumes) == pytest.approx(shape.myocardial_volume_ml, rel=1e-6)


def test_waveform_is_end_diastole_at_r_wave_and_end_systole_at_35_percent():
    assert motion_waveform(0.0, "physiological", 0.35) == pytest.approx(0.0)
    assert motion_waveform(0.35, "physiological", 0.35) == pytest.approx(1.0)
    assert motion_waveform(0.35, "sinusoid", 0.35) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        motion_waveform(0.1, "square", 0.35)


@pytest.mark.parametrize("n_gates", [8, 16])
@pytest.mark.parametrize("phase", [0.0, 37.0, 135.0, 301.5])
def test_first_harmonic_returns_the_phase_of_a_sampled_sinusoid(n_gates, phase):
    t = gate_times(n_gates)
    counts = 10.0 + 3.0 * np.cos(2 * np.pi * t - np.radians(phase))
    got = float(first_harmonic_phase(counts))
    assert abs((got - phase + 180) % 360 - 180) < 1e-6


def test_truth_phase_statistics_of_a_known_distribution(seed):
    rng = np.random.default_rng(seed)
    phases = np.mod(rng.normal(140.0, 10.0, 200_000), 360.0)
    stats = truth_phase_statistics(phases)
    assert stats["psd_deg"] == pytest.approx(10.0, abs=0.3), f"seed {seed}"
    assert stats["pbw_deg"] == pytest.approx(2 * 1.96 * 10.0, abs=1.0), f"seed {seed}"
    assert abs(stats["mean_phase_deg"] - 140.0) < 0.5, f"seed {seed}"
    wrapped = truth_phase_statistics(np.mod(phases + 220.0, 360.0))  # straddles 0/360
    assert wrapped["psd_deg"] == pytest.approx(stats["psd_deg"], abs=0.3), f"seed {seed}"
    assert 0.0 < stats["entropy"] < 1.0
