"""Inference of the SPECT models for one or many studies, with explanations and provenance.

:func:`predict_studies` takes a list of :class:`StudyInputs` (one per study)
and runs every applicable model once per batch (the ``gpu`` queue calls it
with several studies when its queue is deep; CUDA when available, else CPU).
:func:`node.ai.predict_spect` adapts the SPECT pipeline's result to it.

Outputs are ``node.results.content`` objects: one ``MeasurementGroup`` per
prediction, labelled with what the output predicts in clinician words
(``probability`` in UCUM ``1`` plus a ``classification`` evaluation
``present`` / ``absent`` / ``indeterminate`` by :func:`node.ai.verdicts.verdict`
with the threshold and indeterminate band chosen on the validation cohort,
all stored in the bundle metadata, ``reader_outputs``), Grad-CAM ``MapImage``
heat maps (derivation ``gradcam``) over the stress perfusion map, titled with
the probability and the threshold and scaled in relative attention (0..1, not
perfusion), and notes that say what was not predicted and why.

Determinism: on CPU the same inputs give the same outputs, and by default
(``batch_independent=True``) a study's numbers do not depend on which other
studies shared its batch; probabilities are rounded to 4 decimals and heat
maps to 3.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.special import expit

from node.ai import bundles
from node.ai.explain import gradcam_maps, summarise_attention
from node.ai.features import cad_inputs, crt_inputs, crt_tabular, tracer_inputs
from node.ai.verdicts import ReaderOutput
from node.quant.segments import DEFAULT_GRID, TERRITORIES
from node.results.content import Evaluation, MapImage, Measurement, MeasurementGroup

__all__ = [
    "StudyInputs",
    "StudyPredictions",
    "predict_studies",
    "tracer_family",
    "load_clinical_csv",
    "CRT_LVEF_MAX",
    "HEAT_MAP_UNIT",
]

#: the CRT model is applied only to CRT candidates (LVEF at or below this, %)
CRT_LVEF_MAX = 35.0
#: an input variant of the tracer heads whose test AUC (bundle metadata) is below this is not reported
MIN_VARIANT_AUC = 0.65
#: the heat maps' unit: a UCUM annotation (dimensionless), shown as the colour-bar label; attention, not perfusion
HEAT_MAP_UNIT = "{relative attention}"
_TRACER_FAMILY = {"tc99m_sestamibi": "tc99m", "tc99m_tetrofosmin": "tc99m", "tc99m": "tc99m", "tl201": "tl201"}


def tracer_family(key: str | None) -> str | None:
    """``"tc99m"``, ``"tl201"`` or None (unknown) for a tracer key of ``node.imaging.radiopharmaceuticals``."""
    return _TRACER_FAMILY.get((key or "").lower())


@dataclass
class StudyInputs:
    """What the SPECT models use from one study. Maps are canonical polar maps ``[40, 72]``.

    Perfusion in % (re-normalised to the 99.5th percentile = 100 as in
    training), motion in mm, thickening in %, phase in degrees; volumes in ml,
    LVEF in %, scar in % of LV, PSD/PBW in degrees, QRS in ms, LBBB 0/1, NYHA
    1..4. None = not available.
    """

    key: str
    tracer: str | None = None
    age: float | None = None
    sex_male: float | None = None
    stress_perfusion: np.ndarray | None = None
    rest_perfusion: np.ndarray | None = None
    stress_motion: np.ndarray | None = None
    stress_thickening: np.ndarray | None = None
    stress_deficit: np.ndarray | None = None  # 0..1, PerfusionScores.deficit_map
    stress_severity: np.ndarray | None = None  # 0..1, PerfusionScores.tpd_severity_map / 4
    rest_deficit: np.ndarray | None = None  # 0..1, PerfusionScores.deficit_map of the rest map
    rest_phase: np.ndarray | None = None
    rest_thickening: np.ndarray | None = None
    edv: float | None = None
    esv: float | None = None
    lvef: float | None = None
    rest_lvef: float | None = None
    rest_esv: float | None = None
    scar: float | None = None
    psd: float | None = None
    pbw: float | None = None
    qrs: float | None = None
    lbbb: float | None = None
    nyha: float | None = None
    overlay_key: str = "stress_perfusion"


@dataclass
class StudyPredictions:
    """Predictions of one study as report content."""

    key: str
    groups: list[MeasurementGroup] = field(default_factory=list)
    images: list[MapImage] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    probabilities: dict[str, float] = field(default_factory=dict)


def load_clinical_csv(path: Path) -> dict[str, dict[str, float]]:
    """Optional site clinical file: ``accession_number,qrs_ms,lbbb,nyha`` (header required).

    ``lbbb`` accepts 1/0/yes/no/true/false; empty cells are missing. Returns
    ``{accession_number: {"qrs": ..., "lbbb": ..., "nyha": ...}}``.
    """
    out: dict[str, dict[str, float]] = {}
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or "accession_number" not in reader.fieldnames:
            raise ValueError(f"{path}: clinical file needs a header with accession_number (and qrs_ms, lbbb, nyha)")
        for row in reader:
            values: dict[str, float] = {}
            if row.get("qrs_ms", "").strip():
                values["qrs"] = float(row["qrs_ms"])
            lb = row.get("lbbb", "").strip().lower()
            if lb:
                values["lbbb"] = 1.0 if lb in ("1", "yes", "true", "y") else 0.0
            if row.get("nyha", "").strip():
                values["nyha"] = float(row["nyha"])
            out[row["accession_number"].strip()] = values
    return out


def _r(p: float, digits: int = 4) -> float:
    return float(round(float(p), digits))


def _classification(p: float, output: ReaderOutput) -> Evaluation:
    return Evaluation("classification", output.verdict(p))


def _verdict_note(output: ReaderOutput) -> str:
    """How the verdict of ``output`` is read (its threshold and indeterminate band), for the report notes."""
    lo, hi = output.band
    return (f"{output.name}: present above {hi:.2f}, absent below {lo:.2f}, indeterminate in between "
            f"(threshold {output.threshold:.2f}; band chosen on the validation cohort)")


def _heat_image(key: str, output: ReaderOutput, probability: float, cam: np.ndarray, overlay: str, algorithm: Any) -> MapImage:
    summary = summarise_attention(cam)
    return MapImage(
        key=key,
        title=output.heat_map_title(probability),
        subtitle=output.heat_map_subtitle(probability, overlay.removesuffix("_perfusion")),
        values=np.round(cam, 3),
        unit=HEAT_MAP_UNIT,
        value_range=(0.0, 1.0),
        colormap="inferno",
        segment_values=tuple(_r(100.0 * s, 1) for s in summary.segment_share),
        derivation="gradcam",
        algorithm=algorithm,
        overlay_on=overlay,
    )


def _present(value: np.ndarray | None, what: str, study: StudyInputs) -> np.ndarray:
    """A map the caller already checked is there (a None here is a bug in that check)."""
    if value is None:
        raise ValueError(f"study {study.key}: {what} map is missing after the model's input check")
    return value


def _predict_cad(studies: list[StudyInputs], preds: dict[str, StudyPredictions], bundle: bundles.LoadedBundle, gradcam: bool) -> None:
    usable = []
    for s in studies:
        missing = [n for n in ("stress_perfusion", "stress_motion", "stress_thickening") if getattr(s, n) is None]
        if missing:
            preds[s.key].notes.append(f"CAD model not applied: no {', '.join(m.replace('_', ' ') for m in missing)} map (needs a gated stress study)")
        else:
            usable.append(s)
    if not usable:
        return
    for s in usable:
        if s.stress_deficit is None or s.stress_severity is None:
            s.stress_deficit, s.stress_severity = _score_with_node_limits(s)
            preds[s.key].notes.append("CAD model: stress deficit/severity maps scored here against the node's normal limits")
    tab = {k: np.array([np.nan if getattr(s, k) is None else float(getattr(s, k)) for s in usable]) for k in ("age", "sex_male", "edv", "esv")}
    x, t = cad_inputs(np.stack([_present(s.stress_perfusion, "stress perfusion", s) for s in usable]),
                      np.stack([_present(s.stress_motion, "stress motion", s) for s in usable]),
                      np.stack([_present(s.stress_thickening, "stress thickening", s) for s in usable]), tab,
                      np.stack([_present(s.stress_deficit, "stress deficit", s) for s in usable]),
                      np.stack([_present(s.stress_severity, "stress severity", s) for s in usable]))
    xt, tt = torch.from_numpy(x).to(bundle.device), torch.from_numpy(t).to(bundle.device)
    with torch.no_grad():
        probs = expit(bundle.network(xt, tt).cpu().numpy().astype(np.float64))
    cams = gradcam_maps(bundle.network, bundle.config["gradcam_target_layer"], xt, 0, tabular=tt) if gradcam else None
    algorithm = bundle.algorithm()
    readers = bundle.reader_outputs()
    patient = readers["patient"]
    for i, s in enumerate(usable):
        out = preds[s.key]
        heat_key = "gradcam_cad" if cams is not None else None
        p = _r(probs[i, 0])
        out.probabilities["cad"] = p
        out.groups.append(MeasurementGroup(
            label=patient.name, finding="obstructive_cad", site="heart", state="stress",
            algorithm=algorithm, measurements=(Measurement("probability", p, "1"),),
            evaluations=(_classification(p, patient),), explanation_image=heat_key))
        for k, terr in enumerate(TERRITORIES, start=1):
            pt = _r(probs[i, k])
            territory = readers[f"territory_{terr.lower()}"]
            out.probabilities[f"cad_{terr.lower()}"] = pt
            out.groups.append(MeasurementGroup(
                label=territory.name, finding="obstructive_cad",
                site=f"territory_{terr.lower()}", state="stress", algorithm=algorithm,
                measurements=(Measurement("probability", pt, "1"),), evaluations=(_classification(pt, territory),),
                explanation_image=heat_key))
        out.notes.extend(_verdict_note(r) for r in readers.values())
        if cams is not None:
            out.images.append(_heat_image("gradcam_cad", patient, p, cams[i], s.overlay_key, algorithm))
            top = summarise_attention(cams[i]).top_segments(3)
            out.notes.append(f"CAD model attention highest in AHA segments {', '.join(map(str, top))}")


def _score_with_node_limits(s: StudyInputs, state: str = "stress") -> tuple[np.ndarray, np.ndarray]:
    """Deficit and TPD severity / 4 of a perfusion map against the node's limits (pooled sex if unknown, Tc-99m if tracer unknown)."""
    from node.quant.normal_limits import load_normal_limits
    from node.quant.scores import score_map

    sex = None if s.sex_male is None else {1.0: "M", 0.0: "F"}.get(float(s.sex_male))
    limits = load_normal_limits(tracer_family(s.tracer) or "tc99m", sex)
    perfusion = s.stress_perfusion if state == "stress" else s.rest_perfusion
    sc = score_map(np.clip(np.nan_to_num(np.asarray(perfusion, float)), 0, None), None, limits)
    return sc.deficit_map.astype(np.float32), (sc.tpd_severity_map / 4.0).astype(np.float32)


