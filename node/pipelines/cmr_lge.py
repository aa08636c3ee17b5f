"""Cardiac MR late gadolinium enhancement (LGE) pipeline: LGE burden and pattern, LV function.

Series rules (a study is *complete* when both required rules match; routing attribute
``mr_series_role`` of :func:`node.imaging.mr.mr_series_role`):

* ``lge`` (required): MR images whose role is ``lge_mag`` or ``lge_psir`` (post-contrast
  inversion-recovery short axis, magnitude or phase-sensitive);
* ``cine`` (required): MR images whose role is ``cine_sax`` (bSSFP cine short-axis stack; a
  stack spread over one series per slice is grouped across series by the loader).

Cine is required so that a study is not reported before its cine arrives. An LGE-only (or
cine-only) study is processed when the node's completeness rules say so (quiet period, force
deadline, ``cardionode complete STUDY``): :meth:`CmrLgePipeline.analyse` then reports what it
has (LGE without function, or function without LGE) with a note saying what is missing.

Steps: ``analyse`` (cpu: :func:`load_cmr_inputs`: :func:`node.imaging.mr.load_cmr_study` gives the role
of each series and the short-axis stacks across series; the LGE stack quantified and the cine stack are kept
as float32), ``predict`` (gpu: :func:`segment_and_quantify`:
:func:`node.ai.cmr_segmentation.segment_short_axis` on the LGE stack, and on cine at end-diastole and
end-systole (the phases of the largest and smallest cavity on the middle slices, segmented in every phase), then
:func:`quantify_cmr`: :func:`node.quant.sax_segments.sax_segments` (AHA 17, mid-septum reference),
:func:`node.quant.lge.quantify_lge` (5 SD over an automatic remote sector with the endocardial rim rule and
MVO filling; 2, 3, 6 SD and FWHM as secondary numbers; %LV of the LGE stack's own LV mass; per-segment extent
and transmurality; pattern) and :func:`node.quant.cmr_function.lv_function` (EDV, ESV, SV, EF, LV mass by
Simpson summation), then the seed's outcome model (:func:`predict_outcome`: the basal LGE frame of
:func:`node.ai.cmr_outcome.basal_frame_input`, the ``cmr_lge_outcome_*`` bundle of option ``outcome_model``:
probability of LGE > 5.7 % and of a clinical event, Grad-CAM of each)), ``report`` (cpu: :meth:`CmrLgePipeline.report`: the shared outputs of
:func:`node.results.build_outputs` (TID 1500 SR, bull's-eyes of LGE extent and transmurality, segment table,
results screen, PDF) followed by a DICOM Segmentation of the LV myocardium and the LGE on the LGE images
(:func:`node.results.seg.build_segmentation`) and one contour-overlay Secondary Capture per LGE slice with
myocardium (:func:`node.results.seg.render_mask_overlay`): :func:`mask_outputs`; with a prediction, the two
Grad-CAM heat maps over the basal frame as Secondary Capture (:func:`outcome_outputs`), referenced by the SR's
prediction groups).

Options (``[pipelines.cmr_lge]``, :class:`CmrLgeOptions`): ``n_sd`` (5), ``rim_rule`` (on),
``fill_mvo`` (on), ``lge_input`` (``magnitude`` or ``psir``: which LGE stack is quantified when
the study has both; default magnitude), ``outcome_model`` (the outcome bundle, or ``none``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from pydantic import Field
from pydicom import Dataset

from node.imaging.errors import UnusableSeriesError
from node.imaging.mr import ENHANCED_MR_IMAGE_STORAGE, MR_IMAGE_STORAGE, MRStack, load_cmr_study
from node.imaging.volume import ShortAxisStack
from node.pipelines import registry
from node.pipelines.base import Pipeline, SeriesRule, source_header
from node.pipelines.options import PipelineOptions
from node.quant.cmr_function import LVFunction, blood_fraction, lv_function
from node.quant.lge import LGEMeasurement, LGEResult, quantify_lge
from node.quant.sax_segments import SAXSegments, sax_segments
from node.quant.segments import DEFAULT_GRID, N_SEGMENTS
from node.results import ContentError, build_outputs
from node.results.content import (
    Algorithm,
    Evaluation,
    MapImage,
    Measurement,
    MeasurementGroup,
    ReportContent,
    ReportContext,
    SourceInstance,
)
from node.results.identity import ContentIdentity, algorithms_of
from node.results.outputs import source_datasets
from node.results.render import RESEARCH_LABEL, figure_to_rgb
from node.results.sc import build_rendered_sc
from node.results.seg import OVERLAY_KIND, build_segmentation, render_mask_overlay
from node.results.sr import build_sr
from node.results.templates import load_templates

__all__ = [
    "CmrLgeOptions",
    "CmrLgeResult",
    "CmrLgePipeline",
    "quantify_cmr",
    "load_cmr_inputs",
    "quantify_result",
    "segment_and_quantify",
    "mask_outputs",
    "CmrOutcome",
    "predict_outcome",
    "outcome_groups",
    "outcome_outputs",
    "render_frame_heat_map",
    "report_sources",
    "report_content",
    "PIPELINE",
]

VERSION = "0.1.0"

#: LGE roles of :func:`node.imaging.mr.mr_series_role`
LGE_ROLES: frozenset[str] = frozenset({"lge_mag", "lge_psir"})
#: the segmentation bundle's folder name under the models folder (node.ai.cmr_segmentation.BUNDLE)
_BUNDLE = "cmr_segmentation"
#: fixed display scale of both bull's-eyes, % (extent and transmurality)
PERCENT_SCALE: tuple[float, float] = (0.0, 100.0)


class CmrLgeOptions(PipelineOptions):
    """``[pipelines.cmr_lge]``: the CMR LGE pipeline's options; the defaults give its standard results."""

    n_sd: float = Field(default=5.0, gt=0.0, le=10.0,
                        description="primary LGE threshold: remote mean + n_sd x remote SD (5: the method of the 5.7 % "
                        "cardiac-sarcoidosis cut-off)")
    rim_rule: bool = Field(default=True, description="endocardial (and epicardial) rim rule against partial volume")
    fill_mvo: bool = Field(default=True, description="count microvascular obstruction inside enhanced regions as LGE")
    lge_input: Literal["magnitude", "psir"] = Field(
        default="magnitude", description="LGE stack quantified when the study has both magnitude and PSIR")
    outcome_model: Literal["cmr_lge_outcome_resnet50", "cmr_lge_outcome_inceptionv3", "none"] = Field(
        default="cmr_lge_outcome_inceptionv3",
        description="the seed's outcome model (probability of LGE > 5.7 % and of a clinical event from the basal "
        "LGE frame, with Grad-CAM): which backbone's bundle, or none")


