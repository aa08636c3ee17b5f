"""Ground truth of a phantom acquisition, from the same analytic model.

Polar maps use ``node.quant.segments.DEFAULT_GRID`` (``[n_u=40, n_psi=72]``,
row 0 apex, 4 cap rows = segment 17, then 12 rows per third of the cavity
length). Cell ``(i, j)`` maps to the true mid-wall surface:

* non-cap rows: ``v = (u - u_cap) / (1 - u_cap)`` of the cavity length, i.e.
  ``z = T + v c`` from the epicardial apex (``T`` apical wall, ``c`` cavity
  long semi-axis);
* cap rows: ``z`` from the mid-wall apex ``T/2`` (u = 0) to ``T`` (u = u_cap);

so each cell's AHA segment from ``DEFAULT_GRID.segment_ids()`` is the segment
of the true myocardium there. The mid-wall surface is the ellipsoid halfway
between endocardium and epicardium; normals are its gradient directions.

Phase convention (reference 2.7): gate centres at ``(k + 0.5) / N``;
``phi = (180 / N - arg X1) mod 360`` with ``X1 = sum_k c_k exp(-2 pi i k / N)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from node.quant.lv_frame import LVFrame
from node.quant.segments import DEFAULT_GRID, N_SEGMENTS, TERRITORY_SEGMENTS, PolarGrid
from node.synth.anatomy import (
    Defect,
    HeartModel,
    attenuation_factor,
    defect_deficit,
    depth_fraction,
    myocardial_segments,
)
from node.synth.geometry import PSI_FINE_DEG, LVGeometry

__all__ = [
    "Truth",
    "first_harmonic_phase",
    "truth_phase_statistics",
    "midwall_samples",
    "sample_max_along_normals",
    "transmural_mean_activity",
    "analytic_segment_truth",
    "score_from_uptake",
]

SAMPLES_PER_NORMAL = 25
SEARCH_MARGIN_MM = 2.0


def first_harmonic_phase(counts: np.ndarray) -> np.ndarray:
    """Phase (deg, [0, 360)) of the first harmonic of ``counts[..., gate]`` (gate centres at (k+0.5)/N)."""
    counts = np.asarray(counts, dtype=float)
    n = counts.shape[-1]
    k = np.arange(n)
    x1 = np.sum(counts * np.exp(-2j * np.pi * k / n), axis=-1)
    return np.mod(180.0 / n - np.degrees(np.angle(x1)), 360.0)


def truth_phase_statistics(phases_deg: np.ndarray, weights: np.ndarray | None = None, bin_deg: float = 1.0) -> dict[str, float]:
    """Phase statistics of a phantom's true (weighted) phase samples, in degrees (the ``Truth`` record's).

    The node measures patients with :func:`node.quant.phase.phase_statistics`; this one
    summarises a phantom's truth.

    Histogram with ``bin_deg`` bins on [0, 360); the mode bin centre is the
    peak phase. Phases are re-centred so that the mode sits at 180 deg, then:
    ``mean_phase_deg`` (circular weighted mean), ``psd_deg`` (weighted SD),
    ``pbw_deg`` (central 95 %: 97.5th minus 2.5th weighted percentile),
    ``pbw_shortest_deg`` (shortest arc of whole bins holding >= 95 % of the
    weight), ``skewness`` and ``kurtosis`` (Pearson, not excess: m3/m2^1.5,
    m4/m2^2), ``entropy`` (-sum p log p / log n_bins, 0..1).
    """
    phases = np.mod(np.asarray(phases_deg, dtype=float).ravel(), 360.0)
    w = np.ones_like(phases) if weights is None else np.asarray(weights, dtype=float).ravel()
    keep = np.isfinite(phases) & (w > 0)
    phases, w = phases[keep], w[keep]
    if phases.size == 0:
        raise ValueError("no phase samples with positive weight")
    n_bins = int(round(360.0 / bin_deg))
    hist = np.bincount(np.minimum((phases / bin_deg).astype(int), n_bins - 1), weights=w, minlength=n_bins)
    p = hist / hist.sum()
    mode = (int(np.argmax(hist)) + 0.5) * bin_deg
    shifted = np.mod(phases - mode + 180.0, 360.0)
    total = w.sum()
    mean = float(np.sum(w * shifted) / total)
    centred = shifted - mean
    m2 = float(np.sum(w * centred**2) / total)
    m3 = float(np.sum(w * centred**3) / total)
    m4 = float(np.sum(w * centred**4) / total)
    order = np.argsort(shifted)
    cum = np.cumsum(w[order]) / total
    lo = float(np.interp(0.025, cum, shifted[order]))
    hi = float(np.interp(0.975, cum, shifted[order]))
    doubled = np.concatenate([p, p])
    csum = np.concatenate([[0.0], np.cumsum(doubled)])
    shortest = 360.0
    for width in range(1, n_bins + 1):
        sums = csum[width : width + n_bins] - csum[:n_bins]
        if np.max(sums) >= 0.95 - 1e-12:
            shortest = width * bin_deg
            break
    nz = p[p > 0]
    entropy = float(-np.sum(nz * np.log(nz)) / np.log(n_bins))
    circ = np.angle(np.sum(w * np.exp(1j * np.radians(phases))))
    return {
        "peak_phase_deg": float(mode),
        "mean_phase_deg": float(np.mod(np.degrees(circ), 360.0)),
        "psd_deg": float(np.sqrt(m2)),
        "pbw_deg": hi - lo,
        "pbw_shortest_deg": float(shortest),
        "skewness": m3 / m2**1.5 if m2 > 1e-9 else 0.0,
        "kurtosis": m4 / m2**2 if m2 > 1e-9 else 0.0,
        "entropy": abs(entropy),
    }


def midwall_samples(geom: LVGeometry, grid: PolarGrid = DEFAULT_GRID) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mid-wall points and normals of the grid cells, in LV coordinates (l, a, s) mm.

    Returns ``(points [n_u, n_psi, 3], normals [n_u, n_psi, 3], half_thickness_mm [n_u, n_psi],
    cell_volume_mm3 [n_u, n_psi])`` (normals point outward, from endocardium to epicardium).
    """
    u = grid.u_centres[:, None]
    psi = grid.psi_centres_deg[None, :]
    a, A = geom.radii_at(grid.psi_centres_deg)
    a, A = a[None, :], A[None, :]
    t_apex = geom.apex_wall_mm
    c, C = geom.c_endo, geom.c_epi
    am, cm = 0.5 * (a + A), 0.5 * (c + C)
    v = (u - grid.u_cap) / (1.0 - grid.u_cap)
    z_body = t_apex + v * c
    z_cap = 0.5 * t_apex + (u / grid.u_cap) * 0.5 * t_apex
    z = np.where(u < grid.u_cap, z_cap, z_body) * np.ones_like(am)
    zeta = z - C
    r = am * np.sqrt(np.clip(1.0 - (zeta / cm) ** 2, 0.0, None))
    nz, nr = zeta / cm**2, r / am**2
    norm = np.hypot(nz, nr)
    nz, nr = nz / norm, nr / norm
    psi_rad = np.radians(psi) * np.ones_like(am)
    points = np.stack([z, r * np.cos(psi_rad), r * np.sin(psi_rad)], axis=-1)
    normals = np.stack([nz, nr * np.cos(psi_rad), nr * np.sin(psi_rad)], axis=-1)
    half = 0.5 * ((A - a) * np.abs(nr) + t_apex * np.abs(nz))
    # approximate myocardial volume of each cell: wall thickness x surface patch
    dz = np.gradient(z, axis=0)
    dr = np.gradient(r, axis=0)
    ds = np.hypot(dz, dr)
    dpsi = np.radians(360.0 / grid.n_psi)
    cell_volume = 2.0 * half * ds * np.maximum(r, 0.25 * t_apex) * dpsi
    return points, normals, half, cell_volume