def _predict_tracer(studies: list[StudyInputs], preds: dict[str, StudyPredictions], bundle: bundles.LoadedBundle, gradcam: bool) -> None:
    heads = {"tc99m": (0, "abnormal_perfusion"), "tl201": (1, "high_risk")}
    readers = bundle.reader_outputs()
    for s in studies:
        family = tracer_family(s.tracer)
        if family is None:
            preds[s.key].notes.append(
                f"tracer-specific model not applied: tracer {s.tracer or 'not stated'} is unknown (Radiopharmaceutical "
                "Information Sequence missing or not Tc-99m sestamibi/tetrofosmin or Tl-201)")
            continue
        if s.stress_perfusion is None and s.rest_perfusion is None:
            preds[s.key].notes.append("tracer-specific model not applied: no perfusion map")
            continue
        variant = "dual" if s.stress_perfusion is not None and s.rest_perfusion is not None else ("stress" if s.stress_perfusion is not None else "rest")
        col, finding = heads[family]
        reader = readers[family]
        variant_auc = bundle.metadata.get("evaluation_summary", {}).get("test", {}).get(family, {}).get(f"model_{variant}", {}).get("auc")
        if variant_auc is not None and variant_auc < MIN_VARIANT_AUC:
            preds[s.key].notes.append(
                f"tracer-specific model not applied: its {variant}-only variant had test AUC {variant_auc:.2f} "
                f"(< {MIN_VARIANT_AUC:.2f}) on the synthetic cohort, so it is not reported")
            continue
        if s.stress_perfusion is not None and s.stress_deficit is None:
            s.stress_deficit, s.stress_severity = _score_with_node_limits(s, "stress")
        if s.rest_perfusion is not None and s.rest_deficit is None:
            s.rest_deficit = _score_with_node_limits(s, "rest")[0]
        x = torch.from_numpy(tracer_inputs(s.stress_perfusion, s.rest_perfusion, 1, s.stress_deficit, s.rest_deficit)).to(bundle.device)
        with torch.no_grad():
            p = _r(expit(bundle.network(x).cpu().numpy().astype(np.float64))[0, col])
        algorithm = bundle.algorithm((f"head={family}", f"variant={variant}"))
        heat_key = None
        out = preds[s.key]
        if gradcam:
            cam = gradcam_maps(bundle.network, bundle.config["gradcam_target_layer"], x, col)[0]
            heat_key = f"gradcam_{family}"
            overlay = s.overlay_key if s.stress_perfusion is not None else "rest_perfusion"
            out.images.append(_heat_image(heat_key, reader, p, cam, overlay, algorithm))
        out.probabilities[f"{family}_head"] = p
        out.groups.append(MeasurementGroup(
            label=reader.name, finding=finding, site="heart",
            state={"dual": None, "stress": "stress", "rest": "rest"}[variant], algorithm=algorithm,
            measurements=(Measurement("probability", p, "1"),),
            evaluations=(_classification(p, reader),), explanation_image=heat_key))
        if variant != "dual":
            out.notes.append(f"{reader.model} used the {variant} images only (no {'rest' if variant == 'stress' else 'stress'} study)")
        out.notes.append(_verdict_note(reader))