@dataclass(frozen=True, eq=False)
class CmrOutcome:
    """The outcome model's prediction for one study (research use; trained on synthetic phantoms).

    ``probability_lge``/``probability_event``: probabilities (0..1) of LGE above 5.7 % of the LV myocardium and of a
    clinical event (VT, complete heart block, heart-failure hospitalisation, death); ``heat_lge``/``heat_event``
    float32 ``[80, 80]`` Grad-CAM in [0, 1] over ``frame`` (the network's input, float32 ``[80, 80]``, 1.8 mm
    pixels); ``slice_index`` the LGE stack slice of the frame and ``sop_instance_uid``/``frame_number`` its image;
    ``algorithm`` the model's provenance.
    """

    probability_lge: float
    probability_event: float
    heat_lge: np.ndarray
    heat_event: np.ndarray
    frame: np.ndarray
    slice_index: int
    sop_instance_uid: str
    frame_number: int
    algorithm: Algorithm


@dataclass(frozen=True, eq=False)
class CmrLgeResult:
    """One CMR study through the steps; every field annotated (the queue codec's allow-list).

    ``analyse`` fills the stacks (``lge_stack``: the LGE stack quantified, ``cine_stack``: cine, each a
    :class:`~node.imaging.volume.ShortAxisStack` with float32 voxels, None when the study lacks it), the
    evidence and the LGE slices' images (``lge_sop_uids[s]``, frame ``lge_frame_numbers[s]``, 1-based; 1
    for single-frame images). ``predict`` segments and quantifies: ``lge``
    (:class:`~node.quant.lge.LGEResult`), ``segments`` (AHA), ``function``
    (:class:`~node.quant.cmr_function.LVFunction`), the LGE stack's ``lge_image`` float32 and ``myocardium``,
    ``blood`` bool ``[slice, row, column]`` (slices in increasing position along the slice normal),
    ``segmentation`` (the model(s) that drew the masks), ``outcome`` (the outcome model's prediction, None when not
run), and drops the stacks. ``source_headers`` (set by
    :meth:`CmrLgePipeline.analyse`) are the pixel-free headers of the instances the report reads individually.
    """

    study_instance_uid: str
    sources: tuple[SourceInstance, ...]
    lge_role: str
    lge_series_uids: tuple[str, ...]
    lge_sop_uids: tuple[str, ...]
    lge_frame_numbers: tuple[int, ...]
    lge_stack: ShortAxisStack | None = None
    cine_stack: ShortAxisStack | None = None
    lge: LGEResult | None = None
    function: LVFunction | None = None
    segments: SAXSegments | None = None
    lge_image: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0), np.float32))
    myocardium: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0), bool))
    blood: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0), bool))
    segmentation: tuple[Algorithm, ...] = ()
    outcome: CmrOutcome | None = None
    settings: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    timings_s: dict[str, float] = field(default_factory=dict)
    source_headers: tuple[Dataset, ...] = ()


def _spacing(stack: ShortAxisStack) -> tuple[float, float]:
    return float(stack.pixel_spacing_mm[0]), float(stack.pixel_spacing_mm[1])


def quantify_cmr(
    lge: ShortAxisStack | None,
    lge_labels: np.ndarray | None,
    cine: ShortAxisStack | None,
    cine_labels: np.ndarray | None,
    options: CmrLgeOptions | None = None,
    *,
    psir: bool = False,
    cine_phases: tuple[int, int] | None = None,
) -> tuple[LGEResult | None, SAXSegments | None, LVFunction | None]:
    """LGE, AHA segments and LV function from short-axis stacks and their label masks.

    ``lge_labels`` uint8 ``[slice, row, column]`` and ``cine_labels`` uint8 ``[phase, slice, row, column]`` on
    the stacks' grids with the labels of :data:`node.ai.cmr_segmentation.LABELS` (1 LV blood pool, 2 LV
    myocardium, 3 RV blood pool). Either stack may be None (its results are then None). ``psir``: the LGE
    stack is phase-sensitive (no FWHM). The cine blood pool counts by its partial-volume occupancy
    (:func:`node.quant.cmr_function.blood_fraction`). ``cine_phases``: (ED, ES) phase indices when only those phases are
    labelled; None: every phase is, and ED/ES are the largest and smallest LV cavity.
    """
    options = options or CmrLgeOptions()
    lge_result = segments = function = None
    if lge is not None and lge_labels is not None:
        labels = np.asarray(lge_labels)
        blood, myo, rv = labels == 1, labels == 2, labels == 3
        if not myo.any():
            raise UnusableSeriesError("the segmentation found no LV myocardium on the LGE stack", "PixelData")
        spacing = _spacing(lge)
        segments = sax_segments(blood, myo, rv if rv.any() else None, spacing)
        lge_result = quantify_lge(
            np.asarray(lge.voxels[0], dtype=np.float64), myo, blood, segments, spacing, lge.slice_positions_mm,
            psir=psir, n_sd=options.n_sd, rim_rule=options.rim_rule, fill_mvo=options.fill_mvo,
            slice_thickness_mm=float(lge.slice_thickness_mm))
    if cine is not None and cine_labels is not None:
        labels = np.asarray(cine_labels)
        rv_all, myo_all = labels == 3, labels == 2
        ed, es = cine_phases if cine_phases is not None else (None, None)
        # partial-volume blood occupancy of each labelled phase (bSSFP: blood bright): the basal slab and the
        # endocardial band count by their share, not all or nothing (node.quant.cmr_function.blood_fraction)
        blood = np.zeros(labels.shape, dtype=np.float64)
        for phase in np.flatnonzero((labels > 0).any(axis=(1, 2, 3))):
            blood[phase] = blood_fraction(cine.voxels[phase], labels[phase] == 1, myo_all[phase])
        function = lv_function(blood, myo_all, _spacing(cine), cine.slice_positions_mm,
                               rv=rv_all if rv_all.any() else None, slice_thickness_mm=float(cine.slice_thickness_mm),
                               ed_phase=ed, es_phase=es)
    return lge_result, segments, function


