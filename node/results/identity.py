"""Deterministic identity of the output objects: content digest, UIDs, dates.

An identical re-run of a pipeline on the same study must give byte-identical
outputs (same SOP Instance UIDs, so a PACS never stores duplicates); a revised
run (new data, new model, new pipeline version) must give new UIDs. Everything
here is therefore a pure function of the study UID, the pipeline name and
version, the algorithms' versions and parameters (weights hashes) and a digest
of the reported content. The wall clock is never used: dates and times come
from the source instances.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom import Dataset

from node.results.content import Algorithm, ReportContent
from node.uids import deterministic_uid

__all__ = ["ContentIdentity", "content_digest", "algorithms_of", "algorithm_device_uid", "source_datetime"]


def _fmt(value: float) -> str:
    return "nan" if isinstance(value, float) and math.isnan(value) else repr(float(value))


def _array_bytes(values: object, dtype: str = "<f8") -> bytes:
    """Shape and little-endian bytes of an array, for the digest."""
    array = np.ascontiguousarray(np.asarray(values, dtype=dtype))
    return str(array.shape).encode("ascii") + b":" + array.tobytes()


def algorithms_of(content: ReportContent) -> tuple[Algorithm, ...]:
    """All algorithms that contributed, without repeats.

    ``content.algorithms`` first, then those of the groups, the images and the parametric maps.
    """
    seen: dict[tuple, Algorithm] = {}
    candidates = list(content.algorithms) + [g.algorithm for g in content.groups]
    candidates += [m.algorithm for m in content.images if m.algorithm is not None]
    candidates += [p.algorithm for p in content.parametric_maps if p.algorithm is not None]
    for algo in candidates:
        seen.setdefault((algo.name, algo.version, tuple(algo.parameters)), algo)
    return tuple(seen.values())


def content_digest(content: ReportContent) -> str:
    """SHA-256 (hex) over every reported value, key, label, map pixel, curve point and voxel, in order.

    Contour levels, plots, parametric maps and the display fields (roles, subtitles, quantity
    keys, blackout masks, description) enter only when present, so a report without them has
    the digest it had before they existed (its outputs keep their UIDs).
    """
    h = hashlib.sha256()

    def put(*parts: object) -> None:
        for part in parts:
            raw = part if isinstance(part, bytes) else str(part).encode("utf-8")
            h.update(len(raw).to_bytes(8, "big"))
            h.update(raw)

    put("procedure", content.procedure, content.study_instance_uid)
    for src in content.sources:
        put("source", src.study_instance_uid, src.series_instance_uid, src.sop_class_uid, src.sop_instance_uid)
    for group in content.groups:
        put("group", group.label, group.finding, group.site, group.state or "", group.explanation_image or "")
        put(group.algorithm.name, group.algorithm.version, *group.algorithm.parameters)
        for m in group.measurements:
            put("num", m.quantity, _fmt(m.value), m.unit)
        for e in group.evaluations:
            put("code", e.quantity, e.value)
    for image in content.images:
        values = np.ascontiguousarray(np.asarray(image.values, dtype="<f8"))
        put("image", image.key, image.title, image.unit, *map(_fmt, image.value_range), image.colormap)
        put(image.derivation, image.overlay_on or "", str(values.shape), values.tobytes())
        put(*(map(_fmt, image.segment_values) if image.segment_values is not None else ["-"]))
        if image.algorithm is not None:
            put(image.algorithm.name, image.algorithm.version, *image.algorithm.parameters)
        if image.contour_levels:
            put("contours", *map(_fmt, image.contour_levels))
        if image.role or image.subtitle or image.quantity:
            put("display", image.role or "", image.subtitle, image.quantity or "")
        if image.blackout is not None:
            put("blackout", _array_bytes(image.blackout, "u1"))
        if image.muted_rim_rows:
            put("muted_rim_rows", image.muted_rim_rows)
    for plot in content.plots:
        put("plot", plot.key, plot.title, plot.x_label, plot.y_label)
        if plot.role:
            put("role", plot.role)
        for curve in plot.curves:
            put("curve", curve.label, curve.style, _array_bytes(curve.x), _array_bytes(curve.y))
    for volume in content.parametric_maps:
        put("parametric_map", volume.key, volume.title, volume.quantity, volume.unit, volume.state or "")
        put(*volume.source_sop_instance_uids)
        put(_array_bytes(volume.values, "<f4"))
        if volume.algorithm is not None:
            put(volume.algorithm.name, volume.algorithm.version, *volume.algorithm.parameters)
    for algo in algorithms_of(content):
        put("algorithm", algo.name, algo.version, *algo.parameters, algo.training_data, algo.intended_use)
    for note in content.notes:
        put("note", note)
    if content.description:
        put("description", content.description)
    return h.hexdigest()


def algorithm_device_uid(algorithm: Algorithm) -> str:
    """Device UID of an algorithm (IHE AIR Contributing Equipment): changes with its version or weights."""
    return deterministic_uid("cardionode-algorithm-device", algorithm.name, algorithm.version, *algorithm.parameters)


def _dt_of(ds: Dataset) -> str:
    for date_kw, time_kw in (
        ("AcquisitionDate", "AcquisitionTime"),
        ("ContentDate", "ContentTime"),
        ("SeriesDate", "SeriesTime"),
        ("StudyDate", "StudyTime"),
    ):
        date = str(getattr(ds, date_kw, "") or "")
        if len(date) == 8 and date.isdigit():
            time = str(getattr(ds, time_kw, "") or "").split(".")[0]
            time = (time + "000000")[:6] if time.isdigit() else "000000"
            return date + time
    return ""


def source_datetime(sources: Sequence[Dataset]) -> tuple[str, str]:
    """(DA, TM) of the latest source instance (acquisition, else content, series, study date/time).

    Used as Content Date/Time and Instance Creation Date/Time of every output so
    that re-runs are byte-identical. Falls back to 19700101 000000 when no
    source carries a date (then the outputs are still deterministic).
    """
    stamps = [s for s in (_dt_of(ds) for ds in sources) if s]
    latest = max(stamps) if stamps else "19700101000000"
    return latest[:8], latest[8:14]


@dataclass(frozen=True)
class ContentIdentity:
    """UIDs and dates of one pipeline run's outputs, all derived from the inputs."""

    study_instance_uid: str
    pipeline: str
    pipeline_version: str
    algorithm_key: str
    digest: str
    content_date: str
    content_time: str

    @classmethod
    def of(cls, content: ReportContent, sources: Sequence[Dataset]) -> ContentIdentity:
        algos = algorithms_of(content)
        algorithm_key = "|".join(f"{a.name}={a.version};{','.join(a.parameters)}" for a in algos)
        date, time = source_datetime(sources)
        return cls(
            study_instance_uid=content.study_instance_uid,
            pipeline=content.pipeline,
            pipeline_version=content.pipeline_version,
            algorithm_key=algorithm_key,
            digest=content_digest(content),
            content_date=date,
            content_time=time,
        )

    def uid(self, *what: str) -> str:
        """A UID for one output object or series, e.g. ``uid("sr", "instance")``."""
        return deterministic_uid(
            "cardionode-output", self.study_instance_uid, self.pipeline, self.pipeline_version,
            self.algorithm_key, self.digest, *what,
        )

    def tracking_uid(self, label: str) -> str:
        """Tracking Unique Identifier of a finding: stable across revisions of the same study and pipeline."""
        return deterministic_uid("cardionode-tracking", self.study_instance_uid, self.pipeline, label)

    @property
    def content_datetime(self) -> str:
        return self.content_date + self.content_time
