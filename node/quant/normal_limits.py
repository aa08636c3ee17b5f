"""Normal limits of relative myocardial uptake: SYNTHETIC, versioned data files.

A normal-limit set holds, per canonical polar-map cell ``[n_u, n_psi]`` (row 0
apex, column ``j`` = azimuth ``[5j, 5j+5)`` deg from anterior toward septum, see
:mod:`node.quant.segments`), the mean ``mu`` and standard deviation ``sd`` of the
*normalised* uptake of a normal population. Normalised uptake is a polar map
multiplied by the per-subject scale that best matches it to the population mean
(iterative weighted least squares over non-outlying cells, the same rule as
:func:`node.quant.scores.fit_scale`); the population mean is scaled so that its
maximum is 1.0. Limits are specific to tracer (``"tc99m"``, ``"tl201"``) and
sex (``"M"``, ``"F"``); camera, acquisition position and attenuation correction
are *not* distinguished (one synthetic camera model, no attenuation correction).

THESE LIMITS ARE SYNTHETIC. They are built from a simulated normal cohort, not
from patients, and are not a clinical normal database. Scores computed with them
are research outputs only.

The simulated normal cohort (reference note section 7.2), two builders:

* ``phantom`` (version 2, the one the pipeline loads): 40 voxel phantoms per tracer
  and sex from :mod:`node.synth.spect.phantom` (ungated, 64^3 x 6.4 mm, Poisson noise),
  localised and sampled exactly as the SPECT pipeline does
  (:func:`phantom_polar_map` = :func:`node.quant.polar_map.perfusion_polar_map` on
  the summed reconstruction). Per subject: ED/ES semi-axes and wall x U(0.9, 1.1) (+-10 %),
  pose jitter +-15 deg, counts U(0.5, 1.5) x the tracer default (Tl-201 = 0.3 x Tc-99m),
  FWHM U(10, 13) mm (Tc-99m) / U(12, 15) mm (Tl-201), attenuation-like reduction
  inferior U(10, 20) % (men, centre jitter +-10 deg) or anterior U(5, 15) % (women,
  +-20 deg). See :func:`phantom_normal_subject_spec`.
* ``analytic`` (version 1, used by the unit tests of the scoring rules): the same
  population evaluated directly in polar-map space (:class:`AnalyticPolarModel`):
  activity blurred along the mid-wall surface, slab partial-volume recovery
  ``erf(t / (2 sqrt(2) sigma))``, blurred truncation at the base plane, a +-10 deg
  azimuthal jitter of the attenuation pattern and +-3 mm of the base, counts
  U(80, 400) per voxel (Tl-201 x 0.3) and Gaussian cell noise of relative SD
  ``1 / sqrt(2 * counts * recovery)``; attenuation as above (apex 50 % of the base
  reduction in men, Tl-201 reductions x 1.2).

After the limits, defect cases per tracer and sex calibrate the measured deficit of
absent uptake (:func:`calibrate_absent_uptake`): 12 whole-territory defects of
severity U(0.3, 0.9) (segment and TPD calibration), then 24 defects over a whole
territory, its basal + mid or its mid + apical + apex rings (cycled), severity
U(0.2, 0.85) (TPD calibration only). The cohort mean cell areas are stored as
``cell_area`` (the fixed area weights of the TPD).

The manifest ``node/quant/data/normal_limits.json`` records, for every file, the
builder, cohort size, seed, command, calibration and SHA-256. Regenerate with::

    python -m node.quant.normal_limits build --n 40 --source phantom --version 2   # ~4 min on 2 cores
    python -m node.quant.normal_limits build --n 40 --source analytic --version 1  # ~2 s

Array conventions: ``mean``, ``sd`` are float ``[n_u, n_psi]``; ``sd`` is in the
same unit as ``mean`` (fraction of the population peak).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.special import erf

from node.imaging import radiopharmaceuticals
from node.quant.segments import DEFAULT_GRID, PolarGrid

__all__ = [
    "SYNTHETIC_LABEL",
    "TRACERS",
    "SEXES",
    "DATA_DIR",
    "MANIFEST_PATH",
    "NormalLimits",
    "AnalyticPolarModel",
    "normalise_tracer",
    "normalise_sex",
    "available_normal_limits",
    "load_normal_limits",
    "build_normal_limits",
    "analytic_normal_cohort",
    "random_normal_subject",
    "polar_cell_areas",
    "smooth_polar_map",
    "phantom_normal_cohort",
    "phantom_normal_subject_spec",
    "phantom_polar_map",
    "calibrate_absent_uptake",
    "analytic_defect_cases",
    "phantom_defect_cases",
    "replace_limits",
    "main",
]

SYNTHETIC_LABEL = (
    "SYNTHETIC normal limits built from simulated phantoms; not a clinical normal database; research use only"
)
TRACERS: tuple[str, ...] = ("tc99m", "tl201")
SEXES: tuple[str, ...] = ("M", "F")
DATA_DIR = Path(__file__).resolve().parent / "data"
MANIFEST_PATH = DATA_DIR / "normal_limits.json"
SD_FLOOR_FRACTION = 0.02  # sd >= 2 % of the mean, avoids division blow-ups in flat cells

_TRACER_ALIASES = {
    "tc99m": "tc99m",
    "tc-99m": "tc99m",
    "tc99": "tc99m",
    "99mtc": "tc99m",
    "technetium": "tc99m",
    "sestamibi": "tc99m",
    "mibi": "tc99m",
    "tetrofosmin": "tc99m",
    "myoview": "tc99m",
    "tl201": "tl201",
    "tl-201": "tl201",
    "201tl": "tl201",
    "thallium": "tl201",
    "thallous": "tl201",
}


def normalise_tracer(key: str | None) -> str:
    """Map a tracer description to ``"tc99m"`` or ``"tl201"``.

    Accepts keys such as ``"Tc-99m"``, ``"tc99m_sestamibi"``, ``"Tc-99m tetrofosmin"``,
    ``"Tl-201"``, ``"thallium"`` (case-insensitive, substring match).
    """
    if key is None:
        raise ValueError(
            "tracer unknown: normal limits are tracer-specific; the Radiopharmaceutical Information Sequence "
            "(0054,0016) must name Tc-99m sestamibi/tetrofosmin or Tl-201"
        )
    text = str(key).lower().replace("_", " ").replace("^", " ")
    squashed = text.replace(" ", "").replace("-", "")
    for alias, tracer in _TRACER_ALIASES.items():
        if alias.replace("-", "") in squashed:
            return tracer
    raise ValueError(f"no normal limits for tracer {key!r}; available: Tc-99m (sestamibi, tetrofosmin), Tl-201")


def normalise_sex(sex: str | None) -> str:
    """Map Patient's Sex (0010,0040) to ``"M"``, ``"F"`` or ``"O"`` (other/unknown)."""
    if sex is None:
        return "O"
    s = str(sex).strip().upper()
    if s in ("M", "MALE"):
        return "M"
    if s in ("F", "FEMALE"):
        return "F"
    return "O"