def _choose_lge(stacks: dict[str, MRStack], options: CmrLgeOptions, notes: list[str]) -> MRStack | None:
    preferred = "lge_psir" if options.lge_input == "psir" else "lge_mag"
    other = "lge_mag" if preferred == "lge_psir" else "lge_psir"
    chosen = stacks.get(preferred) or stacks.get(other)
    if chosen is not None and stacks.get(preferred) is None:
        notes.append(f"LGE quantified on the {'PSIR' if chosen.role == 'lge_psir' else 'magnitude'} stack "
                     f"(no {'PSIR' if preferred == 'lge_psir' else 'magnitude'} stack in the study)")
    elif chosen is not None and other in stacks:
        notes.append(f"LGE quantified on the {'PSIR' if chosen.role == 'lge_psir' else 'magnitude'} stack "
                     f"(option lge_input = {options.lge_input}); the other LGE stack was not quantified")
    return chosen


def _float32(stack: MRStack | None) -> ShortAxisStack | None:
    return None if stack is None else replace(stack.stack, voxels=np.asarray(stack.stack.voxels, dtype=np.float32))


def load_cmr_inputs(instances: Sequence[Dataset], options: CmrLgeOptions | None = None) -> CmrLgeResult:
    """The ``analyse`` step without the headers: the roles of the MR series, the LGE and cine short-axis stacks
    (:func:`node.imaging.mr.load_cmr_study`), the evidence and notes on what is missing or was refused."""
    options = options or CmrLgeOptions()
    mr = [ds for ds in instances if str(ds.get("Modality", "")).upper() == "MR"]
    if not mr:
        raise UnusableSeriesError("no MR instance in the study", "Modality")
    mr.sort(key=lambda ds: (str(ds.get("SeriesInstanceUID", "")), str(ds.get("SOPInstanceUID", ""))))
    notes: list[str] = []
    t0 = time.perf_counter()
    study = load_cmr_study(mr)
    timings = {"load": time.perf_counter() - t0}
    notes.extend(f"not used: {r.reason}" for r in study.refusals)
    lge = _choose_lge(study.stacks, options, notes)
    cine = study.stacks.get("cine_sax")
    if lge is None and cine is None:
        raise UnusableSeriesError("no usable LGE or cine short-axis stack: " + ("; ".join(notes) or "roles found: " + (
            ", ".join(sorted({d.role for d in study.decisions.values()})) or "none")), "SeriesDescription")
    if lge is None:
        notes.append("no LGE short-axis stack: LGE is not reported (LV function only)")
    if cine is None:
        notes.append("no cine short-axis stack: LV function (EF, volumes) is not reported (LGE only)")
    for stack in (lge, cine):
        if stack is not None:
            notes.extend(f"{stack.role}: {issue.kind}: {issue.detail}" for issue in stack.issues)
    by_uid = {str(ds.SOPInstanceUID): ds for ds in mr}
    used: dict[str, SourceInstance] = {}
    for stack in (lge, cine):
        for phase in stack.frames if stack is not None else ():
            for frame in phase:
                ds = by_uid[frame.sop_uid]
                used.setdefault(frame.sop_uid, SourceInstance(str(ds.StudyInstanceUID), frame.series_uid,
                                                              str(ds.SOPClassUID), frame.sop_uid))
    slices = lge.frames[0] if lge is not None else ()
    return CmrLgeResult(
        study_instance_uid=str(mr[0].StudyInstanceUID),
        sources=tuple(sorted(used.values(), key=lambda s: (s.series_instance_uid, s.sop_instance_uid))),
        lge_role=lge.role if lge is not None else "",
        lge_series_uids=tuple(f.series_uid for f in slices),
        lge_sop_uids=tuple(f.sop_uid for f in slices),
        lge_frame_numbers=tuple(int(f.number) for f in slices),
        lge_stack=_float32(lge),
        cine_stack=_float32(cine),
        settings=(f"rim_rule={'on' if options.rim_rule else 'off'}",
                  f"mvo={'included' if options.fill_mvo else 'not filled'}"),
        notes=tuple(notes),
        timings_s=timings,
    )


def quantify_result(result: CmrLgeResult, lge_labels: np.ndarray | None, cine_labels: np.ndarray | None,
                    options: CmrLgeOptions | None = None, segmentation: tuple[Algorithm, ...] = (),
                    notes: Sequence[str] = (), cine_phases: tuple[int, int] | None = None) -> CmrLgeResult:
    """``result`` of :func:`load_cmr_inputs` quantified with label masks of its stacks (:func:`quantify_cmr`),
    without the stacks; ``segmentation`` names what drew the masks, ``notes`` are added."""
    t0 = time.perf_counter()
    lge, segments, function = quantify_cmr(result.lge_stack, lge_labels, result.cine_stack, cine_labels, options,
                                           psir=result.lge_role == "lge_psir", cine_phases=cine_phases)
    timings = {**result.timings_s, "quantify": time.perf_counter() - t0}
    extra = {}
    if result.lge_stack is not None and lge_labels is not None:
        extra = {"lge_image": np.asarray(result.lge_stack.voxels[0], dtype=np.float32),
                 "myocardium": np.asarray(lge_labels) == 2, "blood": np.asarray(lge_labels) == 1}
    return replace(result, lge=lge, segments=segments, function=function, segmentation=segmentation,
                   notes=(*result.notes, *notes), timings_s=timings, lge_stack=None, cine_stack=None, **extra)


