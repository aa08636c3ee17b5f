"""SPECT myocardial perfusion (MPI) pipeline: NM reconstructions to polar maps, scores and function.

Series rules (a study is *complete* when both required rules match):

* ``stress`` (required): NM, Image Type ``RECON TOMO`` or ``RECON GATED TOMO``,
  acquisition state ``stress`` (Series Description or Protocol Name naming a
  stress protocol: stress, exercise, adenosine, regadenoson, dipyridamole,
  dobutamine ...);
* ``rest`` (required): the same with state ``rest`` (rest, redistribution, delayed).

The state is :func:`node.imaging.states.acquisition_state`, the same rule
:mod:`node.imaging.nm` loads with, so a study that loads as stress and rest is
also complete for routing.

Rest is required so that a study is not reported before its rest series
arrives; a stress-only protocol (or a rest series that never comes) is
processed when the node's completeness rules say so (``quiet_period_s`` /
``force_deadline_s`` with ``force_action = "process"``, or ``cardionode
complete STUDY``): :meth:`SpectMpiPipeline.analyse` runs on whatever states are
present and says in the notes what is missing. Radiopharmaceutical codes are
not required (the tracer, when coded, selects the normal limits).

Steps: ``analyse`` (load NM with :mod:`node.imaging.nm`, locate the LV,
reorient transaxial input to short axis, sample polar maps, per-gate maps,
function, phase, scores/TPD), ``predict`` (:mod:`node.ai` models when their
bundles load), ``report`` (:func:`node.results.build_outputs`).

Options (``[pipelines.spect_mpi]``, :class:`SpectMpiOptions`): ``normal_limits_version``
(the normal limits the scores use; newest by default) and ``models`` (run the
deep-learning models in ``predict``; on by default).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeGuard, cast

import numpy as np
from pydantic import Field, field_validator
from pydicom import Dataset

from node.imaging.errors import UnusableSeriesError
from node.imaging.nm import NMReconstruction, group_nm_reconstructions
from node.imaging.radiopharmaceuticals import TRACERS
from node.imaging.volume import Volume
from node.pipelines import registry
from node.pipelines.base import Pipeline, SeriesRule, source_header
from node.pipelines.clinical import ClinicalInputs, clinical_inputs
from node.pipelines.options import PipelineOptions
from node.quant.function import FunctionResult, cavity_volume_ml, measure_function, tid_ratio
from node.quant.lv_frame import LVLocation
from node.quant.normal_limits import available_normal_limits, load_normal_limits
from node.quant.orientation import locate_lv, reorient_to_short_axis
from node.quant.phase import PhaseResult, analyse_phase, prefilter_gated_voxels
from node.quant.polar_map import (
    GatedPolarMaps,
    PolarMap,
    gated_sampling_region,
    grid_rows_z,
    midwall_surface_rows,
    perfusion_polar_map,
    sample_gated_polar_maps,
)
from node.quant.scores import PerfusionScores, StudyScores, score_map, score_study
from node.quant.segments import DEFAULT_GRID, N_SEGMENTS, PolarGrid
from node.results import build_outputs
from node.results.content import (
    Algorithm,
    Curve,
    CurvePlot,
    Evaluation,
    MapImage,
    Measurement,
    MeasurementGroup,
    ReportContent,
    ReportContext,
    SourceInstance,
)
from node.results.tables import format_value
from node.results.templates import load_templates

__all__ = [
    "StateResult",
    "SpectMpiResult",
    "SpectMpiOptions",
    "SpectMpiPipeline",
    "analyse_reconstructions",
    "report_content",
    "PIPELINE",
]

_log = logging.getLogger(__name__)

VERSION = "0.1.0"
NM_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.20"
SHORT_AXIS_VOXEL_MM = 2.0

ALGORITHM = Algorithm(
    name="CardioNode SPECT MPI quantification",
    version=VERSION,
    parameters=(
        "lv_location=threshold+ellipsoid (Germano 1995 style)",
        "sampling=hybrid cylindrical+spherical apex, max count along mid-wall normals",
        "grid=40x72 (4 cap rows, 12 rows per third), 5 deg azimuth",
        "function=count profiles normal to mid-wall, constant myocardial volume",
        "thickening=count-based",
    ),
    training_data="none (analytic method); validated on synthetic phantoms only",
)


@dataclass(frozen=True, eq=False)
class StateResult:
    """Results of one acquisition state (``stress`` or ``rest``). Units in the field docs.

    * ``perfusion.values`` [40, 72] max counts; ``relative_pct`` [40, 72] % of map max;
      ``segment_uptake_pct`` [17] mean relative uptake (%), index 0 = segment 1.
    * ``gated`` per-gate maps [gate, 40, 72] (counts) or None; ``function`` volumes (mL),
      LVEF (%), wall motion (mm) and thickening (%) maps, or None when ungated;
      ``phase`` (:class:`~node.quant.phase.PhaseResult`: phase map in degrees, statistics) or None.
    * ``scores`` (:class:`~node.quant.scores.PerfusionScores`) or None when scoring was unavailable.
    * ``cavity_volume_ml``: cavity volume of the summed image (mL), used for TID.
    """

    state: str
    series_uid: str
    gated_series_uid: str | None
    orientation: str
    tracer: str | None
    location: LVLocation
    volume: Volume  # the summed reconstruction as received (float32 counts), for the models' segmentation
    short_axis: Volume  # summed volume in short-axis orientation (float32 counts; 2 mm voxels when reoriented)
    perfusion: PolarMap
    relative_pct: np.ndarray
    segment_uptake_pct: np.ndarray
    gated: GatedPolarMaps | None
    function: FunctionResult | None
    phase: PhaseResult | None
    scores: PerfusionScores | None
    cavity_volume_ml: float
    timings_s: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class SpectMpiResult:
    """Everything ``analyse`` (and ``predict``) found for one study; every field annotated (the queue
    stores it with :mod:`node.queue.codec`, whose allow-list these annotations make).

    ``age`` years, ``sex`` "M"/"F"/None, ``tracer`` key; ``tid_ratio`` stress/rest
    cavity volume (1); ``study_scores`` :class:`~node.quant.scores.StudyScores` (SSS/SRS/SDS, TPD %);
    ``predictions`` the ``(groups, images, notes)`` of :mod:`node.ai` (empty when
    no model ran); ``notes`` lines for the report (QC, missing series, disagreements).
    """

    study_instance_uid: str
    sources: tuple[SourceInstance, ...]
    age: float | None
    sex: str | None
    tracer: str | None
    accession_number: str
    stress: StateResult | None
    rest: StateResult | None
    study_scores: StudyScores | None
    tid_ratio: float | None
    notes: tuple[str, ...] = ()
    predictions: tuple[tuple[MeasurementGroup, ...], tuple[MapImage, ...], tuple[str, ...]] = ((), (), ())
    timings_s: dict[str, float] = field(default_factory=dict)
    source_headers: tuple[Dataset, ...] = ()  # headers (no pixel data) of the source instances, for report()
    clinical: ClinicalInputs = field(default_factory=ClinicalInputs)  # images' and worklist's facts (analyse)

    @property
    def states(self) -> tuple[StateResult, ...]:
        return tuple(s for s in (self.stress, self.rest) if s is not None)


# --------------------------------------------------------------------------- analysis


def _choose(recons: list[NMReconstruction], state: str) -> tuple[NMReconstruction | None, NMReconstruction | None]:
    """(summed/ungated reconstruction, gated reconstruction) of ``state``."""
    of_state = [r for r in recons if r.state == state]
    gated = next((r for r in of_state if r.gates is not None), None)
    ungated = next((r for r in of_state if r.gates is None), None)
    return ungated or gated, gated


def _analyse_state(
    state: str,
    summed: NMReconstruction,
    gated: NMReconstruction | None,
    sex: str | None,
    grid: PolarGrid,
    notes: list[str],
    normal_limits_version: int | None = None,
) -> StateResult:
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    short_axis = summed.orientation == "short_axis"
    location = locate_lv(summed.volume, short_axis=short_axis)
    timings["locate"] = time.perf_counter() - t0
    notes.extend(f"{state}: {n}" for n in location.notes)

    t0 = time.perf_counter()
    # Short-axis view of the summed volume (kept for display and models). Polar maps and function
    # sample the reconstructions themselves along the LV frame (one interpolation, not two).
    if short_axis:
        sa_view = summed.volume
    else:
        sa_view = reorient_to_short_axis(summed.volume, location, SHORT_AXIS_VOXEL_MM)
    sa_view = Volume(np.asarray(sa_view.voxels, dtype=np.float32), sa_view.affine)
    timings["reorient"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    source = summed.volume
    source_gated = gated.gates if gated is not None else None
    # one mid-wall surface of the summed reconstruction for the perfusion map and the per-gate maps
    surface = midwall_surface_rows(source, location, grid_rows_z(location, grid), grid.n_psi)
    perfusion, _ = perfusion_polar_map(source, location, grid, surface=surface)
    gated_maps = None
    if source_gated is not None:
        # per-gate maps for phase analysis and ED/ES display: gates prefiltered (3D Gaussian,
        # node.quant.phase.PHASE_PREFILTER_SIGMA_MM) because single-gate counts are too noisy
        # for the first harmonic
        # (only the voxels the per-gate sampling reads are filtered: the same values, a fifth of the CPU)
        region = gated_sampling_region(source_gated, location, surface)
        filtered = source_gated.with_voxels(
            prefilter_gated_voxels(source_gated.voxels, source_gated.spacing_mm, region=region))
        gated_maps = sample_gated_polar_maps(filtered, location, grid, surface=surface)
    timings["polar_maps"] = time.perf_counter() - t0

    function = phase = None
    t0 = time.perf_counter()
    if source_gated is not None:
        function = measure_function(
            source_gated, location, grid, count_maps=gated_maps.values if gated_maps is not None else None
        )
        notes.extend(f"{state}: {n}" for n in function.notes)
        cavity = float(np.mean(function.gate_volumes_ml))
    else:
        cavity = cavity_volume_ml(source, location, grid)
    timings["function"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    if gated_maps is not None:
        phase = analyse_phase(gated_maps.values, gated_maps.weights)
    scores = None
    try:
        limits = load_normal_limits(summed.tracer, sex, None if normal_limits_version is None else str(normal_limits_version))
        scores = score_map(perfusion.values, perfusion.weights, limits, grid=grid)
    except (FileNotFoundError, KeyError, ValueError) as exc:  # no limits for this tracer/sex, or unusable map
        notes.append(f"{state}: perfusion scoring unavailable ({exc})")
    timings["scores_phase"] = time.perf_counter() - t0
    return StateResult(
        state=state,
        series_uid=summed.series_uid,
        gated_series_uid=gated.series_uid if gated is not None else None,
        orientation=summed.orientation,
        tracer=summed.tracer,
        location=location,
        volume=Volume(np.asarray(summed.volume.voxels, dtype=np.float32), summed.volume.affine),
        short_axis=sa_view,
        perfusion=perfusion,
        relative_pct=perfusion.relative_pct(),
        segment_uptake_pct=perfusion.segment_uptake_pct(),
        gated=gated_maps,
        function=function,
        phase=phase,
        scores=scores,
        cavity_volume_ml=cavity,
        timings_s=timings,
    )


def analyse_reconstructions(
    recons: list[NMReconstruction],
    sources: tuple[SourceInstance, ...] = (),
    accession_number: str = "",
    grid: PolarGrid = DEFAULT_GRID,
    extra_notes: Sequence[str] = (),
    normal_limits_version: int | None = None,
) -> SpectMpiResult:
    """Run the quantification on loaded NM reconstructions (the part of ``analyse`` after DICOM).

    ``normal_limits_version``: the normal limits the perfusion scores use; None = the newest.
    """
    notes = list(extra_notes)
    if not recons:
        raise UnusableSeriesError("no usable NM reconstruction (RECON TOMO / RECON GATED TOMO) in the study", "ImageType")
    unknown = [r for r in recons if r.state == "unknown"]
    if unknown and not any(r.state == "stress" for r in recons):
        notes.append("no series described as stress; a series of unknown state is analysed as stress")
        recons = [replace(r, state="stress") if r.state == "unknown" else r for r in recons]
    first = recons[0]
    sex = next((r.sex for r in recons if r.sex), None)
    age = next((r.age for r in recons if r.age is not None), None)
    tracer = next((r.tracer for r in recons if r.tracer), None)
    results: dict[str, StateResult | None] = {}
    for state in ("stress", "rest"):
        summed, gated = _choose(recons, state)
        if summed is None:
            notes.append(f"no {state} series: {state} results omitted")
            results[state] = None
            continue
        results[state] = _analyse_state(state, summed, gated, sex, grid, notes, normal_limits_version)
    stress, rest = results["stress"], results["rest"]
    study_scores = None
    if stress is not None and stress.scores is not None:
        study_scores = score_study(stress.scores, rest.scores if rest is not None else None)
    tid = None
    if stress is not None and rest is not None and rest.cavity_volume_ml > 0:
        tid = tid_ratio(stress.cavity_volume_ml, rest.cavity_volume_ml)
    timings = {f"{s.state}.{k}": v for s in (stress, rest) if s is not None for k, v in s.timings_s.items()}
    return SpectMpiResult(
        study_instance_uid=first.study_uid,
        sources=sources,
        age=age,
        sex=sex,
        tracer=tracer,
        accession_number=accession_number,
        stress=stress,
        rest=rest,
        study_scores=study_scores,
        tid_ratio=tid,
        notes=tuple(notes),
        timings_s=timings,
    )


# --------------------------------------------------------------------------- report content


def _finite(value: float | None) -> TypeGuard[float]:
    return value is not None and bool(np.isfinite(value))


def _segment_groups(
    label: str, state: str, uptake_pct: np.ndarray, scores: np.ndarray | None
) -> list[MeasurementGroup]:
    """One group per AHA segment: relative uptake (%) and, when scored, the segment score."""
    groups = []
    for k in range(N_SEGMENTS):
        measurements = [Measurement("relative_uptake", round(float(uptake_pct[k]), 2), "%")]
        if scores is not None:
            measurements.append(Measurement("segment_score", float(scores[k]), "{score}"))
        groups.append(
            MeasurementGroup(
                label=f"{label} AHA segment {k + 1}",
                finding="myocardial_perfusion",
                site=f"aha_{k + 1}",
                state=state,
                algorithm=ALGORITHM,
                measurements=tuple(measurements),
            )
        )
    return groups


def _state_segment_groups(state: StateResult) -> list[MeasurementGroup]:
    scores = state.scores.segment_scores if state.scores is not None else None
    return _segment_groups(f"{state.state.capitalize()} perfusion", state.state, state.segment_uptake_pct, scores)


def _difference_groups(stress: StateResult, rest: StateResult) -> list[MeasurementGroup]:
    """Per segment: rest minus stress relative uptake and stress minus rest score (both positive for ischemia)."""
    diff_scores = None
    if stress.scores is not None and rest.scores is not None:
        diff_scores = np.asarray(stress.scores.segment_scores) - np.asarray(rest.scores.segment_scores)
    uptake = np.asarray(rest.segment_uptake_pct) - np.asarray(stress.segment_uptake_pct)
    return _segment_groups("Stress-rest difference", "difference", uptake, diff_scores)


def _global_groups(result: SpectMpiResult) -> list[MeasurementGroup]:
    groups = []
    for state in result.states:
        f = state.function
        if f is not None:
            groups.append(
                MeasurementGroup(
                    label=f"{state.state.capitalize()} gated LV function",
                    finding="lv_function",
                    site="left_ventricle",
                    state=state.state,
                    algorithm=ALGORITHM,
                    measurements=_function_measurements(f),
                )
            )
        if state.phase is not None:
            st = state.phase.statistics
            groups.append(
                MeasurementGroup(
                    label=f"{state.state.capitalize()} phase analysis",
                    finding="dyssynchrony",
                    site="left_ventricle",
                    state=state.state,
                    algorithm=ALGORITHM,
                    measurements=tuple(
                        Measurement(key, round(float(value), 3), unit)
                        for key, value, unit in (
                            ("phase_peak", st.peak_phase_deg, "deg"),
                            ("phase_sd", st.psd_deg, "deg"),
                            ("phase_bandwidth", st.bandwidth_deg, "deg"),
                            ("phase_skewness", st.skewness, "1"),
                            ("phase_kurtosis", st.kurtosis, "1"),
                            ("phase_entropy", st.entropy, "1"),
                        )
                        if _finite(value)
                    ),
                )
            )
    perfusion = []
    s = result.study_scores
    if s is not None:
        perfusion.append(Measurement("sss", float(s.sss), "{score}"))
        if s.srs is not None:
            perfusion.append(Measurement("srs", float(s.srs), "{score}"))
        if s.sds is not None:
            perfusion.append(Measurement("sds", float(s.sds), "{score}"))
        perfusion.append(Measurement("tpd_stress", round(float(s.stress_tpd_pct), 2), "%"))
        if _finite(s.rest_tpd_pct):
            perfusion.append(Measurement("tpd_rest", round(float(s.rest_tpd_pct), 2), "%"))
        if _finite(s.ischemic_tpd_pct):
            perfusion.append(Measurement("tpd_ischemic", round(float(s.ischemic_tpd_pct), 2), "%"))
    if _finite(result.tid_ratio):
        perfusion.append(Measurement("tid_ratio", round(float(result.tid_ratio), 3), "1"))
    if perfusion:
        evaluations: tuple[Evaluation, ...] = ()
        if s is not None:
            verdict = "abnormal" if s.sss >= 4 else "normal"
            evaluations = (Evaluation("perfusion_category", verdict),)
        groups.append(
            MeasurementGroup(
                label="Summed perfusion scores",
                finding="myocardial_perfusion",
                site="left_ventricle",
                state=None,
                algorithm=ALGORITHM,
                measurements=tuple(perfusion),
                evaluations=evaluations,
            )
        )
    return groups


def _map(key: str, title: str, values: np.ndarray, unit: str, vrange: tuple[float, float], grid: PolarGrid,
         colormap: str = "turbo", segment_values: np.ndarray | None = None, role: str | None = None,
         subtitle: str = "", quantity: str | None = None, blackout: np.ndarray | None = None,
         muted_rim_rows: int = 0) -> MapImage:
    seg = tuple(round(float(v), 1) for v in segment_values) if segment_values is not None else None
    return MapImage(
        key=key,
        title=title,
        values=np.nan_to_num(np.asarray(values, dtype=float)),
        unit=unit,
        value_range=vrange,
        colormap=colormap,
        segment_values=seg,
        algorithm=ALGORITHM,
        role=role,
        subtitle=subtitle,
        quantity=quantity,
        blackout=blackout,
        muted_rim_rows=muted_rim_rows,
    )


def _tracer_name(result: SpectMpiResult) -> str:
    """The tracer as people name it (``Tc-99m sestamibi``), else the key, else "tracer not coded"."""
    tracer = TRACERS.get(result.tracer or "")
    return tracer.display_name if tracer is not None else (result.tracer or "tracer not coded")


def _limits_name(scores: PerfusionScores | None) -> str:
    """Short name of the normal limits a state was scored with (``normal limits tc99m/M v2, synthetic``)."""
    if scores is None or not scores.limits:
        return "no normal limits"
    name = scores.limits.split(";")[0].split(" (")[0]
    return f"{name}, synthetic" if "SYNTHETIC" in scores.limits else name


#: display: the basal rows whose normal-limits mean uptake (averaged around the ventricle) is below this
#: fraction of its median along the ventricle form the valve-plane rim, drawn pale on the maps
_RIM_FRACTION = 0.8
_LIMITS_NAME = re.compile(r"normal limits (\S+)/(\S+) v(\S+) ")


def _rim_rows(result: SpectMpiResult) -> int:
    """How many outermost (basal) polar-map rows the normal limits of the study call the valve-plane rim.

    Normal uptake itself falls there (partial volume at the valve plane), so drawn at full colour
    the rim of a normal map reads as a basal defect. 0 when no state was scored with normal limits.
    """
    for state in result.states:
        match = _LIMITS_NAME.match(state.scores.limits) if state.scores is not None else None
        if match is None:
            continue
        try:
            limits = load_normal_limits(match.group(1), match.group(2), match.group(3))
        except (FileNotFoundError, KeyError, ValueError):
            continue
        profile = np.asarray(limits.mean, dtype=float).mean(axis=1)  # [n_u], apex to base
        low = profile < _RIM_FRACTION * float(np.median(profile))
        rows = 0
        while rows < len(low) - 1 and low[len(low) - 1 - rows]:
            rows += 1
        return rows
    return 0


#: phase-map display: margin (deg) around the central 98 % of the phases, and the narrowest span shown
_PHASE_MARGIN_DEG = 20.0
_PHASE_MIN_SPAN_DEG = 90.0


def _phase_range(phase: PhaseResult) -> tuple[float, float]:
    """Display range (deg) fitted to the phases: the weighted 1st-99th percentiles widened by
    ``_PHASE_MARGIN_DEG``, at least ``_PHASE_MIN_SPAN_DEG`` wide, on 10-degree steps within 0-360."""
    values = np.asarray(phase.phase_map, dtype=float).ravel()
    weights = np.asarray(phase.weights, dtype=float).ravel()
    keep = np.isfinite(values) & np.isfinite(weights) & (weights > 0)
    if not keep.any():
        return 0.0, 360.0
    order = np.argsort(values[keep])
    cum = np.cumsum(weights[keep][order])
    cum /= cum[-1]
    lo, hi = (float(np.interp(q, cum, values[keep][order])) for q in (0.01, 0.99))
    lo, hi = lo - _PHASE_MARGIN_DEG, hi + _PHASE_MARGIN_DEG
    if hi - lo < _PHASE_MIN_SPAN_DEG:
        centre = (lo + hi) / 2
        lo, hi = centre - _PHASE_MIN_SPAN_DEG / 2, centre + _PHASE_MIN_SPAN_DEG / 2
    lo, hi = max(0.0, 10.0 * np.floor(lo / 10.0)), min(360.0, 10.0 * np.ceil(hi / 10.0))
    return float(lo), float(hi)


def _images(result: SpectMpiResult, grid: PolarGrid) -> list[MapImage]:
    images = []
    tracer = _tracer_name(result)
    rim = _rim_rows(result)
    for state in result.states:
        images.append(
            _map(f"{state.state}_perfusion", f"{state.state.capitalize()} perfusion (% of max)", state.relative_pct,
                 "%", (0.0, 100.0), grid, segment_values=state.segment_uptake_pct, role="perfusion",
                 subtitle=f"{tracer}, {state.state}; numbers: segment mean uptake, % of max", quantity="relative_uptake",
                 muted_rim_rows=rim)
        )
    if result.stress is not None and result.rest is not None:
        diff = result.rest.relative_pct - result.stress.relative_pct
        images.append(
            _map("defect_difference", "Rest minus stress (% of max)", diff, "%", (-30.0, 30.0), grid,
                 colormap="coolwarm", segment_values=result.rest.segment_uptake_pct - result.stress.segment_uptake_pct,
                 role="perfusion_change", subtitle="positive (red): uptake higher at rest, i.e. stress-induced defect",
                 quantity="relative_uptake")
        )
    for state in result.states:
        if state.scores is None:
            continue
        s = state.scores
        images.append(
            _map(f"{state.state}_extent", f"{state.state.capitalize()} extent: TPD {s.tpd_pct:.1f} % of LV",
                 state.relative_pct, "%", (0.0, 100.0), grid, segment_values=s.segment_scores, role="extent",
                 subtitle=f"black: below {_limits_name(s)}; numbers: segment scores 0-4",
                 quantity="segment_score", blackout=np.asarray(s.abnormal_map, dtype=bool), muted_rim_rows=rim)
        )
    gated_state = next((s for s in (result.rest, result.stress) if s is not None and s.function is not None), None)
    if gated_state is not None:
        f, gated = gated_state.function, gated_state.gated
        if f is None or gated is None:  # the function result is measured on the gated maps
            raise RuntimeError(f"{gated_state.state}: function result without gated polar maps")
        maps = gated.values
        where = f"{tracer}, {gated_state.state} gated"
        images.append(_map("ed_perfusion", f"End-diastole ({gated_state.state}, % of max)",
                           100.0 * maps[f.ed_gate] / max(float(maps[f.ed_gate].max()), 1e-9), "%", (0.0, 100.0), grid,
                           role="function", subtitle=f"{where}, gate {f.ed_gate + 1}", quantity="relative_uptake",
                           muted_rim_rows=rim))
        images.append(_map("es_perfusion", f"End-systole ({gated_state.state}, % of max)",
                           100.0 * maps[f.es_gate] / max(float(maps[f.es_gate].max()), 1e-9), "%", (0.0, 100.0), grid,
                           role="function", subtitle=f"{where}, gate {f.es_gate + 1}", quantity="relative_uptake",
                           muted_rim_rows=rim))
        images.append(_map("thickening", f"Count-based thickening ({gated_state.state})", f.thickening_pct, "%",
                           (0.0, 100.0), grid, colormap="viridis",
                           segment_values=grid.segment_means(f.thickening_pct), role="function",
                           subtitle=f"{where}; numbers: segment mean, % of ED thickness", quantity="thickening"))
        images.append(_map("wall_motion", f"Wall motion ({gated_state.state})", f.wall_motion_mm, "mm",
                           (0.0, 15.0), grid, colormap="viridis", segment_values=grid.segment_means(f.wall_motion_mm),
                           role="function", subtitle=f"{where}; numbers: segment mean, mm", quantity="wall_motion"))
        if gated_state.phase is not None:
            st = gated_state.phase.statistics
            images.append(_map("phase", f"Phase ({gated_state.state})", gated_state.phase.phase_map, "deg",
                               _phase_range(gated_state.phase), grid, colormap="plasma", role="phase",
                               subtitle=f"scale fitted to the data; peak {st.peak_phase_deg:.0f}\u00b0, "
                                        f"SD {st.psd_deg:.1f}\u00b0, bandwidth {st.bandwidth_deg:.0f}\u00b0",
                               quantity="phase_peak"))
    return images


def _function_measurements(f: FunctionResult) -> tuple[Measurement, ...]:
    """The global gated-function measurements of one state, as the SR, tables and titles show them."""
    return (
        Measurement("edv", round(f.edv_ml, 1), "ml"),
        Measurement("esv", round(f.esv_ml, 1), "ml"),
        Measurement("lvef", round(f.lvef_pct, 1), "%"),
        Measurement("stroke_volume", round(f.stroke_volume_ml, 1), "ml"),
        Measurement("wall_motion", round(float(np.mean(f.wall_motion_mm)), 2), "mm"),
        Measurement("thickening", round(float(np.mean(f.thickening_pct)), 1), "%"),
    )


def _function_summary(f: FunctionResult) -> str:
    """"EDV 108 mL, ESV 53 mL, LVEF 51 %": the reported values, formatted as the results table formats them."""
    templates = load_templates()
    shown = {m.quantity: format_value(m.value, templates.quantity(m.quantity, SpectMpiPipeline.name).decimals)
             for m in _function_measurements(f)}
    return f"EDV {shown['edv']} mL, ESV {shown['esv']} mL, LVEF {shown['lvef']} %"


#: bin width (deg) of the phase histogram plot
_PHASE_BIN_DEG = 6.0


def _plots(result: SpectMpiResult) -> list[CurvePlot]:
    """The LV volume curve and the phase histogram of the gated state the function maps show."""
    gated_state = next((s for s in (result.rest, result.stress) if s is not None and s.function is not None), None)
    if gated_state is None or gated_state.function is None:
        return []
    f = gated_state.function
    n = len(f.gate_volumes_ml)
    rr_pct = 100.0 * (np.arange(n) + 0.5) / n  # gate centres, % of the R-R interval
    plots = [CurvePlot(
        key="volume_curve", title=f"LV volume curve ({gated_state.state}): {_function_summary(f)}",
        x_label="Gate centre (% of R-R interval)", y_label="LV cavity volume (mL)",
        curves=(Curve("LV volume", rr_pct, np.asarray(f.measured_gate_volumes_ml, dtype=float), "points"),
                Curve("LV volume fit", rr_pct, np.asarray(f.gate_volumes_ml, dtype=float), "line")),
        role="volume_curve")]
    phase = gated_state.phase
    if phase is not None:
        values = np.asarray(phase.phase_map, dtype=float).ravel()
        weights = np.asarray(phase.weights, dtype=float).ravel()
        keep = np.isfinite(values) & np.isfinite(weights)
        edges = np.arange(0.0, 360.0 + _PHASE_BIN_DEG, _PHASE_BIN_DEG)
        counts, _ = np.histogram(values[keep], bins=edges, weights=weights[keep])
        share = 100.0 * counts / max(float(counts.sum()), 1e-12)
        plots.append(CurvePlot(
            key="phase_histogram", title=f"Phase histogram ({gated_state.state}): bandwidth "
            f"{phase.statistics.bandwidth_deg:.0f} deg, SD {phase.statistics.psd_deg:.1f} deg",
            x_label="Phase (degrees of the R-R interval)", y_label=f"LV area per {_PHASE_BIN_DEG:.0f}\u00b0 bin (%)",
            curves=(Curve("phase histogram", (edges[:-1] + edges[1:]) / 2, share, "line"),), role="phase_histogram"))
    return plots


def _description(result: SpectMpiResult) -> str:
    """The examination in one line: tracer, states, normal limits."""
    states = "/".join(s.state for s in result.states)
    limits = next((_limits_name(s.scores) for s in result.states if s.scores is not None), "no normal limits")
    return f"{_tracer_name(result)} SPECT MPI, {states}; {limits}"


def report_content(result: SpectMpiResult, grid: PolarGrid = DEFAULT_GRID) -> ReportContent:
    """The :class:`ReportContent` of a SPECT MPI result: segment groups per state (stress, rest,
    difference), global LV groups (volumes, LVEF, TID, SSS/SRS/SDS, TPD, phase) and bull's-eye maps."""
    groups: list[MeasurementGroup] = []
    for state in result.states:
        groups.extend(_state_segment_groups(state))
    if result.stress is not None and result.rest is not None:
        groups.extend(_difference_groups(result.stress, result.rest))
    groups.extend(_global_groups(result))
    pred_groups, pred_images, pred_notes = result.predictions
    groups.extend(pred_groups)
    images = _images(result, grid) + list(pred_images)
    algorithms = [ALGORITHM] + list({id(g.algorithm): g.algorithm for g in pred_groups}.values())
    return ReportContent(
        pipeline=SpectMpiPipeline.name,
        pipeline_version=VERSION,
        procedure="nm_myocardial_perfusion",
        study_instance_uid=result.study_instance_uid,
        sources=result.sources,
        groups=tuple(groups),
        images=tuple(images),
        algorithms=tuple(algorithms),
        notes=tuple(result.notes) + tuple(pred_notes),
        plots=tuple(_plots(result)),
        description=_description(result),
    )


