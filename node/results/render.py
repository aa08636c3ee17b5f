"""Rendering of results for people: bull's-eye polar maps, curve plots and table screens.

Display convention (DESIGN section 5): viewed from the apex, anterior at the
top, septum on the viewer's left, lateral right, inferior down; the apex
(segment 17) at the centre and the base at the rim, radius proportional to the
long-axis position ``u`` (:func:`node.quant.segments.bullseye`).

Every bull's-eye carries a colour bar with the unit, the AHA 17-segment grid, the
segment values and a research-use label; a map's contour levels are drawn as
iso-lines of the lightly smoothed map (the lowest dashed, the others solid) and
marked on the colour bar.

Nothing here makes a matplotlib figure (a figure per image cost 60-80 ms of CPU, most of it text
layout; twelve to twenty images per study): every image is a pixel canvas (:class:`_Canvas`). A
bull's-eye's polar map is coloured cell by cell with the colour map's lookup table (matplotlib's
own table) and copied to the pixels through an index map from image pixels to polar cells
(computed once per grid and image size); lines (segment grid, territory borders, contour lines,
axes, curves, markers) are stroked by matplotlib's Agg rasteriser
(:class:`~matplotlib.backends.backend_agg.RendererAgg`: anti-aliased, no figure or artists); text
is DejaVu Sans (the font matplotlib ships) rasterised by PIL once per string and size and kept.
Sizes are in points at 100 pixels per inch, and the layouts, tick locators and legend placement
are those of the former matplotlib figures (bull's-eye disc in the box ``(0.04, 0.12, 0.74, 0.74)``
of the image showing -1.15..1.15, colour bar in ``(0.82, 0.18, 0.04, 0.62)``), so screens, SCs
and the PDF show what they showed before. :func:`figure_to_rgb` stays for callers that draw a
figure of their own.

Curve plots (:func:`render_curve_plot`) and table screens (:func:`render_table_screen`,
:func:`render_grid_screen`) have the same size and label. Output arrays are RGB ``uint8`` of
shape ``[rows, columns, 3]``, row 0 at the top. Rendering is deterministic (same input, same
pixels): no timestamps, fixed sizes and fonts.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import contourpy
import matplotlib
import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg, RendererAgg
from matplotlib.figure import Figure
from matplotlib.path import Path as StrokePath
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import Affine2D, Bbox, IdentityTransform
from PIL import Image, ImageColor, ImageDraw, ImageFont
from scipy import ndimage

import node
from node.quant.segments import (
    DEFAULT_GRID,
    N_SEGMENTS,
    PolarGrid,
    bullseye,
    segment_of,
    territory_of_segment,
)
from node.results.content import Curve, CurvePlot, MapImage
from node.results.tables import format_value

__all__ = [
    "IMAGE_SIZE",
    "wrap_text",
    "RESEARCH_LABEL",
    "segment_label_positions",
    "display_unit",
    "text_font",
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
#: side of the bull's-eye raster the polar cells are looked up on (:func:`node.quant.segments.bullseye`)
_RASTER = 256
#: the disc's box (left, bottom, width, height; fractions of the image side, bottom up) and the half-width
#: of the data range it shows (the disc has radius 1)
_AXES = (0.04, 0.12, 0.74, 0.74)
_LIMIT = 1.15
#: the colour bar's box (left, bottom, width, height; fractions of the image side, bottom up)
_COLOUR_BAR = (0.82, 0.18, 0.04, 0.62)
#: opacity of a heat map over its greyscale base map
_HEAT_ALPHA = 0.6
_WHITE = np.array([255.0, 255.0, 255.0], dtype=np.float32)
_FONT_DIR = Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def figure_to_rgb(fig: Figure) -> np.ndarray:
    """Rasterise a matplotlib figure to an RGB ``uint8`` array ``[rows, columns, 3]``."""
    canvas = fig.canvas
    if not isinstance(canvas, FigureCanvasAgg):
        raise TypeError(f"figure_to_rgb needs a figure on an Agg canvas, not {type(canvas).__name__}")
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return np.ascontiguousarray(rgba[..., :3], dtype=np.uint8)


def _px(points: float) -> float:
    """Points (1/72 inch) as pixels at the images' 100 pixels per inch."""
    return points * _DPI / 72.0


@functools.lru_cache(maxsize=64)
def text_font(points: float, bold: bool = False) -> ImageFont.FreeTypeFont:
    """DejaVu Sans (shipped with matplotlib, so images are the same on every machine) at ``points``
    (1/72 inch at the images' 100 pixels per inch), with PIL's basic layout (no dependency on libraqm)."""
    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    return ImageFont.truetype(str(_FONT_DIR / name), _px(points), layout_engine=ImageFont.Layout.BASIC)


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


# --------------------------------------------------------------------------- geometry, cached per size and grid


@dataclass(frozen=True)
class _Frame:
    """Where the disc and the colour bar lie in an image of side ``size`` (pixels, ``y`` down from the top)."""

    size: int
    scale: float  # pixels per unit of the disc's radius
    cx: float  # disc centre
    cy: float
    bar: tuple[float, float, float, float]  # colour bar left, top, right, bottom

    def point(self, x: float, y: float) -> tuple[float, float]:
        """Image position of the disc coordinates ``(x, y)`` (``y`` up, anterior)."""
        return self.cx + self.scale * x, self.cy - self.scale * y

    @property
    def disc(self) -> Affine2D:
        """Disc coordinates to Agg display coordinates (pixels, ``y`` up from the bottom)."""
        return Affine2D().scale(self.scale).translate(self.cx, self.size - self.cy)


@functools.lru_cache(maxsize=8)
def _frame(size: int) -> _Frame:
    left, bottom, width, height = (f * size for f in _AXES)
    scale = min(width, height) / (2 * _LIMIT)
    bl, bb, bw, bh = (f * size for f in _COLOUR_BAR)
    return _Frame(size, scale, left + width / 2, size - (bottom + height / 2), (bl, size - bb - bh, bl + bw, size - bb))


