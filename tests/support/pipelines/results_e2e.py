"""A pipeline for the results end-to-end tests (registered from tests/, never shipped).

It accepts NM studies; ``analyse`` turns the received instances into a SPECT
:class:`ReportContent` (segment, global and AI groups, polar maps) whose numbers
depend on the instances received (counts and number of series), and ``report``
calls :func:`node.results.build_outputs`, exactly as the SPECT pipeline does.
A late series therefore changes the content, and the node's re-run produces a
revised report that must reference the first one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom import Dataset

from node.pipelines import registry
from node.pipelines.base import Pipeline, SeriesRule
from node.results import build_outputs
from node.results.content import ReportContent, ReportContext
from tests.support.report import make_content

NAME = "results_e2e"


@dataclass(frozen=True)
class Analysis:
    content: ReportContent
    headers: tuple[Dataset, ...]  # the sources without pixel data


class ResultsEndToEndPipeline(Pipeline):
    name = NAME
    version = "1.0"
    title = "results end-to-end test: SPECT report content from NM instances"
    series_rules = (SeriesRule("nm", modalities=frozenset({"NM"})),)
    result_type = Analysis

    def analyse(self, instances: Sequence[Dataset]) -> Analysis:
        nm = sorted((d for d in instances if d.Modality == "NM"), key=lambda d: str(d.SOPInstanceUID))
        if not nm:
            raise ValueError("no NM instance")
        counts = sum(float(np.frombuffer(bytes(d.PixelData), dtype=np.uint16).sum()) for d in nm)
        series = {str(d.SeriesInstanceUID) for d in nm}
        headers = []
        for ds in nm:
            header = Dataset()
            header.file_meta = ds.file_meta
            for elem in ds:
                if elem.tag.group != 0x7FE0:
                    header.add(elem)
            headers.append(header)
        content = make_content(headers, seed=int(counts) % 2**31, lvef=50.0 + len(series))
        return Analysis(content, tuple(headers))

    def report(self, result: Analysis, context: ReportContext) -> list[Dataset]:
        return build_outputs(result.content, list(result.headers), context)


registry.register(ResultsEndToEndPipeline())