def _predict_crt(studies: list[StudyInputs], preds: dict[str, StudyPredictions], bundle: bundles.LoadedBundle) -> None:
    usable = []
    for s in studies:
        lvef = s.rest_lvef if s.rest_lvef is not None else s.lvef
        missing = [n for n in ("rest_perfusion", "rest_phase", "rest_thickening") if getattr(s, n) is None]
        if missing:
            preds[s.key].notes.append(f"CRT response model not applied: no {', '.join(m.replace('_', ' ') for m in missing)} map (needs a gated rest study)")
        elif lvef is None or lvef > CRT_LVEF_MAX:
            preds[s.key].notes.append(f"CRT response model not applied: LVEF {'unknown' if lvef is None else f'{lvef:.0f} %'} is not <= {CRT_LVEF_MAX:.0f} % (not a CRT candidate)")
        else:
            usable.append(s)
    if not usable:
        return
    feats = {
        "age": [s.age for s in usable], "sex_male": [s.sex_male for s in usable],
        "lvef": [s.rest_lvef if s.rest_lvef is not None else s.lvef for s in usable],
        "esv": [s.rest_esv if s.rest_esv is not None else s.esv for s in usable],
        "scar": [s.scar for s in usable], "psd": [s.psd for s in usable], "pbw": [s.pbw for s in usable],
        "qrs": [s.qrs for s in usable], "lbbb": [s.lbbb for s in usable], "nyha": [s.nyha for s in usable],
    }
    arrays = {k: np.array([np.nan if v is None else float(v) for v in vals]) for k, vals in feats.items()}
    tab = crt_tabular(arrays, bundle.metadata["imputation"])
    x = crt_inputs(np.stack([_present(s.rest_perfusion, "rest perfusion", s) for s in usable]),
                   np.stack([_present(s.rest_phase, "rest phase", s) for s in usable]),
                   np.stack([_present(s.rest_thickening, "rest thickening", s) for s in usable]))
    with torch.no_grad():
        probs = expit(bundle.network(torch.from_numpy(x).to(bundle.device), torch.from_numpy(tab.values).to(bundle.device))
                         .cpu().numpy().astype(np.float64))[:, 0]
    reader = bundle.reader_outputs()["response"]
    for i, s in enumerate(usable):
        used, imputed = tab.used[i], tab.imputed[i]
        algorithm = bundle.algorithm((f"features_used={'+'.join(used)}", f"features_imputed={'+'.join(imputed) or 'none'}"))
        p = _r(probs[i])
        out = preds[s.key]
        out.probabilities["crt_response"] = p
        out.groups.append(MeasurementGroup(
            label=reader.name, finding="crt_response", site="left_ventricle", state="rest",
            algorithm=algorithm, measurements=(Measurement("probability", p, "1"),), evaluations=(_classification(p, reader),)))
        out.notes.append(_verdict_note(reader))
        out.notes.append(f"CRT model features used: {', '.join(used)}; imputed (training mean, flagged missing): {', '.join(imputed) or 'none'}")