def _normal_profile_points(geom: LVGeometry, grid: PolarGrid, margin_mm: float) -> np.ndarray:
    points, normals, half, _ = midwall_samples(geom, grid)
    s = np.linspace(-1.0, 1.0, SAMPLES_PER_NORMAL)
    offsets = (half + margin_mm)[..., None] * s  # [n_u, n_psi, K]
    return points[:, :, None, :] + offsets[..., None] * normals[:, :, None, :]


def sample_max_along_normals(
    voxels: np.ndarray,
    affine: np.ndarray,
    frame: LVFrame,
    geom: LVGeometry,
    grid: PolarGrid = DEFAULT_GRID,
    margin_mm: float = SEARCH_MARGIN_MM,
) -> np.ndarray:
    """Max of ``voxels[slice,row,col]`` (trilinear) along the true mid-wall normals within
    ``+-(half wall + margin_mm)``; returns ``[n_u, n_psi]``."""
    lv_points = _normal_profile_points(geom, grid, margin_mm)
    xyz = frame.to_patient(lv_points)
    inverse = np.linalg.inv(affine)
    index = xyz @ inverse[:3, :3].T + inverse[:3, 3]
    values = ndimage.map_coordinates(
        np.asarray(voxels, dtype=float), index.reshape(-1, 3).T, order=1, mode="nearest"
    ).reshape(index.shape[:-1])
    return values.max(axis=-1)


