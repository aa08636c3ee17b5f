"""Bull's-eye rendering of polar maps for people (matplotlib, Agg backend).

Display convention (DESIGN section 5): viewed from the apex, anterior at the
top, septum on the viewer's left, lateral right, inferior down; the apex
(segment 17) at the centre and the base at the rim, radius proportional to the
long-axis position ``u`` (:func:`node.quant.segments.bullseye`).

Every image carries a colour bar with the unit, the AHA 17-segment grid, the
segment values and a research-use label; a map's contour levels are drawn as
iso-lines of the lightly smoothed map (the lowest dashed, the others solid) and
marked on the colour bar.
Curve plots (:func:`render_curve_plot`) and table screens (:func:`render_table_screen`,
:func:`render_grid_screen`) have the same size and label. Output arrays are RGB ``uint8`` of
shape ``[rows, columns, 3]``, row 0 at the top. Rendering is deterministic
(same input, same pixels): no timestamps, fixed figure size and fonts.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from matplotlib import patheffects
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from scipy import ndimage

import node
from node.quant.segments import (
    DEFAULT_GRID,
    N_SEGMENTS,
    PolarGrid,
    bullseye,
    bullseye_coordinates,
    segment_of,
    territory_of_segment,
)
from node.results.content import CurvePlot, MapImage
from node.results.tables import format_value

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = [
    "IMAGE_SIZE",
    "RESEARCH_LABEL",
    "segment_label_positions",
    "display_unit",
    "render_bullseye",
    "render_table_screen",
    "render_grid_screen",
    "render_curve_plot",
    "figure_to_rgb",
]

#: side of every rendered image, pixels
IMAGE_SIZE = 512
#: the label burned into every image
RESEARCH_LABEL = "RESEARCH USE ONLY - not for diagnostic use"

_DPI = 100
_RASTER = 256


def _figure(size: int) -> Figure:
    """A stand-alone Agg figure (no pyplot global state, safe in worker threads)."""
    fig = Figure(figsize=(size / _DPI, size / _DPI), dpi=_DPI, facecolor="white")
    FigureCanvasAgg(fig)
    return fig


def figure_to_rgb(fig: Figure) -> np.ndarray:
    """Rasterise a matplotlib figure to an RGB ``uint8`` array ``[rows, columns, 3]``."""
    canvas = fig.canvas
    if not isinstance(canvas, FigureCanvasAgg):
        raise TypeError(f"figure_to_rgb needs a figure on an Agg canvas, not {type(canvas).__name__}")
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return np.ascontiguousarray(rgba[..., :3], dtype=np.uint8)


def _ring_radii(grid: PolarGrid) -> tuple[float, float, float]:
    """Bull's-eye radii (0..1) of the cap, apical/mid and mid/basal borders."""
    cap = grid.n_cap / grid.n_u
    third = grid.n_per_third / grid.n_u
    return cap, cap + third, cap + 2 * third


def segment_label_positions(grid: PolarGrid = DEFAULT_GRID) -> dict[int, tuple[float, float]]:
    """Display position ``(x, y)`` in the unit disc of each segment's label.

    ``x`` grows to the viewer's right (lateral), ``y`` upward (anterior); the
    display angle is ``theta = 90 + psi`` degrees, counter-clockwise from 3 o'clock.
    """
    cap, r1, r2 = _ring_radii(grid)
    positions: dict[int, tuple[float, float]] = {17: (0.0, 0.0)}
    radii = {"basal": (r2 + 1.0) / 2, "mid": (r1 + r2) / 2, "apical": (cap + r1) / 2}
    for k in range(6):
        for first, ring in ((1, "basal"), (7, "mid")):
            theta = np.radians(90.0 + 60.0 * k)
            positions[first + k] = (radii[ring] * np.cos(theta), radii[ring] * np.sin(theta))
    for k in range(4):
        theta = np.radians(90.0 + 90.0 * k)
        positions[13 + k] = (radii["apical"] * np.cos(theta), radii["apical"] * np.sin(theta))
    return positions


