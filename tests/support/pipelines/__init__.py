"""Pipelines for the tests, registered when their module is imported (as the node's
``pipeline_modules`` setting does), never shipped.

* :mod:`tests.support.pipelines.flowtest`: sums NM frames; an SC and a small SR (queue, sender, end to end);
* :mod:`tests.support.pipelines.results_e2e`: SPECT report content through :func:`node.results.build_outputs`.

Importing this package registers neither. Tests that route studies in their own process
to a test pipeline are marked ``uses_test_pipelines`` (see ``tests/conftest.py``).
"""

from __future__ import annotations

from node.pipelines.routing import SeriesSummary, StudySummary

__all__ = ["study_summary"]


def study_summary(*modalities: str) -> StudySummary:
    """A study ``1.2.3`` with one NM-class series of one instance per modality given (as the router sees it)."""
    return StudySummary(
        "1.2.3",
        tuple(SeriesSummary(f"1.2.3.{i}", m, "1.2.840.10008.5.1.4.1.1.20", instance_count=1)
              for i, m in enumerate(modalities)),
    )
