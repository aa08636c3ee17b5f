"""The SPECT pipeline's adapter to the models: a ``SpectMpiResult`` to model inputs and back.

* :func:`predict_spect` — the SPECT pipeline's ``predict()`` step:
  ``predict_spect(result) -> (groups, images, notes)``.
* :func:`predict_spect_batch` — the same for several studies at once.
* :func:`inputs_from_result` — the :class:`node.ai.inference.StudyInputs` of one result.

torch and MONAI are imported only when these are called. Every model is research
use only, trained on synthetic phantoms and not clinically validated; every output
built from it says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["predict_spect", "predict_spect_batch", "inputs_from_result", "AI_NOTICE"]

AI_NOTICE = "Model predictions: research use; trained on synthetic phantoms; not clinically validated."


def _get(obj: Any, *names: str) -> Any:
    for name in names:
        if obj is None:
            return None
        obj = getattr(obj, name, None)
    return obj


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) else None


def _relative(state: Any) -> np.ndarray | None:
    from node.ai.inference import renormalise_perfusion

    values = _get(state, "relative_pct")
    if values is None and _get(state, "perfusion") is not None:
        values = _get(state, "perfusion", "values")
    return None if values is None else renormalise_perfusion(values)


def inputs_from_result(result: Any, clinical: dict[str, dict[str, float]] | None = None) -> Any:
    """Build ``node.ai.inference.StudyInputs`` from a ``node.pipelines.spect_mpi.SpectMpiResult``.

    Reads (when present) stress/rest relative perfusion maps, stress gated
    motion and thickening, rest gated phase map and thickening, volumes and
    LVEF, phase SD and bandwidth, age, sex, tracer key and, from ``clinical``
    (the rows of a clinical file, :func:`node.ai.inference.load_clinical_csv`),
    QRS duration, LBBB and NYHA class keyed by accession number.
    """
    from node.ai.inference import StudyInputs, check_grid

    stress, rest = _get(result, "stress"), _get(result, "rest")
    sex = _get(result, "sex")
    extra = (clinical or {}).get(str(_get(result, "accession_number") or ""), {})
    rest_perf = check_grid(_relative(rest), "rest perfusion")
    stress_perf = check_grid(_relative(stress), "stress perfusion")
    stats = _get(rest, "phase", "statistics")
    return StudyInputs(
        key=str(_get(result, "study_instance_uid") or "study"),
        tracer=_get(result, "tracer"),
        age=_num(_get(result, "age")),
        sex_male={"M": 1.0, "F": 0.0}.get(str(sex).upper()) if sex else None,
        stress_perfusion=stress_perf,
        rest_perfusion=rest_perf,
        stress_motion=check_grid(_get(stress, "function", "wall_motion_mm"), "stress wall motion"),
        stress_thickening=check_grid(_get(stress, "function", "thickening_pct"), "stress thickening"),
        stress_deficit=check_grid(_get(stress, "scores", "deficit_map"), "stress deficit"),
        stress_severity=None if _get(stress, "scores", "tpd_severity_map") is None
        else check_grid(np.asarray(_get(stress, "scores", "tpd_severity_map")) / 4.0, "stress severity"),
        rest_deficit=check_grid(_get(rest, "scores", "deficit_map"), "rest deficit"),
        rest_phase=check_grid(_get(rest, "phase", "phase_map"), "rest phase"),
        rest_thickening=check_grid(_get(rest, "function", "thickening_pct"), "rest thickening"),
        edv=_num(_get(stress, "function", "edv_ml")),
        esv=_num(_get(stress, "function", "esv_ml")),
        lvef=_num(_get(stress, "function", "lvef_pct")),
        rest_lvef=_num(_get(rest, "function", "lvef_pct")),
        rest_esv=_num(_get(rest, "function", "esv_ml")),
        scar=None if rest_perf is None else float(100.0 * np.mean(rest_perf < 50.0)),
        psd=_num(_get(stats, "psd_deg")),
        pbw=_num(_get(stats, "bandwidth_deg")),
        qrs=_num(extra.get("qrs")),
        lbbb=_num(extra.get("lbbb")),
        nyha=_num(extra.get("nyha")),
    )


def predict_spect_batch(results: Sequence[Any], models_root: Path | None = None, device: str | None = None,
                        gradcam: bool = True, clinical_csv: Path | None = None) -> list[tuple[list, list, list[str]]]:
    """:func:`predict_spect` for several studies in one batch per model (same order as ``results``)."""
    from node.ai.inference import load_clinical_csv, predict_studies

    clinical = load_clinical_csv(Path(clinical_csv)) if clinical_csv is not None else None
    inputs = [inputs_from_result(r, clinical) for r in results]
    seen: dict[str, int] = {}
    for s in inputs:  # keys must be unique within a batch
        n = seen.get(s.key, 0)
        seen[s.key] = n + 1
        if n:
            s.key = f"{s.key}#{n}"
    out = []
    for p in predict_studies(inputs, models_root=models_root, device=device, gradcam=gradcam):
        notes = [AI_NOTICE, *p.notes]
        out.append((p.groups, p.images, notes))
    return out


def predict_spect(result: Any, models_root: Path | None = None, device: str | None = None,
                  gradcam: bool = True, clinical_csv: Path | None = None) -> tuple[list, list, list[str]]:
    """The SPECT pipeline's predict step: ``(MeasurementGroups, MapImages, notes)`` for one study.

    ``models_root``: folder of the bundles (None: those shipped with the package,
    :func:`node.ai.bundles.models_dir`); ``clinical_csv``: the site's clinical file
    (QRS duration, LBBB, NYHA class by accession number; docs/training.md) or None.
    Models load once per process. Missing inputs or bundles give notes, not errors.
    """
    return predict_spect_batch([result], models_root, device, gradcam, clinical_csv)[0]
