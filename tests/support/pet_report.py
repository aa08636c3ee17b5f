"""A realistic PET MBF report content built by hand, on small synthetic dynamic PET DICOM series.

The sources are two dynamic Rb-82 series of one study (rest: GE timing, stress: Siemens timing)
from :func:`tests.support.pet.dynamic_pet_series`. The content is filled the way the PET MBF
pipeline fills it (``node.pipelines.pet_mbf.report_content``): 17 segments x rest and stress MBF,
territory and global MBF (with blood fraction), MFR per segment/territory/global with the
impaired-reserve evaluation, haemodynamics with the rate-pressure product, quality flags at a
segment and study level, bull's-eyes of stress MBF, rest MBF and MFR (with the 1.5 and 2.0
contours), two time-activity-curve plots with fitted lines and one voxel MBF map per state on
the grid of the first frame's slices.

Values are drawn from a seeded generator: an LAD stress defect of random depth on a normal
background (rest about 1 mL/min/g, stress about 3 mL/min/g).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom import Dataset

from node.quant.segments import DEFAULT_GRID, N_SEGMENTS
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
    SourceInstance,
)
from tests.support.pet import dynamic_pet_series

__all__ = ["PETReport", "pet_report", "header_only", "ALGORITHM", "TERRITORIES"]

ALGORITHM = Algorithm(
    name="CardioNode PET myocardial blood flow",
    version="0.1.0",
    parameters=("tracer=Rb-82", "kinetic_model=rb82_lortie", "lortie_a=0.77", "lortie_b=0.63",
                "impaired_mfr_threshold=2.0"),
    training_data="none (kinetic model); validated on synthetic phantoms only",
)
#: AHA territories (segments 1-based)
TERRITORIES = {"LAD": (1, 2, 7, 8, 13, 14, 17), "RCA": (3, 4, 9, 10, 15), "LCx": (5, 6, 11, 12, 16)}
_TERRITORY_SITES = {"LAD": "territory_lad", "LCx": "territory_lcx", "RCA": "territory_rca"}
#: a clinical Rb-82 frame schedule: 12 x 5 s, 6 x 10 s, 4 x 20 s, 4 x 40 s
_DURATIONS_S = np.array([5.0] * 12 + [10.0] * 6 + [20.0] * 4 + [40.0] * 4)


@dataclass(frozen=True)
class PETReport:
    seed: int
    sources: list[Dataset]  # every instance of both series, headers only
    content: ReportContent
    segment_mbf: dict[str, np.ndarray]  # state -> [17] as reported (rounded)
    segment_mfr: np.ndarray  # [17] as reported


def header_only(datasets: list[Dataset]) -> list[Dataset]:
    """Copies of ``datasets`` without their pixel data (what a report step may get)."""
    out = []
    for ds in datasets:
        copy = Dataset()
        copy.file_meta = ds.file_meta
        for elem in ds:
            if elem.keyword != "PixelData":
                copy.add(elem)
        out.append(copy)
    return out


def _source(ds: Dataset) -> SourceInstance:
    return SourceInstance(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPClassUID, ds.SOPInstanceUID)


def _first_frame_slices(datasets: list[Dataset]) -> list[Dataset]:
    """The instances of the first frame, in slice order (Image Index 1..n_slices)."""
    n_slices = int(datasets[0].NumberOfSlices)
    first = [ds for ds in datasets if int(ds.ImageIndex) <= n_slices]
    return sorted(first, key=lambda ds: int(ds.ImageIndex))


def _polar_map(segment_values: np.ndarray, rng: np.random.Generator, noise: float) -> np.ndarray:
    ids = DEFAULT_GRID.segment_ids()
    values = np.asarray(segment_values, dtype=float)[ids - 1]
    return np.clip(values * (1.0 + rng.normal(0.0, noise, size=values.shape)), 0.0, None)


def _curves(state: str, mbf: dict[str, float], rng: np.random.Generator) -> CurvePlot:
    """Rb-82-like input and territory curves (kBq/mL) at the frame mid-times, noisy points and model lines."""
    starts = np.concatenate([[0.0], np.cumsum(_DURATIONS_S)[:-1]])
    mid = starts + _DURATIONS_S / 2
    t = np.arange(0.0, float(starts[-1] + _DURATIONS_S[-1]), 0.5)
    peak = 420.0 if state == "stress" else 320.0
    blood = peak * (t / 25.0) ** 3 * np.exp(3.0 * (1.0 - t / 25.0)) + 0.04 * peak * (1 - np.exp(-t / 40.0))
    blood *= np.exp(-np.log(2) * t / 75.45)  # not decay-corrected display: the Rb-82 curve falls
    curves = [Curve("LV blood (input)", mid, np.interp(mid, t, blood) * (1 + rng.normal(0, 0.03, mid.size)))]
    rv = peak * 1.1 * ((t + 5.0) / 20.0) ** 3 * np.exp(3.0 * (1.0 - (t + 5.0) / 20.0)) * np.exp(-np.log(2) * t / 75.45)
    curves.append(Curve("RV blood", mid, np.interp(mid, t, rv) * (1 + rng.normal(0, 0.03, mid.size))))
    for territory, flow in mbf.items():
        k1 = flow * (1.0 - 0.77 * np.exp(-0.63 / flow))  # Lortie extraction
        k2 = k1 / 0.6
        tissue = 0.5 * k1 / 60.0 * np.convolve(blood, np.exp(-(k2 / 60.0 + np.log(2) / 75.45) * t))[: t.size]
        model = 0.7 * tissue + 0.12 * blood
        fitted = np.interp(mid, t, model)
        curves.append(Curve(territory, mid, fitted * (1 + rng.normal(0, 0.05, mid.size)), "points"))
        curves.append(Curve(f"{territory} fit", mid, fitted, "line"))
    return CurvePlot(key=f"{state}_tac", title=f"{state.capitalize()} time-activity curves (rb82_lortie)",
                     x_label="Time after injection (s)", y_label="Activity concentration (kBq/mL)",
                     curves=tuple(curves))


def _voxel_map(shape: tuple[int, int, int], global_mbf: float, rng: np.random.Generator) -> np.ndarray:
    """A ring of myocardium in every slice (MBF around ``global_mbf``), 0 outside; float32 [slice, row, column]."""
    n_slices, rows, cols = shape
    r, c = np.mgrid[0:rows, 0:cols]
    radius = np.hypot(r - (rows - 1) / 2, c - (cols - 1) / 2)
    ring = (radius > rows * 0.22) & (radius < rows * 0.38)
    values = np.zeros(shape, dtype=np.float32)
    for k in range(n_slices):
        values[k][ring] = (global_mbf * (1 + rng.normal(0, 0.15, int(ring.sum())))).clip(0.05, None)
    return values


def pet_report(seed: int) -> PETReport:
    """Sources (headers only) and a PET MBF report content; ``seed`` fixes every value."""
    rng = np.random.default_rng(seed)
    rest_ds, _ = dynamic_pet_series("ge", seed=seed, description="REST RB82 DYNAMIC")
    stress_ds, _ = dynamic_pet_series("siemens", seed=seed, description="STRESS RB82 DYNAMIC")
    states = {"rest": _first_frame_slices(rest_ds), "stress": _first_frame_slices(stress_ds)}

    rest = np.round(rng.normal(1.0, 0.12, N_SEGMENTS).clip(0.5, 1.6), 3)
    stress = rng.normal(3.0, 0.3, N_SEGMENTS)
    depth = rng.uniform(0.35, 0.6)
    for segment in TERRITORIES["LAD"]:
        stress[segment - 1] *= 1.0 - depth
    stress = np.round(stress.clip(0.6, 5.0), 3)
    mfr = np.round(stress / rest, 3)
    segment_mbf = {"rest": rest, "stress": stress}

    groups: list[MeasurementGroup] = []
    territory_mbf: dict[str, dict[str, float]] = {}
    for state in ("stress", "rest"):
        values = segment_mbf[state]
        title = state.capitalize()
        for k in range(N_SEGMENTS):
            groups.append(MeasurementGroup(
                label=f"{title} MBF AHA segment {k + 1}", finding="myocardial_blood_flow", site=f"aha_{k + 1}",
                state=state, algorithm=ALGORITHM, measurements=(Measurement("mbf", float(values[k]), "ml/min/g"),)))
        territory_mbf[state] = {}
        for territory, segments in TERRITORIES.items():
            value = round(float(np.mean(values[np.asarray(segments) - 1])), 3)
            territory_mbf[state][territory] = value
            groups.append(MeasurementGroup(
                label=f"{title} MBF {territory} territory", finding="myocardial_blood_flow",
                site=_TERRITORY_SITES[territory], state=state, algorithm=ALGORITHM,
                measurements=(Measurement("mbf", value, "ml/min/g"),)))
        global_measurements = [Measurement("mbf", round(float(values.mean()), 3), "ml/min/g"),
                               Measurement("blood_fraction", round(float(rng.uniform(0.3, 0.5)), 3), "1")]
        if state == "rest":
            global_measurements.append(Measurement("mbf_rpp_corrected", round(float(values.mean()) * 0.92, 3),
                                                   "ml/min/g"))
        groups.append(MeasurementGroup(
            label=f"{title} MBF global", finding="myocardial_blood_flow", site="left_ventricle", state=state,
            algorithm=ALGORITHM, measurements=tuple(global_measurements)))
    for k in range(N_SEGMENTS):
        groups.append(MeasurementGroup(
            label=f"MFR AHA segment {k + 1}", finding="myocardial_flow_reserve", site=f"aha_{k + 1}", state=None,
            algorithm=ALGORITHM, measurements=(Measurement("mfr", float(mfr[k]), "{ratio}"),),
            evaluations=(Evaluation("impaired_flow_reserve", "present" if mfr[k] < 2.0 else "absent"),)))
    for territory in TERRITORIES:
        value = round(territory_mbf["stress"][territory] / territory_mbf["rest"][territory], 3)
        groups.append(MeasurementGroup(
            label=f"MFR {territory} territory", finding="myocardial_flow_reserve", site=_TERRITORY_SITES[territory],
            state=None, algorithm=ALGORITHM, measurements=(Measurement("mfr", value, "{ratio}"),),
            evaluations=(Evaluation("impaired_flow_reserve", "present" if value < 2.0 else "absent"),)))
    global_mfr = round(float(stress.mean() / rest.mean()), 3)
    groups.append(MeasurementGroup(
        label="MFR global", finding="myocardial_flow_reserve", site="left_ventricle", state=None, algorithm=ALGORITHM,
        measurements=(Measurement("mfr", global_mfr, "{ratio}"),
                      Measurement("mfr_rpp_corrected", round(global_mfr / 0.92, 3), "{ratio}")),
        evaluations=(Evaluation("impaired_flow_reserve", "present" if global_mfr < 2.0 else "absent"),)))
    groups.append(MeasurementGroup(
        label="MFR impaired in any AHA segment", finding="myocardial_flow_reserve", site="left_ventricle", state=None,
        algorithm=ALGORITHM,
        evaluations=(Evaluation("impaired_flow_reserve", "present" if bool((mfr < 2.0).any()) else "absent"),)))
    for state, (rate, pressure) in (("rest", (64.0, 128.0)), ("stress", (92.0, 121.0))):
        groups.append(MeasurementGroup(
            label=f"{state.capitalize()} haemodynamics", finding="haemodynamics", site="heart", state=state,
            algorithm=ALGORITHM, measurements=(Measurement("heart_rate", rate, "/min"),
                                               Measurement("systolic_pressure", pressure, "mm[Hg]"),
                                               Measurement("rate_pressure_product", rate * pressure, "mm[Hg]/min"))))
    for code, state, region, site in (("unstable_fit", "stress", "5", "aha_5"), ("motion", "stress", "global",
                                                                                    "left_ventricle")):
        where = f"segment {region}" if region.isdigit() else region
        groups.append(MeasurementGroup(
            label=f"Quality flag {code} ({state}, {where})", finding="mbf_quality", site=site, state=state,
            algorithm=ALGORITHM, evaluations=(Evaluation("quality_flag", code),)))

    images = [
        MapImage(f"{state}_mbf", f"{state.capitalize()} MBF (mL/min/g)", _polar_map(segment_mbf[state], rng, 0.05),
                 "ml/min/g", (0.0, 4.0), segment_values=tuple(float(v) for v in segment_mbf[state]),
                 algorithm=ALGORITHM)
        for state in ("stress", "rest")
    ]
    mfr_map = images[0].values / np.maximum(images[1].values, 0.05)
    images.append(MapImage("mfr", "Myocardial flow reserve (stress/rest)", mfr_map, "{ratio}", (0.0, 4.0),
                           segment_values=tuple(float(v) for v in mfr), algorithm=ALGORITHM, contour_levels=(1.5, 2.0)))
    plots = tuple(_curves(state, territory_mbf[state], rng) for state in ("rest", "stress"))
    shape = (len(states["rest"]), int(states["rest"][0].Rows), int(states["rest"][0].Columns))
    maps = tuple(
        ParametricVolume(key=f"{state}_mbf_voxels", title=f"{state.capitalize()} MBF (voxel-wise)", quantity="mbf",
                         unit="ml/min/g", state=state, values=_voxel_map(shape, float(segment_mbf[state].mean()), rng),
                         source_sop_instance_uids=tuple(str(ds.SOPInstanceUID) for ds in states[state]),
                         algorithm=ALGORITHM)
        for state in ("rest", "stress")
    )
    reported_sources = [*states["rest"], *states["stress"]]
    content = ReportContent(
        pipeline="pet_mbf",
        pipeline_version="0.1.0",
        procedure="pet_myocardial_perfusion",
        study_instance_uid=str(rest_ds[0].StudyInstanceUID),
        sources=tuple(_source(ds) for ds in reported_sources),
        groups=tuple(groups),
        images=tuple(images),
        algorithms=(ALGORITHM,),
        notes=("quality flag: stress segment 5 fit standard error 41 % of MBF (limit 30 %).",
               "quality flag: stress LV centroid moved 6.2 mm between early and late frames (limit 5 mm).",
               "Rest MBF corrected for the rate-pressure product with RPP_ref = 10000 mm[Hg]/min."),
        plots=plots,
        parametric_maps=maps,
    )
    return PETReport(seed, header_only([*rest_ds, *stress_ds]), content, segment_mbf, mfr)