@dataclass(frozen=True, eq=False)
class NormalLimits:
    """Per-cell normal mean and SD of normalised uptake (SYNTHETIC).

    ``mean`` and ``sd`` are ``[n_u, n_psi]`` arrays (fraction of the normal peak).
    ``detection_sd`` is the SD of the cohort maps after smoothing each with
    :func:`smooth_polar_map` (Gaussian, ``detection_smoothing_cells``); the mean of
    the smoothed maps is ``smooth_polar_map(mean)``. Scores detect abnormal cells on
    the smoothed patient map against it (less noise), and grade them on the
    unsmoothed map against ``mean``.

    ``absent_uptake_deficit`` is the measured deficit ``(mu - s P)/mu`` of
    myocardium with no tracer uptake at all, inside a defect: below 1 because blur
    and background spill counts into a defect. It makes segment severity 4 mean
    "absent uptake" (reference note 2.5). ``tpd_absent_uptake_deficit`` is the same
    for the TPD area integral (blur also moves part of the deficit outside the
    defect, where it is still counted, so it is closer to 1). Both are calibrated on
    synthetic defect phantoms (:func:`calibrate_absent_uptake`).

    ``cell_area`` (``[n_u, n_psi]`` mm^2, or None for files without it) is the mean
    mid-wall area of each cell over the normal cohort: the fixed area weights of the
    TPD (% of a normal LV, :class:`node.quant.scores.ScoreParameters` ``tpd_weights``),
    which a patient's own cell areas are not inside severe defects (the sampled
    surface is distorted where counts are low).
    """

    tracer: str
    sex: str
    mean: np.ndarray
    sd: np.ndarray
    detection_sd: np.ndarray
    detection_smoothing_cells: float
    n_subjects: int
    version: str
    source: str
    label: str = SYNTHETIC_LABEL
    grid: PolarGrid = field(default=DEFAULT_GRID)
    absent_uptake_deficit: float = 1.0
    tpd_absent_uptake_deficit: float = 1.0
    cell_area: np.ndarray | None = None

    def __post_init__(self) -> None:
        for name in ("mean", "sd", "detection_sd", "cell_area"):
            value = getattr(self, name)
            if value is None and name == "cell_area":
                continue
            if value.shape != self.grid.shape:
                raise ValueError(f"normal limits {name} must be {self.grid.shape}, got {getattr(self, name).shape}")
        if not (np.all(np.isfinite(self.mean)) and np.all(self.sd > 0) and np.all(self.detection_sd > 0)):
            raise ValueError("normal limits contain non-finite means or non-positive SDs")
        if self.cell_area is not None and not (np.all(np.isfinite(self.cell_area)) and np.all(self.cell_area > 0)):
            raise ValueError("normal limits cell_area must be finite and positive")
        for name in ("absent_uptake_deficit", "tpd_absent_uptake_deficit"):
            if not 0.3 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0.3, 1], got {getattr(self, name)}")

    @property
    def key(self) -> str:
        return f"{self.tracer}_{self.sex}_v{self.version}"

    def describe(self) -> str:
        """One line for reports: which limits were used."""
        return (
            f"normal limits {self.tracer}/{self.sex} v{self.version} ({self.source}, n={self.n_subjects}); "
            f"{self.label}"
        )


# --------------------------------------------------------------------------------------------
# the analytic polar-map model (cohort simulation in polar-map space)
# --------------------------------------------------------------------------------------------


