"""PET myocardial blood flow (MBF) and flow reserve (MFR) pipeline: dynamic PET to MBF polar maps and MFR.

Series rules (a study is *complete* when both required rules match):

* ``stress`` (required): PT, PET Image Storage with Series Type (0054,1000) value 1 ``DYNAMIC``
  or Enhanced PET with Image Type value 3 ``DYNAMIC`` (:func:`node.imaging.pet.pet_series_kind`), tracer Rb-82,
  N-13 ammonia or O-15 water (coded in the Radiopharmaceutical Code Sequence, else named in
  Radiopharmaceutical (0018,0031); :func:`node.imaging.dicom_tracer.tracer_of`),
  acquisition state ``stress`` (:mod:`node.imaging.states`: Series Description or Protocol
  Name naming a stress protocol: stress, adenosine, regadenoson, dipyridamole ...);
* ``rest`` (required): the same with state ``rest``.

Rest is required so that a study is not reported before its rest series arrives. A rest-only
(or stress-only) study is processed when the node's completeness rules say so (quiet period,
force deadline, ``cardionode complete STUDY``): :meth:`PetMbfPipeline.analyse` then reports the
state it has, with a note that MFR needs both. Rest and stress in *two* studies (two-day
protocols) are each processed alone; pairing them across studies is the worklist's work
(issue 19).

Steps: ``analyse`` (load each PT series with :func:`node.imaging.pet.load_dynamic_pet`, which
classifies it first (:func:`node.imaging.pet.classify_pet_series`) and refuses what is not a usable
dynamic series with the reason in words; then per state
:func:`node.quant.mbf.analyse_dynamic`: LV location on the summed late frames, input and RV
regions, 17 segment TACs, kinetic fit, polar and voxel MBF maps, quality flags; then
:func:`node.quant.kinetics.flow_reserve`), ``predict`` (gpu queue: the ``pet_mfr`` bundle, the seed
model of impaired flow reserve (Yeung 2022), through :func:`node.ai.pet_mfr.predict_pet`: the probability of
impaired MFR in any segment and per territory with verdicts, a Grad-CAM heat map over the MFR map, research
notes; risk-trait outputs only with ``model_traits``), ``report`` (:func:`node.results.build_outputs`: TID 1500 SR with MBF (DCM
126390) and MFR (DCM 122217) per segment, territory and globally, bull's-eyes, time-activity
curves, a segment table, the voxel MBF as Parametric Maps and the PDF).

Options (``[pipelines.pet_mbf]``, :class:`PetMbfOptions`): ``nh3_model`` (``degrado`` default,
``ucla``), ``impaired_mfr_below`` (2.0), ``rv_spillover`` (septal RV term; on),
``rpp_reference_mmhg_per_min`` (10,000; used only when rest heart rate and systolic pressure are known),
``partial_volume_correction`` (on: the recovery correction of :mod:`node.quant.mbf`, step 2),
``cross_segment_correction`` (on: the 17-segment geometric transfer matrix of :mod:`node.quant.mbf`, step 2b) and
``resolution_fwhm_mm`` (the site's effective resolution; default per tracer, :data:`node.quant.mbf.TYPICAL_FWHM_MM`),
``models`` (run the deep-learning model in ``predict``; on) and ``model_traits`` (add the model's risk-trait
research outputs to the report notes; off).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeGuard, cast

import numpy as np
from pydantic import Field
from pydicom import Dataset

from node.imaging.errors import UnusableSeriesError
from node.imaging.pet import (
    ENHANCED_PET_IMAGE_STORAGE,
    PET_IMAGE_STORAGE,
    DynamicPETSeries,
    load_dynamic_pet,
)
from node.imaging.radiopharmaceuticals import PET_TRACERS
from node.pipelines import registry
from node.pipelines.base import Pipeline, SeriesRule, source_header
from node.pipelines.options import PipelineOptions
from node.quant.kinetics import MFR_REPORTED_DECIMALS, NH3UCLA, FlowReserve, KineticModel, default_model, flow_reserve
from node.quant.mbf import PlacedRegion, QualityFlag, StateMBF, analyse_dynamic, study_flags
from node.quant.segments import DEFAULT_GRID, TERRITORY_SEGMENTS
from node.results import build_outputs
from node.results.content import (
    Algorithm,
    Curve,
    CurvePlot,
    Evaluation,
    MapImage,
    Measurement,
    MeasurementGroup,
    ParametricVolume,
    ReportContent,
    ReportContext,
    SourceInstance,
)
from node.results.outputs import source_datasets

__all__ = [
    "MBF_TRACERS",
    "PetMbfOptions",
    "PetMbfResult",
    "PetMbfPipeline",
    "report_content",
    "report_sources",
    "PIPELINE",
]


VERSION = "0.1.0"

#: tracer keys (node.imaging.radiopharmaceuticals.PET_TRACERS) that have a kinetic model
MBF_TRACERS: frozenset[str] = frozenset({"rb82_chloride", "n13_ammonia", "o15_water"})

#: fixed display scales (reference pet_mbf.md 7.2): MBF 0-4 mL/min/g, MFR 0-4 with the 1.5 and 2.0 lines
MBF_SCALE: tuple[float, float] = (0.0, 4.0)
MFR_SCALE: tuple[float, float] = (0.0, 4.0)
MFR_CONTOURS: tuple[float, ...] = (1.5, 2.0)

_TERRITORY_SITES = {"LAD": "territory_lad", "LCx": "territory_lcx", "RCA": "territory_rca"}


@dataclass(frozen=True, eq=False)
class PetMbfResult:
    """Everything ``analyse`` found for one PET study; every field annotated (the queue stores it
    with :mod:`node.queue.codec`, whose allow-list these annotations make).

    ``rest``/``stress`` (:class:`~node.quant.mbf.StateMBF`) hold MBF in mL/min/g and the curves in
    Bq/mL; ``reserve`` (:class:`~node.quant.kinetics.FlowReserve`) MFR (ratio) when both states were
    analysed. ``flags`` are study-level quality flags (the states carry their own);
    ``parametric_sources`` maps a state to the SOP Instance UIDs of the slices (slice order) of the
    frame its voxel map is drawn on, for the Parametric Map's references. ``model`` names the
    kinetic model of each state. ``notes`` are lines for the report. ``sources`` are the UIDs of every
    instance analysed (the evidence); ``source_headers`` (set by :meth:`PetMbfPipeline.analyse`) are the
    pixel-free headers of only those the report reads individually (:func:`report_sources`). ``predictions``
    are the ``(groups, images, notes)`` of the deep-learning model (:meth:`PetMbfPipeline.predict`; empty when
    it did not run).
    """

    study_instance_uid: str
    sources: tuple[SourceInstance, ...]
    accession_number: str
    tracer: str
    rest: StateMBF | None
    stress: StateMBF | None
    reserve: FlowReserve | None
    flags: tuple[QualityFlag, ...]
    parametric_sources: dict[str, tuple[str, ...]]
    series_uids: dict[str, str]
    heart_rate_per_min: dict[str, float]
    notes: tuple[str, ...] = ()
    timings_s: dict[str, float] = field(default_factory=dict)
    source_headers: tuple[Dataset, ...] = ()
    predictions: tuple[tuple[MeasurementGroup, ...], tuple[MapImage, ...], tuple[str, ...]] = ((), (), ())

    @property
    def states(self) -> tuple[StateMBF, ...]:
        return tuple(s for s in (self.rest, self.stress) if s is not None)

    @property
    def all_flags(self) -> tuple[QualityFlag, ...]:
        """The quality flags of both states and of the study, rest first."""
        return tuple(f for s in self.states for f in s.flags) + self.flags


class PetMbfOptions(PipelineOptions):
    """``[pipelines.pet_mbf]``: the PET MBF pipeline's options; the defaults give its standard results."""

    nh3_model: Literal["degrado", "ucla"] = Field(
        default="degrado",
        description="N-13 ammonia model: 'degrado' (one-tissue, metabolite-corrected, fit to 4 min) or 'ucla' "
        "(two-parameter, fit to 2 min)",
    )
    impaired_mfr_below: float = Field(
        default=2.0, gt=0.0, le=5.0, description="MFR threshold of the 'impaired flow reserve' flags (ratio)"
    )
    rv_spillover: bool = Field(
        default=True,
        description="fit a septal RV spill-over term (segments 2, 3, 8, 9, 14) from the RV region; on by default: "
        "without it the RV blood spilling into the septum of image data leaves those fits unstable "
        "(standard error above 25 %, docs/validation.md, image tier)",
    )
    rpp_reference_mmhg_per_min: float = Field(
        default=10_000.0, gt=0.0,
        description="rate-pressure product of the RPP-corrected rest MBF (mmHg/min); used only when the rest heart "
        "rate and systolic pressure are known",
    )
    partial_volume_correction: bool = Field(
        default=True,
        description="correct the segment TACs for partial volume: the wall's recovery plus the LV-cavity spill-in, "
        "from the wall thickness measured on the late image and resolution_fwhm_mm (node.quant.mbf, step 2)",
    )
    cross_segment_correction: bool = Field(
        default=True,
        description="undo the blur's mixing of neighbouring segments along the wall in the segment TACs before the "
        "fits: geometric transfer matrix of the 17 segments from the wall measured for the partial-volume correction "
        "and resolution_fwhm_mm (node.quant.mbf, step 2b); segment, territory and global values only, not the maps",
    )
    resolution_fwhm_mm: float | None = Field(
        default=None, gt=0.0, le=30.0,
        description="effective resolution of the site's dynamic PET reconstructions (mm FWHM, system + positron "
        "range + filter), a site setting like normal limits; default per tracer "
        "(node.quant.mbf.TYPICAL_FWHM_MM: Rb-82 9, N-13 ammonia 6.5, O-15 water 7.5)",
    )
    models: bool = Field(
        default=True,
        description="run the deep-learning model of impaired flow reserve (bundle pet_mfr) in the predict step: "
        "probabilities of impaired MFR (any segment, per territory) and a Grad-CAM heat map; false: the report holds "
        "the quantification only",
    )
    model_traits: bool = Field(
        default=False,
        description="also report the model's risk-trait heads (sex, diabetes, hypertension, dyslipidaemia, smoking) "
        "as research notes; off by default: trained on planted synthetic traits, not findings about a patient",
    )


