"""Pipelines: what each study kind accepts, needs and does, and which one takes a study.

* :mod:`node.pipelines.routing` — the routing attributes read from every instance (one
  extractor for the listener and ``cardionode process``) and the study summaries built from them;
* :mod:`node.pipelines.base` — the pipeline contract: series rules, acceptance, steps;
* :mod:`node.pipelines.options` — per-pipeline options (``[pipelines.<name>]``) and the
  run configuration that travels with every step; :mod:`node.pipelines.configure` makes
  both from the node's settings;
* :mod:`node.pipelines.registry` — the pipelines the node knows, and routing;
* one module per study kind: :mod:`node.pipelines.spect_mpi`, :mod:`node.pipelines.pet_mbf`;
* :mod:`node.pipelines.process` — ``cardionode process FOLDER``.

Pipelines wire :mod:`node.imaging`, :mod:`node.quant`, :mod:`node.ai` and :mod:`node.results`
together; they know nothing of Celery, the ledger or the network.
"""

from node.pipelines.base import Acceptance, Pipeline, SeriesRule, Step
from node.pipelines.options import OptionsError, PipelineOptions, RunConfig
from node.pipelines.routing import SeriesSummary, StudySummary, routing_attributes

__all__ = [
    "Acceptance",
    "OptionsError",
    "Pipeline",
    "PipelineOptions",
    "RunConfig",
    "SeriesRule",
    "SeriesSummary",
    "Step",
    "StudySummary",
    "routing_attributes",
]