def spect_summary(result: SpectMpiResult) -> dict[str, Any]:
    """The SPECT details of ``cardionode process``'s summary (``states`` by name, ``tid_ratio``)."""
    states: dict[str, Any] = {}
    for state in result.states:
        loc = state.location
        entry: dict[str, Any] = {
            "series_instance_uid": state.series_uid,
            "orientation": state.orientation,
            "segment_uptake_pct": state.segment_uptake_pct,
            "lv_location": {
                "method": loc.method,
                "apex_mm": loc.frame.apex_mm,
                "long_axis": loc.frame.long_axis,
                "length_mm": loc.length_mm,
                "mid_wall_radius_mm": loc.mid_wall_radius_mm,
            },
            "cavity_volume_ml": state.cavity_volume_ml,
        }
        if state.scores is not None:
            entry["segment_scores"] = state.scores.segment_scores
            entry["tpd_pct"] = state.scores.tpd_pct
        if state.function is not None:
            f = state.function
            entry["function"] = {
                "edv_ml": f.edv_ml, "esv_ml": f.esv_ml, "lvef_pct": f.lvef_pct,
                "stroke_volume_ml": f.stroke_volume_ml, "gate_volumes_ml": f.gate_volumes_ml,
                "measured_gate_volumes_ml": f.measured_gate_volumes_ml,
                "ed_gate": f.ed_gate, "es_gate": f.es_gate,
            }
        if state.phase is not None:
            entry["phase"] = state.phase.statistics.as_dict()
        states[state.state] = entry
    summary: dict[str, Any] = {"states": states} if states else {}
    if result.tid_ratio is not None:
        summary["tid_ratio"] = result.tid_ratio
    return summary


