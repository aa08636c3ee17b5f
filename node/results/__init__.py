"""DICOM results of a pipeline run: TID 1500 SR, SC images (bull's-eyes, curve plots, segment
table), Parametric Maps, result screen, PDF.

The pipelines fill a :class:`ReportContent` (:mod:`node.results.content`) and call
:func:`build_outputs` from their ``report`` step (:mod:`node.results.outputs`);
:func:`write_preview` writes the same objects plus PNG, PDF and HTML renderings for
``cardionode process --out``. Codes and series attributes come from ``dicom_templates/``
(:mod:`node.results.templates`). This package never touches the network.
"""

from node.results.content import ReportContent, ReportContext
from node.results.outputs import build_outputs, output_names, render_images
from node.results.preview import write_preview
from node.results.sr import ContentError, to_enhanced_sr
from node.results.templates import TemplateError

__all__ = [
    "ContentError",
    "ReportContent",
    "ReportContext",
    "TemplateError",
    "build_outputs",
    "output_names",
    "render_images",
    "to_enhanced_sr",
    "write_preview",
]