#: cine slices around the middle of the stack segmented in every phase to find end-diastole and end-systole
_PHASE_PICK_SLICES = 3


def _end_phases(stack: ShortAxisStack, segment: Callable[..., Any], model_dir: Path | None) -> tuple[int, int]:
    """(ED, ES): the phases of the largest and smallest LV cavity on the middle cine slices (every phase segmented
    there only; the whole stack is then segmented at these two phases)."""
    mid = stack.n_slices // 2
    pick = np.arange(max(0, mid - _PHASE_PICK_SLICES // 2), min(stack.n_slices, mid + _PHASE_PICK_SLICES // 2 + 1))
    sub = replace(stack, voxels=stack.voxels[:, pick], positions_mm=stack.positions_mm[pick],
                  trigger_ms=stack.trigger_ms[:, pick])
    area = (segment(sub, model_dir=model_dir, contrast="cine").labels == 1).sum(axis=(1, 2, 3))
    return int(np.argmax(area)), int(np.argmin(area))


def segment_and_quantify(result: CmrLgeResult, options: CmrLgeOptions | None = None,
                         model_dir: Path | None = None, outcome_dir: Path | None = None) -> CmrLgeResult:
    """The ``predict`` step: :func:`node.ai.cmr_segmentation.segment_short_axis` (bundle folder ``model_dir``;
    None: the shipped one) on the LGE stack, and on the cine stack at end-diastole and end-systole (found on
    the middle slices, :func:`_end_phases`), then :func:`quantify_result`; with an LGE stack and option
    ``outcome_model`` not ``none``, :func:`predict_outcome` (bundle folder ``outcome_dir``; None: the shipped one)."""
    from node.ai.cmr_segmentation import segment_short_axis  # torch: only in the predict step

    options = options or CmrLgeOptions()

    algorithms: list[Algorithm] = []
    notes: list[str] = []
    timings: dict[str, float] = {}
    lge_labels = cine_labels = None
    phases: tuple[int, int] | None = None
    if result.lge_stack is not None:
        t0 = time.perf_counter()
        seg = segment_short_axis(result.lge_stack, model_dir=model_dir, contrast="lge")
        timings["segment.lge"] = time.perf_counter() - t0
        lge_labels = seg.labels[0]
        algorithms.append(seg.algorithm())
        notes.extend(f"LGE segmentation: {problem}" for problem in seg.quality.problems)
    if result.cine_stack is not None:
        t0 = time.perf_counter()
        ed, es = _end_phases(result.cine_stack, segment_short_axis, model_dir)
        if ed == es:  # no cavity change on the middle slices: segment every phase and let the volumes decide
            seg = segment_short_axis(result.cine_stack, model_dir=model_dir, contrast="cine")
        else:
            phases = (ed, es)
            seg = segment_short_axis(result.cine_stack, phases=list(phases), model_dir=model_dir, contrast="cine")
        timings["segment.cine"] = time.perf_counter() - t0
        cine_labels = seg.labels
        algorithms.append(seg.algorithm())
        notes.extend(f"cine segmentation: {problem}" for problem in seg.quality.problems)
    outcome = None
    if result.lge_stack is not None and lge_labels is not None and options.outcome_model != "none":
        t0 = time.perf_counter()
        outcome, note = predict_outcome(result, lge_labels, options.outcome_model, outcome_dir)
        timings["predict.outcome"] = time.perf_counter() - t0
        notes.extend([note] if note else [])
    timed = replace(result, timings_s={**result.timings_s, **timings})
    quantified = quantify_result(timed, lge_labels, cine_labels, options, tuple(dict.fromkeys(algorithms)), notes,
                                 phases)
    return replace(quantified, outcome=outcome)


#: the intended-use statement of the outcome model's results (SR algorithm parameter and heat-map comments)
OUTCOME_INTENDED_USE = ("research use only: reproduces a published proof of concept on synthetic phantoms; "
                        "not clinically validated; not for diagnosis or risk stratification")


def predict_outcome(result: CmrLgeResult, lge_labels: np.ndarray, bundle: str,
                    model_dir: Path | None = None) -> tuple[CmrOutcome | None, str | None]:
    """The seed's outcome model on one study: the basal frame of the LGE stack and its labels
    (:func:`node.ai.cmr_outcome.basal_frame_input`), the probabilities and Grad-CAM of bundle ``bundle``
    (:func:`node.ai.cmr_outcome.predict_outcomes`; folder ``model_dir``, None: the shipped one).

    Returns ``(outcome, None)``, or ``(None, note)`` saying why there is no prediction (no LV on the LGE
    stack, bundle missing).
    """
    from node.ai.cmr_outcome import basal_frame_input, predict_outcomes  # torch: only in the predict step

    assert result.lge_stack is not None
    try:
        frame, index = basal_frame_input(result.lge_stack, lge_labels)
    except ValueError as exc:
        return None, f"outcome model not applied: {exc}"
    try:
        scores = predict_outcomes(frame[None], bundle=bundle, model_dir=model_dir)
    except FileNotFoundError as exc:
        return None, f"outcome model not applied: {exc}"
    assert scores.heat_maps is not None
    uid = result.lge_sop_uids[index] if index < len(result.lge_sop_uids) else ""
    number = result.lge_frame_numbers[index] if index < len(result.lge_frame_numbers) else 1
    algorithm = replace(scores.algorithm, parameters=(
        *scores.algorithm.parameters, f"basal_frame_sop_instance_uid={uid}", f"basal_frame_number={number}",
        f"basal_frame_slice={index + 1} of {result.lge_stack.n_slices}", f"intended_use={OUTCOME_INTENDED_USE}"))
    p = scores.probabilities[0]
    return CmrOutcome(float(p[0]), float(p[1]), scores.heat_maps[0, 0], scores.heat_maps[0, 1], frame[0], int(index),
                      uid, int(number), algorithm), None


# --------------------------------------------------------------------------- report content


def _finite(value: float | None) -> bool:
    return value is not None and bool(np.isfinite(value))


def lge_algorithm(result: CmrLgeResult, measurement: LGEMeasurement | None = None) -> Algorithm:
    """TID 4019 identification of one LGE method (the primary one by default) with every parameter."""
    assert result.lge is not None
    lge = result.lge
    m = measurement or lge.primary
    remote = lge.remote
    where = (f"{remote.ring} ring, psi {remote.psi_range_deg[0]:.0f}-{remote.psi_range_deg[1]:.0f} deg"
             if remote.psi_range_deg is not None else remote.source)
    parameters = [
        f"method={_short(m.method)}", f"method_detail={m.method}", f"threshold={m.threshold:.6g}",
        f"remote=auto-lowest-sector ({where})" if remote.source == "auto" else "remote=user",
        f"remote_mean={remote.mean:.6g}", f"remote_sd={remote.sd:.6g}", f"remote_voxels={remote.n_voxels}",
        *result.settings, "denominator=LGE-stack LV myocardial mass", "density=1.05 g/mL",
        "papillary=excluded (blood pool)", f"input={'PSIR' if lge.psir else 'magnitude IR'}",
        *(f"segmentation={a.name} {a.version}" for a in result.segmentation),
        *(p for a in result.segmentation for p in a.parameters if p.startswith("weights=")),
    ]
    if result.segments is not None:
        parameters.append("segments=AHA 17 on short axis, mid-septum reference")
    return Algorithm(name="CardioNode CMR LGE quantification", version=VERSION, parameters=tuple(parameters),
                     training_data="none (threshold method); segmentation trained on synthetic phantoms only")


def function_algorithm(result: CmrLgeResult) -> Algorithm:
    """TID 4019 identification of the cine function analysis."""
    assert result.function is not None
    f = result.function
    return Algorithm(
        name="CardioNode CMR LV function", version=VERSION,
        parameters=(f"method={f.method}", f"papillary={f.papillary_convention}", f"ed_phase={f.ed_phase}",
                    f"es_phase={f.es_phase}", "density=1.05 g/mL",
                    *(f"segmentation={a.name} {a.version}" for a in result.segmentation)),
        training_data="none (Simpson summation); segmentation trained on synthetic phantoms only")


def _short(method: str) -> str:
    """A method's name without its details (``5SD+rim+MVO``), for labels and titles."""
    return method.split(" ", 1)[0]


def _base(method: str) -> str:
    """The method's key in the quantity names of the templates: ``2sd``, ``3sd``, ``6sd``, ``fwhm``."""
    return _short(method).split("+", 1)[0].lower()


def _lge_groups(result: CmrLgeResult, algorithm: Algorithm) -> list[MeasurementGroup]:
    lge = result.lge
    assert lge is not None
    p = lge.primary
    pattern = lge.pattern
    evaluations = [Evaluation("lge_above_cutoff", "present" if lge.above_cutoff else "absent")]
    evaluations += [Evaluation("lge_pattern", label.replace("-", "_")) for label in pattern.labels]
    evaluations += [Evaluation("lge_pattern", key) for key, on in
                    (("multifocal", pattern.multifocal), ("rv_insertion", pattern.rv_insertion), ("mvo", pattern.mvo))
                    if on and key not in pattern.labels]
    groups = [MeasurementGroup(
        label=f"LGE whole LV ({_short(p.method)})"[:64], finding="scarred_myocardium", site="lv_myocardium", state=None,
        algorithm=algorithm,
        measurements=(Measurement("lge_mass", round(p.lge_mass_g, 2), "g"),
                      Measurement("lge_extent", round(p.lge_pct_lv, 2), "%")),
        evaluations=tuple(evaluations))]
    groups.append(MeasurementGroup(
        label="LV myocardium (LGE stack)", finding="lv_myocardial_mass", site="lv_myocardium", state=None,
        algorithm=algorithm, measurements=(Measurement("lv_mass", round(lge.lv_mass_g, 1), "g"),)))
    for _name, m in sorted(lge.secondary.items()):
        groups.append(MeasurementGroup(
            label=f"LGE whole LV ({_short(m.method)}, secondary)"[:64], finding="scarred_myocardium", site="lv_myocardium",
            state=None, algorithm=lge_algorithm(result, m),
            measurements=(Measurement(f"lge_mass_{_base(m.method)}", round(m.lge_mass_g, 2), "g"),
                          Measurement(f"lge_extent_{_base(m.method)}", round(m.lge_pct_lv, 2), "%"))))
    assessed = result.segments.assessed_segments if result.segments is not None else np.ones(N_SEGMENTS, bool)
    for k in range(N_SEGMENTS):
        extent = float(p.segment_extent_pct[k])
        if not assessed[k] or not _finite(extent):
            continue
        transmurality = float(p.segment_transmurality_pct[k])
        measurements = [Measurement("lge_extent", round(extent, 1), "%"),
                        Measurement("lge_transmurality", round(transmurality if _finite(transmurality) else 0.0, 1), "%")]
        groups.append(MeasurementGroup(
            label=f"LGE AHA segment {k + 1}", finding="scarred_myocardium", site=f"aha_{k + 1}", state=None,
            algorithm=algorithm, measurements=tuple(measurements)))
    return groups


def _function_groups(result: CmrLgeResult) -> list[MeasurementGroup]:
    f = result.function
    assert f is not None
    algorithm = function_algorithm(result)
    measurements = [Measurement(q, round(float(v), 1), u) for q, v, u in
                    (("lvef", f.ef_pct, "%"), ("edv", f.edv_ml, "ml"), ("esv", f.esv_ml, "ml"),
                     ("stroke_volume", f.sv_ml, "ml")) if _finite(float(v))]
    groups = [MeasurementGroup(label="LV function (cine)", finding="lv_function", site="left_ventricle", state=None,
                               algorithm=algorithm, measurements=tuple(measurements))]
    if _finite(f.lv_mass_g):
        groups.append(MeasurementGroup(
            label="LV myocardium (cine, end-diastole)", finding="lv_myocardial_mass", site="lv_myocardium",
            state=None, algorithm=algorithm, measurements=(Measurement("lv_mass_cine", round(f.lv_mass_g, 1), "g"),)))
    return groups


def _polar(values: np.ndarray) -> np.ndarray:
    """A polar map (:data:`node.quant.segments.DEFAULT_GRID`) whose cells hold their AHA segment's value."""
    return np.nan_to_num(np.asarray(values, dtype=float))[DEFAULT_GRID.segment_ids() - 1]


def _images(result: CmrLgeResult, algorithm: Algorithm) -> list[MapImage]:
    lge = result.lge
    assert lge is not None
    p = lge.primary
    assessed = result.segments.assessed_segments if result.segments is not None else np.ones(N_SEGMENTS, bool)
    out = []
    for key, title, values, subtitle in (
        ("lge_extent", "LGE extent per segment, %", p.segment_extent_pct,
         f"{_short(p.method)}: enhanced myocardium / segment myocardium"),
        ("lge_transmurality", "LGE transmurality per segment, %", p.segment_transmurality_pct,
         "mean enhanced share of the wall; classes 0 / 1-25 / 26-50 / 51-75 / 76-100 %"),
    ):
        shown = np.where(assessed, np.nan_to_num(np.asarray(values, float)), np.nan)
        out.append(MapImage(
            key=key, title=title, values=_polar(np.nan_to_num(shown)), unit="%", value_range=PERCENT_SCALE,
            colormap="inferno", segment_values=tuple(round(float(v), 1) for v in np.nan_to_num(shown)),
            algorithm=algorithm, quantity=key, subtitle=subtitle))
    return out


def report_content(result: CmrLgeResult) -> ReportContent:
    """The :class:`ReportContent` of a CMR result: LGE (global, secondary methods, 17 segments, pattern, 5.7 %
    flag), LV mass on the LGE stack, LV function from cine, bull's-eyes of extent and transmurality.

    The outcome model's groups (:func:`outcome_groups`) come without their heat-map links here (the heat maps are
    not bull's-eyes); :meth:`CmrLgePipeline.report` links them in the SR it sends.

    Raises :class:`~node.results.ContentError` when nothing was quantified (the ``predict`` step, which segments
    the stacks, did not run: ``cardionode process --no-models``).
    """
    if result.lge is None and result.function is None:
        raise ContentError("nothing to report: the cmr_lge results need the segmentation model (the predict step; "
                           "not run with --no-models)")
    groups: list[MeasurementGroup] = []
    images: list[MapImage] = []
    algorithms: list[Algorithm] = []
    parts = []
    if result.lge is not None:
        algorithm = lge_algorithm(result)
        algorithms.append(algorithm)
        groups.extend(_lge_groups(result, algorithm))
        images.extend(_images(result, algorithm))
        parts.append(f"LGE {'PSIR' if result.lge.psir else 'magnitude IR'} ({_short(result.lge.method)})")
    if result.function is not None:
        groups.extend(_function_groups(result))
        algorithms.append(function_algorithm(result))
        parts.append("cine SSFP function")
    if result.outcome is not None:
        groups.extend(outcome_groups(result.outcome, linked=False))
        algorithms.append(result.outcome.algorithm)
        parts.append("outcome model on the basal LGE frame (research use)")
    return ReportContent(
        pipeline=CmrLgePipeline.name,
        pipeline_version=VERSION,
        procedure="cmr_lge",
        study_instance_uid=result.study_instance_uid,
        sources=result.sources,
        groups=tuple(groups),
        images=tuple(images),
        algorithms=tuple(algorithms),
        notes=tuple(result.notes),
        description="Cardiac MR: " + ", ".join(parts),
    )


def cmr_summary(result: CmrLgeResult) -> dict[str, Any]:
    """The CMR details of ``cardionode process``'s summary."""
    summary: dict[str, Any] = {"lge_role": result.lge_role, "notes": list(result.notes)}
    if result.lge is not None:
        lge = result.lge
        summary["lge"] = {
            "method": lge.method, "lge_mass_g": lge.primary.lge_mass_g, "lge_pct_lv": lge.primary.lge_pct_lv,
            "lv_mass_g": lge.lv_mass_g, "above_cutoff": lge.above_cutoff, "cutoff_pct_lv": lge.cutoff_pct_lv,
            "remote": {"mean": lge.remote.mean, "sd": lge.remote.sd, "ring": lge.remote.ring,
                       "psi_range_deg": lge.remote.psi_range_deg},
            "secondary_pct_lv": {k: m.lge_pct_lv for k, m in lge.secondary.items()},
            "segment_extent_pct": lge.primary.segment_extent_pct,
            "segment_transmurality_pct": lge.primary.segment_transmurality_pct,
            "pattern": list(lge.pattern.labels),
        }
    if result.function is not None:
        f = result.function
        summary["function"] = {"edv_ml": f.edv_ml, "esv_ml": f.esv_ml, "sv_ml": f.sv_ml, "ef_pct": f.ef_pct,
                               "lv_mass_g": f.lv_mass_g, "ed_phase": f.ed_phase, "es_phase": f.es_phase}
    if result.outcome is not None:
        o = result.outcome
        summary["outcome"] = {"probability_lge_above_5_7": o.probability_lge, "probability_event": o.probability_event,
                              "basal_slice": o.slice_index, "basal_sop_instance_uid": o.sop_instance_uid,
                              "model": f"{o.algorithm.name} {o.algorithm.version}", "intended_use": OUTCOME_INTENDED_USE}
    return summary


# --------------------------------------------------------------------------- outcome model outputs

#: heat-map keys (SC instance keys and the groups' ``explanation_image``) of the two outputs
OUTCOME_HEAT_KEYS: tuple[str, str] = ("gradcam_lge_frame", "gradcam_event_frame")
_OUTCOME_LABELS = ("AI: LGE above 5.7 % of LV (basal frame)", "AI: clinical event (VT, CHB, HF, death)")
_HEAT_SIZE = 512


def outcome_groups(outcome: CmrOutcome, linked: bool = True) -> list[MeasurementGroup]:
    """The SR groups of the outcome model: probability of LGE > 5.7 % (finding Scarred Myocardium at the LV
    myocardium) and of a clinical event (finding High risk at the heart), each a probability (UCUM ``1``) with the
    model's provenance (basal frame's SOP Instance UID, intended use); ``linked``: each names its Grad-CAM SC."""
    out = []
    for k, (finding, site, p) in enumerate((("scarred_myocardium", "lv_myocardium", outcome.probability_lge),
                                            ("high_risk", "heart", outcome.probability_event))):
        out.append(MeasurementGroup(
            label=_OUTCOME_LABELS[k], finding=finding, site=site, state=None, algorithm=outcome.algorithm,
            measurements=(Measurement("probability", round(float(p), 4), "1"),),
            explanation_image=OUTCOME_HEAT_KEYS[k] if linked else None))
    return out


def render_frame_heat_map(frame: np.ndarray, heat: np.ndarray, title: str, subtitle: str,
                          size: int = _HEAT_SIZE) -> np.ndarray:
    """A Grad-CAM heat map over the network's frame: RGB ``uint8`` ``[size, size, 3]``.

    ``frame`` ``[r, c]`` (normalised, shown in grey from 0 to 1), ``heat`` ``[r, c]`` in [0, 1] (the ``jet`` colour
    map, blended in proportion to the heat, nothing below 0.2); title, subtitle and the research-use label burned in.
    """
    grey = np.clip(np.asarray(frame, dtype=np.float64), 0.0, 1.0)
    h = np.clip(np.asarray(heat, dtype=np.float64), 0.0, 1.0)
    colour = colormaps["jet"](h)[..., :3]
    alpha = (0.55 * np.clip((h - 0.2) / 0.8, 0.0, 1.0))[..., None]
    rgb = (1.0 - alpha) * grey[..., None] + alpha * colour
    fig = Figure(figsize=(size / 100, size / 100), dpi=100, facecolor="black")
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.05, 0.1, 0.9, 0.8))
    ax.imshow(rgb, interpolation="bilinear")
    ax.set_axis_off()
    fig.text(0.5, 0.955, title, color="white", ha="center", va="center", fontsize=11)
    fig.text(0.5, 0.915, subtitle, color="#cccccc", ha="center", va="center", fontsize=8)
    fig.text(0.02, 0.05, "Grad-CAM: red = most influential for this output (relative, 0..1)", color="white",
             ha="left", va="center", fontsize=8)
    fig.text(0.98, 0.02, RESEARCH_LABEL, color="#ffcc00", ha="right", va="center", fontsize=8)
    return figure_to_rgb(fig)


