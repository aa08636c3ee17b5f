"""Phase analysis on gated voxel phantoms at clinical noise (acceptance, issue 3).

Gated phantoms (node.synth, default clinical counts, 6.4 mm voxels, FWHM 12 mm, regional
phase jitter SD 10 deg) are located with the pipeline's locate_lv, every gate is
pre-filtered (node.quant.phase.prefilter_gated_voxels, 8 mm) and sampled with
sample_gated_polar_maps along the summed mid-wall surface (as node.pipelines.spect_mpi),
then analysed with the default PhaseParameters (no polar smoothing, area x A1/A0 weights,
basal 15 % of the rows left out).

Reference: the count-based phase truth of the phantom (first harmonic of the noise-free
blurred gated maps along the true normals, Truth.count_phase_deg) summarised with the same
phase_statistics (area weights, every row). The geometric thickening phase (Truth.sample_phase_deg)
is printed too; blur makes the count-based truth narrower than the geometric one.

Per-phantom accuracy (bench/validate_spect.py, 200 seeds 90000-90199, 2026-12-03): PSD error
-0.24 +- 1.37 deg (8 gates) / -0.13 +- 1.43 (16 gates), worst +4.73; bandwidth error
-1.32 +- 5.49 / -1.49 +- 5.93 deg, worst +20.65; PSD and bandwidth both inside +-3 / +-10 for
93 % (8 gates) / 89 % (16 gates). The scatter is count noise: two Poisson draws of the same
phantom differ by SD 1.1-1.2 deg (PSD) / 4.3-4.5 deg (bandwidth) per draw, noise at the scale of
the true regional phase pattern that no smoothing separates from it (part I of the bench: even
the phantom's own 7-number phase model, fitted to the measured map, moves by SD 1.5 deg in PSD with
the counts alone once the prefilter's narrowing is undone). A per-phantom +-3 / +-10
assertion would fail about 1 phantom in 10, so the acceptance tolerance is asserted on the mean
of six phantoms (SD about 0.6 / 2.3 deg) and every single phantom must stay within PSD +-6 and
bandwidth +-25 deg (about 4 SD of the per-phantom scatter: a gross failure, not the acceptance).
"""

from __future__ import annotations

import numpy as np

from node.imaging.volume import Volume
from node.quant.orientation import locate_lv
from node.quant.phase import analyse_phase, phase_statistics, prefilter_gated_voxels
from node.quant.polar_map import grid_rows_z, midwall_surface_rows, sample_gated_polar_maps
from node.quant.segments import DEFAULT_GRID
from node.synth.geometry import LATERAL_DELAY
from node.synth.spect.phantom import PhantomSpec, make_acquisition


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
    """Acceptance: PSD within +-3 deg and bandwidth within +-10 deg at clinical noise (mean of six
    normals, three at 8 and three at 16 gates); every single normal within PSD +-6 / bandwidth +-25 deg
    and peak phase +-20 deg; a delayed lateral wall clearly above the normals."""
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
        # peak phase = mode of the histogram, a heavy-tailed statistic under noise: error SD 3.4-3.8 deg,
        # worst 13.9 deg in 300 fresh seeds (50000-50299) and 16.0 deg in one full-suite run (seed 30426281)
        assert abs(np.mod(m.peak_phase_deg - t.peak_phase_deg + 180, 360) - 180) <= 20.0, lines[-1]
        # per phantom, gross failures only (200 seeds: PSD worst +4.73, bandwidth worst +20.65; see above)
        assert abs(psd_err[-1]) <= 6.0, lines[-1]
        assert abs(bw_err[-1]) <= 25.0, lines[-1]
    report = "\n".join(lines)
    assert abs(np.mean(psd_err)) <= 3.0, f"mean PSD error {np.mean(psd_err):.2f}\n{report}"
    assert abs(np.mean(bw_err)) <= 10.0, f"mean bandwidth error {np.mean(bw_err):.2f}\n{report}"

    n_gates = (8, 16)[int(rng.integers(2))]
    m, t, g = _measure(n_gates, (LATERAL_DELAY,), rng)
    line = _line(f"seed {seed} delayed lateral wall {n_gates} gates", m, t, g)
    print(line)
    # 150 fresh seeds (50000-50299, even pairs): delayed PSD 20.2 +- 3.9 deg (min 11.1), bandwidth 77 +- 14 deg
    # (min 42), entropy 0.69 +- 0.04; normals (300) PSD 7.9 +- 1.4, bandwidth 30 +- 5.5, entropy max 0.66.
    # Resampling those figures, this block fails in about 0.6 % of runs (the delayed truth itself varies:
    # PSD 24 +- 3.4 deg, and the 8 mm prefilter narrows the two-phase histogram by ~4.6 deg).
    assert m.psd_deg > np.mean(normal_psd) + 3.0, f"{line}; normal PSD {np.round(normal_psd, 1)}"
    assert m.bandwidth_deg > np.mean(normal_bw) + 10.0, f"{line}; normal BW {np.round(normal_bw, 1)}"
    assert m.entropy > np.mean(normal_entropy), f"{line}; normal entropy {np.round(normal_entropy, 2)}"
