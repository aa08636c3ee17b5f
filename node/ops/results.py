"""The results of a study as a reader sees them: images, the SR's numbers as tables, the PDF, send states.

:func:`study_results` reads, for each job of the study (newest first), the result objects the
ledger recorded (``ledger.outputs``; files in ``settings.outbox_dir``) into a
:class:`StudyResults`: the images grouped by role (bull's-eyes, AI heat maps, curve plots,
segment table, results-screen pages), the measurement report's numbers as tables (global
results with units, the 17-segment table, model predictions with their verdicts, quality flags
and findings), the summary PDF and each object's send state. A report that a later one lists
in its Predecessor Documents is marked superseded. The web page (``study_results.html``) and
``cardionode status --study UID --results`` (:func:`format_results`) show it.

Tables come from the SR read back into report content (:func:`node.results.readback.read_report`)
and are made by the functions that make the PDF's and the results screen's tables
(:func:`node.results.screen.global_matrix`, :func:`node.results.tables.segment_table`,
:func:`node.results.tables.group_rows`): the same numbers, with the same decimals
(:func:`node.results.tables.format_value`), wherever a reader looks. Curves are not in the SR:
they are shown as their curve-plot images.

:func:`result_frame_png` gives one frame of an image output as PNG, cached under
``<data_dir>/web/cache/<study>`` (outputs never change: their UIDs derive from their content);
:func:`result_pdf` the summary PDF. Both refuse, with :class:`ResultNotFound`, anything that is
not such an output of this node, and never read a file outside the outbox.

Patient identity. The view model carries no patient name, ID or birth date (no field holds
them; titles and descriptions come from the node's own templates). Two kinds of output show
the identity inside themselves (:data:`node.results.readback.IDENTIFIED_KINDS`): the
results-screen pages (a header with name, ID, birth date, sex and accession burned into the
pixels) and the summary PDF (the same on every page). Unless ``[web] show_identifiers`` is on:

* a results-screen page is rendered with its whole header painted over
  (:func:`node.results.readback.withhold_screen_identity`: everything above the header's
  closing line, replaced by "identification withheld" and the research-use banner), so the
  page keeps its maps, tables and curves; a page whose header cannot be found is refused
  (:class:`ResultWithheld`), never shown unredacted;
* the PDF is not served (:class:`ResultWithheld`; the page says why and where to read it):
  its text cannot be redacted here without writing another document than the one sent.

The bull's-eyes, heat maps, curve plots and the segment table carry no identity (titles, values
and the research-use label only) and are shown as they are. The PNG cache keeps the two
renderings of a screen page apart, so turning the setting off never serves a cached
identified page.
"""

from __future__ import annotations

import functools
import io
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from PIL import Image

import node
from node.config import Settings
from node.ledger import Ledger
from node.ledger.schema import Job, Output, Send
from node.results.readback import (
    IMAGE_CLASSES,
    SR_CLASSES,
    OutputHeader,
    ReadBackError,
    ReadReport,
    read_content,
    read_document,
    read_frame,
    read_header,
    withhold_screen_identity,
)
from node.results.render import display_unit
from node.results.screen import global_matrix
from node.results.tables import (
    MODEL_PROBABILITY,
    MODEL_VERDICT,
    format_value,
    group_rows,
    is_model_group,
    segment_of,
    segment_table,
)
from node.results.templates import Templates, load_templates

__all__ = [
    "QUALITY_FLAG",
    "ROLES",
    "FindingRow",
    "OutputView",
    "PredictionView",
    "ReportView",
    "ResultError",
    "ResultNotFound",
    "ResultTable",
    "ResultWithheld",
    "SendView",
    "StudyResults",
    "format_results",
    "result_frame_png",
    "result_pdf",
    "shows_identifiers",
    "study_results",
]

