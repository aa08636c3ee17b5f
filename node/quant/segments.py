"""AHA 17-segment model, vascular territories and the canonical polar-map grid.

Conventions (DESIGN section 5; Cerqueira et al., Circulation 2002;105:539):

* Short-axis display is viewed from the apex: anterior up, septum on the
  viewer's left, lateral right, inferior down.
* Azimuth ``psi`` (degrees) is measured from anterior toward septum:
  0 anterior, 90 septal, 180 inferior, 270 lateral.
* Long-axis position ``u`` runs from the apex (0) to the base (1). The first
  ``u_cap`` of it is the apical cap (segment 17: myocardium beyond the end of
  the cavity); the rest is split into equal thirds of the *cavity* length:
  apical, mid, basal.
* Bull's-eye rasters put the apex at the centre and the base at the rim, with
  display angle ``theta = 90 + psi`` (counter-clockwise from 3 o'clock), so
  anterior is at the top and septum on the left. Raster arrays are
  ``[row, column]`` with row 0 at the top.

Territories follow the standard assignment (LAD 1,2,7,8,13,14,17; RCA
3,4,9,10,15; LCx 5,6,11,12,16). They are approximate by nature: individual
coronary anatomy varies (Pereztol-Valdes 2005), so territory results never
claim vessel-level certainty.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "N_SEGMENTS",
    "SEGMENT_NAMES",
    "TERRITORIES",
    "TERRITORY_SEGMENTS",
    "territory_of_segment",
    "segment_of",
    "PolarGrid",
    "DEFAULT_GRID",
    "bullseye_coordinates",
    "bullseye",
]

N_SEGMENTS = 17

SEGMENT_NAMES: dict[int, str] = {
    1: "basal anterior",
    2: "basal anteroseptal",
    3: "basal inferoseptal",
    4: "basal inferior",
    5: "basal inferolateral",
    6: "basal anterolateral",
    7: "mid anterior",
    8: "mid anteroseptal",
    9: "mid inferoseptal",
    10: "mid inferior",
    11: "mid inferolateral",
    12: "mid anterolateral",
    13: "apical anterior",
    14: "apical septal",
    15: "apical inferior",
    16: "apical lateral",
    17: "apex",
}

TERRITORIES: tuple[str, ...] = ("LAD", "LCx", "RCA")

TERRITORY_SEGMENTS: dict[str, tuple[int, ...]] = {
    "LAD": (1, 2, 7, 8, 13, 14, 17),
    "LCx": (5, 6, 11, 12, 16),
    "RCA": (3, 4, 9, 10, 15),
}


def territory_of_segment(segment: int) -> str:
    """Return the standard coronary territory (``"LAD"``, ``"LCx"``, ``"RCA"``) of an AHA segment."""
    for territory, segments in TERRITORY_SEGMENTS.items():
        if segment in segments:
            return territory
    raise ValueError(f"AHA segment must be 1..17, got {segment!r}")


def segment_of(u: np.ndarray | float, psi_deg: np.ndarray | float, u_cap: float) -> np.ndarray:
    """AHA segment number (1..17) of polar positions.

    Parameters
    ----------
    u:
        Long-axis position, 0 at the apex, 1 at the base (dimensionless).
    psi_deg:
        Azimuth in degrees from anterior toward septum (any real value; taken mod 360).
    u_cap:
        Fraction of ``u`` occupied by the apical cap (segment 17), in [0, 1).

    Returns an ``int`` array broadcast from ``u`` and ``psi_deg``.
    """
    u = np.asarray(u, dtype=float)
    psi = np.mod(np.asarray(psi_deg, dtype=float), 360.0)
    u, psi = np.broadcast_arrays(u, psi)
    v = (u - u_cap) / (1.0 - u_cap)  # 0 at the cavity apex .. 1 at the base
    apical_sector = np.floor(np.mod(psi + 45.0, 360.0) / 90.0).astype(int)  # 0 ant, 1 sep, 2 inf, 3 lat
    ring_sector = np.floor(np.mod(psi + 30.0, 360.0) / 60.0).astype(int)  # 0 ant .. 5 antlat
    segment = np.where(
        v < 1.0 / 3.0,
        13 + apical_sector,
        np.where(v < 2.0 / 3.0, 7 + ring_sector, 1 + ring_sector),
    )
    return np.where(u < u_cap, 17, segment).astype(int)


@dataclass(frozen=True)
class PolarGrid:
    """The canonical polar-map sampling grid ``P[n_u, n_psi]``.

    Row 0 is at the apex, the last row at the base; column ``j`` covers azimuth
    ``[j, j+1) * 360 / n_psi`` degrees from anterior toward septum. The first
    ``n_cap`` rows are the apical cap (segment 17, sampled spherically); the
    remaining rows split into three equal rings (apical, mid, basal) of
    ``n_per_third`` rows each, so segment borders fall on row and column edges.
    """

    n_cap: int = 4
    n_per_third: int = 12
    n_psi: int = 72

    @property
    def n_u(self) -> int:
        return self.n_cap + 3 * self.n_per_third

    @property
    def shape(self) -> tuple[int, int]:
        """Array shape ``(n_u, n_psi)``."""
        return (self.n_u, self.n_psi)

    @property
    def u_cap(self) -> float:
        """Fraction of the long axis occupied by the apical cap."""
        return self.n_cap / self.n_u

    @property
    def u_centres(self) -> np.ndarray:
        """Long-axis position of each row centre, 0 (apex) .. 1 (base)."""
        return (np.arange(self.n_u) + 0.5) / self.n_u

    @property
    def psi_centres_deg(self) -> np.ndarray:
        """Azimuth of each column centre in degrees from anterior toward septum."""
        return (np.arange(self.n_psi) + 0.5) * 360.0 / self.n_psi

    def segment_ids(self) -> np.ndarray:
        """AHA segment (1..17) of every grid cell, shape ``(n_u, n_psi)``."""
        uu, pp = np.meshgrid(self.u_centres, self.psi_centres_deg, indexing="ij")
        return segment_of(uu, pp, self.u_cap)

    def segment_means(self, values: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """Weighted mean of ``values[n_u, n_psi]`` per AHA segment; index 0 is segment 1."""
        values = np.asarray(values, dtype=float)
        if values.shape != self.shape:
            raise ValueError(f"polar map must have shape {self.shape}, got {values.shape}")
        w = np.ones_like(values) if weights is None else np.asarray(weights, dtype=float)
        ids = self.segment_ids().ravel()
        num = np.bincount(ids, weights=(values * w).ravel(), minlength=N_SEGMENTS + 1)
        den = np.bincount(ids, weights=w.ravel(), minlength=N_SEGMENTS + 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return (num / den)[1:]


DEFAULT_GRID = PolarGrid()


def bullseye_coordinates(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Polar coordinates of a ``size x size`` bull's-eye raster.

    Returns ``(u, psi_deg, inside)``, each of shape ``(size, size)`` indexed
    ``[row, column]`` with row 0 at the top: ``u`` is the radius (0 centre/apex,
    1 rim/base), ``psi_deg`` the azimuth from anterior toward septum, ``inside``
    marks pixels within the disc.
    """
    centres = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    x = centres[np.newaxis, :].repeat(size, axis=0)  # left -1 .. right +1
    y = -centres[:, np.newaxis].repeat(size, axis=1)  # top +1 .. bottom -1
    u = np.hypot(x, y)
    theta = np.degrees(np.arctan2(y, x))  # CCW from 3 o'clock
    psi = np.mod(theta - 90.0, 360.0)
    return u, psi, u < 1.0


def bullseye(polar_map: np.ndarray, size: int = 64, grid: PolarGrid = DEFAULT_GRID) -> np.ndarray:
    """Render a canonical polar map ``[n_u, n_psi]`` as a ``size x size`` bull's-eye raster.

    Distance-weighted display: radius is proportional to ``u``. Nearest-cell
    lookup; pixels outside the disc are NaN. Row 0 is the top of the image
    (anterior), the left columns are septal.
    """
    polar_map = np.asarray(polar_map, dtype=float)
    if polar_map.shape != grid.shape:
        raise ValueError(f"polar map must have shape {grid.shape}, got {polar_map.shape}")
    u, psi, inside = bullseye_coordinates(size)
    rows = np.clip((u * grid.n_u).astype(int), 0, grid.n_u - 1)
    cols = np.clip((psi / 360.0 * grid.n_psi).astype(int), 0, grid.n_psi - 1)
    raster = polar_map[rows, cols]
    return np.where(inside, raster, np.nan)
