"""Analytic LV geometry of the phantom: shapes, the cardiac cycle, regional delays.

The left ventricle is a truncated prolate ellipsoid shell in LV coordinates
(``node.quant.lv_frame.LVFrame``): ``z`` in mm along the long axis from the
epicardial apex (fixed over the cycle), radius ``r`` and azimuth ``psi``
(degrees from anterior toward septum).

* Endocardium: half ellipsoid with short semi-axis ``a`` and long semi-axis
  ``c``; epicardium: ``A``, ``C``. Both are centred on the base plane at
  ``z = C``; the myocardium is the shell between them, truncated at the base
  plane. The endocardial (cavity) apex sits at ``z = C - c``, the apical wall
  thickness along the axis.
* Cavity volume ``V = 2/3 pi a^2 c`` (azimuth-averaged ``a^2`` when ``a``
  varies with ``psi``); myocardial volume ``2/3 pi (A^2 C - a^2 c)``.
* Over the cycle ``a`` and ``c`` move between the ED and ES values of an
  :class:`LVShape` along a waveform ``w(t)`` (0 at ED, 1 at ES). Myocardial
  volume is conserved in every azimuth wedge: ``C`` follows the undelayed
  motion (wall thickness ``T`` solving ``(a+T)^2 (c+T) = const``), and ``A``
  is set per azimuth so that ``A^2 C - a^2 c`` stays at its ED value. Regional
  delays shift ``w`` in time for the short axis only, which keeps the
  conservation exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "LVShape",
    "NORMAL",
    "SMALL",
    "DILATED",
    "THICK",
    "SHAPES",
    "PhaseDelay",
    "LATERAL_DELAY",
    "LVGeometry",
    "N_PSI_FINE",
    "PSI_FINE_DEG",
    "motion_waveform",
    "psi_weights",
    "delay_profile_deg",
    "geometry_at",
    "gate_times",
]

N_PSI_FINE = 360
PSI_FINE_DEG = (np.arange(N_PSI_FINE) + 0.5) * 360.0 / N_PSI_FINE


def _half_ellipsoid_ml(a_mm: float, c_mm: float) -> float:
    return 2.0 / 3.0 * np.pi * a_mm * a_mm * c_mm / 1000.0


def _conserving_wall(a_mm: np.ndarray | float, c_mm: np.ndarray | float, shell: float) -> np.ndarray:
    """Wall thickness T with ``(a+T)^2 (c+T) - a^2 c = shell`` (mm^3/(2/3 pi)); Newton, vectorised."""
    a = np.asarray(a_mm, dtype=float)
    c = np.asarray(c_mm, dtype=float)
    target = shell + a * a * c
    t = np.full(np.broadcast(a, c).shape, 10.0)
    for _ in range(50):
        f = (a + t) ** 2 * (c + t) - target
        df = 2.0 * (a + t) * (c + t) + (a + t) ** 2
        step = f / df
        t = t - step
        if np.all(np.abs(step) < 1e-10):
            break
    return t


@dataclass(frozen=True)
class LVShape:
    """ED and ES endocardial semi-axes and the ED wall thickness, in mm.

    The epicardium at ED is ``(a + wall, c + wall)``; the ES wall follows from
    constant myocardial volume.
    """

    name: str
    ed_a_mm: float
    ed_c_mm: float
    wall_mm: float
    es_a_mm: float
    es_c_mm: float

    @property
    def edv_ml(self) -> float:
        """Analytic end-diastolic cavity volume (mL)."""
        return _half_ellipsoid_ml(self.ed_a_mm, self.ed_c_mm)

    @property
    def esv_ml(self) -> float:
        """Analytic end-systolic cavity volume (mL)."""
        return _half_ellipsoid_ml(self.es_a_mm, self.es_c_mm)

    @property
    def ef_pct(self) -> float:
        """Ejection fraction ``100 (EDV - ESV) / EDV`` (%)."""
        return 100.0 * (self.edv_ml - self.esv_ml) / self.edv_ml

    @property
    def shell_constant(self) -> float:
        """``A^2 C - a^2 c`` at ED (mm^3); myocardial volume = 2/3 pi times this."""
        a, c, t = self.ed_a_mm, self.ed_c_mm, self.wall_mm
        return (a + t) ** 2 * (c + t) - a * a * c

    @property
    def myocardial_volume_ml(self) -> float:
        """Myocardial volume (mL), constant over the cycle."""
        return 2.0 / 3.0 * np.pi * self.shell_constant / 1000.0

    @property
    def es_wall_mm(self) -> float:
        """End-systolic wall thickness (mm) conserving myocardial volume."""
        return float(_conserving_wall(self.es_a_mm, self.es_c_mm, self.shell_constant))


NORMAL = LVShape("normal", 28.0, 65.0, 10.0, 20.0, 58.0)
SMALL = LVShape("small", 20.0, 45.0, 8.0, 13.0, 38.0)
DILATED = LVShape("dilated", 36.0, 80.0, 10.0, 32.0, 75.0)
THICK = LVShape("thick", 28.0, 65.0, 15.0, 20.0, 58.0)
SHAPES: dict[str, LVShape] = {s.name: s for s in (NORMAL, SMALL, DILATED, THICK)}


@dataclass(frozen=True)
class PhaseDelay:
    """A regional delay of wall motion.

    ``delay_deg`` (degrees of the R-R interval, 360 = one cycle) applies fully
    at ``psi_center_deg`` and tapers with a raised cosine to zero at
    ``psi_center_deg +- half_width_deg``.
    """

    psi_center_deg: float
    half_width_deg: float
    delay_deg: float


LATERAL_DELAY = PhaseDelay(270.0, 75.0, 90.0)


def delay_profile_deg(
    delays: tuple[PhaseDelay, ...], jitter_coefficients: np.ndarray | None = None
) -> np.ndarray:
    """Delay (degrees of R-R) at each fine azimuth ``PSI_FINE_DEG``.

    ``jitter_coefficients`` ``[m, (cos, sin)]`` in degrees add a smooth random
    field ``sum_m c_m cos(m psi) + s_m sin(m psi)`` (patient-specific dispersion).
    """
    profile = np.zeros(N_PSI_FINE)
    for delay in delays:
        diff = np.mod(PSI_FINE_DEG - delay.psi_center_deg + 180.0, 360.0) - 180.0
        window = np.where(
            np.abs(diff) < delay.half_width_deg,
            0.5 * (1.0 + np.cos(np.pi * diff / max(delay.half_width_deg, 1e-9))),
            0.0,
        )
        profile += delay.delay_deg * window
    if jitter_coefficients is not None and len(jitter_coefficients):
        psi = np.radians(PSI_FINE_DEG)
        for m, (cm, sm) in enumerate(np.asarray(jitter_coefficients, dtype=float), start=1):
            profile += cm * np.cos(m * psi) + sm * np.sin(m * psi)
    return profile


def psi_weights(psi_deg: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear-interpolation indices and weight of azimuths on the periodic fine grid ``PSI_FINE_DEG``."""
    step = 360.0 / N_PSI_FINE
    x = np.mod(np.asarray(psi_deg, dtype=float), 360.0) / step - 0.5
    i0 = np.floor(x).astype(np.intp)
    f = x - i0
    return np.mod(i0, N_PSI_FINE), np.mod(i0 + 1, N_PSI_FINE), f