def _kinetic_model(tracer: str, options: PetMbfOptions) -> KineticModel:
    if tracer == "n13_ammonia" and options.nh3_model == "ucla":
        return NH3UCLA()
    return default_model(PET_TRACERS[tracer].display_name)



def _heart_rate(ds: Dataset) -> float | None:
    value = ds.get("HeartRate")
    try:
        rate = float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None
    return rate if rate is not None and 20.0 <= rate <= 250.0 else None


@dataclass(frozen=True)
class _Candidate:
    series: DynamicPETSeries
    datasets: list[Dataset]
    coded: bool  # the tracer is coded (Radiopharmaceutical Code Sequence), not only named
    load_s: float  # seconds to classify and load the series


def _candidates(instances: Sequence[Dataset], notes: list[str]) -> dict[str, list[_Candidate]]:
    """The usable dynamic PET series by state; every series not used gets a note with its reason."""
    by_series: dict[str, list[Dataset]] = {}
    for ds in instances:
        if str(ds.get("Modality", "")).upper() == "PT":
            by_series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append(ds)
    found: dict[str, list[_Candidate]] = {}
    for uid, datasets in by_series.items():
        name = str(datasets[0].get("SeriesDescription", "") or "") or uid[-12:]
        t0 = time.perf_counter()
        try:  # the loader classifies first and refuses with the classification's words
            series = load_dynamic_pet(datasets)
        except UnusableSeriesError as exc:
            notes.append(f"series {name} not used: {exc.reason}")
            continue
        if series.tracer not in MBF_TRACERS:
            shown = PET_TRACERS[series.tracer].display_name if series.tracer in PET_TRACERS else "not recognised"
            notes.append(f"series {name} not used: tracer {shown}; blood flow is modelled for Rb-82, N-13 ammonia "
                         "and O-15 water")
            continue
        if series.state not in ("rest", "stress"):
            notes.append(f"series {name} not used: neither Series Description nor Protocol Name says rest or stress")
            continue
        info = datasets[0].get("RadiopharmaceuticalInformationSequence") or []
        coded = bool(info and info[0].get("RadiopharmaceuticalCodeSequence"))
        notes.extend(f"series {name}: {n}" for n in series.notes)
        found.setdefault(series.state, []).append(_Candidate(series, datasets, coded, time.perf_counter() - t0))
    return found


