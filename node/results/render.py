"""Bull's-eye rendering of polar maps for people (matplotlib, Agg backend).

Display convention (DESIGN section 5): viewed from the apex, anterior at the
top, septum on the viewer's left, lateral right, inferior down; the apex
(segment 17) at the centre and the base at the rim, radius proportional to the
long-axis position ``u`` (:func:`node.quant.segments.bullseye`).

Every image carries a colour bar with the unit, the AHA 17-segment grid, the
segment values and a research-use label. Output arrays are RGB ``uint8`` of
shape ``[rows, columns, 3]``, row 0 at the top. Rendering is deterministic
(same input, same pixels): no timestamps, fixed figure size and fonts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

import node
from node.quant.segments import DEFAULT_GRID, N_SEGMENTS, PolarGrid, bullseye
from node.results.content import MapImage

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = [
    "IMAGE_SIZE",
    "RESEARCH_LABEL",
    "segment_label_positions",
    "render_bullseye",
    "render_table_screen",
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


def _segment_values(image: MapImage, grid: PolarGrid) -> np.ndarray:
    if image.segment_values is not None:
        values = np.asarray(image.segment_values, dtype=float)
        if values.shape != (N_SEGMENTS,):
            raise ValueError(f"MapImage {image.key!r}: segment_values must have 17 values, got {values.shape}")
        return values
    return grid.segment_means(np.asarray(image.values, dtype=float))


def _format(value: float) -> str:
    if not np.isfinite(value):
        return "-"
    return f"{value:.0f}" if abs(value) >= 10 else f"{value:.2g}"


def render_bullseye(
    image: MapImage,
    base: MapImage | None = None,
    grid: PolarGrid = DEFAULT_GRID,
    size: int = IMAGE_SIZE,
) -> np.ndarray:
    """Render ``image`` (and, for heat maps, its ``base`` underneath in grey) as RGB ``uint8`` ``[size, size, 3]``.

    The polar map ``image.values`` is ``[n_u, n_psi]`` in ``image.unit``,
    shown over ``image.value_range`` with ``image.colormap``.
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
    _draw_grid(ax, grid)
    seg_values = _segment_values(image if base is None else base, grid)
    for seg, (x, y) in segment_label_positions(grid).items():
        ax.text(x, y, _format(seg_values[seg - 1]), ha="center", va="center", fontsize=9, fontweight="bold",
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
    bar.set_label(image.unit if image.unit != "1" else "(no unit)", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    fig.text(0.5, 0.955, image.title, ha="center", va="center", fontsize=12, fontweight="bold")
    sub = "segment values: " + (base.title if base is not None else image.title)
    fig.text(0.5, 0.905, sub, ha="center", va="center", fontsize=7, color="#333333")
    if image.algorithm is not None:
        fig.text(0.5, 0.065, f"{image.algorithm.name} {image.algorithm.version}", ha="center", fontsize=7)
    fig.text(0.5, 0.02, RESEARCH_LABEL, ha="center", va="bottom", fontsize=9, color="#b00000", fontweight="bold")
    return figure_to_rgb(fig)


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
