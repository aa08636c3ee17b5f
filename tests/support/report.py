"""Realistic inputs for the results tests: NM source instances and a SPECT ReportContent, and writing the outputs.

The NM instances come from a gated digital phantom written by ``node.synth`` (they are
evidence for the SR, and the patient/study modules of every output are copied from
them). The ReportContent is built the way the SPECT pipeline fills it: 17 segments x
stress/rest/difference, global perfusion, function, phase and an AI prediction with a
Grad-CAM heat map; its polar maps are the phantom's noise-free truth maps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom import Dataset

from node.quant.segments import DEFAULT_GRID, N_SEGMENTS
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

DEVICE_UID = "1.2.826.0.1.3680043.8.498.4711"


def context(**kwargs) -> ReportContext:
    """The report context of the tests' node (fixed device UID and name)."""
    return ReportContext(device_uid=DEVICE_UID, device_name="cardionode-test", **kwargs)


def write_outputs(outputs: list[Dataset], content: ReportContent, directory: Path) -> dict[str, Path]:
    """Write ``outputs`` to ``directory``; kind -> file: the names of :func:`node.results.output_names`
    (``sr``, ``sc_<key>``, ``results_screen_<page>``, ``screen``, ``pdf``, ...)."""
    from node.results import output_names

    directory.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    for ds, name in zip(outputs, output_names(content, outputs)):
        path = directory / f"{name}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files[name] = path
    return files


def source_instance(ds: Dataset) -> SourceInstance:
    return SourceInstance(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPClassUID, ds.SOPInstanceUID)


QUANT = Algorithm(
    name="CardioNode SPECT quantification",
    version="1.0.0",
    parameters=("normal_limits=synthetic-tc99m-v1", "grid=40x72"),
    training_data="Normal limits from synthetic phantoms (no patient data).",
)
MODEL = Algorithm(
    name="cardionode-cad-net",
    version="0.3.1",
    parameters=("weights=sha256:3f1c2a9d0b7e", "threshold=0.50"),
    training_data="Synthetic phantom cohort, 2000 studies.",
)


def polar_map(seed: int, defect_segments: tuple[int, ...] = (7, 13)) -> np.ndarray:
    """A polar map [n_u, n_psi] in % of maximum with a defect in the given segments."""
    rng = np.random.default_rng(seed)
    ids = DEFAULT_GRID.segment_ids()
    values = 85.0 + rng.normal(0, 3, size=DEFAULT_GRID.shape)
    for seg in defect_segments:
        values[ids == seg] -= 35.0
    return np.clip(values, 0, 100)


def phantom_study(seed: int):
    """A gated SPECT phantom (LAD reversible defect) and its NM datasets from node.synth.

    Returns ``(summed [stress, rest], gated [stress, rest], truth dict)``; acquisition times differ
    (rest first), as in a one-day protocol.
    """
    from datetime import datetime

    from node.synth.spect.phantom import PhantomSpec, make_study, territory_defect
    from node.synth.spect.study import build_study_datasets

    rng = np.random.default_rng(seed)
    spec = PhantomSpec(n_gates=8, defects=(territory_defect("LAD", 0.5, reversible=True),))
    study = make_study(spec, rng)
    datasets, truth = build_study_datasets(study, key=f"results-{seed}", when=datetime(2026, 1, 15, 8, 30))
    by_desc = {str(ds.SeriesDescription): ds for ds in datasets}
    summed = [by_desc["STRESS TRANS"], by_desc["REST TRANS"]]
    gated = [by_desc["STRESS GATED TRANS"], by_desc["REST GATED TRANS"]]
    return summed, gated, truth