def transmural_mean_activity(heart: HeartModel, grid: PolarGrid = DEFAULT_GRID, n_depth: int = 16) -> np.ndarray:
    """Unblurred myocardial activity of each cell, averaged through the wall, ``[n_u, n_psi]``.

    Each cell takes its own AHA segment (``grid.segment_ids()``, true by
    construction of the mid-wall mapping) and the attenuation-like factor at
    its azimuth; defects apply over their transmural fraction.
    """
    segments = grid.segment_ids()
    depth = (np.arange(n_depth) + 0.5) / n_depth
    deficit = defect_deficit(segments[..., None] * np.ones(n_depth, dtype=int), np.broadcast_to(depth, segments.shape + (n_depth,)), heart.defects)
    factor = attenuation_factor(grid.psi_centres_deg, heart.attenuation_depth, heart.attenuation_centre_deg)[None, :]
    return (1.0 - deficit).mean(axis=-1) * factor


@dataclass(frozen=True)
class SegmentTruth:
    """Volume-weighted per-segment truth (index 0 = segment 1)."""

    volume_ml: np.ndarray  # (17,)
    deficit: np.ndarray  # (17,) mean fractional loss from defects
    uptake_pct: np.ndarray  # (17,) mean activity incl. artefacts, % of normal
    total_volume_ml: float
    tpd_pct: float  # 100 * volume-weighted mean deficit over the LV


def analytic_segment_truth(
    heart: HeartModel, geom: LVGeometry, n_z: int = 150, n_depth: int = 6
) -> SegmentTruth:
    """Integrate the myocardium of ``geom`` in (z, psi, depth) and summarise per AHA segment."""
    C, c = geom.c_epi, geom.c_endo
    z = (np.arange(n_z) + 0.5) / n_z * C
    f = (np.arange(n_depth) + 0.5) / n_depth
    zz = z[:, None, None]
    psi = PSI_FINE_DEG[None, :, None]
    a = geom.a_endo[None, :, None]
    A = geom.a_epi[None, :, None]
    zeta = zz - C
    r_endo = a * np.sqrt(np.clip(1.0 - (zeta / c) ** 2, 0.0, None))
    r_epi = A * np.sqrt(np.clip(1.0 - (zeta / C) ** 2, 0.0, None))
    r = r_endo + f[None, None, :] * (r_epi - r_endo)
    weight = r * (r_epi - r_endo) / n_depth * np.radians(360.0 / len(PSI_FINE_DEG)) * (C / n_z)
    zb, psib, rb = np.broadcast_arrays(zz, psi, r)
    aa, AA = np.broadcast_to(a, r.shape), np.broadcast_to(A, r.shape)
    seg = myocardial_segments(zb, psib, geom)
    depth = depth_fraction(zb, rb, aa, AA, geom)
    deficit = defect_deficit(seg, depth, heart.defects)
    activity = (1.0 - deficit) * attenuation_factor(psib, heart.attenuation_depth, heart.attenuation_centre_deg)
    weight = np.broadcast_to(weight, r.shape)
    ids = seg.ravel()
    vol = np.bincount(ids, weights=weight.ravel(), minlength=N_SEGMENTS + 1)[1:]
    dsum = np.bincount(ids, weights=(weight * deficit).ravel(), minlength=N_SEGMENTS + 1)[1:]
    asum = np.bincount(ids, weights=(weight * activity).ravel(), minlength=N_SEGMENTS + 1)[1:]
    total = float(weight.sum())
    return SegmentTruth(
        volume_ml=vol / 1000.0,
        deficit=dsum / vol,
        uptake_pct=100.0 * asum / vol,
        total_volume_ml=total / 1000.0,
        tpd_pct=100.0 * float(dsum.sum()) / total,
    )


