"""Model inputs from polar maps and tabular values: scaling, missing values, tiling.

All polar maps are canonical-grid arrays ``[n, 40, 72]`` (or ``[40, 72]``,
:data:`node.quant.segments.DEFAULT_GRID`) in the units the node measures and the
synthetic training cohorts use: perfusion in % of maximum, motion in mm,
thickening in %, phase in degrees. Scaling constants are part of a bundle's
contract and are written into its ``configs/metadata.json``. Training and
inference share these transforms; this module knows nothing of how the maps were
made (no phantoms, no cohorts).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from node.quant.segments import bullseye

__all__ = [
    "CAD_TABULAR",
    "CRT_TABULAR",
    "CRT_OPTIONAL",
    "cad_inputs",
    "tracer_inputs",
    "crt_tabular",
    "crt_image",
    "crt_inputs",
    "CRTTabular",
]

# name: (centre, scale)
CAD_TABULAR: dict[str, tuple[float, float]] = {
    "age": (62.0, 10.0),
    "sex_male": (0.5, 0.5),
    "edv": (100.0, 30.0),
    "esv": (40.0, 20.0),
}
CRT_TABULAR: dict[str, tuple[float, float]] = {
    "age": (67.0, 9.0),
    "sex_male": (0.7, 0.5),
    "lvef": (27.0, 7.0),
    "esv": (160.0, 50.0),
    "scar": (10.0, 10.0),
    "psd": (30.0, 15.0),
    "pbw": (110.0, 50.0),
    "qrs": (150.0, 20.0),
    "lbbb": (0.5, 0.5),
    "nyha": (3.0, 0.7),
}
#: features that may be absent (from the clinical file / ECG): they get a missing indicator
CRT_OPTIONAL: tuple[str, ...] = ("qrs", "lbbb", "nyha")


def _fill(maps: np.ndarray) -> np.ndarray:
    """Replace NaN cells of each map by that map's median (NaN-only maps become 0)."""
    maps = np.array(maps, dtype=np.float32, copy=True)
    for m in maps.reshape(-1, *maps.shape[-2:]):
        bad = ~np.isfinite(m)
        if bad.any():
            m[bad] = np.nanmedian(m) if (~bad).any() else 0.0
    return maps


def _batch(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float32)
    return a[None] if a.ndim == 2 else a