# --------------------------------------------------------------------------- pipeline


def _nm_rule(state: str) -> SeriesRule:
    """The rule of one acquisition state: an NM reconstruction whose state is ``state``."""
    return SeriesRule(
        name=state,
        modalities=frozenset({"NM"}),
        image_type_values=frozenset({"RECON TOMO", "RECON GATED TOMO"}),
        states=frozenset({state}),
        required=True,
    )


class SpectMpiOptions(PipelineOptions):
    """``[pipelines.spect_mpi]``: the SPECT MPI pipeline's options; the defaults give its standard results."""

    normal_limits_version: int | None = Field(
        default=None,
        ge=1,
        description="version of the synthetic normal limits the perfusion scores use "
        "(node/quant/data/normal_limits.json); unset: the newest",
    )
    models: bool = Field(
        default=True,
        description="run the deep-learning models in the predict step (AI segmentation cross-check, CAD, "
        "tracer and CRT predictions); false: the report holds the quantification only",
    )

    @field_validator("normal_limits_version")
    @classmethod
    def _shipped_version(cls, version: int | None) -> int | None:
        if version is not None:
            shipped = sorted({int(entry["version"]) for entry in available_normal_limits()})
            if version not in shipped:
                raise ValueError(f"no normal limits of version {version} (shipped: {', '.join(map(str, shipped))})")
        return version