@dataclass(frozen=True)
class _CellMap:
    """The polar cell (flat index into the grid, -1 outside the disc) of each image pixel in ``box``."""

    box: tuple[slice, slice]  # rows, columns of the image holding the disc
    cells: np.ndarray  # int [rows, columns] of the box


@functools.lru_cache(maxsize=8)
def _cell_map(grid: PolarGrid, size: int) -> _CellMap:
    """Image pixels to polar cells: through the bull's-eye raster of :func:`node.quant.segments.bullseye`
    (the one mapping of the package), looked up at each pixel centre as the former figure showed it."""
    frame = _frame(size)
    ids = bullseye(np.arange(grid.n_u * grid.n_psi, dtype=float).reshape(grid.shape), _RASTER, grid)
    centres = np.arange(size) + 0.5
    x = (centres - frame.cx) / frame.scale  # disc units, right
    y = (frame.cy - centres) / frame.scale  # disc units, up
    col = np.floor((x + 1.0) / 2.0 * _RASTER).astype(int)
    row = np.floor((1.0 - y) / 2.0 * _RASTER).astype(int)
    rows = np.flatnonzero((row >= 0) & (row < _RASTER))
    cols = np.flatnonzero((col >= 0) & (col < _RASTER))
    box = (slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1))
    looked = ids[row[box[0]][:, None], col[box[1]][None, :]]
    cells = np.where(np.isfinite(looked), np.nan_to_num(looked, nan=-1.0), -1.0).astype(np.intp)
    cells.flags.writeable = False
    return _CellMap(box, cells)


@functools.lru_cache(maxsize=32)
def _lut(name: str) -> np.ndarray:
    """The colour map ``name`` as a lookup table, float32 ``[N, 3]`` of 0..255 (matplotlib's own table)."""
    cmap = colormaps[name]
    table = np.asarray(cmap(np.arange(cmap.N), bytes=True)[:, :3], dtype=np.float32)
    table.flags.writeable = False
    return table


def _colours(values: np.ndarray, lo: float, hi: float, cmap: str) -> tuple[np.ndarray, np.ndarray]:
    """Colours (float32 ``[..., 3]``, 0..255) of ``values`` over ``lo..hi`` and where they are finite.

    matplotlib's rule: ``N`` equal bins over the range, values below and above take the end colours."""
    table = _lut(cmap)
    valid = np.isfinite(values)
    scaled = (np.where(valid, values, lo) - lo) / (hi - lo) * len(table)
    index = np.clip(np.floor(scaled), 0, len(table) - 1).astype(np.intp)
    return table[index], valid


@functools.lru_cache(maxsize=64)
def _ticks(lo: float, hi: float) -> tuple[tuple[float, str], ...]:
    """The colour bar's ticks over ``lo..hi`` and their labels, as matplotlib's default locator and
    formatter make them for the bar's height (at most 9 intervals of 1, 2, 2.5 or 5 times a power of ten;
    every label with the decimals the finest tick needs, minus as U+2212)."""
    span = hi - lo
    values = [float(v) for v in MaxNLocator(nbins=9, steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi)
              if lo - 1e-9 * span <= v <= hi + 1e-9 * span]
    decimals = next((d for d in range(7) if all(abs(round(v, d) - v) <= 1e-9 * span for v in values)), 6)
    labels = []
    for v in values:
        text = f"{0.0 if abs(v) < 1e-12 * span else v:.{decimals}f}"
        labels.append(text.replace("-", "\u2212"))
    return tuple(zip(values, labels))


@functools.lru_cache(maxsize=8)
def _grid_paths(grid: PolarGrid) -> tuple[StrokePath, ...]:
    """The AHA segment grid (ring circles and segment borders) as polylines in disc coordinates."""
    cap, r1, r2 = _ring_radii(grid)
    t = np.linspace(0, 2 * np.pi, 361)
    paths = [StrokePath(np.column_stack([r * np.cos(t), r * np.sin(t)])) for r in (cap, r1, r2, 1.0)]
    for psi in (30, 90, 150, 210, 270, 330):  # basal and mid borders
        th = np.radians(90.0 + psi)
        paths.append(StrokePath([[r1 * np.cos(th), r1 * np.sin(th)], [np.cos(th), np.sin(th)]]))
    for psi in (45, 135, 225, 315):  # apical borders
        th = np.radians(90.0 + psi)
        paths.append(StrokePath([[cap * np.cos(th), cap * np.sin(th)], [r1 * np.cos(th), r1 * np.sin(th)]]))
    return tuple(paths)


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
            x.flags.writeable = y.flags.writeable = False  # shared by every image
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


@functools.lru_cache(maxsize=8)
def _territory_paths(grid: PolarGrid) -> tuple[StrokePath, ...]:
    return tuple(StrokePath(np.column_stack([x, y])) for x, y in _territory_border_runs(grid))


@functools.lru_cache(maxsize=8)
def _contour_raster_points() -> tuple[np.ndarray, np.ndarray]:
    """Disc coordinates of the bull's-eye raster's pixel centres (columns right, rows down from the top)."""
    centres = (np.arange(_RASTER) + 0.5) / _RASTER * 2.0 - 1.0
    return centres, -centres


def _circle(radius: float) -> StrokePath:
    t = np.linspace(0, 2 * np.pi, 361)
    return StrokePath(np.column_stack([radius * np.cos(t), radius * np.sin(t)]))


# --------------------------------------------------------------------------- strokes and text


@dataclass(frozen=True)
class _Glyphs:
    """The coverage of a line of text (``uint8`` ``[rows, columns]``, 0..255) and where it lies: ``left`` and
    ``top`` of the mask relative to the start of the baseline, the advance ``width``, the font's
    ``ascent`` and ``descent`` (pixels, ``y`` down)."""

    coverage: np.ndarray
    left: int
    top: int
    width: float
    ascent: int
    descent: int