def score_from_uptake(uptake_pct: np.ndarray) -> np.ndarray:
    """DB-free 0-4 score of relative uptake (%): >=70 -> 0, 60-69 -> 1, 50-59 -> 2, 40-49 -> 3, <40 -> 4."""
    u = np.asarray(uptake_pct, dtype=float)
    return np.select([u >= 70, u >= 60, u >= 50, u >= 40], [0, 1, 2, 3], default=4).astype(int)


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "f":
            rounded = np.round(value, 5)
            return np.where(np.isfinite(rounded), rounded, np.array(None, dtype=object)).tolist()
        return value.tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, LVFrame):
        return {"apex_mm": _jsonable(value.apex_mm), "long_axis": _jsonable(value.long_axis),
                "apex_definition": "epicardial apex at end-diastole"}
    return value


@dataclass(frozen=True)
class Truth:
    """Ground truth of one acquisition (state) of a phantom. Units in the field names.

    Segment arrays have 17 entries, index 0 = segment 1. Polar maps are
    ``[n_u=40, n_psi=72]`` on ``DEFAULT_GRID``. Volumes in mL, phases in
    degrees of the R-R interval. Gated items are None for ungated acquisitions.
    """

    state: str
    tracer: str
    sex: str
    shape: str
    frame: LVFrame
    defects: tuple[Defect, ...]
    defect_segments: tuple[int, ...]
    defect_territories: tuple[str, ...]
    segment_deficit: np.ndarray
    segment_uptake_pct: np.ndarray
    segment_volume_ml: np.ndarray
    segment_scores: np.ndarray  # %-of-normal classes (>=70:0, 60s:1, 50s:2, 40s:3, <40:4)
    sss: int
    segment_scores_severity: np.ndarray  # round-half-up(4 x segment_deficit) (the default mapping of node.quant.scores)
    sss_severity: int
    tpd_pct: float
    polar_map_unblurred: np.ndarray
    polar_map_blurred: np.ndarray
    segment_uptake_blurred_pct: np.ndarray  # [17] % of the map reference, node.quant.polar_map.relative_pct rule
    polar_cell_volume_mm3: np.ndarray
    gate_polar_maps_blurred: np.ndarray | None
    gate_volumes_ml: np.ndarray
    edv_ml: float
    esv_ml: float
    ef_pct: float
    shape_edv_ml: float
    shape_esv_ml: float
    shape_ef_pct: float
    myocardial_volume_ml: float
    imposed_delay_deg: np.ndarray  # (360,) regional delay per 1-degree azimuth bin
    sample_phase_deg: np.ndarray | None
    phase_stats: dict[str, float] | None
    count_phase_deg: np.ndarray | None
    count_phase_stats: dict[str, float] | None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (arrays as nested lists)."""
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if name == "defects":
                value = [
                    {"segments": list(d.segments), "severity": d.severity, "reversible": d.reversible,
                     "transmural_fraction": d.transmural_fraction}
                    for d in value
                ]
            out[name] = _jsonable(value)
        return out


def territories_of(segments: tuple[int, ...]) -> tuple[str, ...]:
    """Territories touched by a set of segments (standard table)."""
    return tuple(t for t, segs in TERRITORY_SEGMENTS.items() if set(segs) & set(segments))