def _choose(candidates: list[_Candidate], state: str, notes: list[str]) -> _Candidate:
    """The series analysed for ``state``: the one with most frames, then the later series UID (deterministic)."""
    ordered = sorted(candidates, key=lambda c: (c.series.n_frames, c.series.series_uid))
    chosen = ordered[-1]
    for other in ordered[:-1]:
        notes.append(f"{state}: series {other.series.series_description or other.series.series_uid[-12:]} not used "
                     f"({other.series.n_frames} frames; {chosen.series.n_frames} in the one analysed)")
    return chosen


def _last_frame_uids(series: DynamicPETSeries) -> tuple[str, ...]:
    """SOP Instance UIDs of the last frame's slices, in slice order (the loader keeps them frame-major)."""
    n_slices = int(series.volume.voxels.shape[1])
    return series.sop_instance_uids[-n_slices:]


def _tracer_code_flag(state: str, tracer: str) -> QualityFlag:
    return QualityFlag(
        code="tracer_code_missing", region="global", state=state,
        text=f"{state}: the radiopharmaceutical is named ({PET_TRACERS[tracer].display_name}) but not coded "
             "(Radiopharmaceutical Code Sequence (0054,0304) absent); the tracer was taken from the text",
    )


def analyse_pet_study(instances: Sequence[Dataset], options: PetMbfOptions | None = None) -> PetMbfResult:
    """Quantify the dynamic PET series among ``instances`` (the ``analyse`` step, without the headers)."""
    options = options or PetMbfOptions()
    instances = sorted(instances, key=lambda ds: str(ds.get("SeriesInstanceUID", "")))
    notes: list[str] = []
    candidates = _candidates(instances, notes)
    if not candidates:
        raise UnusableSeriesError("no usable dynamic PET series (rest or stress, Rb-82, N-13 ammonia or O-15 water): "
                                  + ("; ".join(notes) or "no PT instance"), "SeriesType")
    chosen = {state: _choose(found, state, notes) for state, found in candidates.items()}
    tracers = {c.series.tracer for c in chosen.values()}
    if len(tracers) > 1:
        raise UnusableSeriesError("rest and stress series name different tracers ("
                                  + ", ".join(sorted(str(t) for t in tracers)) + "): flow reserve needs one tracer",
                                  "RadiopharmaceuticalInformationSequence")
    tracer = str(chosen[next(iter(chosen))].series.tracer)
    model = _kinetic_model(tracer, options)
    states: dict[str, StateMBF] = {}
    flags: list[QualityFlag] = []
    timings: dict[str, float] = {}
    for state in ("rest", "stress"):
        candidate = chosen.get(state)
        if candidate is None:
            other = "stress" if state == "rest" else "rest"
            notes.append(f"no {state} series: {state} MBF and the flow reserve are not reported "
                         f"({other} MBF only)")
            continue
        series = candidate.series
        states[state] = analyse_dynamic(series.volume, state=state, model=model,
                                        decay_corrected=series.decay_correction != "NONE",
                                        grid=DEFAULT_GRID, rv_spillover=options.rv_spillover,
                                        fwhm_mm=options.resolution_fwhm_mm,
                                        partial_volume_correction=options.partial_volume_correction,
                                        cross_segment_correction=options.cross_segment_correction)
        timings[f"{state}.load"] = candidate.load_s
        timings.update({f"{state}.{k}": v for k, v in states[state].timings_s.items()})
        if not candidate.coded:
            flags.append(_tracer_code_flag(state, tracer))
    rest, stress = states.get("rest"), states.get("stress")
    heart_rates = {state: rate for state, c in chosen.items() if (rate := _heart_rate(c.datasets[0])) is not None}
    reserve = None
    if rest is not None and stress is not None:
        reserve = flow_reserve(rest.fit, stress.fit, impaired_below=options.impaired_mfr_below,
                               rest_heart_rate_per_min=heart_rates.get("rest"),
                               rpp_reference_mmhg_per_min=options.rpp_reference_mmhg_per_min)
    flags.extend(study_flags(rest, stress))
    # evidence as plain UIDs from the loaded series (series in UID order, images frame-major), no per-instance reads
    sources = tuple(
        SourceInstance(c.series.study_uid, c.series.series_uid, str(c.datasets[0].SOPClassUID), uid)
        for c in sorted(chosen.values(), key=lambda c: c.series.series_uid)
        for uid in dict.fromkeys(c.series.sop_instance_uids)
    )
    accession = next((str(ds.get("AccessionNumber", "") or "") for ds in instances if ds.get("AccessionNumber")), "")
    return PetMbfResult(
        study_instance_uid=str(instances[0].StudyInstanceUID),
        sources=sources,
        accession_number=accession,
        tracer=tracer,
        rest=rest,
        stress=stress,
        reserve=reserve,
        flags=tuple(flags),
        parametric_sources={state: _last_frame_uids(c.series) for state, c in chosen.items()},
        series_uids={state: c.series.series_uid for state, c in chosen.items()},
        heart_rate_per_min=heart_rates,
        notes=tuple(notes),
        timings_s=timings,
    )