@functools.lru_cache(maxsize=4096)
def _glyphs(text: str, points: float, bold: bool, quarter_turns: int = 0) -> _Glyphs:
    """``text`` rasterised once by PIL (FreeType, anti-aliased) and kept: titles, labels, tick labels and
    the few hundred numbers a segment shows repeat from study to study. ``quarter_turns``: turned that
    many times 90 degrees counter-clockwise (the mask only; the metrics are those of the unturned text)."""
    font = text_font(points, bold)
    left, top, right, bottom = (int(v) for v in font.getbbox(text, anchor="ls"))
    mask = Image.new("L", (max(right - left, 1), max(bottom - top, 1)), 0)
    ImageDraw.Draw(mask).text((-left, -top), text, fill=255, font=font, anchor="ls")
    coverage = np.rot90(np.asarray(mask, dtype=np.uint8), quarter_turns).copy()
    coverage.flags.writeable = False
    ascent, descent = font.getmetrics()
    return _Glyphs(coverage, left, top, font.getlength(text), ascent, descent)


def _rgb(colour: str | tuple[int, int, int]) -> np.ndarray:
    """A colour name, ``#rrggbb`` or RGB triple as float32 ``[3]`` (0..255)."""
    rgb = ImageColor.getrgb(colour)[:3] if isinstance(colour, str) else colour
    return np.asarray(rgb, dtype=np.float32)


class _Canvas:
    """An RGB image drawn with numpy (pixels, text) and matplotlib's Agg rasteriser (anti-aliased lines;
    no figure, no artists). ``pixels`` is the RGBA ``uint8`` ``[rows, columns, 4]`` buffer, row 0 at the top."""

    def __init__(self, size: int):
        self.size = size
        self.renderer = RendererAgg(size, size, _DPI)
        self.pixels = np.asarray(self.renderer.buffer_rgba())
        self.pixels.fill(255)

    def line(self, path: StrokePath, transform: Affine2D | IdentityTransform, width: float,
             colour: str = "black", dashes: Sequence[float] | None = None, cap: str = "butt",
             clip: Bbox | None = None) -> None:
        """Stroke ``path`` (coordinates through ``transform`` to pixels, ``y`` up from the bottom) ``width``
        points wide; ``dashes`` in points (on, off, ...); ``clip``: only inside that box (pixels, ``y`` up)."""
        gc = self.renderer.new_gc()
        if clip is not None:
            gc.set_clip_rectangle(clip)
        gc.set_linewidth(width)
        gc.set_foreground(colour)
        gc.set_antialiased(True)
        gc.set_capstyle(cap)  # type: ignore[arg-type]
        gc.set_joinstyle("round")
        if dashes is not None:
            gc.set_dashes(0, list(dashes))
        self.renderer.draw_path(gc, path, transform)
        gc.restore()

    def polyline(self, points: Sequence[tuple[float, float]] | np.ndarray, width: float, colour: str = "black",
                 dashes: Sequence[float] | None = None, clip: Bbox | None = None) -> None:
        """Stroke a polyline given in image pixels (``y`` down from the top)."""
        xy = np.array(points, dtype=float).reshape(-1, 2)
        xy[:, 1] = self.size - xy[:, 1]
        self.line(StrokePath(xy), IdentityTransform(), width, colour, dashes, clip=clip)

    def markers(self, points: np.ndarray, colour: str, clip: Bbox | None = None) -> None:
        """matplotlib's ``"o"`` markers (3.5 points wide, edge 1 point in the same colour) at ``points``
        (``[n, 2]`` image pixels, ``y`` down)."""
        xy = np.array(points, dtype=float).reshape(-1, 2)
        xy[:, 1] = self.size - xy[:, 1]
        gc = self.renderer.new_gc()
        if clip is not None:
            gc.set_clip_rectangle(clip)
        gc.set_linewidth(1.0)
        gc.set_foreground(colour)
        gc.set_antialiased(True)
        red, green, blue = (float(c) / 255 for c in ImageColor.getrgb(colour)[:3])
        face = (red, green, blue)
        self.renderer.draw_markers(gc, StrokePath.unit_circle(), Affine2D().scale(_px(3.5) / 2),
                                   StrokePath(xy), IdentityTransform(), face)
        gc.restore()

    def blend(self, x0: int, y0: int, coverage: np.ndarray, colour: np.ndarray, opacity: float = 1.0) -> None:
        """Paint ``colour`` (RGB, 0..255) with opacity ``opacity`` x ``coverage`` (``uint8`` ``[rows, columns]``,
        0..255) at top-left ``(x0, y0)``."""
        rows, cols = coverage.shape
        top, left = max(y0, 0), max(x0, 0)
        bottom, right = min(y0 + rows, self.size), min(x0 + cols, self.size)
        if bottom <= top or right <= left:
            return
        alpha = coverage[top - y0: bottom - y0, left - x0: right - x0, None] * np.float32(opacity / 255.0)
        region = self.pixels[top:bottom, left:right, :3]
        region[...] = np.rint(region * (1.0 - alpha) + colour * alpha).astype(np.uint8)

    def text(self, x: float, y: float, text: str, points: float, bold: bool = False,
             colour: str | tuple[int, int, int] = "black", ha: str = "center", va: str = "center") -> tuple[float, float, float, float]:
        """Draw ``text`` with its ``ha`` side (left, center, right) at ``x`` and its ``va`` line (top: the
        ascender, center: between ascender and descender, baseline, bottom: the descender) at ``y``.
        Returns the text's line box ``(x0, y0, x1, y1)``."""
        glyphs = _glyphs(text, points, bold)
        start = x - {"left": 0.0, "center": glyphs.width / 2, "right": glyphs.width}[ha]
        baseline = y + {"top": glyphs.ascent, "center": (glyphs.ascent - glyphs.descent) / 2, "baseline": 0.0,
                        "bottom": -glyphs.descent}[va]
        self.blend(round(start) + glyphs.left, round(baseline) + glyphs.top, glyphs.coverage, _rgb(colour))
        return start, baseline - glyphs.ascent, start + glyphs.width, baseline + glyphs.descent

    def turned_text(self, x: float, y: float, text: str, points: float, quarter_turns: int, ha: str,
                    colour: str | tuple[int, int, int] = "black") -> None:
        """Draw ``text`` turned by ``quarter_turns`` x 90 degrees counter-clockwise, its ink box's ``ha``
        side at ``x`` and centred on ``y``."""
        coverage = _glyphs(text, points, False, quarter_turns).coverage
        left = x - {"left": 0.0, "center": coverage.shape[1] / 2, "right": coverage.shape[1]}[ha]
        self.blend(round(left), round(y - coverage.shape[0] / 2), coverage, _rgb(colour))

    def box(self, x0: float, y0: float, x1: float, y1: float, opacity: float, radius: float = 0.0,
            colour: str | tuple[int, int, int] = "white") -> None:
        """Fill the box with ``colour`` at ``opacity``, its corners rounded by ``radius`` pixels."""
        width, height = round(x1) - round(x0), round(y1) - round(y0)
        if width > 0 and height > 0:
            self.blend(round(x0), round(y0), _box_mask(width, height, round(radius)), _rgb(colour), opacity)

    def rgb(self) -> np.ndarray:
        """The image, RGB ``uint8`` ``[rows, columns, 3]`` (a copy)."""
        return np.ascontiguousarray(self.pixels[..., :3])