def outcome_outputs(result: CmrLgeResult, content: ReportContent, sources: Sequence[Dataset],
                    context: ReportContext) -> dict[str, Dataset]:
    """The two Grad-CAM Secondary Capture images of the outcome model over the basal frame, by key
    (:data:`OUTCOME_HEAT_KEYS`), each referencing the basal LGE image it came from; empty without a prediction."""
    outcome = result.outcome
    if outcome is None:
        return {}
    templates = load_templates(context.templates_dir)
    by_uid = {str(ds.SOPInstanceUID): ds for ds in [*sources, *result.source_headers]}
    used = [by_uid[s.sop_instance_uid] for s in content.sources]
    identity = ContentIdentity.of(content, used)
    source = [by_uid[outcome.sop_instance_uid]] if outcome.sop_instance_uid in by_uid else used[:1]
    algorithms = algorithms_of(content)
    n = int(result.myocardium.shape[0]) if result.myocardium.ndim == 3 else 0
    out: dict[str, Dataset] = {}
    for k, (key, heat, p, what) in enumerate(zip(
            OUTCOME_HEAT_KEYS, (outcome.heat_lge, outcome.heat_event),
            (outcome.probability_lge, outcome.probability_event),
            ("LGE > 5.7 % of LV", "clinical event"), strict=True)):
        title = f"Grad-CAM, {what}: probability {p:.2f}"
        subtitle = (f"basal LGE slice {outcome.slice_index + 1} of {n}, 144 mm field; "
                    f"{outcome.algorithm.name} {outcome.algorithm.version}")
        rgb = render_frame_heat_map(outcome.frame, heat, title, subtitle)
        sc = build_rendered_sc(rgb, "sc_heatmap", key, title, outcome.algorithm, algorithms, source, identity,
                               templates, k + 1, content.pipeline, content.pipeline_version)
        sc.SeriesDescription = "AI Grad-CAM, basal LGE frame (research use, not for diagnosis)"
        out[key] = sc
    return out