def _draw_grid(ax: Axes, grid: PolarGrid) -> None:
    cap, r1, r2 = _ring_radii(grid)
    t = np.linspace(0, 2 * np.pi, 361)
    for r in (cap, r1, r2, 1.0):
        ax.plot(r * np.cos(t), r * np.sin(t), color="black", lw=1.0)
    for psi in (30, 90, 150, 210, 270, 330):  # basal and mid borders
        th = np.radians(90.0 + psi)
        ax.plot([r1 * np.cos(th), np.cos(th)], [r1 * np.sin(th), np.sin(th)], color="black", lw=1.0)
    for psi in (45, 135, 225, 315):  # apical borders
        th = np.radians(90.0 + psi)
        ax.plot([cap * np.cos(th), r1 * np.cos(th)], [cap * np.sin(th), r1 * np.sin(th)], color="black", lw=1.0)


def _draw_territory_borders(ax: Axes, grid: PolarGrid) -> None:
    """Thick lines where neighbouring segments belong to different coronary territories (LAD, LCx, RCA)."""
    for xs, ys in _territory_border_runs(grid):
        ax.plot(xs, ys, color="black", lw=2.8, solid_capstyle="round")


@functools.lru_cache(maxsize=8)
def _territory_border_runs(grid: PolarGrid) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """The territory borders of ``grid`` as polylines ``(x, y)`` in the unit disc (computed once per grid).

    Found by comparing the territory on both sides of every ring circle and every radial
    segment border (:func:`node.quant.segments.segment_of`), so the AHA assignment lives in one place.
    """
    cap, r1, r2 = _ring_radii(grid)
    eps = 1e-3
    runs: list[tuple[np.ndarray, np.ndarray]] = []

    def territory(u: np.ndarray, psi: np.ndarray) -> np.ndarray:
        segments = segment_of(u, psi, grid.u_cap)
        return np.array([territory_of_segment(int(s)) for s in segments.ravel()]).reshape(segments.shape)

    def add_runs(mask: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> None:
        edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(int), [0]])))
        for start, stop in zip(edges[::2], edges[1::2]):
            x, y = xs[start:stop].copy(), ys[start:stop].copy()
            x.flags.writeable = y.flags.writeable = False  # shared by every figure
            runs.append((x, y))

    psi = np.arange(0.0, 360.25, 0.25)
    theta = np.radians(90.0 + psi)
    for r in (cap, r1, r2):
        differs = territory(np.full_like(psi, r - eps), psi) != territory(np.full_like(psi, r + eps), psi)
        add_runs(differs, r * np.cos(theta), r * np.sin(theta))
    radii = np.linspace(cap, 1.0, 400)
    for border in (30, 90, 150, 210, 270, 330, 45, 135, 225, 315):
        differs = territory(radii, np.full_like(radii, border - 0.5)) != territory(radii, np.full_like(radii, border + 0.5))
        th = np.radians(90.0 + border)
        add_runs(differs, radii * np.cos(th), radii * np.sin(th))
    return tuple(runs)


def _segment_values(image: MapImage, grid: PolarGrid) -> np.ndarray:
    if image.segment_values is not None:
        values = np.asarray(image.segment_values, dtype=float)
        if values.shape != (N_SEGMENTS,):
            raise ValueError(f"MapImage {image.key!r}: segment_values must have 17 values, got {values.shape}")
        return values
    return grid.segment_means(np.asarray(image.values, dtype=float))


#: maps whose value range spans at most this (absolute flow, flow reserve) are drawn in the quantitative
#: style: segment numbers and the coronary territory borders
_FINE_SPAN = 10.0


#: how people read the UCUM units whose code differs from the usual print (others: the code, braces removed)
_UNIT_DISPLAY = {"1": "", "ml": "mL", "ml/min/g": "mL/min/g", "deg": "\u00b0", "mm[Hg]": "mmHg",
                 "mm[Hg]/min": "mmHg/min"}


def display_unit(unit: str) -> str:
    """A UCUM unit as screens and maps print it: ``ml`` as mL, ``deg`` as a degree sign, ``1`` as
    nothing, annotations without braces (``{score}`` as score)."""
    return _UNIT_DISPLAY.get(unit, unit.strip("{}"))


def _unit_label(unit: str) -> str:
    """The colour-bar label of a UCUM unit (:func:`display_unit`; ``1`` as "(no unit)")."""
    return display_unit(unit) or "(no unit)"