# --------------------------------------------------------------------------- report content


def _finite(value: float | None) -> TypeGuard[float]:
    return value is not None and bool(np.isfinite(value))


def _algorithm(result: PetMbfResult) -> Algorithm:
    """The algorithm identification: the pipeline, the kinetic model and every constant it used."""
    state = result.stress or result.rest
    assert state is not None
    constants = tuple(f"{k}={v}" for k, v in sorted(state.fit.constants.items()))
    return Algorithm(
        name="CardioNode PET myocardial blood flow",
        version=VERSION,
        parameters=(f"tracer={PET_TRACERS[result.tracer].display_name}", f"kinetic_model={state.fit.model}",
                    *constants,
                    "input=image-derived LV cavity (basal core, eroded from the wall)",
                    "segments=AHA 17, mean over the wall band of each segment's polar samples",
                    "global=mean of 17 segments; territory=mean of its segments; MFR=stress/rest",
                    "voxel_map=basis functions"),
        training_data="none (kinetic model); validated on synthetic phantoms only",
    )


def _mbf_groups(state: StateMBF, algorithm: Algorithm) -> list[MeasurementGroup]:
    title = state.state.capitalize()
    fit = state.fit
    groups = [
        MeasurementGroup(
            label=f"{title} MBF AHA segment {k + 1}", finding="myocardial_blood_flow", site=f"aha_{k + 1}",
            state=state.state, algorithm=algorithm,
            measurements=(Measurement("mbf", round(float(value), 3), "ml/min/g"),),
        )
        for k, value in enumerate(fit.segment_mbf_ml_per_min_per_g) if _finite(float(value))
    ]
    for territory, site in _TERRITORY_SITES.items():
        value = fit.territory_mbf_ml_per_min_per_g.get(territory)
        if _finite(value):
            groups.append(MeasurementGroup(
                label=f"{title} MBF {territory} territory", finding="myocardial_blood_flow", site=site,
                state=state.state, algorithm=algorithm,
                measurements=(Measurement("mbf", round(float(value), 3), "ml/min/g"),)))
    global_fit = fit.regional_fits.get("global")
    measurements = [Measurement("mbf", round(float(fit.global_mbf_ml_per_min_per_g), 3), "ml/min/g")]
    blood_fraction = global_fit.parameters.get("blood_fraction") if global_fit is not None else None
    if _finite(blood_fraction):
        measurements.append(Measurement("blood_fraction", round(float(blood_fraction), 3), "1"))
    if _finite(fit.global_mbf_ml_per_min_per_g):
        groups.append(MeasurementGroup(
            label=f"{title} MBF global", finding="myocardial_blood_flow", site="left_ventricle", state=state.state,
            algorithm=algorithm, measurements=tuple(measurements)))
    return groups