def make_content(
    sources: list[Dataset], seed: int = 1, lvef: float = 58.3, with_prediction: bool = True,
    stress_map: np.ndarray | None = None, rest_map: np.ndarray | None = None,
) -> ReportContent:
    """A SPECT report content; polar maps in % of maximum (from a phantom's truth when given)."""
    study_uid = sources[0].StudyInstanceUID
    stress = polar_map(seed) if stress_map is None else np.asarray(stress_map, dtype=float)
    rest = polar_map(seed + 1, defect_segments=(13,)) if rest_map is None else np.asarray(rest_map, dtype=float)
    stress_seg = DEFAULT_GRID.segment_means(stress)
    rest_seg = DEFAULT_GRID.segment_means(rest)
    groups: list[MeasurementGroup] = []
    for state, seg_values in (("stress", stress_seg), ("rest", rest_seg), ("difference", rest_seg - stress_seg)):
        for s in range(1, N_SEGMENTS + 1):
            value = round(float(seg_values[s - 1]), 1)
            if state == "difference":
                score = max(0, min(4, round(value / 10)))
                finding = "defect_reversible" if value > 15 else "perfusion_normal"
            else:
                score = 0 if value >= 70 else (2 if value >= 50 else 3)
                finding = "perfusion_normal" if score == 0 else "perfusion_abnormal"
            groups.append(
                MeasurementGroup(
                    label=f"{state.capitalize()} perfusion AHA segment {s}",
                    finding=finding,
                    site=f"aha_{s}",
                    state=state,
                    algorithm=QUANT,
                    measurements=(
                        Measurement("relative_uptake", value, "%"),
                        Measurement("segment_score", float(score), "{score}"),
                    ),
                )
            )
    groups.append(
        MeasurementGroup(
            label="Global perfusion",
            finding="perfusion_abnormal",
            site="left_ventricle",
            state=None,
            algorithm=QUANT,
            measurements=(
                Measurement("sss", 9.0, "{score}"),
                Measurement("srs", 3.0, "{score}"),
                Measurement("sds", 6.0, "{score}"),
                Measurement("tpd_stress", 12.4, "%"),
                Measurement("tpd_rest", 4.1, "%"),
                Measurement("tpd_ischemic", 8.3, "%"),
                Measurement("tid_ratio", 1.08, "1"),
            ),
            evaluations=(Evaluation("perfusion_category", "abnormal"),),
        )
    )
    groups.append(
        MeasurementGroup(
            label="Gated function at stress",
            finding="lv_function",
            site="left_ventricle",
            state="stress",
            algorithm=QUANT,
            measurements=(
                Measurement("edv", 112.5, "ml"),
                Measurement("esv", 46.9, "ml"),
                Measurement("lvef", lvef, "%"),
                Measurement("stroke_volume", 65.6, "ml"),
                Measurement("phase_peak", 134.2, "deg"),
                Measurement("phase_sd", 14.7, "deg"),
                Measurement("phase_bandwidth", 41.0, "deg"),
                Measurement("phase_entropy", 0.52, "1"),
            ),
            evaluations=(Evaluation("lv_function_category", "normal"),),
        )
    )
    images = [
        MapImage("stress", "Stress perfusion", stress, "%", (0.0, 100.0), segment_values=tuple(float(v) for v in stress_seg), algorithm=QUANT),
        MapImage("rest", "Rest perfusion", rest, "%", (0.0, 100.0), segment_values=tuple(float(v) for v in rest_seg), algorithm=QUANT),
    ]
    if with_prediction:
        heat = np.clip((100 - stress) / 60.0, 0, 1)
        images.append(
            MapImage("gradcam_cad", "AI Grad-CAM: obstructive CAD", heat, "1", (0.0, 1.0), colormap="inferno",
                     derivation="gradcam", algorithm=MODEL, overlay_on="stress")
        )
        groups.append(
            MeasurementGroup(
                label="AI obstructive CAD prediction",
                finding="obstructive_cad",
                site="heart",
                state=None,
                algorithm=MODEL,
                measurements=(Measurement("probability", 0.73, "1"),),
                evaluations=(Evaluation("classification", "present"),),
                explanation_image="gradcam_cad",
            )
        )
    return ReportContent(
        pipeline="spect_mpi",
        pipeline_version="1.0.0",
        procedure="nm_myocardial_perfusion",
        study_instance_uid=study_uid,
        sources=tuple(source_instance(ds) for ds in sources),
        groups=tuple(groups),
        images=tuple(images),
        algorithms=(QUANT, MODEL) if with_prediction else (QUANT,),
        notes=("Attenuation correction: none.",),
    )


def sr_image_references(items, concept: tuple[str, str]) -> list[str]:
    """SOP Instance UIDs of the IMAGE content items named ``concept`` (code value, scheme) anywhere in an SR
    content tree (``items``: a ContentSequence), depth first."""
    found = []
    for item in items:
        name = item.ConceptNameCodeSequence[0] if "ConceptNameCodeSequence" in item else None
        if item.ValueType == "IMAGE" and name is not None and (name.CodeValue, name.CodingSchemeDesignator) == concept:
            found.append(str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID))
        if "ContentSequence" in item:
            found.extend(sr_image_references(item.ContentSequence, concept))
    return found
