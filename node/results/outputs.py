"""DICOM results of a pipeline run: TID 1500 SR, bull's-eye SC images, result screen, PDF.

``build_outputs(content, sources, context)`` is the one entry point the
pipelines call from their ``report`` step; ``write_preview`` writes the same
objects plus PNG, PDF and HTML renderings for ``cardionode process --out``.
Codes and series attributes come from ``dicom_templates/``
(:mod:`node.results.templates`). This package never touches the network.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydicom import Dataset

from node.results.content import ReportContent, ReportContext
from node.results.identity import ContentIdentity, algorithms_of
from node.results.pdf import build_encapsulated_pdf, global_rows, render_summary_pdf
from node.results.preview import write_preview
from node.results.render import render_bullseye, render_table_screen
from node.results.sc import build_multiframe_screen, build_sc, contributing_algorithms
from node.results.sr import ContentError, build_sr, to_enhanced_sr
from node.results.templates import TemplateError, Templates, load_templates

__all__ = [
    "build_outputs",
    "render_images",
    "write_preview",
    "to_enhanced_sr",
    "ContentError",
    "TemplateError",
]


def render_images(content: ReportContent) -> list[tuple[str, np.ndarray]]:
    """Render every MapImage as a bull's-eye: ``[(key, RGB uint8 [rows, columns, 3]), ...]`` in content order.

    A heat map with ``overlay_on`` is drawn over its base map (greyscale).
    """
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
        out.append((image.key, render_bullseye(image, base=base)))
    return out


def build_outputs(
    content: ReportContent,
    sources: Sequence[Dataset],
    context: ReportContext,
    templates: Templates | None = None,
) -> list[Dataset]:
    """All DICOM result objects of one pipeline run, in the source study.

    Returns ``[SR, SC per MapImage..., multi-frame result screen (if
    context.multiframe_screen), Encapsulated PDF (if context.pdf_summary)]``.
    ``sources`` are the datasets of ``content.sources`` (headers suffice).
    Deterministic: the same inputs give the same UIDs and bytes; predecessor
    SRs in ``context.predecessors`` are referenced, not hashed. ``templates``
    default to those in ``context.templates_dir`` (None: the package's).
    """
    templates = templates or load_templates(context.templates_dir)
    if not sources:
        raise ContentError("build_outputs needs the source instances (patient and study come from them)")
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    used = [by_uid[s.sop_instance_uid] for s in content.sources if s.sop_instance_uid in by_uid]
    if len(used) != len(content.sources):
        missing = [s.sop_instance_uid for s in content.sources if s.sop_instance_uid not in by_uid]
        raise ContentError(f"datasets missing for source instances {missing[:3]} ({len(missing)} in all)")
    identity = ContentIdentity.of(content, used)
    renders = render_images(content)
    images: dict[str, Dataset] = {}
    for number, ((key, rgb), image) in enumerate(zip(renders, content.images), start=1):
        images[key] = build_sc(rgb, image, used, identity, templates, number, content.pipeline, content.pipeline_version)
    sr = build_sr(content, used, context, images=images, templates=templates)
    outputs: list[Dataset] = [sr, *images.values()]
    table = global_rows(content, templates)
    if context.multiframe_screen:
        frames = [rgb for _, rgb in renders]
        labels = [image.key.upper()[:16] for image in content.images]  # Frame Label Vector is SH
        frames.append(render_table_screen("Global results", table))
        labels.append("GLOBAL RESULTS")
        screen = build_multiframe_screen(frames, labels, used, identity, templates, content.pipeline, content.pipeline_version)
        contributing_algorithms(screen, algorithms_of(content), templates, identity)
        outputs.append(screen)
    if context.pdf_summary:
        titled = [(image.title, rgb) for image, (_, rgb) in zip(content.images, renders)]
        pdf_bytes = render_summary_pdf(content, titled, templates, identity)
        pdf = build_encapsulated_pdf(pdf_bytes, content, used, identity, templates)
        contributing_algorithms(pdf, algorithms_of(content), templates, identity)
        outputs.append(pdf)
    return outputs