def predict_studies(studies: Sequence[StudyInputs], models_root: Path | None = None, device: str | None = None,
                    gradcam: bool = True, models: Sequence[str] = ("cad_polar", "tracer_heads", "crt_response"),
                    batch_independent: bool = True) -> list[StudyPredictions]:
    """Run the SPECT polar-map models on a batch of studies; one :class:`StudyPredictions` per input, same order.

    Models are loaded once and shared by the whole batch. ``batch_independent``
    (default) runs each study's tensors through the networks on their own, so a
    study's numbers are bit-identical whichever studies share its batch (a
    redelivered task may be batched differently and must give the same output
    bytes); ``False`` stacks all studies into one tensor per model (faster for
    bulk research runs; the last bits, and so a rounded digit, may then depend
    on the batch). A model whose bundle is missing adds a note to every study
    instead of failing the batch.
    """
    studies = list(studies)
    keys = [s.key for s in studies]
    if len(set(keys)) != len(keys):
        raise ValueError("StudyInputs.key must be unique within a batch")
    preds = {s.key: StudyPredictions(s.key) for s in studies}
    root = Path(models_root) if models_root is not None else bundles.models_dir()
    for name in models:
        try:
            bundle = bundles.load_bundle(name, root / name, device)
        except FileNotFoundError as exc:
            for p in preds.values():
                p.notes.append(f"model {name} not available: {exc}")
            continue
        groups = [[s] for s in studies] if batch_independent else [studies]
        for group in groups:
            if name == "cad_polar":
                _predict_cad(group, preds, bundle, gradcam)
            elif name == "tracer_heads":
                _predict_tracer(group, preds, bundle, gradcam)
            elif name == "crt_response":
                _predict_crt(group, preds, bundle)
    return [preds[k] for k in keys]


def renormalise_perfusion(values: np.ndarray) -> np.ndarray:
    """Perfusion map scaled so its 99.5th percentile is 100 % (the training convention)."""
    v = np.asarray(values, dtype=np.float64)
    ref = np.nanpercentile(v, 99.5) if np.isfinite(v).any() else 1.0
    return (100.0 * v / (ref if ref > 0 else 1.0)).astype(np.float32)


def check_grid(values: np.ndarray | None, name: str) -> np.ndarray | None:
    """Validate a polar map's shape against the canonical grid; None passes through."""
    if values is None:
        return None
    arr = np.asarray(values, dtype=np.float32)
    if arr.shape != DEFAULT_GRID.shape:
        raise ValueError(f"{name} polar map has shape {arr.shape}, expected {DEFAULT_GRID.shape} (node.quant.segments.PolarGrid)")
    return arr