# --------------------------------------------------------------------------- pipeline



def _individually_referenced(result: CmrLgeResult) -> tuple[str, ...]:
    """The instances whose header the report reads: the first of each series (patient and study modules, the
    SR's image library) and every LGE slice (the Segmentation's geometry, the overlays' source)."""
    firsts = {s.series_instance_uid: s.sop_instance_uid for s in reversed(result.sources)}
    return tuple(dict.fromkeys([*firsts.values(), *result.lge_sop_uids]))


def report_sources(result: CmrLgeResult) -> list[Dataset]:
    """The source datasets in ``result.sources`` order: the headers ``analyse`` kept, UIDs only for the others."""
    return source_datasets(result.sources, result.source_headers)


def mask_outputs(result: CmrLgeResult, content: ReportContent, sources: Sequence[Dataset],
                 context: ReportContext) -> list[Dataset]:
    """The Segmentation (LV myocardium and LGE on the LGE images) and the contour-overlay SC of each LGE slice
    with myocardium, with the UIDs and dates of the run's other outputs."""
    if result.lge is None or not result.lge_sop_uids:
        return []
    templates = load_templates(context.templates_dir)
    by_uid = {str(ds.SOPInstanceUID): ds for ds in [*sources, *result.source_headers]}
    used = [by_uid[s.sop_instance_uid] for s in content.sources]
    identity = ContentIdentity.of(content, used)
    algorithm = lge_algorithm(result)
    slices = [by_uid[uid] for uid in result.lge_sop_uids]
    lge_mask = np.asarray(result.lge.primary.mask, dtype=bool)
    seg = build_segmentation({"lv_myocardium": result.myocardium, "lge": lge_mask}, slices, identity, templates,
                             algorithm, frame_numbers=result.lge_frame_numbers)
    outputs: list[Dataset] = [seg]
    algorithms = algorithms_of(content)
    n = int(result.myocardium.shape[0])
    number = 0
    for s in range(n):
        if not result.myocardium[s].any():
            continue
        number += 1
        title = f"LGE slice {s + 1} of {n} (apex to base)" if result.segments is not None and \
            result.segments.apex_first else f"LGE slice {s + 1} of {n}"
        rgb = render_mask_overlay(result.lge_image[s], result.myocardium[s], lge_mask[s], title,
                                  blood=result.blood[s])
        outputs.append(build_rendered_sc(rgb, OVERLAY_KIND, f"overlay_{s + 1}", title, algorithm, algorithms,
                                         [slices[s]], identity, templates, number, content.pipeline,
                                         content.pipeline_version))
    return outputs


