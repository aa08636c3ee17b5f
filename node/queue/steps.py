"""Running one pipeline step against the artifact store (no Celery here).

A job attempt owns the artifact prefix ``jobs/<job_key>/``:

* ``inputs/NNNNN.dcm`` the study's instances, put there by the node;
* ``<step>.values`` the result of ``analyse`` and ``predict``, stored by
  :mod:`node.queue.codec` (JSON and ``.npy`` arrays in a ZIP archive; never a
  pickle) and read back as the pipeline's declared
  :attr:`~node.pipelines.base.Pipeline.result_type` only;
* ``outputs/<SOPInstanceUID>.dcm`` the DICOM objects made by ``report``.

The task message (:class:`StepMessage`) names the job, the pipeline and its
version, the step, the run's processing configuration
(:class:`~node.pipelines.options.RunConfig`: pipeline options, models folder,
clinical file) and, for ``report``, the
:class:`~node.results.content.ReportContext` fields (identity, output options,
templates folder); it never carries images. The worker runs the step on the
pipeline :meth:`~node.pipelines.base.Pipeline.configured` with that RunConfig, so
it reads no configuration of its own for processing. Every step is
deterministic, so a message delivered twice writes the same artifacts twice.

Nothing a worker reads can make it run code: a step reads only the result of
the step before it in its pipeline (not a key the message names), and a stored
result that is not a valid value of the pipeline's result type fails the step
with :class:`~node.queue.codec.CodecError` before the pipeline runs.
"""

from __future__ import annotations

import io
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom import Dataset

from node.pipelines import registry
from node.pipelines.base import Step
from node.pipelines.options import RunConfig
from node.queue import codec
from node.queue.artifacts import ArtifactStore
from node.results.content import ReportContext
from node.uids import validate_uid

__all__ = [
    "STEP_ORDER",
    "StepMessage",
    "PipelineVersionMismatch",
    "job_prefix",
    "input_key",
    "result_key",
    "StepMessageError",
    "run_step",
    "context_to_dict",
    "context_from_dict",
    "dataset_to_bytes",
]

#: the steps a pipeline may declare, in the order they run
STEP_ORDER: tuple[str, ...] = ("analyse", "predict", "report")


class PipelineVersionMismatch(RuntimeError):
    """The worker runs another version of the pipeline than the node asked for."""


class StepMessageError(ValueError):
    """A step message that no node sends: unknown step, a ``previous`` step that is not the one before, a bad job key."""


#: ``<node tag>-<job id>.<attempt>`` (:func:`node.queue.dispatch.job_key`)
_JOB_KEY_RE = re.compile(r"^[0-9a-z]{1,64}-[0-9]{1,18}\.[0-9]{1,9}$")


@dataclass(frozen=True)
class StepMessage:
    """The JSON-able body of a step task.

    ``previous`` is the step whose stored result this step reads (``""`` for
    the first step, which reads the inputs); the worker checks that it is the
    step before this one in the pipeline. ``config`` is
    :meth:`RunConfig.to_dict` of the run (every step); ``context`` is
    :func:`context_to_dict` of its :class:`ReportContext` (``report`` only).
    """

    job_key: str
    pipeline: str
    pipeline_version: str
    step: str
    previous: str = ""
    context: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StepMessage:
        """Inverse of :meth:`to_dict`; a message without ``config`` (an older node) runs with the defaults."""
        fields = ("job_key", "pipeline", "pipeline_version", "step", "previous", "context")
        return cls(**{k: data[k] for k in fields}, config=dict(data.get("config") or {}))


def job_prefix(job_key: str) -> str:
    """The artifact prefix of a job attempt, e.g. ``jobs/17.2``."""
    return f"jobs/{job_key}"


def input_key(job_key: str, index: int) -> str:
    """The artifact key of the ``index``-th input instance (0-based)."""
    return f"{job_prefix(job_key)}/inputs/{index:05d}.dcm"


def result_key(job_key: str, step: str) -> str:
    """The artifact key of the stored result of ``step`` (``analyse`` or ``predict``)."""
    return f"{job_prefix(job_key)}/{step}.values"


def context_to_dict(context: ReportContext) -> dict[str, Any]:
    """JSON-able form of ``context`` for the step message."""
    data = asdict(context)
    data["predecessors"] = [list(p) for p in context.predecessors]
    data["templates_dir"] = None if context.templates_dir is None else str(context.templates_dir)
    return data


