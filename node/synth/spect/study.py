"""Synthetic SPECT MPI studies as DICOM files: stress and rest, gated and summed, plus truth JSON.

A study holds up to four NM Image series (one multi-frame instance each):

=====================  ==================  =========================
Series description      Image Type value 3   Content
=====================  ==================  =========================
``STRESS SA``           RECON TOMO          summed stress counts
``STRESS GATED SA``     RECON GATED TOMO    stress gates
``REST SA``             RECON TOMO          summed rest counts
``REST GATED SA``       RECON GATED TOMO    rest gates
=====================  ==================  =========================

(``TRANS`` instead of ``SA`` for the transaxial variant.) The truth of both
acquisitions goes to ``truth.json`` next to the DICOM files. Patient
identities are synthetic; UIDs are derived from a study key (the seed when
given), so the same seed gives the same UIDs.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from node import RESEARCH_USE_NOTICE
from node.synth.spect.nm_dicom import PatientInfo, SeriesInfo, StudyInfo, build_nm_dataset
from node.synth.spect.phantom import Acquisition, StudyPhantom
from node.uids import deterministic_uid

__all__ = ["StudyFiles", "synthetic_patient", "build_study_datasets", "write_study", "series_description"]

_FAMILY = ("ALPHA", "BRAVO", "CEDAR", "DELTA", "EMBER", "FJORD", "GLADE", "HARBOR", "IVORY", "JUNIPER")
_GIVEN = ("PHANTOM", "SYNTH", "TEST", "SAMPLE", "MODEL")


@dataclass(frozen=True)
class StudyFiles:
    """What :func:`write_study` wrote."""

    folder: Path
    paths: tuple[Path, ...]
    truth_json: Path
    study_uid: str
    series: tuple[dict[str, Any], ...]


def synthetic_patient(sex: str, age_years: int, key: str) -> PatientInfo:
    """A synthetic patient identity derived from ``key`` (names and IDs are obviously fake)."""
    digest = int(deterministic_uid("cardionode-synth-patient", key).split(".")[-1])
    birth_year = datetime.now(UTC).year - int(age_years)
    birth = datetime(birth_year, 1 + digest % 12, 1 + (digest // 12) % 28)
    family = _FAMILY[(digest // 400) % len(_FAMILY)]
    given = _GIVEN[(digest // 4000) % len(_GIVEN)]
    return PatientInfo(
        name=f"{family}^{given}^SYN{digest % 10000:04d}",
        patient_id=f"SYN{digest % 10**8:08d}",
        birth_date=birth.strftime("%Y%m%d"),
        sex=sex,
        age_years=int(age_years),
        weight_kg=82.0 if sex == "M" else 68.0,
        height_m=1.78 if sex == "M" else 1.65,
    )


def series_description(state: str, gated: bool, orientation: str) -> str:
    """``"STRESS GATED SA"``, ``"REST TRANS"`` etc."""
    parts = [state.upper()]
    if gated:
        parts.append("GATED")
    parts.append("SA" if orientation == "short_axis" else "TRANS")
    return " ".join(parts)


def build_study_datasets(
    study: StudyPhantom,
    *,
    gated: bool = True,
    ungated: bool = True,
    patient: PatientInfo | None = None,
    key: str | None = None,
    when: datetime | None = None,
) -> tuple[list[Dataset], dict[str, Any]]:
    """The NM datasets of ``study`` and the truth document (not yet written).

    ``key`` seeds the UIDs and the synthetic identity (fresh random when None);
    ``when`` is the study date-time (now, UTC, when None).
    """
    key = key if key is not None else secrets.token_hex(16)
    spec = study.spec
    patient = patient or synthetic_patient(spec.sex, spec.age, key)
    when = when or datetime.now(UTC).replace(microsecond=0, tzinfo=None)
    study_uid = deterministic_uid("cardionode-synth", key, "study")
    info = StudyInfo(
        study_uid=study_uid,
        frame_of_reference_uid=deterministic_uid("cardionode-synth", key, "frame-of-reference"),
        study_date=when.strftime("%Y%m%d"),
        study_time=when.strftime("%H%M%S"),
        accession_number=f"SYNACC{int(study_uid.split('.')[-1]) % 10**6:06d}",
        study_id="1",
    )
    datasets: list[Dataset] = []
    series_docs: list[dict[str, Any]] = []
    number = 0
    for acq, start in ((study.rest, when), (study.stress, when + timedelta(hours=2))):
        variants = []
        if ungated or not spec.n_gates:
            variants.append(False)
        if gated and spec.n_gates:
            variants.append(True)
        for is_gated in variants:
            number += 1
            description = series_description(acq.state, is_gated, acq.orientation)
            series = SeriesInfo(
                series_uid=deterministic_uid("cardionode-synth", key, description, "series"),
                sop_instance_uid=deterministic_uid("cardionode-synth", key, description, "instance"),
                series_number=number,
                description=description,
                state=acq.state,
                orientation=acq.orientation,
                series_time=(start + timedelta(minutes=45)).strftime("%H%M%S"),
            )
            volume = acq.frames if is_gated else acq.summed
            datasets.append(
                build_nm_dataset(volume, patient=patient, study=info, series=series, tracer=spec.tracer,
                                 acquisition_datetime=start + timedelta(minutes=30))
            )
            series_docs.append({
                "series_instance_uid": series.series_uid,
                "sop_instance_uid": series.sop_instance_uid,
                "series_description": description,
                "state": acq.state,
                "gated": is_gated,
                "orientation": acq.orientation,
                "affine": np.asarray(volume.affine).tolist(),
                "shape": list(volume.voxels.shape),
            })
    truth = {
        "notice": RESEARCH_USE_NOTICE,
        "study_instance_uid": study_uid,
        "key": key,
        "orientation": study.orientation,
        "spec": _spec_doc(study),
        "series": series_docs,
        "stress": study.stress.truth.to_json_dict(),
        "rest": study.rest.truth.to_json_dict(),
    }
    return datasets, truth


def _spec_doc(study: StudyPhantom) -> dict[str, Any]:
    spec = study.spec
    return {
        "shape": {k: getattr(spec.shape, k) for k in ("name", "ed_a_mm", "ed_c_mm", "wall_mm", "es_a_mm", "es_c_mm")},
        "tracer": spec.tracer,
        "sex": spec.sex,
        "age": spec.age,
        "n_gates": spec.n_gates,
        "matrix": spec.matrix,
        "voxel_mm": spec.voxel_mm,
        "fwhm_mm": spec.system_fwhm_mm,
        "counts_per_voxel": spec.target_counts_per_voxel,
        "extracardiac": spec.extracardiac,
        "attenuation_depth": spec.attenuation_depth,
        "attenuation_centre_jitter_deg": spec.attenuation_centre_jitter_deg,
        "phase_delays": [vars(d) for d in spec.phase_delays],
        "phase_jitter_sd_deg": spec.phase_jitter_sd_deg,
        "waveform": spec.waveform,
        "es_fraction": spec.es_fraction,
    }


def _acquisition_label(acq: Acquisition, gated: bool) -> str:
    return f"{acq.state}_{'gated' if gated else 'summed'}_{'sa' if acq.orientation == 'short_axis' else 'trans'}"


def write_study(
    study: StudyPhantom,
    folder: Path | str,
    *,
    gated: bool = True,
    ungated: bool = True,
    patient: PatientInfo | None = None,
    seed: int | None = None,
    when: datetime | None = None,
) -> StudyFiles:
    """Write the study's NM files and ``truth.json`` into ``folder`` (created if needed).

    File names: ``<STATE>_<GATED|SUMMED>_<SA|TRANS>.dcm``. ``seed`` makes UIDs and the
    synthetic identity reproducible.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = None if seed is None else f"seed-{seed}"
    datasets, truth = build_study_datasets(study, gated=gated, ungated=ungated, patient=patient, key=key, when=when)
    paths = []
    for ds, doc in zip(datasets, truth["series"]):
        acq = study.stress if doc["state"] == "stress" else study.rest
        path = folder / f"{_acquisition_label(acq, doc['gated']).upper()}.dcm"
        ds.save_as(path, enforce_file_format=True)
        doc["file"] = path.name
        paths.append(path)
    truth_path = folder / "truth.json"
    truth_path.write_text(json.dumps(truth, indent=1))
    return StudyFiles(folder, tuple(paths), truth_path, truth["study_instance_uid"], tuple(truth["series"]))