def render_bullseye(
    image: MapImage,
    base: MapImage | None = None,
    grid: PolarGrid = DEFAULT_GRID,
    size: int = IMAGE_SIZE,
    decimals: int | None = None,
) -> np.ndarray:
    """Render ``image`` (and, for heat maps, its ``base`` underneath in grey) as RGB ``uint8`` ``[size, size, 3]``.

    The polar map ``image.values`` is ``[n_u, n_psi]`` in ``image.unit``,
    shown over ``image.value_range`` with ``image.colormap``; cells of ``image.blackout``
    are drawn black. Segment values (those of ``base`` for a heat map) are printed by
    :func:`node.results.tables.format_value` with ``decimals`` (the quantity's, from the
    templates; None: that function's default rule), the same rule as every table.
    Under the title: ``image.subtitle``, else for a heat map what its segment values are.
    """
    values = np.asarray(image.values, dtype=float)
    if values.shape != grid.shape:
        raise ValueError(f"MapImage {image.key!r}: polar map must have shape {grid.shape}, got {values.shape}")
    lo, hi = (float(v) for v in image.value_range)
    if not hi > lo:
        raise ValueError(f"MapImage {image.key!r}: value_range {image.value_range} must be increasing")
    fig = _figure(size)
    ax = fig.add_axes((0.04, 0.12, 0.74, 0.74))
    extent = (-1.0, 1.0, -1.0, 1.0)
    raster = np.ma.masked_invalid(bullseye(values, _RASTER, grid))
    if base is not None:
        base_values = np.asarray(base.values, dtype=float)
        base_raster = np.ma.masked_invalid(bullseye(base_values, _RASTER, grid))
        ax.imshow(base_raster, cmap="gray", vmin=base.value_range[0], vmax=base.value_range[1],
                  extent=extent, interpolation="nearest")
        shown = ax.imshow(raster, cmap=image.colormap, vmin=lo, vmax=hi, extent=extent,
                          interpolation="nearest", alpha=0.6)
    else:
        shown = ax.imshow(raster, cmap=image.colormap, vmin=lo, vmax=hi, extent=extent, interpolation="nearest")
    if image.muted_rim_rows:
        _draw_muted_rim(ax, image, grid, extent)
    if image.blackout is not None:
        _draw_blackout(ax, image, grid, extent)
    _draw_grid(ax, grid)
    levels = _contour_levels(image, lo, hi)
    if levels:
        _draw_contours(ax, np.ma.masked_invalid(bullseye(_smoothed(values), _RASTER, grid)), levels, extent)
    labelled = image if base is None else base
    seg_values = _segment_values(labelled, grid)
    span = float(labelled.value_range[1]) - float(labelled.value_range[0])
    quantitative = span <= _FINE_SPAN
    if quantitative:
        _draw_territory_borders(ax, grid)
    for seg, (x, y) in segment_label_positions(grid).items():
        if quantitative:
            ax.text(x, y + 0.085, str(seg), ha="center", va="center", fontsize=6.5, color="#222222")
        ax.text(x, y, format_value(float(seg_values[seg - 1]), decimals), ha="center", va="center", fontsize=9, fontweight="bold",
                color="black", bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.75))
    ax.text(0.0, 1.06, "ANT", ha="center", va="bottom", fontsize=8)
    ax.text(0.0, -1.06, "INF", ha="center", va="top", fontsize=8)
    ax.text(-1.06, 0.0, "SEPT", ha="right", va="center", fontsize=8, rotation=90)
    ax.text(1.06, 0.0, "LAT", ha="left", va="center", fontsize=8, rotation=270)
    ax.set_xlim(-1.15, 1.15)
    ax.set_ylim(-1.15, 1.15)
    ax.set_aspect("equal")
    ax.axis("off")
    cax = fig.add_axes((0.82, 0.18, 0.04, 0.62))
    bar = fig.colorbar(shown, cax=cax)
    bar.set_label(_unit_label(image.unit), fontsize=8)
    bar.ax.tick_params(labelsize=7)
    for level in levels:
        bar.ax.axhline(level, color="black", lw=1.6, ls=_contour_style(level, levels))
    if image.muted_rim_rows:
        fig.text(0.5, 0.095, "pale rim: valve plane, where normal uptake also falls (see the extent map)",
                 ha="center", fontsize=7.5, color="#333333")
    elif levels:
        fig.text(0.5, 0.095, "contour lines: " + ", ".join(
            f"{level:g} {'dashed' if _contour_style(level, levels) == '--' else 'solid'}" for level in levels),
            ha="center", fontsize=7.5)
    fig.text(0.5, 0.955, image.title, ha="center", va="center", fontsize=12, fontweight="bold")
    sub = image.subtitle or (f"segment values: {base.title}" if base is not None else "")
    if sub:
        fig.text(0.5, 0.905, sub, ha="center", va="center", fontsize=8.5, color="#333333")
    if image.algorithm is not None:
        fig.text(0.5, 0.065, f"{image.algorithm.name} {image.algorithm.version}", ha="center", fontsize=7)
    fig.text(0.5, 0.02, RESEARCH_LABEL, ha="center", va="bottom", fontsize=9, color="#b00000", fontweight="bold")
    return figure_to_rgb(fig)