@functools.lru_cache(maxsize=256)
def _box_mask(width: int, height: int, radius: int) -> np.ndarray:
    """Coverage (``uint8`` ``[height, width]``, 0..255) of a box with corners rounded by ``radius`` pixels."""
    mask = Image.new("L", (width, height), 0)
    ImageDraw.Draw(mask).rounded_rectangle((0, 0, width - 1, height - 1), radius=radius, fill=255)
    coverage = np.asarray(mask, dtype=np.uint8).copy()
    coverage.flags.writeable = False
    return coverage


def _unit_label(unit: str) -> str:
    """The colour-bar label of a UCUM unit (:func:`display_unit`; ``1`` as "(no unit)")."""
    return display_unit(unit) or "(no unit)"


# --------------------------------------------------------------------------- bull's-eye


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


#: opacity of the white veil over the muted basal rim
_RIM_VEIL = 0.6


def _cell_colours(image: MapImage, base: MapImage | None, grid: PolarGrid, lo: float, hi: float) -> np.ndarray:
    """The colour of every polar cell as shown (RGBA ``uint8`` ``[n_cells + 1, 4]``; the last row is the
    white of pixels outside the disc): the map in its colour map over the greyscale base map (a heat map,
    60 % opaque) or over white, the muted rim's white veil, the blackout cells black."""
    values = np.asarray(image.values, dtype=float).ravel()
    shown = np.tile(_WHITE, (values.size + 1, 1))
    cells = shown[:-1]
    if base is not None:
        grey, grey_valid = _colours(np.asarray(base.values, dtype=float).ravel(), float(base.value_range[0]),
                                    float(base.value_range[1]), "gray")
        cells[grey_valid] = grey[grey_valid]
        colour, valid = _colours(values, lo, hi, image.colormap)
        cells[valid] = _HEAT_ALPHA * colour[valid] + (1.0 - _HEAT_ALPHA) * cells[valid]
    else:
        colour, valid = _colours(values, lo, hi, image.colormap)
        cells[valid] = colour[valid]
    if image.muted_rim_rows:
        rows = int(image.muted_rim_rows)
        if not 0 < rows < grid.n_u:
            raise ValueError(f"MapImage {image.key!r}: muted_rim_rows must be in 1..{grid.n_u - 1}, got {rows}")
        rim = np.arange(values.size) // grid.n_psi >= grid.n_u - rows  # cells of the outermost rows
        cells[rim] = (1.0 - _RIM_VEIL) * cells[rim] + _RIM_VEIL * _WHITE
    if image.blackout is not None:
        mask = np.asarray(image.blackout, dtype=float)
        if mask.shape != grid.shape:
            raise ValueError(f"MapImage {image.key!r}: blackout must have shape {grid.shape}, got {mask.shape}")
        cells[np.nan_to_num(mask.ravel()) >= 0.5] = 0.0
    rgba = np.full((shown.shape[0], 4), 255, dtype=np.uint8)
    rgba[:, :3] = np.rint(shown)
    return rgba


