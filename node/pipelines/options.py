"""Pipeline options and the processing configuration of one run (:class:`RunConfig`).

A worker may run on another machine, so nothing below the queue reads the node's
configuration or environment. The node sends a :class:`RunConfig` in every step message
(:class:`node.queue.steps.StepMessage`): the pipeline's options (its ``[pipelines.<name>]``
table), the folder of the MONAI bundles and the clinical CSV. The ``report`` step gets a
:class:`node.results.content.ReportContext` as well. :mod:`node.pipelines.configure` makes
both from :class:`node.config.Settings`, in one place.

A pipeline declares its options as a pydantic model, :attr:`Pipeline.options_model
<node.pipelines.base.Pipeline.options_model>`, subclass of :class:`PipelineOptions` (unknown
keys are refused). :meth:`Pipeline.configured <node.pipelines.base.Pipeline.configured>`
returns a copy of the pipeline that runs with a :class:`RunConfig`; ``Settings.problems()``
reports options the pipeline refuses, in words (:func:`option_problems`).

Paths travel as absolute paths: they must name the same folders on the workers (one
configuration file for node and workers, shared layout), or be left unset so that each
machine uses the data shipped with its installed package (:mod:`node.resources`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

__all__ = ["OptionsError", "PipelineOptions", "RunConfig", "option_problems"]


class PipelineOptions(BaseModel):
    """Base of a pipeline's options model: no option; subclasses add fields with defaults.

    The defaults must give the pipeline's standard results: an empty ``[pipelines.<name>]``
    table (or none) changes nothing.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)


class OptionsError(ValueError):
    """Options a pipeline refuses; the message names each option and why."""


def option_problems(model: type[PipelineOptions], raw: Mapping[str, Any], where: str) -> list[str]:
    """Why ``raw`` is not valid for ``model``, one line per option, prefixed with ``where``; [] when valid."""
    try:
        model.model_validate(dict(raw))
    except ValidationError as exc:
        out = []
        for err in exc.errors():
            name = ".".join(str(p) for p in err["loc"]) or "(table)"
            if err["type"] == "extra_forbidden":
                out.append(f"{where}.{name}: unknown option (known: {', '.join(model.model_fields) or 'none'})")
                continue
            message = err["msg"].removeprefix("Value error, ")
            out.append(f"{where}.{name}: {message} (got {err.get('input')!r})")
        return out
    return []


def _path(value: str | Path | None) -> Path | None:
    return None if value in (None, "") else Path(value)


@dataclass(frozen=True)
class RunConfig:
    """The processing configuration of one pipeline run, as the node's settings chose it.

    ``options``: the pipeline's ``[pipelines.<name>]`` table as plain data (the pipeline
    validates it with its ``options_model``; ``{}`` = its defaults). ``models_dir``: folder of
    the MONAI bundles, one sub-folder per bundle; ``None`` = the bundles shipped with the
    package. ``clinical_csv``: CSV of QRS duration, LBBB and NYHA class by accession number
    (docs/training.md); ``None`` = none. ``clinical``: the study's clinical facts from the
    modality worklist (:data:`node.workflow.worklist.CLINICAL_KEYS`: ``height_m``, ``weight_kg``,
    ``sex``, ``age_years``, ``reason``; ``{}`` = none); a pipeline reads them only through
    :func:`node.pipelines.clinical.clinical_inputs`. ``pairing``: the earlier study of a two-day
    protocol whose series this run analyses with the study's own (:mod:`node.workflow.pairing`):
    ``study_uid`` (the run's study: the results belong to it), ``earlier_study_uid``, ``date`` (ISO,
    the earlier study's scheduled date), ``states`` it contributes; ``{}`` = none.
    """

    options: Mapping[str, Any] = field(default_factory=dict)
    models_dir: Path | None = None
    clinical_csv: Path | None = None
    clinical: Mapping[str, Any] = field(default_factory=dict)
    pairing: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form for the step message."""
        return {
            "options": dict(self.options),
            "models_dir": None if self.models_dir is None else str(self.models_dir),
            "clinical_csv": None if self.clinical_csv is None else str(self.clinical_csv),
            "clinical": dict(self.clinical),
            "pairing": dict(self.pairing),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        """Inverse of :meth:`to_dict`; missing keys take the defaults."""
        return cls(
            options=dict(data.get("options") or {}),
            models_dir=_path(data.get("models_dir")),
            clinical_csv=_path(data.get("clinical_csv")),
            clinical=dict(data.get("clinical") or {}),
            pairing=dict(data.get("pairing") or {}),
        )