def context_from_dict(data: dict[str, Any]) -> ReportContext:
    """Inverse of :func:`context_to_dict`."""
    values = dict(data)
    values["predecessors"] = tuple(tuple(p) for p in values.get("predecessors", ()))
    if values.get("templates_dir") is not None:
        values["templates_dir"] = Path(values["templates_dir"])
    return ReportContext(**values)


def dataset_to_bytes(dataset: Dataset) -> bytes:
    """Encode ``dataset`` as a DICOM Part 10 file (preamble, meta header)."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _load_inputs(store: ArtifactStore, job_key: str) -> list[Dataset]:
    keys = list(store.keys(f"{job_prefix(job_key)}/inputs"))
    if not keys:
        raise RuntimeError(f"job {job_key}: no input instances in the artifact store {store!r}")
    return [pydicom.dcmread(io.BytesIO(store.get(key))) for key in keys]


def run_step(store: ArtifactStore, message: StepMessage) -> dict[str, Any]:
    """Run one step of a job and return what the node needs to know.

    Returns ``{"result": key}`` for ``analyse``/``predict`` and
    ``{"outputs": [key, ...], "sop_instance_uids": [...]}`` for ``report``.
    The pipeline runs :meth:`~node.pipelines.base.Pipeline.configured` with the
    message's :class:`RunConfig`.
    """
    pipeline = registry.get(message.pipeline)
    if pipeline.version != message.pipeline_version:
        raise PipelineVersionMismatch(
            f"job {message.job_key}: the node asked for {message.pipeline} {message.pipeline_version}, "
            f"this worker has {pipeline.version}; update the worker"
        )
    pipeline = pipeline.configured(RunConfig.from_dict(message.config))
    previous = _previous_step(pipeline.steps, message)
    prefix = job_prefix(message.job_key)
    schema = codec.schema_for(pipeline.result_type)
    if previous:
        value: Any = _load_result(store, result_key(message.job_key, previous), schema)
    else:
        value = _load_inputs(store, message.job_key)

    if message.step == "analyse":
        result = pipeline.analyse(value)
    elif message.step == "predict":
        result = pipeline.predict(value)
    elif message.step == "report":
        datasets = pipeline.report(value, context_from_dict(message.context))
        keys: list[str] = []
        uids: list[str] = []
        for dataset in datasets:
            uid = validate_uid(dataset.SOPInstanceUID, "SOPInstanceUID (0008,0018) of a result object")
            keys.append(store.put(f"{prefix}/outputs/{uid}.dcm", dataset_to_bytes(dataset)))
            uids.append(uid)
        return {"outputs": keys, "sop_instance_uids": uids}
    else:  # _previous_step refused it already
        raise StepMessageError(f"unknown step {message.step!r} (known: {', '.join(STEP_ORDER)})")

    key = store.put(result_key(message.job_key, message.step), codec.encode(result, schema))
    return {"result": key}


def _previous_step(steps: tuple[Step, ...], message: StepMessage) -> str:
    """The step whose result ``message``'s step reads ("" for the first), after checking the message.

    The worker derives it from the pipeline rather than trusting the message: a
    forged message cannot make a worker read any other key.
    """
    if not _JOB_KEY_RE.match(message.job_key):
        raise StepMessageError(f"job key {message.job_key[:80]!r} is not <node>-<job>.<attempt>")
    names = [step.name for step in steps]
    if message.step not in names or message.step not in STEP_ORDER:
        raise StepMessageError(
            f"job {message.job_key}: step {message.step!r} is not a step of {message.pipeline} ({', '.join(names)})"
        )
    index = names.index(message.step)
    previous = names[index - 1] if index > 0 else ""
    if message.previous != previous:
        raise StepMessageError(
            f"job {message.job_key}: {message.step} reads the result of {previous or 'no step (the inputs)'}, "
            f"the message names {message.previous!r}"
        )
    return previous


def _load_result(store: ArtifactStore, key: str, schema: codec.Schema) -> Any:
    """The stored result at ``key``, decoded and checked against ``schema``; :class:`~node.queue.codec.CodecError` names the key."""
    try:
        return codec.decode(store.get(key, max_bytes=codec.DEFAULT_LIMITS.max_archive_bytes), schema)
    except codec.CodecError as exc:
        raise codec.CodecError(f"{key}: {exc}") from None
