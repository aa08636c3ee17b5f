"""DICOM results of a pipeline run: TID 1500 SR, SC images (bull's-eyes, plots, tables), parametric maps, result screen, PDF.

``build_outputs(content, sources, context)`` is the one entry point the
pipelines call from their ``report`` step; ``write_preview`` writes the same
objects plus PNG, PDF and HTML renderings for ``cardionode process --out``.
Codes and series attributes come from ``dicom_templates/``
(:mod:`node.results.templates`). This package never touches the network.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator, Sequence

import numpy as np
from pydicom import Dataset

from node.results.content import Algorithm, ReportContent, ReportContext, SourceInstance
from node.results.identity import ContentIdentity, algorithms_of
from node.results.pdf import ENCAPSULATED_PDF, build_encapsulated_pdf, render_summary_pdf
from node.results.pm import PARAMETRIC_MAP, build_parametric_map
from node.results.render import render_bullseye, render_curve_plot, render_grid_screen, render_table_screen
from node.results.sc import (
    MULTIFRAME_TRUE_COLOR_SC,
    SECONDARY_CAPTURE,
    SourceReferences,
    build_multiframe_screen,
    build_rendered_sc,
    build_sc,
    contributing_algorithms,
)
from node.results.screen import SCREEN_KIND, plan_screen, render_screen_page, screen_key
from node.results.seg import OVERLAY_KIND, SEGMENTATION_STORAGE
from node.results.sr import COMPREHENSIVE_3D_SR, ENHANCED_SR, ContentError, build_sr, to_enhanced_sr
from node.results.tables import global_rows, segment_table
from node.results.templates import TemplateError, Templates, load_templates

__all__ = [
    "SEGMENT_TABLE_KEY",
    "build_outputs",
    "output_names",
    "source_datasets",
    "render_images",
    "render_plots",
    "to_enhanced_sr",
    "ContentError",
    "TemplateError",
]


def render_images(content: ReportContent, templates: Templates | None = None) -> list[tuple[str, np.ndarray]]:
    """Render every MapImage as a bull's-eye: ``[(key, RGB uint8 [rows, columns, 3]), ...]`` in content order.

    A heat map with ``overlay_on`` is drawn over its base map (greyscale). Segment values
    print with the decimals of the labelled map's ``quantity`` in ``templates`` (None: the
    package's templates).
    """
    templates = templates or load_templates()
    by_key = {image.key: image for image in content.images}
    if len(by_key) != len(content.images):
        raise ContentError("MapImage keys must be unique within a report")
    out = []
    for image in content.images:
        base = None
        if image.overlay_on is not None:
            base = by_key.get(image.overlay_on)
            if base is None:
                raise ContentError(f"MapImage {image.key!r} overlays {image.overlay_on!r}, which the content does not have")
        labelled = base if base is not None else image
        decimals = templates.quantity(labelled.quantity, content.pipeline).decimals if labelled.quantity else None
        out.append((image.key, render_bullseye(image, base=base, decimals=decimals)))
    return out


#: names of the segment-table SC and its screen frame
SEGMENT_TABLE_KEY = "segment_table"
_SEGMENT_TABLE_TITLE = "Results per AHA segment"
#: rows of the global-results table per screen frame (more rows continue on further frames)
_GLOBAL_ROWS_PER_FRAME = 34


def render_plots(content: ReportContent) -> list[tuple[str, np.ndarray]]:
    """Render every CurvePlot: ``[(key, RGB uint8 [rows, columns, 3]), ...]`` in content order."""
    keys = [plot.key for plot in content.plots]
    if len(set(keys)) != len(keys) or set(keys) & {image.key for image in content.images}:
        raise ContentError("CurvePlot keys must be unique within a report and differ from the MapImage keys")
    return [(plot.key, render_curve_plot(plot)) for plot in content.plots]


def output_names(content: ReportContent, outputs: Sequence[Dataset]) -> list[str]:
    """A file-name stem for each object :func:`build_outputs` returned, in its order.

    ``sr``, ``sc_<image key>``, ``sc_<plot key>``, ``sc_segment_table``, ``pm_<map key>``,
    ``results_screen_<page>``, ``screen``, ``pdf``; cardiac MR adds ``seg`` and ``sc_overlay_<n>`` (the objects of
    :func:`node.pipelines.cmr_lge.mask_outputs`). The results-screen pages and the overlays are told from the
    other SC images by their series (its UID derives from the content); SC images a pipeline adds beyond its
    content's (the CMR outcome model's heat maps) are ``sc_<series number>_<instance number>``.
    """
    sc_keys = iter([*(image.key for image in content.images), *(plot.key for plot in content.plots),
                    SEGMENT_TABLE_KEY])
    pm_keys = iter(volume.key for volume in content.parametric_maps)
    identity = ContentIdentity.of(content, ())
    screen_series = identity.uid(SCREEN_KIND, "series")
    overlay_series = identity.uid(OVERLAY_KIND, "series")  # cardiac MR contour overlays (node.results.seg)
    names = []
    for ds in outputs:
        sop_class = str(ds.SOPClassUID)
        if sop_class in (COMPREHENSIVE_3D_SR, ENHANCED_SR):
            names.append("sr")
        elif sop_class == SECONDARY_CAPTURE and str(ds.SeriesInstanceUID) == screen_series:
            names.append(screen_key(int(ds.InstanceNumber)))
        elif sop_class == SECONDARY_CAPTURE and str(ds.SeriesInstanceUID) == overlay_series:
            names.append(f"sc_overlay_{int(ds.InstanceNumber)}")
        elif sop_class == SEGMENTATION_STORAGE:
            names.append("seg")
        elif sop_class == SECONDARY_CAPTURE:
            # a pipeline's own images beyond the content's (the CMR outcome model's heat maps) by series and number
            key = next(sc_keys, None)
            names.append(f"sc_{key}" if key is not None else f"sc_{int(ds.SeriesNumber)}_{int(ds.InstanceNumber)}")
        elif sop_class == PARAMETRIC_MAP:
            names.append(f"pm_{next(pm_keys)}")
        elif sop_class == MULTIFRAME_TRUE_COLOR_SC:
            names.append("screen")
        elif sop_class == ENCAPSULATED_PDF:
            names.append("pdf")
        else:
            names.append(str(ds.SOPInstanceUID))
    return names


def _global_frames(rows: list[tuple[str, str, str]]) -> list[tuple[str, np.ndarray]]:
    """The global-results table as screen frames, ``_GLOBAL_ROWS_PER_FRAME`` rows each (at least one frame)."""
    if len(rows) <= _GLOBAL_ROWS_PER_FRAME:
        return [("GLOBAL RESULTS", render_table_screen("Global results", rows))]
    chunks = [rows[i: i + _GLOBAL_ROWS_PER_FRAME] for i in range(0, len(rows), _GLOBAL_ROWS_PER_FRAME)]
    return [(f"GLOBAL RESULTS {k}", render_table_screen(f"Global results ({k} of {len(chunks)})", chunk))
            for k, chunk in enumerate(chunks, start=1)]


def _results_screen(
    content: ReportContent,
    renders: Sequence[tuple[str, np.ndarray]],
    plots: Sequence[tuple[str, np.ndarray]],
    table_screen: np.ndarray | None,
    used: Sequence[Dataset],
    identity: ContentIdentity,
    templates: Templates,
    algorithms: Sequence[Algorithm],
    references: SourceReferences,
) -> list[Dataset]:
    """The results-screen pages (:mod:`node.results.screen`) as SC images, composed from the rendered panels."""
    titles = {image.key: image.title for image in content.images}
    titles |= {plot.key: plot.title for plot in content.plots}
    panels = dict([*renders, *plots])
    if table_screen is not None:
        panels[SEGMENT_TABLE_KEY] = table_screen
        titles[SEGMENT_TABLE_KEY] = _SEGMENT_TABLE_TITLE
    pages = plan_screen(content, templates, used[0], {k: titles[k] for k in panels}, algorithms)
    return [
        build_rendered_sc(render_screen_page(page, panels), SCREEN_KIND, screen_key(page.number),
                          f"Results screen page {page.number} of {len(pages)}: {page.title}", None, algorithms, used,
                          identity, templates, page.number, content.pipeline, content.pipeline_version, references)
        for page in pages
    ]


@contextlib.contextmanager
def _cyclic_gc_deferred() -> Iterator[None]:
    """Run the block with Python's cyclic garbage collector paused, then collect the young generation once.

    Building a study's outputs allocates hundreds of thousands of small objects (matplotlib
    artists, pydicom elements, highdicom content items); the automatic collections on the way
    walk the older generations again and again (a PET study's source headers included). One
    collection of the youngest generation at the end frees the cycles made in the block (figures)
    without walking the rest of the heap. Measured (``bench/results_step.py``): about 0.4 s of
    CPU less per PET study. A caller that paused the collector itself keeps it paused.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.collect(0)


def build_outputs(
    content: ReportContent,
    sources: Sequence[Dataset],
    context: ReportContext,
    templates: Templates | None = None,
) -> list[Dataset]:
    """All DICOM result objects of one pipeline run, in the source study.

    Returns, in this order: ``[SR, SC per MapImage..., SC per CurvePlot..., segment-table SC
    (if the pipeline's ``segment_table_image`` template setting is on and the content has
    segment results), Parametric Map per ParametricVolume..., results-screen SC per page (if
    context.results_screen; :mod:`node.results.screen`), multi-frame result screen (if
    context.multiframe_screen), Encapsulated PDF (if context.pdf_summary)]``
    (:func:`output_names` names them). The result screen's frames are the bull's-eyes, the
    plots, the segment table (when the SC is made) and the global results (one frame per 34
    rows); the PDF shows the bull's-eyes and plots and every result in its tables.

    ``sources`` are the datasets of ``content.sources`` plus those of every parametric map's
    ``source_sop_instance_uids`` (headers suffice). Deterministic: the same inputs give the
    same UIDs and bytes; predecessor SRs in ``context.predecessors`` are referenced, not
    hashed. ``templates`` default to those in ``context.templates_dir`` (None: the package's).
    Python's cyclic garbage collector is paused while the objects are built (:func:`_cyclic_gc_deferred`).
    """
    with _cyclic_gc_deferred():
        return _build_outputs(content, sources, context, templates or load_templates(context.templates_dir))


def _build_outputs(
    content: ReportContent,
    sources: Sequence[Dataset],
    context: ReportContext,
    templates: Templates,
) -> list[Dataset]:
    """:func:`build_outputs` with the templates loaded."""
    if not sources:
        raise ContentError("build_outputs needs the source instances (patient and study come from them)")
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    used = [by_uid[s.sop_instance_uid] for s in content.sources if s.sop_instance_uid in by_uid]
    if len(used) != len(content.sources):
        missing = [s.sop_instance_uid for s in content.sources if s.sop_instance_uid not in by_uid]
        raise ContentError(f"datasets missing for source instances {missing[:3]} ({len(missing)} in all)")
    identity = ContentIdentity.of(content, used)
    algorithms = algorithms_of(content)
    references = SourceReferences.of(used, templates)  # once per study, shared by the SC, screen and PDF objects
    renders = render_images(content, templates)
    plots = render_plots(content)
    images: dict[str, Dataset] = {}
    for number, ((key, rgb), image) in enumerate(zip(renders, content.images), start=1):
        images[key] = build_sc(rgb, image, used, identity, templates, number, content.pipeline, content.pipeline_version,
                               references)
    sr = build_sr(content, used, context, images=images, templates=templates)
    outputs: list[Dataset] = [sr, *images.values()]
    for number, ((key, rgb), plot) in enumerate(zip(plots, content.plots), start=1):
        outputs.append(build_rendered_sc(rgb, "sc_plot", key, plot.title, None, algorithms, used, identity, templates,
                                         number, content.pipeline, content.pipeline_version, references))
    header, segment_rows = segment_table(content, templates)
    table_screen = None
    if segment_rows and templates.pipeline(content.pipeline).get("segment_table_image", False):
        table_screen = render_grid_screen(_SEGMENT_TABLE_TITLE, header, segment_rows)
        outputs.append(build_rendered_sc(table_screen, "sc_table", SEGMENT_TABLE_KEY, _SEGMENT_TABLE_TITLE, None,
                                         algorithms, used, identity, templates, 1, content.pipeline,
                                         content.pipeline_version, references))
    if len({volume.key for volume in content.parametric_maps}) != len(content.parametric_maps):
        raise ContentError("ParametricVolume keys must be unique within a report")
    for number, volume in enumerate(content.parametric_maps, start=1):
        outputs.append(build_parametric_map(volume, by_uid, identity, templates, number, content.pipeline,
                                            content.pipeline_version, context.device_uid, algorithms))
    if context.results_screen:
        outputs.extend(_results_screen(content, renders, plots, table_screen, used, identity, templates, algorithms,
                                       references))
    table = global_rows(content, templates)
    if context.multiframe_screen:
        frames = [rgb for _, rgb in renders] + [rgb for _, rgb in plots]
        labels = [key.upper()[:16] for key, _ in [*renders, *plots]]  # Frame Label Vector is SH
        if table_screen is not None:
            frames.append(table_screen)
            labels.append("SEGMENT TABLE")
        for label, frame in _global_frames(table):
            frames.append(frame)
            labels.append(label)
        screen = build_multiframe_screen(frames, labels, used, identity, templates, content.pipeline,
                                         content.pipeline_version, references)
        contributing_algorithms(screen, algorithms, templates, identity)
        outputs.append(screen)
    if context.pdf_summary:
        titled = [(image.title, rgb) for image, (_, rgb) in zip(content.images, renders)]
        titled += [(plot.title, rgb) for plot, (_, rgb) in zip(content.plots, plots)]
        pdf_bytes = render_summary_pdf(content, titled, templates, identity, used[0])
        pdf = build_encapsulated_pdf(pdf_bytes, content, used, identity, templates, references)
        contributing_algorithms(pdf, algorithms, templates, identity)
        outputs.append(pdf)
    return outputs


def source_datasets(sources: Sequence[SourceInstance], headers: Sequence[Dataset]) -> list[Dataset]:
    """The source data sets :func:`build_outputs` needs, in ``sources`` order: the headers a pipeline kept
    (those whose modules the report reads) and, for every other instance, a data set of its four UIDs only
    (the SR's evidence and the SC's Source Image Sequence read nothing else of them)."""
    kept = {str(ds.SOPInstanceUID): ds for ds in headers}
    out = []
    for source in sources:
        ds = kept.get(source.sop_instance_uid)
        if ds is None:
            ds = Dataset()
            ds.StudyInstanceUID = source.study_instance_uid
            ds.SeriesInstanceUID = source.series_instance_uid
            ds.SOPClassUID = source.sop_class_uid
            ds.SOPInstanceUID = source.sop_instance_uid
        out.append(ds)
    return out