def cad_inputs(stress_perfusion: np.ndarray, stress_motion: np.ndarray, stress_thickening: np.ndarray,
               tabular: dict[str, np.ndarray], stress_deficit: np.ndarray, stress_severity: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """``(x [n, 5, 40, 72], tab [n, 4])`` for :class:`node.ai.networks.CADPolarNet`.

    Channels: perfusion / 100, motion / 10 mm, thickening / 50 %, deficit
    (0..1, ``PerfusionScores.deficit_map``) and TPD severity / 4 (0..1,
    ``PerfusionScores.tpd_severity_map / 4``) against the sex- and
    tracer-specific normal limits. Tabular: age (years), sex_male (0/1), EDV
    and ESV (ml), each ``(v - centre) / scale``.
    """
    x = np.stack([_fill(_batch(stress_perfusion)) / 100.0, _fill(_batch(stress_motion)) / 10.0,
                  _fill(_batch(stress_thickening)) / 50.0, _fill(_batch(stress_deficit)),
                  _fill(_batch(stress_severity))], axis=1)
    n = x.shape[0]
    tab = np.zeros((n, len(CAD_TABULAR)), np.float32)
    for j, (name, (centre, scale)) in enumerate(CAD_TABULAR.items()):
        v = np.broadcast_to(np.asarray(tabular[name], dtype=float), (n,))
        tab[:, j] = np.nan_to_num((v - centre) / scale, nan=0.0)
    return x.astype(np.float32), tab


def tracer_inputs(stress_perfusion: np.ndarray | None, rest_perfusion: np.ndarray | None, n: int | None = None,
                  stress_deficit: np.ndarray | None = None, rest_deficit: np.ndarray | None = None) -> np.ndarray:
    """``x [n, 6, 40, 72]`` for :class:`node.ai.networks.TracerHeadsNet`.

    Channels: stress perfusion / 100, rest perfusion / 100, stress deficit
    (0..1), rest deficit (0..1) against the sex/tracer normal limits, stress
    present (1/0), rest present (1/0). A missing state is all zeros with a zero
    present channel (stress-only and rest-only variants). A present map needs
    its deficit map.
    """
    ref = stress_perfusion if stress_perfusion is not None else rest_perfusion
    if ref is None:
        raise ValueError("the tracer model needs a stress or a rest perfusion map")
    n = _batch(ref).shape[0] if n is None else n
    shape = (n, 40, 72)
    out = np.zeros((n, 6, 40, 72), np.float32)
    for k, (perf, deficit) in enumerate(((stress_perfusion, stress_deficit), (rest_perfusion, rest_deficit))):
        if perf is None:
            continue
        if deficit is None:
            raise ValueError(f"{('stress', 'rest')[k]} perfusion map given without its deficit map")
        out[:, k] = np.broadcast_to(_fill(_batch(perf)) / 100.0, shape)
        out[:, 2 + k] = np.broadcast_to(_fill(_batch(deficit)), shape)
        out[:, 4 + k] = 1.0
    return out


@dataclass(frozen=True)
class CRTTabular:
    """Tabular CRT input with its bookkeeping: which features were measured, which imputed."""

    values: np.ndarray  # [n, len(CRT_TABULAR) + len(CRT_OPTIONAL)]
    used: list[list[str]]  # per case: features with a measured value
    imputed: list[list[str]]  # per case: features replaced by the training mean


def crt_tabular(features: dict[str, np.ndarray], imputation: dict[str, float]) -> CRTTabular:
    """Scale CRT features; a missing value (NaN or absent key) gets the training mean and, for
    QRS / LBBB / NYHA, a missing indicator of 1 appended after the ten scaled values."""
    n = max(np.atleast_1d(np.asarray(v)).shape[0] for v in features.values())
    values = np.zeros((n, len(CRT_TABULAR) + len(CRT_OPTIONAL)), np.float32)
    used: list[list[str]] = [[] for _ in range(n)]
    imputed: list[list[str]] = [[] for _ in range(n)]
    for j, (name, (centre, scale)) in enumerate(CRT_TABULAR.items()):
        v = np.broadcast_to(np.asarray(features.get(name, np.nan), dtype=float), (n,)).copy()
        missing = ~np.isfinite(v)
        v[missing] = imputation[name]
        values[:, j] = (v - centre) / scale
        if name in CRT_OPTIONAL:
            values[:, len(CRT_TABULAR) + CRT_OPTIONAL.index(name)] = missing
        for i in range(n):
            (imputed if missing[i] else used)[i].append(name)
    return CRTTabular(values, used, imputed)


def crt_image(rest_perfusion: np.ndarray, rest_phase: np.ndarray, rest_thickening: np.ndarray) -> np.ndarray:
    """The CRT model's input: four 64x64 bull's-eyes tiled into one ``[128, 128]`` float32 image.

    Tiles (row-major): top-left perfusion / 100, top-right systolic phase / 360,
    bottom-left thickening / 100, bottom-right perfusion thresholded at 0.5 of
    the maximum (1 where uptake >= 50 %). Pixels outside the discs are 0.
    Accepts single maps ``[n_u, n_psi]`` or batches ``[n, n_u, n_psi]``.
    """
    perf = np.asarray(rest_perfusion, dtype=float)
    if perf.ndim == 2:
        return crt_image(perf[None], np.asarray(rest_phase)[None], np.asarray(rest_thickening)[None])[0]
    out = np.zeros((perf.shape[0], 128, 128), np.float32)
    for i in range(perf.shape[0]):
        tiles = (
            perf[i] / 100.0,
            np.asarray(rest_phase[i], float) / 360.0,
            np.asarray(rest_thickening[i], float) / 100.0,
            (perf[i] >= 50.0).astype(float),
        )
        for k, tile in enumerate(tiles):
            r, c = divmod(k, 2)
            out[i, r * 64 : (r + 1) * 64, c * 64 : (c + 1) * 64] = np.nan_to_num(bullseye(tile, 64), nan=0.0)
    return out


def crt_inputs(rest_perfusion: np.ndarray, rest_phase: np.ndarray, rest_thickening: np.ndarray) -> np.ndarray:
    """``x [n, 1, 128, 128]``: the four tiled bull's-eyes of :func:`crt_image` (NaN cells filled first)."""
    return crt_image(_fill(_batch(rest_perfusion)), _fill(_batch(rest_phase)), _fill(_batch(rest_thickening)))[:, None]