#: output kind (``series.toml``) -> (role, what a reader calls it), in the order a page shows them
ROLES: dict[str, tuple[str, str]] = {
    "sc_map": ("bullseye", "Bull's-eye polar maps"),
    "sc_heatmap": ("heatmap", "AI attention maps (Grad-CAM)"),
    "sc_plot": ("curves", "Curves"),
    "sc_table": ("table", "Segment table image"),
    "sc_screen": ("screen", "Results screen pages"),
    "mf_screen": ("screen", "Result screen (multi-frame)"),
    "sr": ("report", "Measurement report (SR)"),
    "pdf": ("pdf", "Summary PDF"),
    "pm": ("parametric_map", "Parametric maps (voxel maps for a DICOM viewer)"),
}
#: the evaluation concept of a quality flag (``evaluations.toml``)
QUALITY_FLAG = "quality_flag"
_PDF_WITHHELD = ("The summary PDF shows the patient's name, ID and birth date on every page; it is offered here "
                 "only while patient identifiers are shown (setting [web] show_identifiers, then the page's switch). "
                 "Read it in the PACS.")


class ResultError(Exception):
    """A result object that cannot be given."""


class ResultNotFound(ResultError):
    """Not an output of this node of the kind asked for (or its file is no longer in the outbox)."""


class ResultWithheld(ResultError):
    """The object shows the patient's identity and ``[web] show_identifiers`` is off."""


@dataclass(frozen=True)
class SendView:
    """One send of an output: destination, state (pending, sent, retrying, dead_letter), attempts, last DIMSE status."""

    destination: str
    state: str
    attempts: int
    last_status: int | None
    last_error: str
    updated_at: datetime

    @property
    def status_text(self) -> str:
        """The last DIMSE status as ``0x0000``, or "" when there was none."""
        return f"0x{self.last_status:04X}" if self.last_status is not None else ""


@dataclass(frozen=True)
class OutputView:
    """One result object of a job, as a page lists it.

    ``role`` and ``role_label`` from :data:`ROLES`; ``frames`` 0 for objects without pixels;
    ``identified``: its pixels or document show the patient's identity; ``offered``: the page
    may show it (images always, the screens redacted unless identifiers are shown; the PDF only
    when they are); ``available``: its file is still in the outbox (retention removes sent ones);
    ``note``: why it is not offered or not available.
    """

    sop_instance_uid: str
    sop_class_uid: str
    kind: str
    role: str
    role_label: str
    title: str
    series_description: str
    series_number: int | None
    instance_number: int | None
    frames: int
    frame_labels: tuple[str, ...]
    rows: int
    columns: int
    identified: bool
    offered: bool
    available: bool
    size_bytes: int
    sends: tuple[SendView, ...] = ()
    note: str = ""

    @property
    def frame_numbers(self) -> tuple[int, ...]:
        """1-based frame numbers (empty for objects without pixels)."""
        return tuple(range(1, self.frames + 1))

    @property
    def send_summary(self) -> str:
        """The sends in a few words: ``sent to pacs``; ``dead_letter to pacs (3 attempts)``; "not sent" when none."""
        if not self.sends:
            return "not sent (no destination)"
        parts = []
        for send in self.sends:
            text = f"{send.state} to {send.destination}"
            if send.state != "sent" and send.attempts:
                text += f" ({send.attempts} attempt{'s' if send.attempts != 1 else ''})"
            parts.append(text)
        return "; ".join(parts)


@dataclass(frozen=True)
class ResultTable:
    """A table of results: ``head`` cells (a cell may hold several lines, ``\\n``) and rows of text cells."""

    title: str
    head: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class FindingRow:
    """A coded result in words: the group it belongs to, the concept, its value."""

    group: str
    concept: str
    value: str


@dataclass(frozen=True)
class PredictionView:
    """A model output: the model, what it predicts where, its numbers, threshold and verdicts, its heat map."""

    label: str
    model: str
    finding: str
    site: str
    state: str
    values: tuple[tuple[str, str, str], ...]  # (concept, value, unit)
    probability: str
    threshold: str
    verdicts: tuple[str, ...]
    heatmap_uid: str | None = None