class SpectMpiPipeline(Pipeline):
    """SPECT myocardial perfusion: stress and rest NM reconstructions (gated when present).

    Options: :class:`SpectMpiOptions`.
    """

    name = "spect_mpi"
    version = VERSION
    title = "SPECT myocardial perfusion (polar maps, 17-segment scores, TPD, gated function, phase)"
    series_rules = (_nm_rule("stress"), _nm_rule("rest"))
    options_model = SpectMpiOptions
    result_type = SpectMpiResult
    pairs_across_studies = True

    def analyse(self, instances: Sequence[Dataset]) -> SpectMpiResult:
        """Load the NM reconstructions among ``instances`` and quantify them (cpu step).

        The series are taken in order of Series Instance UID (instances of one series in the
        order given), as the ledger hands them to the node's workers, so the results and
        their UIDs do not depend on the order in which ``cardionode process`` reads files.

        A run paired with the earlier study of a two-day protocol (``run_config.pairing``,
        :mod:`node.workflow.pairing`) gets that study's series too: the run's own study's
        instances come first (its patient and study modules are the outputs'), the results
        belong to the run's study, and the notes say which states came from the study of which date.
        """
        pairing = self.run_config.pairing
        own = str(pairing.get("study_uid", "") or "")
        instances = sorted(instances, key=lambda ds: (bool(own) and str(ds.get("StudyInstanceUID", "")) != own,
                                                      str(ds.get("SeriesInstanceUID", ""))))
        recons, rejected = group_nm_reconstructions(instances)
        notes = [f"series {r.series_uid[-12:]} not used: {r.reason}" for r in rejected]
        earlier = str(pairing.get("earlier_study_uid", "") or "")
        borrowed = sorted({r.state for r in recons if earlier and r.study_uid == earlier})
        if borrowed and any(r.study_uid == own for r in recons):
            notes.append(f"{'/'.join(borrowed)} from the study of {pairing.get('date') or 'an earlier day'} "
                         "(two-day protocol, paired by the modality worklist)")
        else:
            own = ""
        if not recons:
            why = "; ".join(notes) or "no NM instance"
            raise UnusableSeriesError(f"no usable NM reconstruction: {why}", "ImageType")
        used = {uid for r in recons for uid in r.sop_instance_uids}
        sources = tuple(
            SourceInstance(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPClassUID), str(ds.SOPInstanceUID))
            for ds in instances
            if str(ds.get("SOPInstanceUID", "")) in used
        )
        accession = next((str(ds.get("AccessionNumber", "") or "") for ds in instances if ds.get("AccessionNumber")), "")
        options = cast(SpectMpiOptions, self.options)
        # sex (normal limits) and age (models) from the worklist when the images do not say them
        clinical = clinical_inputs(instances, self.run_config.clinical)
        recons = [replace(r, sex=r.sex or (clinical.sex if clinical.sex in ("M", "F") else None),
                          age=r.age if r.age is not None else clinical.age_years) for r in recons]
        if clinical.from_worklist:
            notes.append(clinical.words())
        result = analyse_reconstructions(
            recons, sources, accession, extra_notes=notes, normal_limits_version=options.normal_limits_version
        )
        if own:  # the results of a paired run belong to the run's own (the later) study
            result = replace(result, study_instance_uid=own)
        headers = tuple(source_header(ds) for ds in instances if str(ds.get("SOPInstanceUID", "")) in used)
        return replace(result, source_headers=headers, clinical=clinical)

    def predict(self, result: SpectMpiResult) -> SpectMpiResult:
        """Run the :mod:`node.ai` models when their bundles load (gpu step).

        1. The AI myocardium segmentation is passed to :func:`locate_lv` for each
           state and compared with the classical localisation; a disagreement
           (long axes more than 10 degrees or centres more than 10 mm apart) is
           reported in the notes. The classical result stays the one quantified.
        2. ``node.ai.predict_spect`` adds prediction groups, Grad-CAM maps and notes.

        Bundles come from ``run_config.models_dir`` (None: those shipped with the
        package), the CRT model's clinical values from ``run_config.clinical_csv``.
        With the option ``models = false`` the result is returned unchanged.

        Missing or unloadable model bundles give notes, never a failed study. The
        models are imported here, not at module level, so that processes that only
        route studies (the listener, ``cardionode status``) never load torch.
        """
        if not cast(SpectMpiOptions, self.options).models:
            return result
        from node.ai import predict_spect

        config = self.run_config
        notes = list(result.notes)
        notes.extend(_segmentation_cross_check(result, config.models_dir))
        try:
            groups, images, ai_notes = predict_spect(result, config.models_dir, clinical_csv=config.clinical_csv)
        except (FileNotFoundError, RuntimeError) as exc:  # bundle absent or not loadable on this installation
            notes.append(f"deep-learning predictions not run: {type(exc).__name__}: {str(exc)[:160]}")
            return replace(result, notes=tuple(notes))
        return replace(result, notes=tuple(notes), predictions=(tuple(groups), tuple(images), tuple(ai_notes)))

    def report_content(self, result: SpectMpiResult) -> ReportContent:
        """:func:`report_content` of ``result``; :meth:`Pipeline.report` encodes it with the source headers
        ``analyse`` kept."""
        return report_content(result)

    def report(self, result: SpectMpiResult, context: ReportContext) -> list[Dataset]:
        """The DICOM result objects of :meth:`report_content` (:func:`node.results.build_outputs`); the
        patient and study modules come from the source headers ``analyse`` kept."""
        outputs = build_outputs(self.report_content(result), list(result.source_headers), context)
        _patient_size_and_weight(outputs, result.clinical)
        return outputs

    def summary(self, result: SpectMpiResult) -> dict[str, Any]:
        """Per state: series, orientation, segment uptake, LV location, cavity volume, scores, function and
        phase; the TID ratio."""
        return spect_summary(result)


