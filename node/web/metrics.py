"""``GET /metrics``: the node's Prometheus metrics in the text exposition format.

What a scrape returns (every metric is listed, with its type, labels and meaning, in docs/metrics.md):

* the instruments of :mod:`node.telemetry` (``telemetry.REGISTRY``), which the listener, the
  assembler, the conductor and the sender of this process record into as events happen;
* gauges computed at scrape time by :class:`NodeCollector` from the ledger, the broker and the
  data directory: ``cardionode_build_info``, ``cardionode_studies``, ``cardionode_jobs``,
  ``cardionode_sends``, ``cardionode_ledger_instances``, ``cardionode_queue_depth``,
  ``cardionode_disk_free_bytes`` and ``cardionode_disk_watermark_bytes``.

The collector is bound to one :class:`~node.web.context.WebContext` and registered nowhere
globally: each scrape gathers ``telemetry.REGISTRY`` and the context's collector into a registry of
its own, so any number of apps (tests build many) live side by side without duplicate
registrations. Labels have few values (states, queue and step names, configured destinations);
none carries a UID, an accession number or anything of a patient.

Under ``cardionode web`` (a node running in another process) the instruments of
:mod:`node.telemetry` stay at zero: they count what happens in the process that serves them. The
scrape-time gauges read the shared ledger and broker and are true in both set-ups.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, Metric
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from node import __version__, telemetry
from node.config import Settings
from node.ledger import JOB_STATES, SEND_STATES, STUDY_STATES
from node.resources import default_models_dir
from node.web.context import WebContext
from node.web.probes import disk_free_bytes

__all__ = ["NodeCollector", "metrics_routes", "model_versions", "scrape"]

_log = logging.getLogger(__name__)


def model_versions(settings: Settings) -> dict[str, str]:
    """``{bundle name: version}`` of the MONAI bundles the node uses (``models_dir``, else those shipped),
    read from each bundle's ``configs/metadata.json``; a bundle whose metadata cannot be read is left out."""
    try:
        root = settings.models_dir or default_models_dir()
    except FileNotFoundError:
        return {}
    versions: dict[str, str] = {}
    for metadata in sorted(Path(root).glob("*/configs/metadata.json")):
        try:
            version = json.loads(metadata.read_text(encoding="utf-8")).get("version")
        except (OSError, ValueError):
            continue
        if isinstance(version, str) and version:
            versions[metadata.parent.parent.name] = version
    return versions


class NodeCollector(Collector):
    """The scrape-time gauges of one web context (see the module docstring); each reads its source anew.

    A source that fails (ledger busy, broker down) leaves its gauges out of that scrape, and the
    others are still returned: a missing series says "unknown", a zero would lie.
    """

    def __init__(self, context: WebContext) -> None:
        self.context = context

    def collect(self) -> Iterator[Metric]:
        settings = self.context.settings
        models = model_versions(settings)
        info = GaugeMetricFamily("cardionode_build_info", "the node's version and its model bundles' versions (value 1)",
                                 labels=["version", "models"])
        info.add_metric([__version__, ",".join(f"{name}={version}" for name, version in models.items())], 1.0)
        yield info
        yield from self._ledger()
        depths = self.context.probe.queue_depths()
        if depths:
            queue = GaugeMetricFamily("cardionode_queue_depth", "messages in the broker waiting for a worker, per queue",
                                      labels=["queue"])
            for name, count in sorted(depths.items()):
                queue.add_metric([name], float(count))
            yield queue
        free = disk_free_bytes(settings)
        if free is not None:
            yield _gauge("cardionode_disk_free_bytes", "free bytes of the file system holding the data directory",
                         "volume", {"data": free})
        yield _gauge("cardionode_disk_watermark_bytes",
                     "free bytes below which the listener refuses associations (disk_watermark_mb)",
                     "volume", {"data": settings.disk_watermark_mb * 2**20})

    def _ledger(self) -> Iterator[Metric]:
        ledger = self.context.ledger
        try:
            studies = ledger.studies.count_by_state()
            jobs = ledger.jobs.count_by_state()
            sends = ledger.sends.count_by_state()
            instances = ledger.instances.count()
        except Exception as exc:  # the database's own errors, whatever the driver: the scrape goes on
            _log.warning("metrics: the ledger did not answer: %s: %s", type(exc).__name__, str(exc)[:200])
            return
        yield _gauge("cardionode_studies", "studies in the ledger, by state", "state", _ordered(studies, STUDY_STATES))
        yield _gauge("cardionode_jobs", "processing jobs in the ledger, by state", "state", _ordered(jobs, JOB_STATES))
        yield _gauge("cardionode_sends", "result sends in the ledger (one per object and destination), by state",
                     "state", _ordered(sends, SEND_STATES))
        ledger_instances = GaugeMetricFamily("cardionode_ledger_instances", "instances recorded in the ledger")
        ledger_instances.add_metric([], float(instances))
        yield ledger_instances


def _ordered(counts: dict[str, int], states: Iterable[str]) -> dict[str, float]:
    return {state: float(counts.get(state, 0)) for state in states}


def _gauge(name: str, documentation: str, label: str, values: dict[str, float] | dict[str, int]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=[label])
    for value_label, value in values.items():
        family.add_metric([value_label], float(value))
    return family


class _Telemetry(Collector):
    """The node's instruments (:data:`node.telemetry.REGISTRY`) as one collector of a scrape's registry."""

    def collect(self) -> Iterator[Metric]:
        yield from telemetry.REGISTRY.collect()


def scrape(context: WebContext, accept: str | None = None) -> tuple[bytes, str]:
    """One scrape: ``(body, content type)`` in the format ``accept`` asks for (the Prometheus text
    format, or OpenMetrics when the scraper prefers it)."""
    registry = CollectorRegistry(auto_describe=False)  # this scrape's own: nothing registered globally
    registry.register(_Telemetry())
    registry.register(NodeCollector(context))
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type


def metrics_routes(context: WebContext) -> list[BaseRoute]:
    """``GET /metrics`` for ``context`` (the app's authentication guards it: :mod:`node.web.auth`)."""

    def metrics(request: Request) -> Response:  # a plain function: Starlette runs it in its thread pool
        body, content_type = scrape(context, request.headers.get("accept"))
        return Response(body, media_type=content_type, headers={"Cache-Control": "no-store"})

    return [Route("/metrics", metrics, methods=["GET"], name="metrics")]