@dataclass(frozen=True)
class ReportView:
    """One job of the study with its result objects and the report's numbers.

    ``superseded_by`` is the SOP Instance UID of the later report that lists this one in its
    Predecessor Documents (None: current), ``superseded_by_job`` its job. ``content_datetime`` is the
    SR's Content Date and Time, which the node derives from the source images (their latest
    acquisition: deterministic outputs), not the time of the report; ``reported_at`` is when the
    node recorded the SR in the ledger (UTC).
    """

    job_id: int
    pipeline: str
    run: int
    job_state: str
    job_reason: str
    created_at: datetime
    updated_at: datetime
    sr: OutputView | None = None
    title: str = ""
    procedure: str = ""
    completion: str = ""
    verification: str = ""
    content_datetime: str = ""
    reported_at: datetime | None = None
    superseded_by: str | None = None
    superseded_by_job: int | None = None
    supersedes: tuple[str, ...] = ()
    global_table: ResultTable | None = None
    segment_table: ResultTable | None = None
    findings: tuple[FindingRow, ...] = ()
    predictions: tuple[PredictionView, ...] = ()
    quality_flags: tuple[FindingRow, ...] = ()
    other_results: tuple[FindingRow, ...] = ()
    notices: tuple[str, ...] = ()
    images: tuple[OutputView, ...] = ()
    pdf: OutputView | None = None
    others: tuple[OutputView, ...] = ()
    problems: tuple[str, ...] = ()

    @property
    def superseded(self) -> bool:
        return self.superseded_by is not None

    def images_of(self, role: str) -> tuple[OutputView, ...]:
        """The images of one role (:data:`ROLES`), in series and instance order."""
        return tuple(i for i in self.images if i.role == role)

    @property
    def objects(self) -> tuple[OutputView, ...]:
        """Every result object of the job (SR, images, PDF, others), for the send-state table."""
        return tuple(o for o in (self.sr, *self.images, self.pdf, *self.others) if o is not None)


@dataclass(frozen=True)
class StudyResults:
    """Every job of a study with its results, newest first (:func:`study_results`)."""

    study_uid: str
    show_identifiers: bool
    reports: tuple[ReportView, ...]
    notice: str = node.RESEARCH_USE_NOTICE
    pdf_withheld_note: str = _PDF_WITHHELD

    @property
    def current(self) -> ReportView | None:
        """The newest report with an SR that no other supersedes, else None."""
        return next((r for r in self.reports if r.sr is not None and not r.superseded), None)

    @property
    def has_results(self) -> bool:
        return any(r.objects for r in self.reports)


# --------------------------------------------------------------------------- reading


def _templates(settings: Settings) -> Templates:
    return load_templates(settings.templates_dir)


def _outbox_file(settings: Settings, output: Output) -> Path | None:
    """The output's file when it is in the outbox (and inside it), else None."""
    path = Path(output.path)
    try:
        resolved = path.resolve()
        resolved.relative_to(settings.outbox_dir.resolve())
    except (OSError, ValueError):
        return None
    return resolved if resolved.is_file() else None


@functools.lru_cache(maxsize=512)
def _cached_header(path: str, mtime_ns: int, size: int, templates: Templates) -> OutputHeader:
    return read_header(Path(path), templates)


@functools.lru_cache(maxsize=64)
def _cached_report(path: str, mtime_ns: int, size: int, templates: Templates, pipeline: str) -> ReadReport:
    return read_content(Path(path), templates, pipeline)


