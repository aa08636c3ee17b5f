"""``cardionode process FOLDER [--out DIR]``: run a pipeline on a folder of DICOM files, no server.

Steps (each printed with its duration): read every file under FOLDER
recursively (non-DICOM files are listed and skipped), group instances by
study, route each study to a pipeline (or the one named by ``--pipeline``),
run ``analyse``, ``predict`` (unless ``--no-models``) and ``report``, then
write into ``--out`` (default ``FOLDER/cardionode-results``; one sub-folder
per study when the folder holds several):

* ``summary.json``: the quantitative results with units and notes;
* the DICOM outputs (SR, SC bull's-eyes, PDF) and their previews (PNG
  bull's-eyes with colour bar and segment grid, ``summary.pdf``,
  ``report.html``) through :mod:`node.results`.

The settings (``--config`` or ``$CARDIONODE_CONFIG``, and ``CARDIONODE_*``)
apply as in the node: ``[pipelines.<name>]`` options, ``models_dir``,
``clinical_csv``, ``templates_dir``, ``[outputs]`` (PDF summary, multi-frame
result screen) and the device identity (``device_uid``, else the UID kept in
``<data_dir>/device_uid``; ``device_name``; ``institution``), so a study gets
the same objects, with the same UIDs, either way.

No patient name, ID or birth date is printed. Every output carries
:data:`node.RESEARCH_USE_NOTICE`.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pydicom
from pydicom import Dataset
from pydicom.errors import InvalidDicomError

import node
from node.config import ConfigError, Settings, load_settings
from node.pipelines.configure import report_context, run_config
from node.pipelines.routing import StudySummary

if TYPE_CHECKING:
    from node.pipelines.base import Pipeline

__all__ = ["process_main", "process_folder", "read_folder", "ProcessOutcome"]

Progress = Callable[[str], None]


@dataclass
class ProcessOutcome:
    """What :func:`process_folder` did for one study."""

    study_uid: str
    pipeline: str | None
    out_dir: Path | None
    written: list[Path] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    result: Any = None


def read_folder(folder: Path, exclude: Path | None = None, progress: Progress = print) -> tuple[list[Dataset], list[str]]:
    """Read every DICOM file under ``folder`` (recursively). Returns ``(datasets, skipped reasons)``."""
    datasets: list[Dataset] = []
    skipped: list[str] = []
    exclude = exclude.resolve() if exclude is not None else None
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        if exclude is not None and exclude in path.resolve().parents:
            continue
        try:
            ds = pydicom.dcmread(path)
        except (InvalidDicomError, EOFError, OSError, ValueError, TypeError) as exc:
            skipped.append(f"{path.name}: not readable as DICOM ({type(exc).__name__})")
            continue
        if "SOPInstanceUID" not in ds or "StudyInstanceUID" not in ds:
            skipped.append(f"{path.name}: no SOP Instance UID / Study Instance UID")
            continue
        datasets.append(ds)
    return datasets, skipped


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return [_jsonable(v) for v in value.tolist()] if value.ndim else _jsonable(value.item())
    if isinstance(value, (np.floating, float)):
        return round(float(value), 4) if np.isfinite(value) else None
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _summary_json(details: dict[str, Any], content: Any, timings: dict[str, float]) -> dict[str, Any]:
    """A JSON summary: measurement groups with units (from the report content), pipeline notes and the
    pipeline's own ``details`` (:meth:`~node.pipelines.base.Pipeline.summary`)."""
    groups = []
    for g in content.groups:
        groups.append(
            {
                "label": g.label,
                "finding": g.finding,
                "site": g.site,
                "state": g.state,
                "measurements": [{"quantity": m.quantity, "value": _jsonable(m.value), "unit": m.unit} for m in g.measurements],
                "evaluations": [{"quantity": e.quantity, "value": e.value} for e in g.evaluations],
            }
        )
    doc: dict[str, Any] = {
        "notice": node.RESEARCH_USE_NOTICE,
        "cardionode_version": node.__version__,
        "pipeline": content.pipeline,
        "pipeline_version": content.pipeline_version,
        "study_instance_uid": content.study_instance_uid,
        "groups": groups,
        "images": [{"key": i.key, "title": i.title, "unit": i.unit} for i in content.images],
        "notes": list(content.notes),
        "timings_s": _jsonable(timings),
    }
    doc.update({key: _jsonable(value) for key, value in details.items()})
    return doc