def _colour_bar_pixels(pixels: np.ndarray, frame: _Frame, cmap: str, alpha: float) -> None:
    """Fill the colour bar's box of ``pixels`` (RGBA) with the colour map, low values at the bottom
    (``alpha`` over white)."""
    left, top, right, bottom = frame.bar
    rows = np.arange(int(np.ceil(top - 0.5)), int(np.floor(bottom - 0.5)) + 1)
    cols = slice(int(np.ceil(left - 0.5)), int(np.floor(right - 0.5)) + 1)
    table = _lut(cmap)
    fraction = (bottom - (rows + 0.5)) / (bottom - top)
    colours = table[np.clip(np.floor(fraction * len(table)), 0, len(table) - 1).astype(np.intp)]
    colours = alpha * colours + (1.0 - alpha) * _WHITE
    pixels[rows[0]: rows[-1] + 1, cols, :3] = np.rint(colours)[:, None, :].astype(np.uint8)


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
    if base is not None and np.shape(base.values) != grid.shape:
        raise ValueError(f"MapImage {base.key!r}: polar map must have shape {grid.shape}, got {np.shape(base.values)}")
    levels = _contour_levels(image, lo, hi)
    frame = _frame(size)
    cells = _cell_map(grid, size)

    canvas = _Canvas(size)
    canvas.pixels[cells.box] = _cell_colours(image, base, grid, lo, hi)[cells.cells]
    _colour_bar_pixels(canvas.pixels, frame, image.colormap, _HEAT_ALPHA if base is not None else 1.0)

    disc = frame.disc
    if image.muted_rim_rows:
        dash = 0.8 * 3.0  # matplotlib's (3, 3) pattern scaled by the line width
        canvas.line(_circle(1.0 - int(image.muted_rim_rows) / grid.n_u), disc, 0.8, "#555555", (dash, dash))
    for path in _grid_paths(grid):
        canvas.line(path, disc, 1.0, cap="projecting")
    if levels:
        _draw_contours(canvas, values, levels, disc, grid)
    labelled = image if base is None else base
    seg_values = _segment_values(labelled, grid)
    quantitative = float(labelled.value_range[1]) - float(labelled.value_range[0]) <= _FINE_SPAN
    if quantitative:
        for path in _territory_paths(grid):
            canvas.line(path, disc, 2.8, cap="round")
    left, top, right, bottom = frame.bar
    canvas.polyline([(left, top), (right, top), (right, bottom), (left, bottom), (left, top)], 0.8)
    tick = _px(3.5)
    ticks = _ticks(lo, hi)
    for value, _ in ticks:
        y = bottom - (value - lo) / (hi - lo) * (bottom - top)
        canvas.polyline([(right, y), (right + tick, y)], 0.8)
    for level in levels:
        y = bottom - (level - lo) / (hi - lo) * (bottom - top)
        canvas.polyline([(left, y), (right, y)], 1.6, dashes=_dashes(level, levels, 1.6))

    # segment values in white boxes (75 % opaque, rounded), the segment numbers above them
    pad = _px(0.15 * 9)
    for seg, (x, y) in segment_label_positions(grid).items():
        x, y = frame.point(x, y)
        text = format_value(float(seg_values[seg - 1]), decimals)
        glyphs = _glyphs(text, 9, True)
        canvas.box(x - glyphs.width / 2 - pad, y - (glyphs.ascent + glyphs.descent) / 2 - pad,
                   x + glyphs.width / 2 + pad, y + (glyphs.ascent + glyphs.descent) / 2 + pad, 0.75, pad)
        if quantitative:
            canvas.text(x, y - frame.scale * 0.085, str(seg), 6.5, colour="#222222")
        canvas.text(x, y, text, 9, bold=True)
    canvas.text(*frame.point(0.0, 1.06), "ANT", 8, va="bottom")
    canvas.text(*frame.point(0.0, -1.06), "INF", 8, va="top")
    canvas.turned_text(*frame.point(-1.06, 0.0), "SEPT", 8, 1, ha="right")
    canvas.turned_text(*frame.point(1.06, 0.0), "LAT", 8, 3, ha="left")
    label_x = right + tick + _px(3.5)
    widest = 0.0
    for value, label in ticks:
        y = bottom - (value - lo) / (hi - lo) * (bottom - top)
        widest = max(widest, canvas.text(label_x, y, label, 7, ha="left")[2] - label_x)
    canvas.turned_text(label_x + widest + _px(4.0), (top + bottom) / 2, _unit_label(image.unit), 8, 1, ha="left")
    middle = size / 2
    if image.muted_rim_rows:
        canvas.text(middle, size * (1 - 0.095), "pale rim: valve plane, where normal uptake also falls (see the extent map)",
                    7.5, colour="#333333", va="baseline")
    elif levels:
        legend = ", ".join(f"{level:g} {'dashed' if _contour_style(level, levels) == '--' else 'solid'}" for level in levels)
        canvas.text(middle, size * (1 - 0.095), "contour lines: " + legend, 7.5, va="baseline")
    canvas.text(middle, size * (1 - 0.955), image.title, 12, bold=True)
    sub = image.subtitle or (f"segment values: {base.title}" if base is not None else "")
    if sub:
        canvas.text(middle, size * (1 - 0.905), sub, 8.5, colour="#333333")
    if image.algorithm is not None:
        canvas.text(middle, size * (1 - 0.065), f"{image.algorithm.name} {image.algorithm.version}", 7, va="baseline")
    canvas.text(middle, size * (1 - 0.02), RESEARCH_LABEL, 9, bold=True, colour="#b00000", va="bottom")
    return canvas.rgb()


def _contour_levels(image: MapImage, lo: float, hi: float) -> list[float]:
    levels = sorted(float(v) for v in image.contour_levels)
    outside = [v for v in levels if not lo < v < hi]
    if outside:
        raise ValueError(f"MapImage {image.key!r}: contour levels {outside} lie outside value_range {image.value_range}")
    return levels


def _contour_style(level: float, levels: Sequence[float]) -> str:
    """Line style of a contour level: the lowest of several dashed, the others solid."""
    return "--" if len(levels) > 1 and level == levels[0] else "-"


def _dashes(level: float, levels: Sequence[float], width: float) -> list[float] | None:
    """The dash pattern (points) of a contour level's line ``width`` points wide: matplotlib's ``--``
    (3.7 on, 1.6 off, scaled by the width) for the dashed level, None for solid."""
    return [3.7 * width, 1.6 * width] if _contour_style(level, levels) == "--" else None


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


def _draw_contours(canvas: _Canvas, values: np.ndarray, levels: Sequence[float], disc: Affine2D,
                   grid: PolarGrid) -> None:
    """Iso-lines of the smoothed map on the bull's-eye raster (contourpy, matplotlib's algorithm), black
    1.6 points wide over a white halo 3.2 points wide so that they stand out from the grid."""
    raster = np.ma.masked_invalid(bullseye(_smoothed(values), _RASTER, grid))
    xs, ys = _contour_raster_points()
    generator = contourpy.contour_generator(xs, ys, raster, name="mpl2014", corner_mask=True,
                                            line_type=contourpy.LineType.SeparateCode)
    for level in levels:
        dashes = _dashes(level, levels, 1.6)
        points, codes = cast(tuple[list[np.ndarray], list[np.ndarray]], generator.lines(level))
        lines = [StrokePath(xy, code) for xy, code in zip(points, codes) if len(xy) > 1]
        for line in lines:
            canvas.line(line, disc, 3.2, "white", dashes)  # the halo keeps the line's dashes
        for line in lines:
            canvas.line(line, disc, 1.6, "black", dashes)


