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

This module is the runtime half: the :class:`NormalLimits` type, the rule that
turns a cohort of maps into limits (:func:`build_normal_limits`), and the data
files (:func:`load_normal_limits`, :func:`write_normal_limits`, the manifest
``node/quant/data/normal_limits.json`` with builder, cohort size, seed, command,
calibration and SHA-256 of every file). The simulated cohorts, the calibration of
absent uptake and the command that regenerates the files are an offline tool,
:mod:`node.synth.spect.normal_db`::

    python -m node.synth.spect.normal_db build --n 40 --source phantom --version 2   # ~4 min on 2 cores
    python -m node.synth.spect.normal_db build --n 40 --source analytic --version 1  # ~2 s

Array conventions: ``mean``, ``sd`` are float ``[n_u, n_psi]``; ``sd`` is in the
same unit as ``mean`` (fraction of the population peak).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter1d

from node.quant.segments import DEFAULT_GRID, PolarGrid

__all__ = [
    "SYNTHETIC_LABEL",
    "TRACERS",
    "SEXES",
    "DATA_DIR",
    "MANIFEST_PATH",
    "SD_FLOOR_FRACTION",
    "NormalLimits",
    "normalise_tracer",
    "normalise_sex",
    "smooth_polar_map",
    "build_normal_limits",
    "available_normal_limits",
    "load_normal_limits",
    "write_normal_limits",
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
    synthetic defect phantoms (:func:`node.synth.spect.normal_db.calibrate_absent_uptake`).

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
            "`python -m node.synth.spect.normal_db build --n 40`"
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
        np.savez_compressed(fh, allow_pickle=True, **arrays)  # numpy's default, named so that **arrays cannot bind it
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
        "generated_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "entries": entries,
    }
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    _CACHE.clear()
    return entry