def _impaired(flag: bool) -> tuple[Evaluation, ...]:
    return (Evaluation("impaired_flow_reserve", "present" if flag else "absent"),)


def _mfr_groups(reserve: FlowReserve, algorithm: Algorithm) -> list[MeasurementGroup]:
    groups = [
        MeasurementGroup(
            label=f"MFR AHA segment {k + 1}", finding="myocardial_flow_reserve", site=f"aha_{k + 1}", state=None,
            algorithm=algorithm, measurements=(Measurement("mfr", round(float(value), MFR_REPORTED_DECIMALS), "{ratio}"),),
            evaluations=_impaired(bool(reserve.segment_impaired[k])),
        )
        for k, value in enumerate(reserve.segment_mfr) if _finite(float(value))
    ]
    for territory, site in _TERRITORY_SITES.items():
        value = reserve.territory_mfr.get(territory)
        if _finite(value):
            groups.append(MeasurementGroup(
                label=f"MFR {territory} territory", finding="myocardial_flow_reserve", site=site, state=None,
                algorithm=algorithm, measurements=(Measurement("mfr", round(float(value), MFR_REPORTED_DECIMALS), "{ratio}"),),
                evaluations=_impaired(bool(reserve.territory_impaired.get(territory, False)))))
    measurements = [Measurement("mfr", round(float(reserve.global_mfr), MFR_REPORTED_DECIMALS), "{ratio}")]
    if _finite(reserve.global_mfr_rpp_corrected):
        measurements.append(Measurement("mfr_rpp_corrected", round(float(reserve.global_mfr_rpp_corrected), MFR_REPORTED_DECIMALS),
                                        "{ratio}"))
    if _finite(reserve.global_mfr):
        groups.append(MeasurementGroup(
            label="MFR global", finding="myocardial_flow_reserve", site="left_ventricle", state=None,
            algorithm=algorithm, measurements=tuple(measurements),
            evaluations=_impaired(bool(reserve.global_impaired))))
    if any(_finite(float(value)) for value in reserve.segment_mfr):
        # the seed study's patient label (Yeung 2022): impaired when any AHA segment's MFR is below the threshold
        groups.append(MeasurementGroup(
            label="MFR impaired in any AHA segment", finding="myocardial_flow_reserve", site="left_ventricle",
            state=None, algorithm=algorithm, evaluations=_impaired(bool(reserve.any_segment_impaired))))
    return groups