def wrap_text(text: str, font: ImageFont.FreeTypeFont, width: float) -> list[str]:
    """Greedy word wrap of ``text`` to lines at most ``width`` pixels long in ``font`` (a word longer than
    ``width`` gets a line of its own); at least one line."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        trial = f"{current} {word}".strip()
        if current and font.getlength(trial) > width:
            lines.append(current)
            current = word
        else:
            current = trial
    return [*lines, current] if current else lines or [""]


def _text_block(canvas: _Canvas, x: float, y: float, lines: Sequence[str], points: float, bold: bool = False,
                ha: str = "center", spacing: float = 1.2) -> None:
    """Lines of text centred as a block on ``y``, each aligned by ``ha`` at ``x``; baselines ``spacing`` x
    the ascender height of "l" apart (matplotlib's rule)."""
    step = 0.76 * _px(points) * spacing
    first = y - step * (len(lines) - 1) / 2
    for k, line in enumerate(lines):
        canvas.text(x, first + k * step, line, points, bold=bold, ha=ha)


def _screen_frame(canvas: _Canvas, title: str, notice: str) -> None:
    """Title, research-use notice (wrapped to the image width) and label of a table screen."""
    size = canvas.size
    canvas.text(size / 2, size * (1 - 0.955), title, 12, bold=True)
    _text_block(canvas, size / 2, size * (1 - 0.045), wrap_text(notice, text_font(6), size), 6)
    canvas.text(size / 2, size * (1 - 0.01), RESEARCH_LABEL, 9, bold=True, colour="#b00000", va="bottom")


def render_table_screen(
    title: str, rows: Sequence[tuple[str, str, str]], notice: str = node.RESEARCH_USE_NOTICE, size: int = IMAGE_SIZE
) -> np.ndarray:
    """Render a table of ``(label, value, unit)`` rows as an RGB ``uint8`` ``[size, size, 3]`` screen."""
    canvas = _Canvas(size)
    shown = list(rows)
    if len(shown) > 34:
        shown = shown[:33] + [(f"... {len(rows) - 33} more results in the Structured Report", "", "")]
    line = min(0.78 / max(len(shown), 1), 0.045)
    for i, (label, value, unit) in enumerate(shown):
        y = size * (1 - (0.9 - (i + 1) * line))
        text = label if len(label) <= 66 else label[:65] + "\u2026"
        canvas.text(0.03 * size, y, text, 6.5, ha="left")
        canvas.text(0.87 * size, y, value, 6.5, bold=True, ha="right")
        canvas.text(0.88 * size, y, unit, 6.5, ha="left")
    _screen_frame(canvas, title, notice)
    return canvas.rgb()


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
    canvas = _Canvas(size)
    n_cols = len(header)
    left, right, top, bottom = 0.03, 0.97, 0.91, 0.09
    first = 2.0 * (right - left) / (n_cols + 1)
    rest = (right - left - first) / max(n_cols - 1, 1)
    edges = [left, left + first, *(left + first + rest * (k + 1) for k in range(n_cols - 1))]
    head_lines = max(str(text).count("\n") + 1 for text in header)
    head_height = 0.025 + 0.022 * head_lines
    line = min((top - head_height - bottom) / max(len(rows), 1), 0.045)
    font = 8.0 if n_cols <= 5 else 6.5

    def px_x(fraction: float) -> float:
        return fraction * size

    def px_y(fraction: float) -> float:  # figure fraction from the bottom to pixels from the top
        return (1.0 - fraction) * size

    for i in range(1, len(rows), 2):  # shaded bands behind every second row
        y = top - head_height - (i + 0.5) * line
        canvas.box(px_x(left), px_y(y + line / 2), px_x(right), px_y(y - line / 2), 1.0, colour=(0xEE, 0xF1, 0xF5))
    for k, text in enumerate(header):
        x = edges[k] + 0.005 if k == 0 else edges[k + 1] - 0.005
        _text_block(canvas, px_x(x), px_y(top - head_height / 2), str(text).split("\n"), font - 0.5, bold=True,
                    ha="left" if k == 0 else "right", spacing=1.1)
    canvas.polyline([(px_x(left), px_y(top - head_height)), (px_x(right), px_y(top - head_height))], 0.8)
    for i, row in enumerate(rows):
        y = top - head_height - (i + 0.5) * line
        for k, text in enumerate(row):
            x = edges[k] + 0.005 if k == 0 else edges[k + 1] - 0.005
            canvas.text(px_x(x), px_y(y), text, font, bold=0 < k, ha="left" if k == 0 else "right")
    end = top - head_height - len(rows) * line
    canvas.polyline([(px_x(left), px_y(end)), (px_x(right), px_y(end))], 0.8)
    _screen_frame(canvas, title, notice)
    return canvas.rgb()


#: colours of the curves of a plot, in order (a fitted line takes the colour of the measured curve it fits)
_CURVE_COLOURS = ("#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
#: curves whose peak is below this fraction of the highest peak get a second, zoomed panel
_ZOOM_FRACTION = 0.35


@dataclass(frozen=True)
class _Axes:
    """A plot panel: its box in image pixels (``y`` down) and the data limits it shows."""

    left: float
    top: float
    right: float
    bottom: float
    x_limits: tuple[float, float]
    y_limits: tuple[float, float]

    def x(self, value: np.ndarray | float) -> np.ndarray:
        lo, hi = self.x_limits
        return self.left + (np.asarray(value, dtype=float) - lo) / (hi - lo) * (self.right - self.left)

    def y(self, value: np.ndarray | float) -> np.ndarray:
        lo, hi = self.y_limits
        return self.bottom - (np.asarray(value, dtype=float) - lo) / (hi - lo) * (self.bottom - self.top)


def _axis_ticks(lo: float, hi: float, length_points: float, label_points: float, per_label: float) -> tuple[tuple[float, str], ...]:
    """Ticks of an axis as matplotlib's default locator places them: at most ``min(9, length / (per_label x
    label size))`` intervals of 1, 2, 2.5 or 5 times a power of ten (:func:`_ticks` for the labels)."""
    bins = max(1, min(9, int(np.floor(length_points / (label_points * per_label)))))
    span = hi - lo
    values = [float(v) for v in MaxNLocator(nbins=bins, steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi)
              if lo - 1e-9 * span <= v <= hi + 1e-9 * span]
    decimals = next((d for d in range(7) if all(abs(round(v, d) - v) <= 1e-9 * span for v in values)), 6)
    return tuple((v, f"{0.0 if abs(v) < 1e-12 * span else v:.{decimals}f}".replace("-", "\u2212")) for v in values)


def _segments_of(x: np.ndarray, y: np.ndarray) -> list[np.ndarray]:
    """The runs of finite points of a curve, each ``[n, 2]`` (a missing sample breaks the line)."""
    finite = np.isfinite(x) & np.isfinite(y)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], finite.astype(int), [0]])))
    return [np.column_stack([x[a:b], y[a:b]]) for a, b in zip(edges[::2], edges[1::2])]


