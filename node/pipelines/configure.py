"""From the node's settings to what one pipeline run is told: the one place that decides it.

:func:`run_config` makes the :class:`~node.pipelines.options.RunConfig` every step gets
(``[pipelines.<name>]``, ``models_dir``, ``clinical_csv``); :func:`report_context` the
:class:`~node.results.content.ReportContext` the ``report`` step gets (the node's identity,
``[outputs]``, ``templates_dir``, predecessor SRs). The node's conductor and ``cardionode
process`` both call them, so a study gets the same options, outputs and device identity
either way.

Paths are made absolute here, against the working directory of the node: they must name
the same folders on the workers (one configuration file, shared layout), or be left unset so
that each machine uses the data shipped with its installed package (:mod:`node.resources`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from node.config import Settings
from node.pipelines.options import RunConfig
from node.results.content import ReportContext

__all__ = ["report_context", "run_config"]


def _absolute(path: Path | None) -> Path | None:
    return None if path is None else path.resolve()


def run_config(settings: Settings, pipeline: str, clinical: Mapping[str, Any] | None = None,
               pairing: Mapping[str, Any] | None = None) -> RunConfig:
    """The :class:`RunConfig` of ``pipeline`` under ``settings``; ``clinical``: the study's clinical facts
    from the modality worklist (:meth:`node.ledger.worklist.WorklistStore.clinical_for`), if any;
    ``pairing``: the earlier study of a two-day protocol analysed with it
    (:meth:`node.workflow.pairing.PairedStudy.run_pairing`), if any."""
    return RunConfig(
        options=dict(settings.pipelines.get(pipeline, {})),
        models_dir=_absolute(settings.models_dir),
        clinical_csv=_absolute(settings.clinical_csv),
        clinical=dict(clinical or {}),
        pairing=dict(pairing or {}),
    )


def report_context(settings: Settings, predecessors: tuple[tuple[str, str, str, str], ...] = ()) -> ReportContext:
    """The :class:`ReportContext` of a run under ``settings``.

    Identity: :meth:`Settings.effective_device_uid <node.config.Settings.effective_device_uid>`
    (configured, else generated once and kept in ``<data_dir>/device_uid``), ``device_name``,
    ``institution``; ``predecessors``: the SRs the new report supersedes.
    """
    return ReportContext(
        device_uid=settings.effective_device_uid(),
        device_name=settings.device_name,
        institution=settings.institution,
        predecessors=predecessors,
        multiframe_screen=settings.outputs.multiframe_screen,
        pdf_summary=settings.outputs.pdf_summary,
        results_screen=settings.outputs.results_screen,
        templates_dir=_absolute(settings.templates_dir),
    )