#: opacity of the white veil over the muted basal rim
_RIM_VEIL = 0.6


def _draw_muted_rim(ax: Axes, image: MapImage, grid: PolarGrid, extent: tuple[float, float, float, float]) -> None:
    """A white veil over the outermost ``image.muted_rim_rows`` rows and a dashed circle where it starts."""
    rows = int(image.muted_rim_rows)
    if not 0 < rows < grid.n_u:
        raise ValueError(f"MapImage {image.key!r}: muted_rim_rows must be in 1..{grid.n_u - 1}, got {rows}")
    radius = 1.0 - rows / grid.n_u
    u, _, inside = bullseye_coordinates(_RASTER)
    rgba = np.ones((_RASTER, _RASTER, 4))
    rgba[..., 3] = np.where(inside & (u >= radius), _RIM_VEIL, 0.0)
    ax.imshow(rgba, extent=extent, interpolation="nearest")
    t = np.linspace(0, 2 * np.pi, 361)
    ax.plot(radius * np.cos(t), radius * np.sin(t), color="#555555", lw=0.8, ls=(0, (3, 3)))


def _draw_blackout(ax: Axes, image: MapImage, grid: PolarGrid, extent: tuple[float, float, float, float]) -> None:
    """Cells of ``image.blackout`` (bool ``[n_u, n_psi]``) painted black over the map."""
    mask = np.asarray(image.blackout, dtype=float)
    if mask.shape != grid.shape:
        raise ValueError(f"MapImage {image.key!r}: blackout must have shape {grid.shape}, got {mask.shape}")
    raster = bullseye(mask, _RASTER, grid)
    rgba = np.zeros((*raster.shape, 4))
    rgba[..., 3] = np.where(np.nan_to_num(raster) >= 0.5, 1.0, 0.0)
    ax.imshow(rgba, extent=extent, interpolation="nearest")


def _contour_levels(image: MapImage, lo: float, hi: float) -> list[float]:
    levels = sorted(float(v) for v in image.contour_levels)
    outside = [v for v in levels if not lo < v < hi]
    if outside:
        raise ValueError(f"MapImage {image.key!r}: contour levels {outside} lie outside value_range {image.value_range}")
    return levels


def _contour_style(level: float, levels: Sequence[float]) -> str:
    """Line style of a contour level: the lowest of several dashed, the others solid."""
    return "--" if len(levels) > 1 and level == levels[0] else "-"


#: Gaussian sigma (rows along the long axis, columns around it) of the map the contour lines follow
_CONTOUR_SIGMA = (1.0, 2.0)


def _smoothed(values: np.ndarray) -> np.ndarray:
    """The polar map ``[n_u, n_psi]`` lightly smoothed (periodic around the ventricle) for contour lines.

    Contours of the raw map break into many small islands on voxel noise; the colours still
    show the raw map. Missing samples are filled with the map's mean for the filter and stay missing.
    """
    missing = ~np.isfinite(values)
    filled = np.where(missing, np.nanmean(values) if not missing.all() else 0.0, values)
    smooth = ndimage.gaussian_filter(filled, sigma=_CONTOUR_SIGMA, mode=("nearest", "wrap"))
    return np.where(missing, np.nan, smooth)


def _draw_contours(ax: Axes, raster: np.ma.MaskedArray, levels: Sequence[float], extent: tuple[float, ...]) -> None:
    """Iso-lines of the bull's-eye raster (row 0 at the top), black with a white halo to stand out from the grid."""
    halo = [patheffects.withStroke(linewidth=3.2, foreground="white")]
    ax.contour(raster, levels=list(levels), colors="black", linewidths=1.6, origin="upper", extent=extent,
               linestyles=[_contour_style(level, levels) for level in levels]).set(path_effects=halo)