def _patient_size_and_weight(outputs: Sequence[Dataset], clinical: ClinicalInputs) -> None:
    """Write the height (m) and weight (kg) the run took from the worklist into the SR's Patient Study module
    (Patient's Size (0010,1020), Patient's Weight (0010,1030)): the images did not carry them."""
    if not clinical.from_worklist:
        return
    for ds in outputs:
        if str(ds.get("SOPClassUID", "")) != "1.2.840.10008.5.1.4.1.1.88.34":
            continue
        if clinical.height_m is not None:
            ds.PatientSize = f"{clinical.height_m:.2f}"
        if clinical.weight_kg is not None:
            ds.PatientWeight = f"{clinical.weight_kg:.1f}"


def _segmentation_cross_check(result: SpectMpiResult, models_dir: Path | None = None) -> list[str]:
    """Locate the LV again with the AI myocardium mask; words about (dis)agreement per state.

    ``models_dir``: folder of the bundles (None: those shipped with the package).
    """
    from node.ai.bundles import load_bundle  # torch: only in the predict step
    from node.ai.segmentation import segment_myocardium

    lines: list[str] = []
    for state in result.states:
        try:
            bundle = load_bundle("lv_segmentation", None if models_dir is None else models_dir / "lv_segmentation")
            mask = segment_myocardium(state.volume, bundle)
        except (FileNotFoundError, RuntimeError, ValueError) as exc:
            return lines + [f"AI segmentation not run: {exc}"]
        if not np.any(mask):
            lines.append(f"{state.state}: AI segmentation found no myocardium; classical LV localisation used")
            continue
        try:
            ai = locate_lv(state.volume, myocardium_mask=mask, short_axis=state.orientation == "short_axis")
        except ValueError as exc:  # LVNotFoundError included
            lines.append(f"{state.state}: LV localisation from the AI mask failed ({exc}); classical result used")
            continue
        classical = state.location
        cos = float(np.clip(ai.frame.long_axis @ classical.frame.long_axis, -1.0, 1.0))
        angle = float(np.degrees(np.arccos(cos)))
        shift = float(np.linalg.norm(ai.centre_mm - classical.centre_mm))
        verdict = "disagrees with" if angle > 10.0 or shift > 10.0 else "agrees with"
        lines.append(
            f"{state.state}: AI segmentation {verdict} the classical LV localisation "
            f"(long axes {angle:.1f} deg, centres {shift:.1f} mm apart); classical result quantified"
        )
    return lines



PIPELINE = SpectMpiPipeline()
registry.register(PIPELINE)