#: matplotlib's legend locations in the order its "best" placement tries them
_LEGEND_PLACES = ("upper right", "upper left", "lower left", "lower right", "right", "center left", "center right",
                  "lower center", "upper center", "center")


def _legend_box(axes: _Axes, width: float, height: float, curves_px: Sequence[np.ndarray]) -> tuple[float, float]:
    """Top-left corner of the legend: of matplotlib's places, the first that covers the fewest curve points
    and crossings (its "best" rule, on the curves' vertices and points along their segments)."""
    pad = _px(0.5 * 7)
    xs = {"left": axes.left + pad, "center": (axes.left + axes.right - width) / 2, "right": axes.right - pad - width}
    ys = {"upper": axes.top + pad, "center": (axes.top + axes.bottom - height) / 2, "lower": axes.bottom - pad - height}
    samples = [np.concatenate([c, (c[:-1, None, :] + (c[1:, None, :] - c[:-1, None, :]) * np.linspace(0, 1, 9)[None, :, None]
                                   ).reshape(-1, 2)]) if len(c) > 1 else c for c in curves_px]
    points = np.concatenate(samples) if samples else np.zeros((0, 2))
    best, where = None, (xs["right"], ys["upper"])
    for place in _LEGEND_PLACES:
        vertical, _, horizontal = place.partition(" ")
        if not horizontal:
            vertical, horizontal = ("center", vertical) if vertical in ("right", "left") else ("center", "center")
        x0, y0 = xs[horizontal], ys[vertical]
        inside = int(np.sum((points[:, 0] >= x0) & (points[:, 0] <= x0 + width) & (points[:, 1] >= y0)
                            & (points[:, 1] <= y0 + height)))
        if best is None or inside < best:
            best, where = inside, (x0, y0)
        if inside == 0:
            break
    return where