def motion_waveform(t_frac: np.ndarray | float, waveform: str, es_fraction: float) -> np.ndarray:
    """Contraction ``w(t)`` in [0, 1] (0 = ED, 1 = ES) at cycle fraction ``t`` (0 = R wave).

    ``"physiological"``: half-cosine contraction up to ``es_fraction`` of R-R and a
    slower half-cosine relaxation; ``"sinusoid"``: ``0.5 (1 + cos 2 pi (t - t_ES))``,
    whose first harmonic peaks exactly at ``t_ES``.
    """
    t = np.mod(np.asarray(t_frac, dtype=float), 1.0)
    if waveform == "sinusoid":
        return 0.5 * (1.0 + np.cos(2.0 * np.pi * (t - es_fraction)))
    if waveform != "physiological":
        raise ValueError(f"waveform must be 'physiological' or 'sinusoid', got {waveform!r}")
    systole = 0.5 * (1.0 - np.cos(np.pi * t / es_fraction))
    diastole = 0.5 * (1.0 + np.cos(np.pi * (t - es_fraction) / (1.0 - es_fraction)))
    return np.where(t < es_fraction, systole, diastole)


def gate_times(n_gates: int) -> np.ndarray:
    """Gate centres as fractions of R-R: ``(k + 0.5) / N`` (the phase-analysis convention)."""
    return (np.arange(n_gates) + 0.5) / n_gates