def render_table_screen(
    title: str, rows: Sequence[tuple[str, str, str]], notice: str = node.RESEARCH_USE_NOTICE, size: int = IMAGE_SIZE
) -> np.ndarray:
    """Render a table of ``(label, value, unit)`` rows as an RGB ``uint8`` ``[size, size, 3]`` screen."""
    fig = _figure(size)
    fig.text(0.5, 0.955, title, ha="center", va="center", fontsize=12, fontweight="bold")
    shown = list(rows)
    if len(shown) > 34:
        shown = shown[:33] + [(f"... {len(rows) - 33} more results in the Structured Report", "", "")]
    line = min(0.78 / max(len(shown), 1), 0.045)
    for i, (label, value, unit) in enumerate(shown):
        y = 0.9 - (i + 1) * line
        text = label if len(label) <= 66 else label[:65] + "\u2026"
        fig.text(0.03, y, text, fontsize=6.5, va="center")
        fig.text(0.87, y, value, fontsize=6.5, va="center", ha="right", fontweight="bold")
        fig.text(0.88, y, unit, fontsize=6.5, va="center")
    fig.text(0.5, 0.045, notice, ha="center", va="center", fontsize=6, wrap=True)
    fig.text(0.5, 0.01, RESEARCH_LABEL, ha="center", va="bottom", fontsize=9, color="#b00000", fontweight="bold")
    return figure_to_rgb(fig)


def render_grid_screen(
    title: str,
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    notice: str = node.RESEARCH_USE_NOTICE,
    size: int = IMAGE_SIZE,
) -> np.ndarray:
    """Render a table with a head row (cells may hold two lines) as an RGB ``uint8`` ``[size, size, 3]`` screen.

    The first column (row names) is left-aligned and twice as wide as the others, which are
    right-aligned. Used for the per-segment table (:func:`node.results.tables.segment_table`).
    """
    if any(len(row) != len(header) for row in rows):
        raise ValueError(f"every row needs {len(header)} cells")
    fig = _figure(size)
    fig.text(0.5, 0.955, title, ha="center", va="center", fontsize=12, fontweight="bold")
    n_cols = len(header)
    left, right, top, bottom = 0.03, 0.97, 0.91, 0.09
    first = 2.0 * (right - left) / (n_cols + 1)
    rest = (right - left - first) / max(n_cols - 1, 1)
    edges = [left, left + first, *(left + first + rest * (k + 1) for k in range(n_cols - 1))]
    head_lines = max(str(text).count("\n") + 1 for text in header)
    head_height = 0.025 + 0.022 * head_lines
    line = min((top - head_height - bottom) / max(len(rows), 1), 0.045)
    font = 8.0 if n_cols <= 5 else 6.5
    for k, text in enumerate(header):
        x = edges[k] + 0.005 if k == 0 else edges[k + 1] - 0.005
        fig.text(x, top - head_height / 2, text, fontsize=font - 0.5, fontweight="bold", va="center",
                 ha="left" if k == 0 else "right", linespacing=1.1)
    fig.add_artist(_hline(fig, left, right, top - head_height))
    for i, row in enumerate(rows):
        y = top - head_height - (i + 0.5) * line
        if i % 2 == 1:
            fig.add_artist(_band(fig, left, right, y, line))
        for k, text in enumerate(row):
            x = edges[k] + 0.005 if k == 0 else edges[k + 1] - 0.005
            fig.text(x, y, text, fontsize=font, va="center", ha="left" if k == 0 else "right",
                     fontweight="bold" if 0 < k else "normal")
    fig.add_artist(_hline(fig, left, right, top - head_height - len(rows) * line))
    fig.text(0.5, 0.045, notice, ha="center", va="center", fontsize=6, wrap=True)
    fig.text(0.5, 0.01, RESEARCH_LABEL, ha="center", va="bottom", fontsize=9, color="#b00000", fontweight="bold")
    return figure_to_rgb(fig)


def _hline(fig: Figure, x0: float, x1: float, y: float) -> Line2D:
    return Line2D([x0, x1], [y, y], transform=fig.transFigure, color="black", lw=0.8)


def _band(fig: Figure, x0: float, x1: float, y: float, height: float) -> Rectangle:
    return Rectangle((x0, y - height / 2), x1 - x0, height, transform=fig.transFigure, color="#eef1f5", zorder=-1)