def _draw_legend(canvas: _Canvas, axes: _Axes, curves: Sequence[Curve], colours: dict[str, str],
                 curves_px: Sequence[np.ndarray]) -> None:
    """matplotlib's legend at font size 7: a handle 2 font sizes long (the curve's line, with a marker for
    measured points), the label; ``ncol`` 2 beyond four curves; a white frame 85 % opaque, grey edge."""
    font = 7.0
    em = _px(font)
    columns = 2 if len(curves) > 4 else 1
    per_column = -(-len(curves) // columns)
    handle, text_pad, border, spacing, column_gap = 2.0 * em, 0.8 * em, 0.4 * em, 0.5 * em, 2.0 * em
    row = _glyphs("lp", font, False).ascent + _glyphs("lp", font, False).descent
    widths = [text_font(font).getlength(c.label) for c in curves]
    column_widths = [max(widths[k * per_column:(k + 1) * per_column], default=0.0) for k in range(columns)]
    width = 2 * border + sum(handle + text_pad + w for w in column_widths) + column_gap * (columns - 1)
    height = 2 * border + per_column * row + (per_column - 1) * spacing
    x0, y0 = _legend_box(axes, width, height, curves_px)
    canvas.box(x0, y0, x0 + width, y0 + height, 0.85, radius=0.2 * em)
    canvas.polyline(_rounded_outline(x0, y0, x0 + width, y0 + height, 0.2 * em), 1.0, "#cccccc")
    for k, curve in enumerate(curves):
        column, line = divmod(k, per_column)
        x = x0 + border + sum(handle + text_pad + w + column_gap for w in column_widths[:column])
        y = y0 + border + line * (row + spacing) + row / 2
        colour = colours[curve.label]
        if curve.style == "points":
            canvas.polyline([(x, y), (x + handle, y)], 0.6, colour, dashes=_DOTTED)
            canvas.markers(np.array([[x + handle / 2, y]]), colour)
        else:
            canvas.polyline([(x, y), (x + handle, y)], 1.6, colour)
        canvas.text(x + handle + text_pad, y, curve.label, font, ha="left")


def _rounded_outline(x0: float, y0: float, x1: float, y1: float, radius: float) -> list[tuple[float, float]]:
    """A closed polyline around the box with corners rounded by ``radius`` (image pixels, ``y`` down)."""
    points: list[tuple[float, float]] = []
    for cx, cy, start in ((x1 - radius, y0 + radius, -90), (x1 - radius, y1 - radius, 0), (x0 + radius, y1 - radius, 90),
                          (x0 + radius, y0 + radius, 180)):
        for angle in np.radians(np.linspace(start, start + 90, 7)):
            points.append((cx + radius * np.cos(angle), cy + radius * np.sin(angle)))
    return [*points, points[0]]


#: matplotlib's dotted line (":") at width 0.6 points: 1 on, 1.65 off, times the width
_DOTTED = (0.6, 0.99)


def render_curve_plot(plot: CurvePlot, size: int = IMAGE_SIZE) -> np.ndarray:
    """Render a :class:`CurvePlot` as an RGB ``uint8`` ``[size, size, 3]`` image.

    Measured curves (``style="points"``) are markers joined by a thin dotted line, fitted curves
    (``"line"``) solid lines in the colour of the measured curve whose label starts their own
    (``"LAD fit"`` fits ``"LAD"``). When some curves peak far below the others (myocardium
    beside the blood input), a second panel shows those curves alone on their own scale.
    Drawn as the former matplotlib figure was (panels, limits, ticks, grid, legend placement),
    without a figure: Agg strokes and PIL glyphs on a pixel canvas.
    """
    if not plot.curves:
        raise ValueError(f"CurvePlot {plot.key!r} has no curves")
    for curve in plot.curves:
        if np.shape(curve.x) != np.shape(curve.y) or np.ndim(curve.x) != 1:
            raise ValueError(f"CurvePlot {plot.key!r}, curve {curve.label!r}: x and y must be [n] arrays of one length")
        if curve.style not in ("points", "line"):
            raise ValueError(f"CurvePlot {plot.key!r}, curve {curve.label!r}: style must be 'points' or 'line'")
    colours = _curve_colours(plot)
    peaks = [float(np.nanmax(np.asarray(c.y, dtype=float))) if np.size(c.y) else 0.0 for c in plot.curves]
    top_peak = max(peaks)
    small = [c for c, p in zip(plot.curves, peaks) if p < _ZOOM_FRACTION * top_peak]
    canvas = _Canvas(size)
    canvas.text(size / 2, size * (1 - 0.955), plot.title, 11, bold=True)
    panels = [(plot.curves, "")]
    if small and len(small) < len(plot.curves):
        panels.append((tuple(small), "enlarged: curves with low values"))
    height = 0.80 / len(panels)
    for k, (curves, note) in enumerate(panels):
        bottom = 0.10 + (len(panels) - 1 - k) * height
        box = (0.14, bottom + 0.045, 0.82, height - 0.085)  # left, bottom, width, height (fractions, bottom up)
        top = max(float(np.nanmax(np.asarray(c.y, dtype=float))) if np.size(c.y) else 0.0 for c in curves)
        xs = np.concatenate([np.asarray(c.x, dtype=float) for c in curves])
        xs = xs[np.isfinite(xs)]
        # matplotlib's autoscale: the data's x range and 5 % margins, the left end fixed at 0
        right = float(xs.max() + 0.05 * (xs.max() - xs.min())) if xs.size and xs.max() > xs.min() else 1.0
        axes = _Axes(box[0] * size, (1 - box[1] - box[3]) * size, (box[0] + box[2]) * size, (1 - box[1]) * size,
                     (0.0, right if right > 0 else 1.0), (0.0, 1.35 * top if top > 0 else 1.0))
        width_points, height_points = box[2] * size * 0.72, box[3] * size * 0.72  # pixels to points at 100 ppi
        x_ticks = _axis_ticks(*axes.x_limits, width_points, 7.5, 3.0)
        y_ticks = _axis_ticks(*axes.y_limits, height_points, 7.5, 2.0)
        for value, _ in x_ticks:
            canvas.polyline([(float(axes.x(value)), axes.top), (float(axes.x(value)), axes.bottom)], 0.5, "#dddddd")
        for value, _ in y_ticks:
            canvas.polyline([(axes.left, float(axes.y(value))), (axes.right, float(axes.y(value)))], 0.5, "#dddddd")
        clip = Bbox.from_extents(axes.left, size - axes.bottom, axes.right, size - axes.top)
        drawn = []
        for curve in curves:
            x, y = axes.x(np.asarray(curve.x, dtype=float)), axes.y(np.asarray(curve.y, dtype=float))
            for run in _segments_of(x, y):
                drawn.append(run)
                if curve.style == "points":
                    canvas.polyline(run, 0.6, colours[curve.label], dashes=_DOTTED, clip=clip)
                    canvas.markers(run, colours[curve.label], clip=clip)
                else:
                    canvas.polyline(run, 1.6, colours[curve.label], clip=clip)
        canvas.polyline([(axes.left, axes.top), (axes.right, axes.top), (axes.right, axes.bottom), (axes.left, axes.bottom),
                         (axes.left, axes.top)], 0.8)
        tick = _px(3.5)
        for value, label in x_ticks:
            at = float(axes.x(value))
            canvas.polyline([(at, axes.bottom), (at, axes.bottom + tick)], 0.8)
            canvas.text(at, axes.bottom + tick + _px(3.5), label, 7.5, va="top")
        for value, label in y_ticks:
            at = float(axes.y(value))
            canvas.polyline([(axes.left - tick, at), (axes.left, at)], 0.8)
            canvas.text(axes.left - tick - _px(3.5), at, label, 7.5, ha="right")
        if note:
            canvas.text(axes.left, axes.top - _px(2.0), note, 7.5, ha="left", va="bottom")
        if k == len(panels) - 1:
            label_top = axes.bottom + tick + _px(3.5) + _glyphs("0", 7.5, False).ascent + _glyphs("0", 7.5, False).descent
            canvas.text((axes.left + axes.right) / 2, label_top + _px(4.0), plot.x_label, 8.5, va="top")
        _draw_legend(canvas, axes, curves, colours, drawn)
    canvas.turned_text(0.03 * size, size * (1 - 0.50), plot.y_label, 8.5, 1, ha="center")
    styles = {curve.style for curve in plot.curves}
    if styles == {"points", "line"}:
        canvas.text(size / 2, size * (1 - 0.045), "points: measured; lines: model fit", 7, va="baseline")
    canvas.text(size / 2, size * (1 - 0.01), RESEARCH_LABEL, 9, bold=True, colour="#b00000", va="bottom")
    return canvas.rgb()


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