def _stat_key(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return str(path), stat.st_mtime_ns, stat.st_size


def _send_views(sends: Sequence[Send]) -> tuple[SendView, ...]:
    return tuple(SendView(s.destination, s.state, s.attempts, s.last_status, s.last_error, s.updated_at)
                 for s in sorted(sends, key=lambda s: s.destination))


def _fallback_kind(output: Output) -> str:
    if output.sop_class_uid in SR_CLASSES:
        return "sr"
    if output.sop_class_uid.startswith("1.2.840.10008.5.1.4.1.1.104."):
        return "pdf"
    return "other"


def _output_view(settings: Settings, output: Output, sends: Sequence[Send], templates: Templates,
                 show: bool) -> OutputView:
    path = _outbox_file(settings, output)
    header: OutputHeader | None = None
    note = ""
    if path is None:
        note = "its file is no longer in the outbox (sent and pruned by retention, or removed)"
    else:
        try:
            header = _cached_header(*_stat_key(path), templates)
        except (ReadBackError, OSError) as exc:
            note = f"its file cannot be read: {exc}"
    kind = header.kind if header is not None else _fallback_kind(output)
    role, role_label = ROLES.get(kind, ("other", "Other result objects"))
    identified = header.identified if header is not None else kind in ("pdf", "sc_screen")
    available = header is not None
    offered = available and (output.sop_class_uid in IMAGE_CLASSES or kind == "pdf")
    if kind == "pdf" and not show:
        offered = False
        note = note or _PDF_WITHHELD
    return OutputView(
        sop_instance_uid=output.sop_instance_uid,
        sop_class_uid=output.sop_class_uid,
        kind=kind,
        role=role,
        role_label=role_label,
        title=header.title if header is not None else "",
        series_description=header.series_description if header is not None else "",
        series_number=header.series_number if header is not None else None,
        instance_number=header.instance_number if header is not None else None,
        frames=header.frames if header is not None else 0,
        frame_labels=header.frame_labels if header is not None else (),
        rows=header.rows if header is not None else 0,
        columns=header.columns if header is not None else 0,
        identified=identified,
        offered=offered,
        available=available,
        size_bytes=int(output.size_bytes or 0),
        sends=_send_views(sends),
        note=note,
    )


def _site_label(templates: Templates, site: str) -> str:
    if not site:
        return ""
    try:
        return templates.site(site)[1]
    except (KeyError, ValueError):
        return site


def _state_label(templates: Templates, state: str | None) -> str:
    return templates.state(state)[1] if state else ""


def _parameter(parameters: Sequence[str], name: str) -> str:
    """The text after ``name=`` in an algorithm's parameters ("" when absent)."""
    for parameter in parameters:
        key, _, value = parameter.partition("=")
        if key.strip() == name:
            return value.strip()
    return ""


def _tables(read: ReadReport, templates: Templates) -> dict[str, object]:
    """The report's numbers as the page's tables (see the module docstring)."""
    content = read.content
    head, rows = global_matrix(content, templates)
    global_table = ResultTable("Global results", tuple(head), tuple(tuple(r) for r in rows)) if rows else None
    seg_head, seg_rows = segment_table(content, templates)
    seg_table = (ResultTable("Results per AHA segment", tuple(seg_head), tuple(tuple(r) for r in seg_rows))
                 if seg_rows else None)
    findings: list[FindingRow] = []
    flags: list[FindingRow] = []
    predictions: list[PredictionView] = []
    explanations = dict(read.explanations)
    for group in content.groups:
        if is_model_group(group):
            values = tuple(group_rows(group, content, templates, [m.quantity for m in group.measurements]))
            probability = next((format_value(m.value, templates.quantity(m.quantity, content.pipeline).decimals)
                                for m in group.measurements if m.quantity == MODEL_PROBABILITY), "")
            verdicts = tuple(templates.evaluation_value_label(e.value) for e in group.evaluations
                             if e.quantity == MODEL_VERDICT)
            algorithm = group.algorithm
            predictions.append(PredictionView(
                label=group.label,
                model=f"{algorithm.name} {algorithm.version}".strip(),
                finding=templates.finding(group.finding).meaning if group.finding else "",
                site=_site_label(templates, group.site),
                state=_state_label(templates, group.state),
                values=values,
                probability=probability,
                threshold=_parameter(algorithm.parameters, "threshold"),
                verdicts=verdicts,
                heatmap_uid=explanations.get(group.label),
            ))
            continue
        for e in group.evaluations:
            row = FindingRow(group.label, templates.evaluation_concept(e.quantity).meaning,
                             templates.evaluation_value_label(e.value))
            if e.quantity == QUALITY_FLAG:
                flags.append(row)
            elif segment_of(group) is None:
                findings.append(row)
    other = tuple(FindingRow(u.group, u.concept, f"{u.value} {display_unit(u.unit)}".strip()) for u in read.unknown)
    return {"global_table": global_table, "segment_table": seg_table, "findings": tuple(findings),
            "quality_flags": tuple(flags), "predictions": tuple(predictions), "other_results": other}


def _datetime_text(date: str, time: str) -> str:
    if len(date) == 8 and date.isdigit():
        text = f"{date[:4]}-{date[4:6]}-{date[6:]}"
        if len(time) >= 4 and time[:4].isdigit():
            text += f" {time[:2]}:{time[2:4]}"
        return text
    return date


def _report_view(settings: Settings, job: Job, outputs: Sequence[Output], sends: Sequence[Send],
                 templates: Templates, show: bool) -> tuple[ReportView, ReadReport | None]:
    by_output: dict[str, list[Send]] = {}
    for send in sends:
        by_output.setdefault(send.output_uid, []).append(send)
    views = [_output_view(settings, o, by_output.get(o.sop_instance_uid, ()), templates, show) for o in outputs]
    sr = next((v for v in views if v.kind == "sr"), None)
    pdf = next((v for v in views if v.kind == "pdf"), None)
    images = sorted((v for v in views if v.sop_class_uid in IMAGE_CLASSES),
                    key=lambda v: (v.series_number or 0, v.instance_number or 0, v.sop_instance_uid))
    others = [v for v in views if v is not sr and v is not pdf and v.sop_class_uid not in IMAGE_CLASSES]
    problems = [f"{v.role_label} {v.sop_instance_uid}: {v.note}" for v in views if not v.available]
    fields: dict[str, object] = {}
    read: ReadReport | None = None
    if sr is not None:
        fields["reported_at"] = next(o.created_at for o in outputs if o.sop_instance_uid == sr.sop_instance_uid)
    if sr is not None and sr.available:
        sr_output = next(o for o in outputs if o.sop_instance_uid == sr.sop_instance_uid)
        path = _outbox_file(settings, sr_output)
        try:
            if path is None:
                raise ReadBackError("its file is no longer in the outbox")
            read = _cached_report(*_stat_key(path), templates, sr_output.pipeline)
        except (ReadBackError, OSError, KeyError, ValueError) as exc:
            problems.append(f"the measurement report cannot be read back: {exc}")
    if read is not None:
        fields.update(_tables(read, templates))
        fields.update(title=read.title, procedure=read.procedure, completion=read.completion,
                      verification=read.verification, supersedes=read.predecessors, notices=read.notices,
                      content_datetime=_datetime_text(read.content_date, read.content_time))
    view = ReportView(
        job_id=job.id, pipeline=job.pipeline, run=job.run, job_state=job.state, job_reason=job.reason,
        created_at=job.created_at, updated_at=job.updated_at, sr=sr, images=tuple(images), pdf=pdf,
        others=tuple(others), problems=tuple(problems), **fields,  # type: ignore[arg-type]
    )
    return view, read


def shows_identifiers(settings: Settings, identifiers: bool | None = None) -> bool:
    """Whether a request may see the patient's identity: ``[web] show_identifiers`` (the ceiling) and,
    when given, the request's own choice ``identifiers`` (e.g. the web session's switch)."""
    return bool(settings.web.show_identifiers) and (True if identifiers is None else bool(identifiers))


def study_results(settings: Settings, ledger: Ledger, study_uid: str, *, identifiers: bool | None = None) -> StudyResults:
    """Every job of ``study_uid`` with its result objects and the report's tables, newest first.

    Reads the ledger (jobs, outputs, sends) and the output files' headers and SR from the
    outbox; never the network. A study without jobs gives no reports. ``identifiers``: see
    :func:`shows_identifiers` (it decides whether the PDF is offered).
    """
    templates = _templates(settings)
    show = shows_identifiers(settings, identifiers)
    jobs = ledger.jobs.find(study_uid=study_uid)
    built: list[tuple[ReportView, ReadReport | None]] = []
    for job in jobs:  # newest first
        outputs = ledger.outputs.of_job(job.id)
        sends = ledger.sends.find(job_id=job.id)
        built.append(_report_view(settings, job, outputs, sends, templates, show))
    superseded: dict[str, tuple[str, int]] = {}
    for view, read in built:
        if read is not None:
            for uid in read.predecessors:
                superseded.setdefault(uid, (read.sop_instance_uid, view.job_id))
    reports = []
    for view, _ in built:
        newer = superseded.get(view.sr.sop_instance_uid) if view.sr is not None else None
        if newer is not None and newer[0] != view.sr.sop_instance_uid:  # type: ignore[union-attr]
            view = replace(view, superseded_by=newer[0], superseded_by_job=newer[1])
        reports.append(view)
    return StudyResults(study_uid=study_uid, show_identifiers=show, reports=tuple(reports))


# --------------------------------------------------------------------------- objects


def _image_output(ledger: Ledger, sop_instance_uid: str) -> Output:
    output = ledger.outputs.get(sop_instance_uid)
    if output is None:
        raise ResultNotFound(f"{sop_instance_uid} is not a result object of this node")
    if output.sop_class_uid not in IMAGE_CLASSES:
        raise ResultNotFound(f"{sop_instance_uid} is not an image (SOP class {output.sop_class_uid})")
    return output


def _cache_path(settings: Settings, output: Output, frame: int, variant: str) -> Path:
    """Where a frame's PNG is kept: one folder per study (retention removes it with the study's results)."""
    return settings.web_cache_dir / output.study_uid / f"{output.sop_instance_uid}-{frame}-{variant}.png"


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def result_frame_png(settings: Settings, ledger: Ledger, sop_instance_uid: str, frame: int, *,
                     identifiers: bool | None = None) -> bytes:
    """Frame ``frame`` (1-based) of an image output of this node as PNG bytes.

    RGB images stay RGB; MONOCHROME ones are windowed to 8-bit grey. A results-screen page is
    redacted unless :func:`shows_identifiers` (``identifiers``: the request's choice; see the
    module docstring). The PNG is kept under
    ``<data_dir>/web/cache`` (one file per SOP Instance UID, frame and redaction), so a page
    viewed again costs a file read; an object no longer in the outbox is refused and its cached
    renderings are deleted. Raises :class:`ResultNotFound` for a UID that is not an image
    output of this node, a frame it does not have or a file no longer in the outbox;
    :class:`ResultWithheld` for a screen page whose identification cannot be redacted.
    """
    if isinstance(frame, bool) or not isinstance(frame, int) or frame < 1:
        raise ResultNotFound(f"frame {frame!r} does not exist (frames are numbered from 1)")
    output = _image_output(ledger, sop_instance_uid)
    show = shows_identifiers(settings, identifiers)
    variant = "full" if show else "withheld"
    cached = _cache_path(settings, output, frame, variant)
    path = _outbox_file(settings, output)
    if path is None:  # pruned: not shown (as the page says), and its cached renderings go too
        for stale in cached.parent.glob(f"{output.sop_instance_uid}-*.png") if cached.parent.is_dir() else ():
            stale.unlink(missing_ok=True)
        raise ResultNotFound(f"{sop_instance_uid}: its file is no longer in the outbox")
    try:
        return cached.read_bytes()
    except FileNotFoundError:
        pass
    templates = _templates(settings)
    try:
        header = _cached_header(*_stat_key(path), templates)
        if not 1 <= frame <= header.frames:
            raise ResultNotFound(f"{sop_instance_uid} has {header.frames} frame(s), not frame {frame}")
        pixels = read_frame(path, frame)
    except ReadBackError as exc:
        raise ResultNotFound(f"{sop_instance_uid}: {exc}") from exc
    if header.identified and not show:
        try:
            pixels = withhold_screen_identity(pixels)
        except ReadBackError as exc:
            raise ResultWithheld(f"{sop_instance_uid}: {exc}") from exc
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="RGB" if pixels.ndim == 3 else "L").save(buffer, format="PNG")
    data = buffer.getvalue()
    _write_atomic(cached, data)
    return data