@dataclass(frozen=True)
class LVGeometry:
    """One snapshot of the LV: semi-axes per fine azimuth (``PSI_FINE_DEG``), in mm."""

    a_endo: np.ndarray  # (N_PSI_FINE,)
    c_endo: float
    a_epi: np.ndarray  # (N_PSI_FINE,)
    c_epi: float  # the base plane is at z = c_epi from the epicardial apex

    @property
    def apex_wall_mm(self) -> float:
        """Wall thickness along the long axis; the cavity apex is at ``z = apex_wall_mm``."""
        return self.c_epi - self.c_endo

    @property
    def cavity_volume_ml(self) -> float:
        return 2.0 / 3.0 * np.pi * self.c_endo * float(np.mean(self.a_endo**2)) / 1000.0

    @property
    def myocardial_volume_ml(self) -> float:
        shell = self.c_epi * np.mean(self.a_epi**2) - self.c_endo * np.mean(self.a_endo**2)
        return 2.0 / 3.0 * np.pi * float(shell) / 1000.0

    def radii_at(
        self, psi_deg: np.ndarray, weights: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Endocardial and epicardial short semi-axes (mm) at azimuths ``psi_deg`` (periodic, linear).

        ``weights`` from :func:`psi_weights` of the same azimuths skip the search.
        """
        i0, i1, f = psi_weights(psi_deg) if weights is None else weights
        return (
            self.a_endo[i0] * (1.0 - f) + self.a_endo[i1] * f,
            self.a_epi[i0] * (1.0 - f) + self.a_epi[i1] * f,
        )

    @staticmethod
    def mean(geometries: list[LVGeometry]) -> LVGeometry:
        """Cycle-mean geometry (semi-axes averaged over snapshots)."""
        return LVGeometry(
            np.mean([g.a_endo for g in geometries], axis=0),
            float(np.mean([g.c_endo for g in geometries])),
            np.mean([g.a_epi for g in geometries], axis=0),
            float(np.mean([g.c_epi for g in geometries])),
        )


def geometry_at(
    shape: LVShape,
    t_frac: float,
    delay_deg: np.ndarray | None = None,
    waveform: str = "physiological",
    es_fraction: float = 0.35,
) -> LVGeometry:
    """LV geometry at cycle fraction ``t_frac`` with per-azimuth delays ``delay_deg`` (``(N_PSI_FINE,)``)."""
    w = float(motion_waveform(t_frac, waveform, es_fraction))
    a_global = shape.ed_a_mm - (shape.ed_a_mm - shape.es_a_mm) * w
    c_endo = shape.ed_c_mm - (shape.ed_c_mm - shape.es_c_mm) * w
    shell = shape.shell_constant
    wall = float(_conserving_wall(a_global, c_endo, shell))
    c_epi = c_endo + wall
    if delay_deg is None:
        a_endo = np.full(N_PSI_FINE, a_global)
    else:
        w_local = motion_waveform(t_frac - np.asarray(delay_deg) / 360.0, waveform, es_fraction)
        a_endo = shape.ed_a_mm - (shape.ed_a_mm - shape.es_a_mm) * w_local
    a_epi = np.sqrt((shell + a_endo**2 * c_endo) / c_epi)
    return LVGeometry(a_endo, c_endo, a_epi, c_epi)