def polar_cell_areas(a_mm: float, c_mm: float, t_mm: float, grid: PolarGrid = DEFAULT_GRID) -> np.ndarray:
    """Mid-wall surface area (mm^2) of every polar cell of a truncated prolate ellipsoid LV.

    The mid-wall surface has semi-axes ``a + t/2`` (short) and ``c + t/2`` (long),
    truncated at the equatorial base plane. Cavity rows split the cavity length
    ``c`` (base plane to endocardial apex) evenly; cap rows cover the remaining
    ``t/2`` to the mid-wall apex. Returns ``[n_u, n_psi]``.
    """
    am, cm = a_mm + t_mm / 2.0, c_mm + t_mm / 2.0
    n_cav = grid.n_u - grid.n_cap
    # distance from the base plane (x) at row edges; rows run apex -> base
    cav_edges = np.linspace(c_mm, 0.0, n_cav + 1)
    cap_edges = np.linspace(cm, c_mm, grid.n_cap + 1)
    edges = np.concatenate([cap_edges[:-1], cav_edges])
    areas = np.empty(grid.n_u)
    for i in range(grid.n_u):
        xs = np.linspace(edges[i + 1], edges[i], 33)
        r = am * np.sqrt(np.clip(1.0 - (xs / cm) ** 2, 0.0, None))
        seg = np.hypot(np.diff(xs), np.diff(r))
        areas[i] = np.sum(0.5 * (r[1:] + r[:-1]) * seg) * 2.0 * np.pi / grid.n_psi
    return np.repeat(areas[:, None], grid.n_psi, axis=1)