def _haemodynamic_groups(result: PetMbfResult, algorithm: Algorithm) -> list[MeasurementGroup]:
    return [
        MeasurementGroup(label=f"{state.capitalize()} haemodynamics", finding="haemodynamics", site="heart",
                         state=state, algorithm=algorithm,
                         measurements=(Measurement("heart_rate", round(rate, 1), "/min"),))
        for state, rate in sorted(result.heart_rate_per_min.items())
    ]


def _flag_groups(flags: Sequence[QualityFlag], algorithm: Algorithm) -> list[MeasurementGroup]:
    """One group per quality flag: the flag as a coded finding at its region (a flagged value is still reported)."""
    groups = []
    for flag in flags:
        if flag.region.isdigit():
            site = f"aha_{flag.region}"
        else:
            site = _TERRITORY_SITES.get(flag.region, "left_ventricle")
        where = f"segment {flag.region}" if flag.region.isdigit() else flag.region
        groups.append(MeasurementGroup(
            label=f"Quality flag {flag.code} ({flag.state or 'study'}, {where})"[:64], finding="mbf_quality", site=site,
            state=flag.state, algorithm=algorithm, evaluations=(Evaluation("quality_flag", flag.code),)))
    return groups


def _images(result: PetMbfResult, algorithm: Algorithm) -> list[MapImage]:
    images = []
    for state in (result.stress, result.rest):
        if state is None:
            continue
        images.append(MapImage(
            key=f"{state.state}_mbf", title=f"{state.state.capitalize()} MBF (mL/min/g)",
            values=np.nan_to_num(np.asarray(state.polar_mbf_ml_per_min_per_g, dtype=float)), unit="ml/min/g",
            value_range=MBF_SCALE, colormap="turbo",
            segment_values=tuple(round(float(v), 2) for v in state.fit.segment_mbf_ml_per_min_per_g),
            algorithm=algorithm, role="perfusion", quantity="mbf",
            subtitle=f"{PET_TRACERS[result.tracer].display_name}, {state.state}, {state.fit.model}; "
                     "numbers: segment MBF, mL/min/g"))
    if result.rest is not None and result.stress is not None and result.reserve is not None:
        rest_map = np.asarray(result.rest.polar_mbf_ml_per_min_per_g, dtype=float)
        stress_map = np.asarray(result.stress.polar_mbf_ml_per_min_per_g, dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            mfr = np.where(rest_map > 0.05, stress_map / rest_map, 0.0)
        images.append(MapImage(
            key="mfr", title="Myocardial flow reserve (stress/rest)", values=np.nan_to_num(mfr), unit="{ratio}",
            value_range=MFR_SCALE, colormap="turbo",
            segment_values=tuple(round(float(v), 2) for v in result.reserve.segment_mfr),
            algorithm=algorithm, contour_levels=MFR_CONTOURS, role="perfusion_change", quantity="mfr",
            subtitle="stress MBF / rest MBF; numbers: segment MFR"))
    return images


def _plots(result: PetMbfResult) -> list[CurvePlot]:
    plots = []
    for state in result.states:
        t = state.schedule.mid_s
        curves = [Curve("LV blood (input)", t, state.blood_bq_per_ml / 1000.0, "points")]
        if state.rv_bq_per_ml is not None:
            curves.append(Curve("RV blood", t, state.rv_bq_per_ml / 1000.0, "points"))
        for territory in TERRITORY_SEGMENTS:
            if territory in state.territory_tacs_bq_per_ml:
                curves.append(Curve(territory, t, state.territory_tacs_bq_per_ml[territory] / 1000.0, "points"))
            if territory in state.fitted_territory_tacs_bq_per_ml:
                curves.append(Curve(f"{territory} fit", t, state.fitted_territory_tacs_bq_per_ml[territory] / 1000.0,
                                    "line"))
        plots.append(CurvePlot(key=f"{state.state}_tac", title=f"{state.state.capitalize()} time-activity curves "
                               f"({state.fit.model})", x_label="Time after injection (s)",
                               y_label="Activity concentration (kBq/mL)", curves=tuple(curves), role="time_activity"))
    return plots


def _parametric_maps(result: PetMbfResult, algorithm: Algorithm) -> list[ParametricVolume]:
    return [
        ParametricVolume(
            key=f"{state.state}_mbf_voxels", title=f"{state.state.capitalize()} MBF (voxel-wise)", quantity="mbf",
            unit="ml/min/g", state=state.state,
            values=np.nan_to_num(np.asarray(state.voxel_mbf_ml_per_min_per_g, dtype=np.float32)),
            source_sop_instance_uids=result.parametric_sources[state.state], algorithm=algorithm)
        for state in result.states if state.state in result.parametric_sources
    ]


def _procedure(result: PetMbfResult) -> str:
    """The procedure key: rest and stress (DCM 122793), or the one state analysed (122791 / 122792)."""
    if len(result.states) == 2:
        return "pet_myocardial_perfusion"
    return f"pet_myocardial_perfusion_{result.states[0].state}"


def report_content(result: PetMbfResult) -> ReportContent:
    """The :class:`ReportContent` of a PET MBF result: MBF per segment, territory and globally per state,
    MFR with impaired flags, haemodynamics, quality flags, bull's-eyes, time-activity curves and voxel maps."""
    algorithm = _algorithm(result)
    groups: list[MeasurementGroup] = []
    for state in result.states:
        groups.extend(_mbf_groups(state, algorithm))
    if result.reserve is not None:
        groups.extend(_mfr_groups(result.reserve, algorithm))
    groups.extend(_haemodynamic_groups(result, algorithm))
    flags = result.all_flags
    groups.extend(_flag_groups(flags, algorithm))
    pred_groups, pred_images, pred_notes = result.predictions
    groups.extend(pred_groups)
    algorithms = [algorithm] + list({id(g.algorithm): g.algorithm for g in pred_groups}.values())
    flag_notes = tuple(f"quality flag: {flag.text}" for flag in flags)
    return ReportContent(
        pipeline=PetMbfPipeline.name,
        pipeline_version=VERSION,
        procedure=_procedure(result),
        study_instance_uid=result.study_instance_uid,
        sources=result.sources,
        groups=tuple(groups),
        images=tuple(_images(result, algorithm)) + tuple(pred_images),
        algorithms=tuple(algorithms),
        notes=flag_notes + tuple(result.notes) + tuple(pred_notes),
        plots=tuple(_plots(result)),
        parametric_maps=tuple(_parametric_maps(result, algorithm)),
        description=f"{PET_TRACERS[result.tracer].display_name} PET MBF, {'/'.join(s.state for s in result.states)} "
                    f"dynamic; kinetic model {result.states[0].fit.model}",
    )


def _region(region: PlacedRegion | None) -> dict[str, Any] | None:
    if region is None:
        return None
    return {"centre_mm": region.centre_mm, "n_voxels": region.n_voxels, "volume_ml": region.volume_ml,
            "distance_to_wall_mm": region.distance_to_wall_mm}


def pet_summary(result: PetMbfResult) -> dict[str, Any]:
    """The PET details of ``cardionode process``'s summary (``states`` by name, ``flow_reserve``, ``flags``)."""
    states: dict[str, Any] = {}
    for state in result.states:
        loc = state.location
        states[state.state] = {
            "series_instance_uid": result.series_uids.get(state.state, ""),
            "tracer": state.tracer,
            "kinetic_model": state.fit.model,
            "frame_start_s": state.schedule.start_s,
            "frame_duration_s": state.schedule.duration_s,
            "lv_location": {"method": loc.method, "apex_mm": loc.frame.apex_mm, "long_axis": loc.frame.long_axis,
                            "length_mm": loc.length_mm, "mid_wall_radius_mm": loc.mid_wall_radius_mm},
            "input_region": _region(state.input_region),
            "rv_region": _region(state.rv_region),
            "motion_mm": state.motion_mm,
            "global_mbf_ml_per_min_per_g": state.fit.global_mbf_ml_per_min_per_g,
            "territory_mbf_ml_per_min_per_g": state.fit.territory_mbf_ml_per_min_per_g,
            "segment_mbf_ml_per_min_per_g": state.fit.segment_mbf_ml_per_min_per_g,
        }
    summary: dict[str, Any] = {"states": states}
    if result.reserve is not None:
        r = result.reserve
        summary["flow_reserve"] = {"global_mfr": r.global_mfr, "mean_segment_mfr": r.mean_segment_mfr,
                                   "territory_mfr": r.territory_mfr, "segment_mfr": r.segment_mfr,
                                   "impaired_below": r.impaired_below, "territory_impaired": r.territory_impaired}
    summary["flags"] = [{"code": f.code, "region": f.region, "state": f.state, "text": f.text}
                        for f in result.all_flags]
    return summary


# --------------------------------------------------------------------------- pipeline


def _individually_referenced(result: PetMbfResult) -> tuple[str, ...]:
    """SOP Instance UIDs whose whole header the report reads: the first instance of each series (patient and
    study modules, the SR's Image Library) and the slices each Parametric Map is drawn on (their geometry)."""
    firsts = {s.series_instance_uid: s.sop_instance_uid for s in reversed(result.sources)}
    return tuple(dict.fromkeys([*firsts.values(), *(uid for uids in result.parametric_sources.values() for uid in uids)]))


def report_sources(result: PetMbfResult) -> list[Dataset]:
    """The source datasets :func:`node.results.build_outputs` needs, in ``result.sources`` order: the headers
    ``analyse`` kept (:func:`_individually_referenced`) and, for every other instance, its UIDs only (evidence
    and Source Image Sequence read nothing else of them)."""
    return source_datasets(result.sources, result.source_headers)


def _pet_rule(state: str) -> SeriesRule:
    """The rule of one acquisition state: a dynamic PET series of an MBF tracer whose state is ``state``."""
    return SeriesRule(
        name=state,
        modalities=frozenset({"PT"}),
        sop_class_uids=frozenset({PET_IMAGE_STORAGE, ENHANCED_PET_IMAGE_STORAGE}),
        pet_series_kinds=frozenset({"dynamic"}),
        tracers=MBF_TRACERS,
        states=frozenset({state}),
        required=True,
    )


class PetMbfPipeline(Pipeline):
    """PET myocardial blood flow: rest and stress dynamic PET (Rb-82, N-13 ammonia, O-15 water).

    Options: :class:`PetMbfOptions`.
    """

    name = "pet_mbf"
    version = VERSION
    title = "PET myocardial blood flow (rest/stress MBF and flow reserve per segment, territory and globally)"
    series_rules = (_pet_rule("stress"), _pet_rule("rest"))
    options_model = PetMbfOptions
    steps = Pipeline.steps  # analyse (cpu), predict (gpu), report (cpu)
    result_type = PetMbfResult

    def analyse(self, instances: Sequence[Dataset]) -> PetMbfResult:
        """Load the dynamic PET series among ``instances`` and quantify them (cpu step).

        Series are taken in order of Series Instance UID, so results and their UIDs do not
        depend on the order in which instances arrive or files are read.
        """
        result = analyse_pet_study(instances, cast(PetMbfOptions, self.options))
        wanted = set(_individually_referenced(result))
        headers = tuple(source_header(ds) for ds in instances if str(ds.get("SOPInstanceUID", "")) in wanted)
        return replace(result, source_headers=headers)

    def predict(self, result: PetMbfResult) -> PetMbfResult:
        """Run the PET flow-reserve model (bundle ``pet_mfr``) when its bundle loads (gpu step).

        :func:`node.ai.pet_mfr.predict_pet` adds the probability of impaired MFR in any segment and per
        territory (with present/absent/indeterminate verdicts), the Grad-CAM heat map over the MFR map and
        notes (research use; the risk-trait heads only with the option ``model_traits``). A study without
        both states gets a note. With ``models = false`` the result is returned unchanged. The bundle comes
        from ``run_config.models_dir`` (None: the shipped one); a missing or unloadable bundle gives a note,
        never a failed study. torch is imported here only, so routing processes never load it.
        """
        options = cast(PetMbfOptions, self.options)
        if not options.models:
            return result
        from node.ai.pet_mfr import predict_pet

        try:
            groups, images, notes = predict_pet(result, self.run_config.models_dir, traits=options.model_traits)
        except (FileNotFoundError, RuntimeError) as exc:  # bundle absent or not loadable on this installation
            note = f"deep-learning predictions not run: {type(exc).__name__}: {str(exc)[:160]}"
            return replace(result, notes=tuple(result.notes) + (note,))
        return replace(result, predictions=(tuple(groups), tuple(images), tuple(notes)))

    def report_content(self, result: PetMbfResult) -> ReportContent:
        """:func:`report_content` of ``result``; :meth:`Pipeline.report` encodes it with the source headers."""
        return report_content(result)

    def report(self, result: PetMbfResult, context: ReportContext) -> list[Dataset]:
        """The DICOM result objects of :meth:`report_content` (:func:`node.results.build_outputs`); the
        patient and study modules come from the source headers ``analyse`` kept."""
        return build_outputs(self.report_content(result), report_sources(result), context)

    def summary(self, result: PetMbfResult) -> dict[str, Any]:
        """Per state: series, tracer, kinetic model, LV location, input and RV regions, motion, global and
        territory MBF; the flow reserve; every quality flag."""
        return pet_summary(result)


PIPELINE = PetMbfPipeline()
registry.register(PIPELINE)
