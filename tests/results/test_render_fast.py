"""The results step's fast paths: bull's-eyes without a matplotlib figure, the colour bar's scale as
matplotlib draws it, and the SR's content tree encoded once (the same bytes as pydicom's writer)."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from pydicom import DataElement
from pydicom.charset import convert_encodings
from pydicom.dataelem import RawDataElement
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element

from node.quant.segments import DEFAULT_GRID
from node.queue.steps import dataset_to_bytes
from node.results.content import Curve, CurvePlot, MapImage
from node.results.render import (
    _COLOUR_BAR,
    _ticks,
    render_bullseye,
    render_curve_plot,
    render_grid_screen,
    render_table_screen,
)
from node.results.sr import build_sr


def test_bullseye_plots_and_tables_make_no_matplotlib_figure(monkeypatch):
    """The one way of drawing them: pixels, Agg strokes and PIL glyphs; a figure per image cost 60-80 ms."""

    def refuse(*args, **kwargs):
        raise AssertionError("a matplotlib Figure was made")

    monkeypatch.setattr(Figure, "__init__", refuse)
    values = np.linspace(0.0, 4.0, DEFAULT_GRID.n_u * DEFAULT_GRID.n_psi).reshape(DEFAULT_GRID.shape)
    rgb = render_bullseye(MapImage("m", "flow reserve", values, "{ratio}", (0.0, 4.0), contour_levels=(1.5, 2.0),
                                   muted_rim_rows=3, blackout=values < 0.3))
    assert rgb.shape == (512, 512, 3) and rgb.dtype == np.uint8
    assert render_table_screen("Global results", [("LVEF", "58", "%")]).shape == (512, 512, 3)
    assert render_grid_screen("Per segment", ["Segment", "Stress\n%"], [["1 basal anterior", "80"]]).shape == (512, 512, 3)
    t = np.arange(20.0)
    plot = CurvePlot("p", "curves", "time (s)", "activity", (Curve("LV", t, np.exp(-t / 5)), Curve("LV fit", t, np.exp(-t / 5), "line")))
    assert render_curve_plot(plot).shape == (512, 512, 3)


@pytest.mark.parametrize("value_range", [(0.0, 100.0), (0.0, 1.0), (0.0, 4.0), (-50.0, 50.0), (0.0, 360.0),
                                         (0.0, 3.5), (-180.0, 180.0), (0.5, 2.5)])
def test_colour_bar_ticks_are_those_of_a_matplotlib_colour_bar(value_range):
    """Same scale as before: the ticks and labels a matplotlib colour bar of the same size shows."""
    lo, hi = value_range
    fig = Figure(figsize=(5.12, 5.12), dpi=100)
    FigureCanvasAgg(fig)
    image = fig.add_axes((0.04, 0.12, 0.74, 0.74)).imshow(np.linspace(lo, hi, 16).reshape(4, 4), vmin=lo, vmax=hi)
    bar = fig.colorbar(image, cax=fig.add_axes(_COLOUR_BAR))
    bar.ax.tick_params(labelsize=7)
    fig.canvas.draw()
    shown = [(float(t.get_position()[1]), t.get_text()) for t in bar.ax.get_yticklabels() if lo <= t.get_position()[1] <= hi]
    assert [(v, label) for v, label in _ticks(lo, hi)] == shown


def test_bullseye_colours_cells_with_the_colour_map_table():
    """A map of one value per ring shows exactly the colour-map entry of that value inside each ring."""
    from matplotlib import colormaps

    rows = np.repeat(np.arange(DEFAULT_GRID.n_u, dtype=float)[:, None], DEFAULT_GRID.n_psi, axis=1)
    rgb = render_bullseye(MapImage("m", "t", rows, "%", (0.0, float(DEFAULT_GRID.n_u)), colormap="viridis"))
    cx, cy, r = 0.41 * 512, 0.51 * 512, 0.37 * 512 / 1.15  # disc centre and radius (see test_images_pdf)
    table = colormaps["viridis"](np.arange(256), bytes=True)[:, :3]
    for ring in (12, 30):  # a ring of the grid, 45 degrees off the segment borders and labels
        u = (ring + 0.5) / DEFAULT_GRID.n_u
        x, y = cx + r * u * np.cos(np.radians(-25)), cy - r * u * np.sin(np.radians(-25))
        expected = table[int(ring / DEFAULT_GRID.n_u * 256)]
        assert np.abs(rgb[int(y), int(x)].astype(int) - expected).max() <= 1, (ring, rgb[int(y), int(x)], expected)


def test_sr_tree_encoded_once_is_what_pydicom_writes(run):
    """The SR's content tree, encoded by the report's own encoder, is byte for byte pydicom's encoding of the
    built content items, and the file reads back with the whole tree."""
    images = {image.key: ds for image, ds in zip(run.content.images, run.outputs[1:])}  # the SCs follow the SR
    sr = build_sr(run.content, run.sources, run.context, images=images)
    assert sr.SOPInstanceUID == run.outputs[0].SOPInstanceUID
    raw = sr.get_item(0x0040A730)  # without converting the raw element
    assert isinstance(raw, RawDataElement), type(raw)
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    tree = sr.content[0].ContentSequence  # highdicom's view: the content items as built
    write_data_element(buffer, DataElement(0x0040A730, "SQ", tree), convert_encodings(sr.get("SpecificCharacterSet")))
    assert buffer.getvalue()[12:] == raw.value, f"seed {run.seed}"
    evidence = sr.get_item(0x0040A375)  # Current Requested Procedure Evidence Sequence, also encoded once
    assert isinstance(evidence, RawDataElement)
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_data_element(buffer, sr[0x0040A375])  # parsed from the raw bytes, encoded by pydicom
    assert buffer.getvalue()[12:] == evidence.value, f"seed {run.seed}"
    assert len(sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence) >= 1
    assert dataset_to_bytes(sr) == dataset_to_bytes(run.outputs[0])
    again = pydicom.dcmread(io.BytesIO(dataset_to_bytes(sr)))
    assert len(again.ContentSequence) == len(tree) > 3
    assert [i.ValueType for i in again.ContentSequence] == [i.ValueType for i in tree]


def test_source_references_encoded_as_pydicom_writes_them(run):
    """The study's Source Image Sequence, encoded once by the fast encoder, is pydicom's encoding of its items."""
    from pydicom import Dataset

    from node.results.sc import SourceReferences
    from node.results.templates import load_templates

    references = SourceReferences.of(run.sources, load_templates())
    holder = Dataset()
    holder.SourceImageSequence = list(references.items)
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_data_element(buffer, holder["SourceImageSequence"])
    assert buffer.getvalue()[12:] == references.encoded, f"seed {run.seed}"
    assert len(references.items) == len(run.sources) > 0
