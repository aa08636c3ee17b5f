"""The pipeline registry: which pipelines the node knows, and which one takes a study.

Pipelines register themselves by name when their module is imported::

    from node.pipelines import registry
    registry.register(SpectMpiPipeline())

The node imports the modules of the pipelines it ships (:data:`KNOWN_MODULES`)
lazily, the first time the registry is asked, plus any module named in the
``pipeline_modules`` setting (site or test pipelines). A module that fails to
import is reported in the log and skipped, so one broken pipeline does not stop
the others.

Routing (:func:`route`) asks every pipeline whether it accepts a study and
returns the first that does, in registration order, with the reason in words
for the ledger and ``cardionode status``. The node imports the
``pipeline_modules`` before the shipped ones, so a site pipeline that accepts
the same studies as a shipped one takes precedence.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from node.pipelines.base import Acceptance, Pipeline
from node.pipelines.routing import StudySummary, describe_study

__all__ = [
    "KNOWN_MODULES",
    "UnknownPipelineError",
    "register",
    "unregister",
    "get",
    "all_pipelines",
    "load_modules",
    "route",
    "acceptance",
    "option_problems",
]

#: modules of the pipelines shipped with the node; each registers itself on import
KNOWN_MODULES: tuple[str, ...] = ("node.pipelines.spect_mpi", "node.pipelines.pet_mbf", "node.pipelines.cmr_lge")

_log = logging.getLogger(__name__)
_lock = threading.RLock()
_pipelines: dict[str, Pipeline] = {}
_imported: set[str] = set()
_import_errors: dict[str, str] = {}


class UnknownPipelineError(KeyError):
    """A pipeline name that no registered pipeline carries."""

    def __str__(self) -> str:  # KeyError quotes its argument; say it in words
        return str(self.args[0]) if self.args else "unknown pipeline"


def register(pipeline: Pipeline) -> Pipeline:
    """Register ``pipeline`` under ``pipeline.name`` and return it.

    Registering the same object twice is harmless; registering a different
    object under a name already taken replaces it (the newer module wins) and
    says so in the log.
    """
    if not isinstance(pipeline, Pipeline):
        raise TypeError(f"register() needs a Pipeline instance, got {type(pipeline).__name__}")
    for attribute in ("name", "version", "title", "series_rules"):
        if not getattr(pipeline, attribute, None):
            raise ValueError(f"pipeline {type(pipeline).__name__} has no {attribute!r}")
    result_type = getattr(pipeline, "result_type", None)
    if not (isinstance(result_type, type) and dataclasses.is_dataclass(result_type)):
        raise ValueError(
            f"pipeline {type(pipeline).__name__}: result_type must be the dataclass its analyse and predict "
            f"return (the queue stores only declared dataclasses between steps), got {result_type!r}"
        )
    with _lock:
        previous = _pipelines.get(pipeline.name)
        if previous is not None and previous is not pipeline:
            _log.warning("pipeline %s re-registered by %s", pipeline.name, type(pipeline).__module__)
        _pipelines[pipeline.name] = pipeline
    return pipeline


def unregister(name: str) -> None:
    """Remove the pipeline called ``name`` (no error if absent)."""
    with _lock:
        _pipelines.pop(name, None)


def load_modules(names: Iterable[str]) -> dict[str, str]:
    """Import each module in ``names`` once so that its pipelines register.

    Returns ``{module: error}`` for the modules that could not be imported
    (they are logged and skipped).
    """
    failed: dict[str, str] = {}
    for module in names:
        with _lock:
            if module in _imported:
                if module in _import_errors:
                    failed[module] = _import_errors[module]
                continue
            _imported.add(module)
        try:
            importlib.import_module(module)
        except Exception as exc:  # a broken pipeline must not stop the node
            message = f"{type(exc).__name__}: {exc}"
            with _lock:
                _import_errors[module] = message
            failed[module] = message
            _log.error("pipeline module %s could not be imported: %s", module, message)
    return failed


def _ensure_known_loaded() -> None:
    load_modules(KNOWN_MODULES)


def get(name: str) -> Pipeline:
    """Return the pipeline called ``name``.

    Raises :class:`UnknownPipelineError` listing the registered names.
    """
    _ensure_known_loaded()
    with _lock:
        pipeline = _pipelines.get(name)
        known = sorted(_pipelines)
    if pipeline is None:
        raise UnknownPipelineError(
            f"no pipeline called {name!r} is registered (registered: {', '.join(known) or 'none'})"
        )
    return pipeline


def all_pipelines() -> list[Pipeline]:
    """All registered pipelines, in registration order."""
    _ensure_known_loaded()
    with _lock:
        return list(_pipelines.values())


def acceptance(study: StudySummary) -> list[tuple[Pipeline, Acceptance]]:
    """Every registered pipeline with its decision on ``study``, in registration order."""
    decisions: list[tuple[Pipeline, Acceptance]] = []
    for pipeline in all_pipelines():
        try:
            decision = pipeline.accept(study)
        except Exception as exc:  # a pipeline's rule bug must not stop routing
            _log.exception("pipeline %s failed to judge a study", pipeline.name)
            decision = Acceptance(False, False, f"{pipeline.name}: accept() raised {type(exc).__name__}: {exc}")
        decisions.append((pipeline, decision))
    return decisions


def route(study: StudySummary) -> tuple[Pipeline | None, str]:
    """Choose the pipeline for ``study``.

    Returns ``(pipeline, reason)`` for the first pipeline that accepts the
    study, or ``(None, reason)`` where the reason lists why each pipeline
    declined (or that none is registered). A study is never routed to two
    pipelines at once.
    """
    decisions = acceptance(study)
    if not decisions:
        return None, "no pipeline is registered"
    for pipeline, decision in decisions:
        if decision.accepted:
            return pipeline, decision.reason
    if not study.series:
        return None, "the study has no series"
    needed = " or ".join(f"{pipeline.needs()} ({pipeline.name})" for pipeline, _ in decisions)
    return None, (f"{describe_study(study)} received; {needed} needed. "
                  "Details: no pipeline accepts the study: " + " | ".join(d.reason for _, d in decisions))


def option_problems(tables: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Problems of the ``[pipelines.<name>]`` tables, in words: a name no registered pipeline
    carries, or options its pipeline refuses (:meth:`Pipeline.option_problems`); [] when fine."""
    problems: list[str] = []
    for name, options in tables.items():
        try:
            pipeline = get(name)
        except UnknownPipelineError as exc:
            problems.append(f"pipelines.{name}: {exc}")
            continue
        problems += pipeline.option_problems(options)
    return problems