@dataclass(frozen=True)
class AnalyticPolarModel:
    """One simulated subject evaluated directly in polar-map space.

    Lengths in mm, angles in degrees. ``defects`` maps an AHA segment (1..17) to
    its activity reduction (0..1). ``attenuation`` is ``(reduction, centre_psi_deg,
    half_width_deg, apex_weight)``: uptake multiplied by
    ``1 - reduction * taper(psi) * ramp(u)``, with a cosine taper over
    ``+-half_width`` and a long-axis ramp from ``apex_weight`` (apex) to 1 (base).
    """

    a_mm: float = 28.0
    c_mm: float = 65.0
    t_mm: float = 10.0
    fwhm_mm: float = 11.0
    counts_per_voxel: float = 200.0
    attenuation: tuple[float, float, float, float] = (0.0, 180.0, 75.0, 0.5)
    base_shift_mm: float = 0.0
    defects: tuple[tuple[int, float], ...] = ()
    grid: PolarGrid = DEFAULT_GRID

    @property
    def sigma_mm(self) -> float:
        return self.fwhm_mm / (2.0 * np.sqrt(2.0 * np.log(2.0)))

    def _row_geometry(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per row: distance of the row centre from the base plane (mm), mid-wall radius, row length (mm)."""
        g = self.grid
        am, cm = self.a_mm + self.t_mm / 2.0, self.c_mm + self.t_mm / 2.0
        n_cav = g.n_u - g.n_cap
        cav_edges = np.linspace(self.c_mm, 0.0, n_cav + 1)
        cap_edges = np.linspace(cm, self.c_mm, g.n_cap + 1)
        edges = np.concatenate([cap_edges[:-1], cav_edges])
        x_centre = 0.5 * (edges[1:] + edges[:-1])
        radius = am * np.sqrt(np.clip(1.0 - (x_centre / cm) ** 2, 0.0, None))
        r_edges = am * np.sqrt(np.clip(1.0 - (edges / cm) ** 2, 0.0, None))
        length = np.hypot(np.diff(edges), np.diff(r_edges))
        return x_centre, radius, length

    def activity(self) -> np.ndarray:
        """Unblurred relative activity ``[n_u, n_psi]`` (1 = normal myocardium)."""
        g = self.grid
        seg = g.segment_ids()
        act = np.ones(g.shape)
        for segment, severity in self.defects:
            if not 1 <= segment <= 17 or not 0.0 <= severity <= 1.0:
                raise ValueError(f"defect needs segment 1..17 and severity 0..1, got {segment}, {severity}")
            act = np.where(seg == segment, act * (1.0 - severity), act)
        reduction, centre, half_width, apex_weight = self.attenuation
        if reduction > 0:
            dpsi = np.mod(g.psi_centres_deg - centre + 180.0, 360.0) - 180.0
            taper = np.where(np.abs(dpsi) < half_width, 0.5 * (1.0 + np.cos(np.pi * dpsi / half_width)), 0.0)
            ramp = apex_weight + (1.0 - apex_weight) * g.u_centres
            act = act * (1.0 - reduction * ramp[:, None] * taper[None, :])
        return act

    def expected_map(self) -> np.ndarray:
        """Noise-free measured map ``[n_u, n_psi]`` (relative counts, 1 = fully recovered wall)."""
        x_centre, radius, length = self._row_geometry()
        sigma = self.sigma_mm
        act = self.activity()
        # blur along the surface: azimuthal (row-specific sigma, circular) then long axis
        blurred = np.empty_like(act)
        cell_deg = 360.0 / self.grid.n_psi
        for i in range(self.grid.n_u):
            arc = max(radius[i], 1e-3) * np.radians(cell_deg)
            s_cells = sigma / arc
            if s_cells > self.grid.n_psi:
                blurred[i] = act[i].mean()
            else:
                blurred[i] = gaussian_filter1d(act[i], s_cells, mode="wrap")
        mean_len = float(np.mean(length))
        blurred = gaussian_filter1d(blurred, sigma / mean_len, axis=0, mode="nearest")
        recovery = erf(self.t_mm / (2.0 * np.sqrt(2.0) * sigma))
        base = 0.5 * (1.0 + erf((x_centre + self.base_shift_mm) / (np.sqrt(2.0) * sigma)))
        return blurred * recovery * base[:, None]

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Noisy map and cell areas ``([n_u, n_psi], [n_u, n_psi])``."""
        expected = self.expected_map()
        rel_sd = 1.0 / np.sqrt(2.0 * self.counts_per_voxel * np.clip(expected, 1e-3, None))
        noisy = expected * (1.0 + rel_sd * rng.standard_normal(expected.shape))
        return np.clip(noisy, 0.0, None), polar_cell_areas(self.a_mm, self.c_mm, self.t_mm, self.grid)


def random_normal_subject(
    tracer: str, sex: str, rng: np.random.Generator, grid: PolarGrid = DEFAULT_GRID
) -> AnalyticPolarModel:
    """Draw one normal subject of the synthetic cohort (parameters in the module docstring)."""
    tracer = normalise_tracer(tracer)
    sex = normalise_sex(sex)
    if sex not in SEXES:
        raise ValueError("the synthetic cohort is simulated per sex: 'M' or 'F'")
    scale = rng.uniform(0.9, 1.1, size=3)
    tl = tracer == "tl201"
    counts = rng.uniform(80.0, 400.0) * (0.3 if tl else 1.0)
    fwhm = rng.uniform(12.0, 15.0) if tl else rng.uniform(10.0, 13.0)
    factor = 1.2 if tl else 1.0
    jitter = rng.uniform(-10.0, 10.0)
    if sex == "M":
        attenuation = (factor * rng.uniform(0.10, 0.20), 180.0 + jitter, 75.0, 0.5)
    else:
        attenuation = (factor * rng.uniform(0.05, 0.15), 0.0 + 2.0 * jitter, 60.0, 0.6)
    return AnalyticPolarModel(
        a_mm=28.0 * scale[0],
        c_mm=65.0 * scale[1],
        t_mm=10.0 * scale[2],
        fwhm_mm=fwhm,
        counts_per_voxel=counts,
        attenuation=attenuation,
        base_shift_mm=rng.uniform(-3.0, 3.0),
        grid=grid,
    )


def analytic_normal_cohort(
    tracer: str, sex: str, n: int, rng: np.random.Generator, grid: PolarGrid = DEFAULT_GRID
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` simulated normal polar maps and their cell areas, each ``[n, n_u, n_psi]``."""
    maps, weights = [], []
    for _ in range(n):
        values, w = random_normal_subject(tracer, sex, rng, grid).sample(rng)
        maps.append(values)
        weights.append(w)
    return np.stack(maps), np.stack(weights)


# --------------------------------------------------------------------------------------------
# building limits from a cohort of maps
# --------------------------------------------------------------------------------------------


def smooth_polar_map(values: np.ndarray, sigma_cells: float) -> np.ndarray:
    """Gaussian smoothing of ``[..., n_u, n_psi]`` maps: ``sigma_cells`` cells, circular in azimuth,
    edge-replicated along the long axis. ``sigma_cells <= 0`` returns the input."""
    if sigma_cells <= 0:
        return np.asarray(values, dtype=float)
    out = gaussian_filter1d(np.asarray(values, dtype=float), sigma_cells, axis=-1, mode="wrap")
    return gaussian_filter1d(out, sigma_cells, axis=-2, mode="nearest")



def build_normal_limits(
    maps: np.ndarray,
    weights: np.ndarray | None,
    tracer: str,
    sex: str,
    version: str,
    source: str,
    n_iterations: int = 4,
    outlier_sd: float = 2.5,
    smoothing_cells: float = 1.0,
    detection_smoothing_cells: float = 2.0,
    grid: PolarGrid = DEFAULT_GRID,
) -> NormalLimits:
    """Per-cell mean and SD of a normal cohort ``maps [subject, n_u, n_psi]``.

    Each subject is first scaled to its 95th percentile, then ``n_iterations``
    times: population mean and SD are computed, and each subject's scale is
    refitted by weighted least squares to the mean over the cells within
    ``outlier_sd`` SD of it. The mean is finally scaled to a maximum of 1.0.
    Mean and SD are smoothed with a Gaussian of ``smoothing_cells`` cells
    (circular in azimuth) to reduce the sampling noise of a small cohort; SD is
    floored at ``SD_FLOOR_FRACTION`` of the mean. ``detection_sd`` is the same
    SD computed on the normalised maps after Gaussian smoothing with
    ``detection_smoothing_cells`` (see :class:`NormalLimits`). ``cell_area`` is the
    cohort mean of ``weights`` (mid-wall cell areas, mm^2; None when ``weights`` is None).
    """
    maps = np.asarray(maps, dtype=float)
    if maps.ndim != 3 or maps.shape[1:] != grid.shape:
        raise ValueError(f"cohort maps must be [subject, {grid.n_u}, {grid.n_psi}], got {maps.shape}")
    if maps.shape[0] < 5:
        raise ValueError("normal limits need at least 5 subjects")
    w = np.ones_like(maps) if weights is None else np.asarray(weights, dtype=float)
    scales = 1.0 / np.percentile(maps.reshape(maps.shape[0], -1), 95, axis=1)
    mean = sd = None
    for _ in range(max(1, n_iterations)):
        norm = maps * scales[:, None, None]
        mean = norm.mean(axis=0)
        sd = norm.std(axis=0, ddof=1)
        sd = np.maximum(sd, SD_FLOOR_FRACTION * np.abs(mean))
        for s in range(maps.shape[0]):
            z = (mean - norm[s]) / sd
            inl = np.abs(z) < outlier_sd
            p, ww = maps[s][inl], w[s][inl] / sd[inl] ** 2
            scales[s] = float(np.sum(ww * p * mean[inl]) / np.sum(ww * p * p))
    norm = maps * scales[:, None, None]
    mean = norm.mean(axis=0)
    sd = norm.std(axis=0, ddof=1)
    det_sd = smooth_polar_map(norm, detection_smoothing_cells).std(axis=0, ddof=1)
    mean = smooth_polar_map(mean, smoothing_cells)
    sd = smooth_polar_map(sd, smoothing_cells)
    det_sd = smooth_polar_map(det_sd, smoothing_cells)
    peak = float(mean.max())
    mean, sd, det_sd = mean / peak, sd / peak, det_sd / peak
    sd = np.maximum(sd, SD_FLOOR_FRACTION * np.abs(mean))
    det_sd = np.maximum(det_sd, SD_FLOOR_FRACTION * np.abs(smooth_polar_map(mean, detection_smoothing_cells)))
    cell_area = None if weights is None else w.mean(axis=0)
    return NormalLimits(
        tracer=normalise_tracer(tracer),
        sex=normalise_sex(sex),
        mean=mean,
        sd=sd,
        detection_sd=det_sd,
        detection_smoothing_cells=float(detection_smoothing_cells),
        n_subjects=int(maps.shape[0]),
        version=str(version),
        source=source,
        grid=grid,
        cell_area=cell_area,
    )


# --------------------------------------------------------------------------------------------
# data files
# --------------------------------------------------------------------------------------------


def _file_name(tracer: str, sex: str, version: str) -> str:
    return f"normal_limits_{tracer}_{sex}_v{version}.npz"


def _read_manifest(data_dir: Path) -> dict:
    path = data_dir / MANIFEST_PATH.name
    if not path.exists():
        raise FileNotFoundError(
            f"normal-limit manifest {path} is missing; regenerate with "
            "`python -m node.quant.normal_limits build --n 40`"
        )
    return json.loads(path.read_text())


def available_normal_limits(data_dir: Path = DATA_DIR) -> list[dict]:
    """Manifest entries (tracer, sex, version, source, n_subjects, file, sha256, ...)."""
    return list(_read_manifest(data_dir)["entries"])


def _load_file(path: Path, entry: dict, grid: PolarGrid) -> NormalLimits:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != entry["sha256"]:
        raise ValueError(f"normal-limit file {path} does not match its manifest checksum; regenerate it")
    with np.load(path, allow_pickle=False) as data:
        mean = data["mean"].astype(float)
        sd = data["sd"].astype(float)
        det_sd = data["detection_sd"].astype(float)
        cell_area = data["cell_area"].astype(float) if "cell_area" in data.files else None
    return NormalLimits(
        tracer=entry["tracer"],
        sex=entry["sex"],
        mean=mean,
        sd=sd,
        detection_sd=det_sd,
        detection_smoothing_cells=float(entry["detection_smoothing_cells"]),
        absent_uptake_deficit=float(entry.get("absent_uptake_deficit", 1.0)),
        tpd_absent_uptake_deficit=float(entry.get("tpd_absent_uptake_deficit", 1.0)),
        cell_area=cell_area,
        n_subjects=int(entry["n_subjects"]),
        version=str(entry["version"]),
        source=entry["source"],
        label=entry.get("label", SYNTHETIC_LABEL),
        grid=grid,
    )


_CACHE: dict[tuple[str, str, str | None, str], NormalLimits] = {}


def load_normal_limits(
    tracer: str | None,
    sex: str | None,
    version: str | None = None,
    data_dir: Path = DATA_DIR,
    grid: PolarGrid = DEFAULT_GRID,
) -> NormalLimits:
    """Load the synthetic normal limits for a tracer and sex.

    ``tracer`` is any description :func:`normalise_tracer` understands. ``sex``
    ``"M"``/``"F"`` selects those limits; anything else (``"O"``, ``None``)
    gives pooled limits: mean of the M and F means, SD from the pooled variance
    plus half the difference of the means. ``version`` defaults to the highest
    version in the manifest. Results are cached per process.
    """
    tracer_key = normalise_tracer(tracer)
    sex_key = normalise_sex(sex)
    cache_key = (tracer_key, sex_key, version, str(data_dir))
    if cache_key in _CACHE:
        return _CACHE[cache_key]
    if sex_key == "O":
        m = load_normal_limits(tracer_key, "M", version, data_dir, grid)
        f = load_normal_limits(tracer_key, "F", version, data_dir, grid)
        mean = 0.5 * (m.mean + f.mean)
        sd = np.sqrt(0.5 * (m.sd**2 + f.sd**2) + (0.5 * (m.mean - f.mean)) ** 2)
        k = m.detection_smoothing_cells
        half_diff = 0.5 * (smooth_polar_map(m.mean, k) - smooth_polar_map(f.mean, k))
        det_sd = np.sqrt(0.5 * (m.detection_sd**2 + f.detection_sd**2) + half_diff**2)
        limits = NormalLimits(
            tracer_key, "O", mean, sd, det_sd, k, m.n_subjects + f.n_subjects, m.version,
            m.source + " (pooled M+F)", m.label, grid,
            absent_uptake_deficit=0.5 * (m.absent_uptake_deficit + f.absent_uptake_deficit),
            tpd_absent_uptake_deficit=0.5 * (m.tpd_absent_uptake_deficit + f.tpd_absent_uptake_deficit),
            cell_area=None if m.cell_area is None or f.cell_area is None else 0.5 * (m.cell_area + f.cell_area),
        )
        _CACHE[cache_key] = limits
        return limits
    entries = [e for e in available_normal_limits(data_dir) if e["tracer"] == tracer_key and e["sex"] == sex_key]
    if version is not None:
        entries = [e for e in entries if str(e["version"]) == str(version)]
    if not entries:
        raise FileNotFoundError(
            f"no normal limits for tracer {tracer_key}, sex {sex_key}, version {version or 'latest'} in {data_dir}"
        )
    entry = max(entries, key=lambda e: int(e["version"]))
    limits = _load_file(data_dir / entry["file"], entry, grid)
    _CACHE[cache_key] = limits
    return limits


def write_normal_limits(
    limits: NormalLimits, data_dir: Path, seed: int, command: str, builder_notes: str = ""
) -> dict:
    """Write one limits file (float32 npz) and add/replace its manifest entry. Returns the entry."""
    data_dir.mkdir(parents=True, exist_ok=True)
    name = _file_name(limits.tracer, limits.sex, limits.version)
    path = data_dir / name
    # deterministic bytes: np.savez stores no timestamps in the arrays; use a fixed member order
    arrays = {
        "mean": limits.mean.astype(np.float32),
        "sd": limits.sd.astype(np.float32),
        "detection_sd": limits.detection_sd.astype(np.float32),
    }
    if limits.cell_area is not None:
        arrays["cell_area"] = limits.cell_area.astype(np.float32)
    with open(path, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    entry = {
        "file": name,
        "tracer": limits.tracer,
        "sex": limits.sex,
        "version": limits.version,
        "source": limits.source,
        "n_subjects": limits.n_subjects,
        "seed": seed,
        "grid": {"n_u": limits.grid.n_u, "n_psi": limits.grid.n_psi, "n_cap": limits.grid.n_cap},
        "detection_smoothing_cells": limits.detection_smoothing_cells,
        "absent_uptake_deficit": round(float(limits.absent_uptake_deficit), 4),
        "tpd_absent_uptake_deficit": round(float(limits.tpd_absent_uptake_deficit), 4),
        "units": "fraction of the normal population peak (mean max = 1.0)",
        "label": SYNTHETIC_LABEL,
        "command": command,
        "notes": builder_notes,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }
    manifest_path = data_dir / MANIFEST_PATH.name
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    entries = [
        e
        for e in manifest.get("entries", [])
        if not (e["tracer"] == entry["tracer"] and e["sex"] == entry["sex"] and str(e["version"]) == entry["version"])
    ]
    entries.append(entry)
    entries.sort(key=lambda e: (e["tracer"], e["sex"], int(e["version"])))
    manifest = {
        "description": "Normal limits of normalised myocardial uptake per polar-map cell for node.quant.scores.",
        "label": SYNTHETIC_LABEL,
        "generated_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "entries": entries,
    }
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    _CACHE.clear()
    return entry


CohortBuilder = Callable[[str, str, int, np.random.Generator], tuple[np.ndarray, np.ndarray]]


def phantom_normal_subject_spec(tracer: str, sex: str, rng: np.random.Generator):
    """A :class:`node.synth.spect.phantom.PhantomSpec` of one normal subject of the voxel-phantom cohort.

    Shape: ED/ES semi-axes and wall each scaled by U(0.9, 1.1); counts U(0.5, 1.5) x the
    tracer default; FWHM the tracer's typical resolution +- 1.5 mm (uniform: Tc-99m 10.5-13.5,
    Tl-201 12-15 mm, ``node.imaging.radiopharmaceuticals``); pose jitter
    +-15 deg (synth default); attenuation-like artefact amplitude U(0.10, 0.20) inferior
    (men, centre jitter +-10 deg) or U(0.05, 0.15) anterior (women, +-20 deg); ungated
    (perfusion limits use summed images).
    """
    from node.synth import phantom as synth  # lazy: only the offline builder needs the phantoms

    tracer_key, sex_key = normalise_tracer(tracer), normalise_sex(sex)
    scale_a, scale_c, scale_t = rng.uniform(0.9, 1.1, size=3)
    base = synth.NORMAL
    shape = synth.LVShape(
        "normal-cohort",
        base.ed_a_mm * scale_a,
        base.ed_c_mm * scale_c,
        base.wall_mm * scale_t,
        base.es_a_mm * scale_a,
        base.es_c_mm * scale_c,
    )
    tl = tracer_key == "tl201"
    synth_tracer = "tl201" if tl else str(rng.choice(["tc99m_sestamibi", "tc99m_tetrofosmin"]))
    radiopharmaceutical = radiopharmaceuticals.TRACERS[synth_tracer]
    counts = synth.DEFAULT_COUNTS_PER_VOXEL * radiopharmaceutical.relative_counts * rng.uniform(0.5, 1.5)
    fwhm = radiopharmaceutical.typical_fwhm_mm + rng.uniform(-1.5, 1.5)
    amplitude = rng.uniform(0.10, 0.20) if sex_key == "M" else rng.uniform(0.05, 0.15)
    return synth.PhantomSpec(
        shape=shape,
        tracer=synth_tracer,
        sex=sex_key,
        n_gates=0,
        fwhm_mm=float(fwhm),
        counts_per_voxel=float(counts),
        attenuation_artefact=float(amplitude),
        attenuation_centre_jitter_deg=10.0 if sex_key == "M" else 20.0,
    )


def phantom_polar_map(volume) -> tuple[np.ndarray, np.ndarray]:
    """The SPECT pipeline's perfusion sampling of a summed volume: ``(counts [n_u, n_psi], areas mm^2)``.

    Calls :func:`node.quant.polar_map.perfusion_polar_map`, the single entry point the
    pipeline uses, so that normal limits and patients are sampled identically.
    """
    from node.quant.polar_map import perfusion_polar_map

    polar, _ = perfusion_polar_map(volume)
    return np.asarray(polar.values, dtype=float), np.asarray(polar.weights, dtype=float)


def phantom_normal_cohort(
    tracer: str, sex: str, n: int, rng: np.random.Generator, grid: PolarGrid = DEFAULT_GRID
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` normal voxel phantoms (node.synth) sampled by the pipeline's polar-map sampler."""
    from node.synth.spect.phantom import make_acquisition

    maps, weights = [], []
    for _ in range(n):
        spec = phantom_normal_subject_spec(tracer, sex, rng)
        acquisition = make_acquisition(spec, "rest", rng)
        values, w = phantom_polar_map(acquisition.summed)
        maps.append(values)
        weights.append(w)
    return np.stack(maps), np.stack(weights)


DefectCase = tuple[np.ndarray, np.ndarray, float, np.ndarray]  # counts, areas, true TPD %, true segment deficit [17]
DefectCases = Callable[..., list[DefectCase]]  # (tracer, sex, n, rng, partial=False)
_CAL_TERRITORIES = ("LAD", "LCx", "RCA")


def _calibration_defect(i: int, partial: bool, rng: np.random.Generator) -> tuple[str, tuple[str, ...], float]:
    """Territory, rings and severity of calibration case ``i``.

    ``partial=False``: the whole territory ``i mod 3`` (LAD, LCx, RCA), severity U(0.3, 0.9)
    (segment and TPD calibration). ``partial=True``: territory ``i mod 3`` within the rings
    ``(i div 3) mod 3`` of ``node.synth.spect.phantom.TERRITORY_RING_SETS`` (whole, basal + mid,
    mid + apical + apex), severity
    U(0.2, 0.85) (TPD calibration only: spans the defect sizes and severities TPD is used on).
    """
    from node.synth.spect.phantom import TERRITORY_RING_SETS

    territory = _CAL_TERRITORIES[i % 3]
    if not partial:
        return territory, TERRITORY_RING_SETS[0], float(rng.uniform(0.3, 0.9))
    ring_set = TERRITORY_RING_SETS[(i // 3) % len(TERRITORY_RING_SETS)]
    return territory, ring_set, float(rng.uniform(0.2, 0.85))


def analytic_defect_cases(
    tracer: str, sex: str, n: int, rng: np.random.Generator, partial: bool = False
) -> list[DefectCase]:
    """``n`` analytic-model subjects with a territory defect (:func:`_calibration_defect`).

    Returns ``(counts [n_u, n_psi], areas, true TPD %, true segment deficit [17])``
    per case; true TPD = area-weighted mean deficit x 100.
    """
    from dataclasses import replace

    from node.quant.segments import TERRITORY_SEGMENTS
    from node.synth.spect.phantom import RINGS

    cases = []
    seg = DEFAULT_GRID.segment_ids()
    for i in range(n):
        territory, rings, severity = _calibration_defect(i, partial, rng)
        allowed = {s for ring in rings for s in RINGS[ring]}
        segments = tuple(s for s in TERRITORY_SEGMENTS[territory] if s in allowed)
        subject = replace(random_normal_subject(tracer, sex, rng), defects=tuple((s, severity) for s in segments))
        values, w = subject.sample(rng)
        deficit = np.where(np.isin(seg, segments), severity, 0.0)
        seg_truth = np.array([severity if s in segments else 0.0 for s in range(1, 18)])
        cases.append((values, w, float(100.0 * np.sum(w * deficit) / np.sum(w)), seg_truth))
    return cases


def phantom_defect_cases(
    tracer: str, sex: str, n: int, rng: np.random.Generator, partial: bool = False
) -> list[DefectCase]:
    """``n`` voxel phantoms (cohort spec) with a territory defect (:func:`_calibration_defect`); truth from synth."""
    from dataclasses import replace

    from node.synth.spect.phantom import make_acquisition, territory_defect

    cases = []
    for i in range(n):
        spec = phantom_normal_subject_spec(tracer, sex, rng)
        territory, rings, severity = _calibration_defect(i, partial, rng)
        spec = replace(spec, defects=(territory_defect(territory, severity, rings=rings),))
        acquisition = make_acquisition(spec, "stress", rng)
        values, w = phantom_polar_map(acquisition.summed)
        truth = acquisition.truth
        cases.append((values, w, float(truth.tpd_pct), np.asarray(truth.segment_deficit, dtype=float)))
    return cases


def calibrate_absent_uptake(
    limits: NormalLimits, cases: list[DefectCase], tpd_cases: Sequence[DefectCase] = ()
) -> tuple[float, float]:
    """Measured deficit of absent uptake ``(segment, TPD)`` from defect cases with known truth.

    Each case is scored without calibration (:func:`node.quant.scores.score_map`
    defaults, ``d_absent = 1``). Segment: the median over the defect segments (true
    deficit >= 0.3) of ``cases`` (whole-territory defects) of measured / true deficit,
    the measured one being the area-weighted median cell deficit of the segment.
    TPD: the factor ``f`` that minimises the squared error, in TPD points, of the
    calibrated TPD ``m / f`` against the truth over ``cases`` and ``tpd_cases``
    (partial territories, milder defects) with a true TPD >= 5 %:
    ``f = sum(m^2) / sum(m t)``, refitted once without cases whose error exceeds 3
    robust SDs (a failed localisation). The acceptance of TPD is in absolute points,
    so large defects, where a wrong factor costs most points, weigh most; a median
    of ratios weighs a 5 % and a 30 % defect alike and left severe Tl-201 defects
    +1-2.5 points high (measured/true grows by ~6 % from mild small to severe large
    Tl-201 defects; 3 % for Tc-99m). The segment factor uses the median to be robust
    to the odd failed localisation; both are clipped to [0.5, 1.0].
    """
    from node.quant.scores import ScoreParameters, _weighted_median, score_map

    raw = replace_limits(limits, absent_uptake_deficit=1.0, tpd_absent_uptake_deficit=1.0)
    seg = limits.grid.segment_ids()
    seg_ratios, tpd_pairs = [], []
    for k, (values, w, tpd_true, seg_true) in enumerate(list(cases) + list(tpd_cases)):
        result = score_map(values, w, raw, ScoreParameters())
        if tpd_true >= 5.0:
            tpd_pairs.append((result.tpd_pct, tpd_true))
        if k >= len(cases):
            continue  # partial-territory cases calibrate the TPD only
        for s in range(1, 18):
            if seg_true[s - 1] >= 0.3:
                m = seg == s
                seg_ratios.append(_weighted_median(result.deficit_map[m], w[m]) / seg_true[s - 1])
    if not seg_ratios or not tpd_pairs:
        raise ValueError("calibration needs defect cases with segment deficits >= 0.3 and a true TPD >= 5 %")
    return float(np.clip(np.median(seg_ratios), 0.5, 1.0)), float(np.clip(_tpd_factor(np.asarray(tpd_pairs)), 0.5, 1.0))


def _tpd_factor(pairs: np.ndarray) -> float:
    """Least-squares factor ``f`` of calibrated TPD ``m / f`` against truth ``t`` (``pairs`` [n, (m, t)])."""
    m, t = pairs[:, 0], pairs[:, 1]
    f = float(np.sum(m**2) / np.sum(m * t))
    error = m / f - t
    spread = 1.4826 * float(np.median(np.abs(error - np.median(error))))
    keep = np.abs(error) <= max(3.0 * spread, 0.5)
    return float(np.sum(m[keep] ** 2) / np.sum(m[keep] * t[keep]))


def replace_limits(limits: NormalLimits, **changes) -> NormalLimits:
    """A copy of ``limits`` with some fields changed (dataclasses.replace)."""
    from dataclasses import replace

    return replace(limits, **changes)


_BUILDERS: dict[str, tuple[CohortBuilder, DefectCases, str]] = {
    "analytic": (analytic_normal_cohort, analytic_defect_cases, "synthetic-analytic-polar-model"),
    "phantom": (phantom_normal_cohort, phantom_defect_cases, "synthetic-voxel-phantoms-sampled"),
}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m node.quant.normal_limits build|show``."""
    parser = argparse.ArgumentParser(prog="python -m node.quant.normal_limits", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="simulate the synthetic normal cohorts and write the limits files")
    b.add_argument("--n", type=int, default=40, help="subjects per tracer and sex (default 40)")
    b.add_argument("--source", choices=sorted(_BUILDERS), default="analytic")
    b.add_argument("--seed", type=int, default=20261121)
    b.add_argument("--version", default="1")
    b.add_argument("--tracers", nargs="+", default=list(TRACERS))
    b.add_argument("--sexes", nargs="+", default=list(SEXES))
    b.add_argument(
        "--n-calibration", type=int, default=24, help="whole-territory defect cases (segment + TPD calibration)"
    )
    b.add_argument(
        "--n-tpd-calibration", type=int, default=48, help="further partial-territory defect cases (TPD calibration)"
    )
    b.add_argument("--out", type=Path, default=DATA_DIR)
    sub.add_parser("show", help="list the installed normal-limit files")
    args = parser.parse_args(argv)
    if args.command == "show":
        for e in available_normal_limits():
            print(f"{e['file']}: {e['tracer']} {e['sex']} v{e['version']} {e['source']} n={e['n_subjects']}")
        print(SYNTHETIC_LABEL)
        return 0
    builder, defect_cases, source = _BUILDERS[args.source]
    command = (
        f"python -m node.quant.normal_limits build --n {args.n} --source {args.source} --seed {args.seed} "
        f"--version {args.version} --n-calibration {args.n_calibration} --n-tpd-calibration {args.n_tpd_calibration}"
    )
    for i, tracer in enumerate(args.tracers):
        for j, sex in enumerate(args.sexes):
            tracer_key, sex_key = normalise_tracer(tracer), normalise_sex(sex)
            seed = args.seed + 1000 * i + 100 * j
            rng = np.random.default_rng(seed)
            maps, weights = builder(tracer_key, sex_key, args.n, rng)
            limits = build_normal_limits(maps, weights, tracer_key, sex_key, args.version, source)
            if args.n_calibration > 0:
                cases = defect_cases(tracer_key, sex_key, args.n_calibration, rng)
                tpd_cases = defect_cases(tracer_key, sex_key, args.n_tpd_calibration, rng, partial=True)
                d_segment, d_tpd = calibrate_absent_uptake(limits, cases, tpd_cases)
                limits = replace_limits(limits, absent_uptake_deficit=d_segment, tpd_absent_uptake_deficit=d_tpd)
            entry = write_normal_limits(limits, args.out, seed, command)
            print(
                f"{entry['file']}: mean {limits.mean.mean():.3f}, median SD {np.median(limits.sd):.3f}, "
                f"absent-uptake deficit {limits.absent_uptake_deficit:.3f} (TPD {limits.tpd_absent_uptake_deficit:.3f}), "
                f"n={limits.n_subjects} ({source})"
            )
    print(SYNTHETIC_LABEL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