#: colours of the curves of a plot, in order (a fitted line takes the colour of the measured curve it fits)
_CURVE_COLOURS = ("#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
#: curves whose peak is below this fraction of the highest peak get a second, zoomed panel
_ZOOM_FRACTION = 0.35


def render_curve_plot(plot: CurvePlot, size: int = IMAGE_SIZE) -> np.ndarray:
    """Render a :class:`CurvePlot` as an RGB ``uint8`` ``[size, size, 3]`` image.

    Measured curves (``style="points"``) are markers joined by a thin line, fitted curves
    (``"line"``) solid lines in the colour of the measured curve whose label starts their own
    (``"LAD fit"`` fits ``"LAD"``). When some curves peak far below the others (myocardium
    beside the blood input), a second panel shows those curves alone on their own scale.
    """
    if not plot.curves:
        raise ValueError(f"CurvePlot {plot.key!r} has no curves")
    colours = _curve_colours(plot)
    peaks = [float(np.nanmax(np.asarray(c.y, dtype=float))) if np.size(c.y) else 0.0 for c in plot.curves]
    top_peak = max(peaks)
    small = [c for c, p in zip(plot.curves, peaks) if p < _ZOOM_FRACTION * top_peak]
    fig = _figure(size)
    fig.text(0.5, 0.955, plot.title, ha="center", va="center", fontsize=11, fontweight="bold")
    panels = [(plot.curves, "")]
    if small and len(small) < len(plot.curves):
        panels.append((tuple(small), "enlarged: curves with low values"))
    height = 0.80 / len(panels)
    for k, (curves, note) in enumerate(panels):
        bottom = 0.10 + (len(panels) - 1 - k) * height
        ax = fig.add_axes((0.14, bottom + 0.045, 0.82, height - 0.085))
        for curve in curves:
            x = np.asarray(curve.x, dtype=float)
            y = np.asarray(curve.y, dtype=float)
            if x.shape != y.shape or x.ndim != 1:
                raise ValueError(f"CurvePlot {plot.key!r}, curve {curve.label!r}: x and y must be [n] arrays of one length")
            if curve.style == "points":
                ax.plot(x, y, marker="o", ms=3.5, lw=0.6, ls=":", color=colours[curve.label], label=curve.label)
            elif curve.style == "line":
                ax.plot(x, y, lw=1.6, color=colours[curve.label], label=curve.label)
            else:
                raise ValueError(f"CurvePlot {plot.key!r}, curve {curve.label!r}: style must be 'points' or 'line'")
        top = max(float(np.nanmax(np.asarray(c.y, dtype=float))) if np.size(c.y) else 0.0 for c in curves)
        ax.set_xlim(left=0.0)
        ax.set_ylim(0.0, 1.35 * top if top > 0 else 1.0)  # head room for the legend
        ax.grid(True, color="#dddddd", lw=0.5)
        ax.tick_params(labelsize=7.5)
        if note:
            ax.set_title(note, fontsize=7.5, loc="left", pad=2)
        if k == len(panels) - 1:
            ax.set_xlabel(plot.x_label, fontsize=8.5)
        ax.legend(fontsize=7, loc="best", ncol=2 if len(curves) > 4 else 1, framealpha=0.85)
    fig.text(0.03, 0.10 + 0.40, plot.y_label, rotation=90, ha="center", va="center", fontsize=8.5)
    styles = {curve.style for curve in plot.curves}
    if styles == {"points", "line"}:
        fig.text(0.5, 0.045, "points: measured; lines: model fit", ha="center", fontsize=7)
    fig.text(0.5, 0.01, RESEARCH_LABEL, ha="center", va="bottom", fontsize=9, color="#b00000", fontweight="bold")
    return figure_to_rgb(fig)


def _curve_colours(plot: CurvePlot) -> dict[str, str]:
    """Colour of each curve label: measured curves in order, fitted lines in the colour of the curve they fit."""
    colours: dict[str, str] = {}
    measured = [c.label for c in plot.curves if c.style == "points"]
    for label in measured:
        colours.setdefault(label, _CURVE_COLOURS[len(colours) % len(_CURVE_COLOURS)])
    by_length = sorted(set(measured), key=len, reverse=True)
    for curve in plot.curves:
        if curve.label in colours:
            continue
        fitted_of = next((m for m in by_length if curve.label.startswith(m)), None)
        colours[curve.label] = colours[fitted_of] if fitted_of else _CURVE_COLOURS[len(colours) % len(_CURVE_COLOURS)]
    return colours