def _timed(name: str, timings: dict[str, float], progress: Progress, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, with its duration in ``timings[name]`` (seconds) and two progress lines."""
    progress(f"  {name} ...")
    t0 = time.perf_counter()
    value = fn(*args)
    timings[name] = time.perf_counter() - t0
    progress(f"  {name} done ({timings[name]:.2f} s)")
    return value


def process_folder(
    folder: Path,
    out: Path | None = None,
    pipeline_name: str | None = None,
    models: bool = True,
    outputs: bool = True,
    progress: Progress = print,
    settings: Settings | None = None,
) -> list[ProcessOutcome]:
    """Process every study found under ``folder``; see the module docstring.

    ``outputs=False`` skips the DICOM/PDF/HTML outputs (JSON summary only);
    ``models=False`` skips the predict step. ``settings`` (default:
    :func:`node.config.load_settings`) give what the node would give the same
    study: ``[pipelines.<name>]`` options, ``models_dir``, ``clinical_csv``,
    ``templates_dir``, ``[outputs]`` and the device identity
    (:mod:`node.pipelines.configure`).
    """
    from node.pipelines import registry
    from node.results.templates import load_templates

    settings = settings if settings is not None else load_settings()

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    out = Path(out) if out is not None else folder / "cardionode-results"
    timings: dict[str, float] = {}
    progress(f"reading DICOM files under {folder}")
    t0 = time.perf_counter()
    datasets, skipped = read_folder(folder, exclude=out, progress=progress)
    timings["read"] = time.perf_counter() - t0
    progress(f"  {len(datasets)} DICOM instances read, {len(skipped)} files skipped ({timings['read']:.2f} s)")
    for line in skipped[:20]:
        progress(f"  skipped {line}")
    studies: dict[str, list[Dataset]] = {}
    for ds in datasets:
        studies.setdefault(str(ds.StudyInstanceUID), []).append(ds)
    outcomes: list[ProcessOutcome] = []
    for n, (study_uid, members) in enumerate(studies.items(), start=1):
        study_out = out if len(studies) == 1 else out / f"study_{n}"
        outcome = ProcessOutcome(study_uid, None, study_out, timings_s=dict(timings))
        outcomes.append(outcome)
        progress(f"study {n}/{len(studies)}: {len(members)} instances")
        summary = StudySummary.from_datasets(members)
        pipeline: Pipeline | None
        if pipeline_name:
            try:
                pipeline = registry.get(pipeline_name)
            except KeyError as exc:
                outcome.error = str(exc)
                progress(f"  {outcome.error}")
                continue
            reason = f"pipeline {pipeline_name} chosen on the command line"
        else:
            pipeline, reason = registry.route(summary)
        progress(f"  routing: {reason}")
        if pipeline is None:
            outcome.error = f"no pipeline accepts this study: {reason}"
            continue
        outcome.pipeline = pipeline.name
        t = outcome.timings_s
        try:
            pipeline = pipeline.configured(run_config(settings, pipeline.name))
            result = _timed("analyse", t, progress, pipeline.analyse, members)
            for step, seconds in getattr(result, "timings_s", {}).items():
                progress(f"    {step}: {seconds:.2f} s")
            if models:
                result = _timed("predict", t, progress, pipeline.predict, result)
            outcome.result = result
            study_out.mkdir(parents=True, exist_ok=True)
            content = pipeline.report_content(result)
            details = pipeline.summary(result)
            if content is not None:  # the JSON summary first: it does not depend on the DICOM outputs
                path = study_out / "summary.json"
                path.write_text(json.dumps(_summary_json(details, content, t), indent=1))
                outcome.written.append(path)
            if outputs:
                context = report_context(settings)
                datasets_out = _timed("report", t, progress, pipeline.report, result, context)
                if content is not None:
                    from node.results import write_preview

                    templates = load_templates(context.templates_dir)
                    outcome.written += _timed(
                        "preview", t, progress, write_preview, datasets_out, content, study_out, templates
                    )
                if content is not None:  # timings now include report and preview
                    (study_out / "summary.json").write_text(json.dumps(_summary_json(details, content, t), indent=1))
            progress(f"  wrote {len(outcome.written)} files to {study_out}")
        except Exception as exc:  # one bad study must not stop the others; say why
            outcome.error = f"{type(exc).__name__}: {exc}"
            progress(f"  failed: {outcome.error}")
    return outcomes


def process_main(args: Any) -> int:
    """Handler of ``cardionode process`` (see :mod:`node.cli`)."""
    print(node.RESEARCH_USE_NOTICE)
    try:
        settings = load_settings(getattr(args, "config", None))
        outcomes = process_folder(
            Path(args.folder),
            args.out,
            getattr(args, "pipeline", None),
            models=not getattr(args, "no_models", False),
            settings=settings,
        )
    except (ConfigError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not outcomes:
        print("error: no DICOM study found", file=sys.stderr)
        return 2
    failed = [o for o in outcomes if o.error]
    for o in failed:
        print(f"study {o.study_uid[-12:]}: {o.error}", file=sys.stderr)
    return 1 if failed else 0