def result_pdf(settings: Settings, ledger: Ledger, sop_instance_uid: str, *, identifiers: bool | None = None) -> bytes:
    """The PDF document of an Encapsulated PDF output of this node.

    Raises :class:`ResultNotFound` for a UID that is not such an output (or whose file is gone),
    :class:`ResultWithheld` unless :func:`shows_identifiers` (every page shows the patient's name,
    ID and birth date).
    """
    output = ledger.outputs.get(sop_instance_uid)
    if output is None or _fallback_kind(output) != "pdf":
        raise ResultNotFound(f"{sop_instance_uid} is not a summary PDF of this node")
    if not shows_identifiers(settings, identifiers):
        raise ResultWithheld(_PDF_WITHHELD)
    path = _outbox_file(settings, output)
    if path is None:
        raise ResultNotFound(f"{sop_instance_uid}: its file is no longer in the outbox")
    try:
        return read_document(path)
    except ReadBackError as exc:
        raise ResultNotFound(f"{sop_instance_uid}: {exc}") from exc


# --------------------------------------------------------------------------- text (CLI)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _text_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A plain-text table: numeric columns (every non-empty cell a number) right-aligned, the others left."""
    heads = [h.replace("\n", " ") for h in head]
    widths = [max([len(h), *(len(r[i]) for r in rows if i < len(r))]) for i, h in enumerate(heads)]
    numeric = [any(r[i] for r in rows) and all(_is_number(r[i]) for r in rows if r[i]) for i in range(len(heads))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if n else c.ljust(w) for c, w, n in zip(cells, widths, numeric)).rstrip()

    return [line(heads), "  ".join("-" * w for w in widths), *(line(row) for row in rows)]


