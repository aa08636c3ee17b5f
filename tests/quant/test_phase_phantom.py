"""Phase analysis on gated voxel phantoms at clinical noise (acceptance, issue 3).

Gated phantoms (node.synth, default clinical counts, 6.4 mm voxels, FWHM 12 mm, regional
phase jitter SD 10 deg) are located with the pipeline's locate_lv, every gate is
pre-filtered (node.quant.phase.prefilter_gated_voxels, 8 mm) and sampled with
sample_gated_polar_maps along the summed mid-wall surface (as node.pipelines.spect_mpi),
then analysed with the default PhaseParameters.

Reference: the count-based phase truth of the phantom (first harmonic of the noise-free
blurred gated maps along the true normals, Truth.count_phase_deg) summarised with the same
phase_statistics (area weights). The geometric thickening phase (Truth.sample_phase_deg)
is printed too; blur makes the count-based truth narrower than the geometric one.
"""

from __future__ import annotations

import numpy as np

from node.imaging.volume import Volume
from node.quant.orientation import locate_lv
from node.quant.phase import analyse_phase, phase_statistics, prefilter_gated_voxels
from node.quant.polar_map import grid_rows_z, midwall_surface_rows, sample_gated_polar_maps
from node.quant.segments import DEFAULT_GRID
from node.synth.phantom import LATERAL_DELAY, PhantomSpec, make_acquisition


def _measure(n_gates: int, delays: tuple, rng: np.random.Generator):
    spec = PhantomSpec(n_gates=n_gates, phase_delays=delays, phase_jitter_sd_deg=10.0, sex=("M", "F")[int(rng.integers(2))])
    acquisition = make_acquisition(spec, "rest", rng)
    truth = acquisition.truth
    location = locate_lv(acquisition.summed)
    frames = acquisition.frames
    smooth = Volume(prefilter_gated_voxels(frames.voxels, frames.spacing_mm), frames.affine)
    # as node.pipelines.spect_mpi: normals of the mid-wall surface of the summed reconstruction
    rows_z = grid_rows_z(location, DEFAULT_GRID)
    surface = midwall_surface_rows(acquisition.summed, location, rows_z, DEFAULT_GRID.n_psi)
    gated = sample_gated_polar_maps(smooth, location, DEFAULT_GRID, surface=surface)
    measured = analyse_phase(gated.values, gated.weights).statistics
    count_truth = phase_statistics(truth.count_phase_deg, truth.polar_cell_volume_mm3)
    geometric = phase_statistics(truth.sample_phase_deg, truth.polar_cell_volume_mm3)
    return measured, count_truth, geometric


def _line(name: str, m, t, g) -> str:
    return (
        f"{name}: PSD {m.psd_deg:.1f} (count truth {t.psd_deg:.1f}, geometric {g.psd_deg:.1f}); "
        f"BW {m.bandwidth_deg:.1f} ({t.bandwidth_deg:.1f}, {g.bandwidth_deg:.1f}); "
        f"peak {m.peak_phase_deg:.1f} ({t.peak_phase_deg:.1f}); entropy {m.entropy:.2f} ({t.entropy:.2f})"
    )


def test_psd_and_bandwidth_at_clinical_noise_and_delayed_lateral_wall(seed: int) -> None:
    """Acceptance: PSD within +-3 deg and bandwidth within +-10 deg at clinical noise.

    Single phantoms scatter (bench/validate_spect.py, docs/validation.md: PSD error SD ~1.6 deg,
    bandwidth error SD ~7 deg per phantom; 83 % (8 gates) / 87 % (16 gates) of single normals inside both
    tolerances, 60 seeds, 2026-11-21 10:41 UTC), so the acceptance tolerance is applied to the mean
    error of six normals (three at 8, three at 16 gates), and each single phantom must stay
    within about 3 SD of that spread (PSD +-8, bandwidth +-30 deg).
    """
    rng = np.random.default_rng(seed)
    psd_err, bw_err, normal_psd, normal_bw, normal_entropy = [], [], [], [], []
    lines = []
    for n_gates in (8, 16, 8, 16, 8, 16):
        m, t, g = _measure(n_gates, (), rng)
        lines.append(_line(f"seed {seed} normal {n_gates} gates", m, t, g))
        print(lines[-1])
        psd_err.append(m.psd_deg - t.psd_deg)
        bw_err.append(m.bandwidth_deg - t.bandwidth_deg)
        normal_psd.append(m.psd_deg)
        normal_bw.append(m.bandwidth_deg)
        normal_entropy.append(m.entropy)
        assert abs(np.mod(m.peak_phase_deg - t.peak_phase_deg + 180, 360) - 180) <= 15.0, lines[-1]
    report = "\n".join(lines)
    assert abs(np.mean(psd_err)) <= 3.0, f"mean PSD error {np.mean(psd_err):.2f}\n{report}"
    assert abs(np.mean(bw_err)) <= 10.0, f"mean bandwidth error {np.mean(bw_err):.2f}\n{report}"
    assert max(abs(e) for e in psd_err) <= 8.0, report
    assert max(abs(e) for e in bw_err) <= 30.0, report

    n_gates = (8, 16)[int(rng.integers(2))]
    m, t, g = _measure(n_gates, (LATERAL_DELAY,), rng)
    line = _line(f"seed {seed} delayed lateral wall {n_gates} gates", m, t, g)
    print(line)
    # 60 seeds: delayed PSD 22.6 +- 4.3 deg (min 12.3), bandwidth 89 +- 17 deg (min 44);
    # normals PSD 8.2 +- 1.7 deg, bandwidth 30 +- 8 deg; delayed - normal >= +4.8 deg PSD, >= +16 deg bandwidth
    assert m.psd_deg > np.mean(normal_psd) + 3.0, f"{line}; normal PSD {np.round(normal_psd, 1)}"
    assert m.bandwidth_deg > np.mean(normal_bw) + 10.0, f"{line}; normal BW {np.round(normal_bw, 1)}"
    assert m.entropy > np.mean(normal_entropy), f"{line}; normal entropy {np.round(normal_entropy, 2)}"