def _rule(name: str, roles: frozenset[str]) -> SeriesRule:
    return SeriesRule(name=name, modalities=frozenset({"MR"}),
                      sop_class_uids=frozenset({MR_IMAGE_STORAGE, ENHANCED_MR_IMAGE_STORAGE}),
                      mr_series_roles=roles, required=True)


class CmrLgePipeline(Pipeline):
    """Cardiac MR LGE: late gadolinium enhancement (burden, segments, pattern) and LV function from cine.

    Options: :class:`CmrLgeOptions`.
    """

    name = "cmr_lge"
    version = VERSION
    title = "Cardiac MR late gadolinium enhancement (LGE %LV, segments, pattern) and LV function"
    series_rules = (_rule("lge", LGE_ROLES), _rule("cine", frozenset({"cine_sax"})))
    options_model = CmrLgeOptions
    result_type = CmrLgeResult

    def analyse(self, instances: Sequence[Dataset]) -> CmrLgeResult:
        """Read the LGE and cine short-axis stacks among ``instances`` (cpu step; :func:`load_cmr_inputs`)."""
        result = load_cmr_inputs(instances, cast(CmrLgeOptions, self.options))
        wanted = set(_individually_referenced(result))
        headers = tuple(source_header(ds) for ds in instances if str(ds.get("SOPInstanceUID", "")) in wanted)
        return replace(result, source_headers=headers)

    def predict(self, result: CmrLgeResult) -> CmrLgeResult:
        """Segment the stacks with the ``cmr_segmentation`` model, quantify them and run the outcome model (gpu
        step; :func:`segment_and_quantify`), with the run's models folder."""
        models = self.run_config.models_dir
        options = cast(CmrLgeOptions, self.options)
        return segment_and_quantify(result, options, None if models is None else models / _BUNDLE,
                                    None if models is None else models / options.outcome_model)

    def report_content(self, result: CmrLgeResult) -> ReportContent:
        """:func:`report_content` of ``result``."""
        return report_content(result)

    def report(self, result: CmrLgeResult, context: ReportContext) -> list[Dataset]:
        """The shared outputs (:func:`node.results.build_outputs`: SR, bull's-eyes, PDF ...) followed by the
        Segmentation and the contour overlays (:func:`mask_outputs`) and, with an outcome prediction, its two
        Grad-CAM images (:func:`outcome_outputs`); the SR is then the one whose prediction groups reference them."""
        content = self.report_content(result)
        sources = report_sources(result)
        outputs = [*build_outputs(content, sources, context), *mask_outputs(result, content, sources, context)]
        heat = outcome_outputs(result, content, sources, context)
        if heat and result.outcome is not None:  # the SR again, its prediction groups naming their heat maps
            unlinked = outcome_groups(result.outcome, linked=False)
            linked = dict(zip([g.label for g in unlinked], outcome_groups(result.outcome, linked=True), strict=True))
            content = replace(content, groups=tuple(linked.get(g.label, g) for g in content.groups))
            by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
            used = [by_uid[s.sop_instance_uid] for s in content.sources]
            outputs[0] = build_sr(content, used, context, images=heat,
                                  templates=load_templates(context.templates_dir))
            outputs.extend(heat.values())
        return outputs

    def summary(self, result: CmrLgeResult) -> dict[str, Any]:
        """LGE burden, method, remote region, segments, pattern; LV function."""
        return cmr_summary(result)


PIPELINE = CmrLgePipeline()
registry.register(PIPELINE)