def format_results(results: StudyResults) -> str:
    """The study's results as text tables (``cardionode status --study UID --results``)."""
    out = [f"Results of study {results.study_uid}. {results.notice}"]
    if not results.reports:
        out.append("no job has run on this study")
    for report in results.reports:
        state = f"superseded by the report of job {report.superseded_by_job}" if report.superseded else "current"
        out.append("")
        reported = f"{report.reported_at:%Y-%m-%d %H:%M} UTC" if report.reported_at else "-"
        out.append(f"job {report.job_id} ({report.pipeline}, run {report.run}): {report.job_state}"
                   + (f"; reported {reported} (images of {report.content_datetime}), {state}"
                      if report.sr is not None else ""))
        if report.sr is None:
            out.append(f"  no measurement report: {report.job_reason}")
        for table in (report.global_table, report.segment_table):
            if table is not None:
                out += ["", table.title, *_text_table(table.head, table.rows)]
        if report.predictions:
            rows = [(p.label, p.probability, p.threshold, ", ".join(p.verdicts)) for p in report.predictions]
            out += ["", "Model predictions", *_text_table(("Model output", "Probability", "Threshold", "Verdict"), rows)]
        for title, items in (("Findings", report.findings), ("Quality flags", report.quality_flags),
                             ("Other results", report.other_results)):
            if items:
                out += ["", title, *(f"  {f.group}: {f.concept}: {f.value}" for f in items)]
        if report.objects:
            objects = [(o.role_label, o.title or o.series_description, o.send_summary) for o in report.objects]
            out += ["", "Result objects", *_text_table(("Object", "Title", "Sent"), objects)]
        out += [f"  {p}" for p in report.problems]
    return "\n".join(out)
