"""Synthetic rest + stress dynamic PET studies as DICOM instances, plus the truth JSON.

Reference note: ``pet_mbf.md`` sections 5.1 (tier C) and 5.7 (stress/rest organisation).
:func:`build_pet_study` writes a rest and a stress dynamic volume (either may be left out) of one
synthetic patient with :func:`node.synth.pet.dicom.build_pet_series`, rest first:

* ``arrangement="one_study"``: both series in one study (one Study Instance UID and Frame of
  Reference), the stress injection :data:`REST_TO_STRESS_S` after the rest one (Rb-82 and
  O-15: separate injections minutes apart; N-13: an hour);
* ``arrangement="two_studies"``: two studies on two days (rest on the first), each with its
  own Study Instance UID, Frame of Reference and accession number; same patient.

Each volume is ``[frame, slice, row, column]`` in Bq/mL decay-corrected to its own injection,
with frame starts in seconds after it (``FrameAxis.dynamic``). The truth document records, per
series, the study and series UIDs, the state, the injection and acquisition start, the frame
starts and durations, the decay correction written and its reference time, and the factor from
the volume's values to the stored ones; ``rest`` and ``stress`` hold the phantom's own truth
documents when given. :func:`build_phantom_pet_study` does this for an image-tier phantom
(:func:`node.synth.pet.phantom.make_pet_study`), its truth converted to JSON by
:func:`truth_document` (3-D arrays, the label volumes, are left out). :func:`write_pet_study` writes ``<STATE>/IMG<image index>.dcm`` files and
``truth.json``. UIDs and the synthetic identity are derived from ``key``.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydicom.dataset import Dataset

from node import RESEARCH_USE_NOTICE
from node.imaging.volume import Volume
from node.synth.pet.dicom import (
    DECAY_CORRECTIONS,
    PETSeriesInfo,
    PETSeriesInstances,
    build_pet_series,
    pet_series_description,
    pet_tracer,
)
from node.synth.pet.enhanced import build_enhanced_pet
from node.synth.spect.nm_dicom import PatientInfo, StudyInfo
from node.synth.spect.study import synthetic_patient
from node.uids import deterministic_uid

if TYPE_CHECKING:  # the phantom module is needed only by callers that have a phantom
    from node.synth.pet.phantom import PetStudy

__all__ = [
    "ARRANGEMENTS",
    "STORAGES",
    "REST_TO_STRESS_S",
    "PETStudy",
    "PETStudyFiles",
    "build_phantom_pet_study",
    "build_pet_study",
    "truth_document",
    "write_pet_study",
]

#: how rest and stress are organised (pet_mbf.md 5.7)
ARRANGEMENTS: tuple[str, ...] = ("one_study", "two_studies")
#: how each series is stored: PET Image Storage (one instance per slice per frame) or one Enhanced PET instance
STORAGES: tuple[str, ...] = ("legacy", "enhanced")
#: rest injection to stress injection within one study, seconds, by PET_TRACERS key
REST_TO_STRESS_S: dict[str, float] = {
    "rb82_chloride": 15 * 60.0, "o15_water": 15 * 60.0, "n13_ammonia": 60 * 60.0,
    "f18_flurpiridaz": 4 * 3600.0, "f18_fdg": 4 * 3600.0,
}
#: typical injected activity in MBq (written as Radionuclide Total Dose), by PET_TRACERS key
_DOSE_MBQ: dict[str, float] = {
    "rb82_chloride": 1110.0, "n13_ammonia": 370.0, "o15_water": 1000.0, "f18_flurpiridaz": 100.0, "f18_fdg": 250.0,
}


@dataclass(frozen=True, eq=False)
class PETStudy:
    """A built study: ``datasets`` (rest series first, then stress), the ``truth`` document, ``series`` per state."""

    datasets: list[Dataset]
    truth: dict[str, Any]
    series: dict[str, PETSeriesInstances]

    @property
    def study_uids(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(str(doc["study_instance_uid"]) for doc in self.truth["series"]))


@dataclass(frozen=True)
class PETStudyFiles:
    """What :func:`write_pet_study` wrote."""

    folder: Path
    paths: tuple[Path, ...]
    truth_json: Path
    study_uids: tuple[str, ...]


def _study_info(key: str, day: int, when: datetime, description: str) -> StudyInfo:
    uid = deterministic_uid("cardionode-synth-pet", key, "study", day)
    return StudyInfo(
        study_uid=uid,
        frame_of_reference_uid=deterministic_uid("cardionode-synth-pet", key, "frame-of-reference", day),
        study_date=when.strftime("%Y%m%d"),
        study_time=when.strftime("%H%M%S"),
        accession_number=f"SYNPET{int(uid.split('.')[-1]) % 10**6:06d}",
        study_id=str(day + 1),
        description=description,
    )


def build_pet_study(
    rest: Volume | None,
    stress: Volume | None,
    *,
    tracer: str,
    vendor: str = "ge",
    decay_correction: str = "START",
    arrangement: str = "one_study",
    storage: str = "legacy",
    shuffle: bool = False,
    rest_truth: Mapping[str, Any] | None = None,
    stress_truth: Mapping[str, Any] | None = None,
    patient: PatientInfo | None = None,
    key: str | None = None,
    when: datetime | None = None,
    rest_to_stress_s: float | None = None,
) -> PETStudy:
    """The DICOM instances and truth of a rest + stress dynamic PET study (not yet written).

    Parameters
    ----------
    rest, stress
        Dynamic volumes (Bq/mL, decay-corrected to their injection; frame starts in s after
        it); at least one. Rest is written first.
    tracer
        PET tracer key (``rb82_chloride``) or name (``"Rb-82"``).
    vendor, decay_correction
        Timing variant (``ge``, ``philips``, ``siemens``) and Decay Correction (``START``,
        ``ADMIN``, ``NONE``) of both series.
    arrangement
        ``one_study`` or ``two_studies`` (:data:`ARRANGEMENTS`).
    storage
        ``legacy`` (PET Image Storage, one instance per slice per frame) or ``enhanced`` (one
        Enhanced PET Image Storage instance per series; ``vendor`` then only names the manufacturer)
        (:data:`STORAGES`).
    shuffle
        Shuffle the instances within each series (order drawn from ``key``).
    rest_truth, stress_truth
        The phantom's truth documents (JSON-serialisable), copied into the truth.
    patient, key, when
        Synthetic identity (derived from ``key`` when None), the key of the UIDs (fresh random
        when None) and the rest injection date-time (now, UTC, when None).
    rest_to_stress_s
        Rest to stress injection within one study, seconds (default :data:`REST_TO_STRESS_S`).
    """
    if rest is None and stress is None:
        raise ValueError("a PET study needs a rest or a stress volume")
    if arrangement not in ARRANGEMENTS:
        raise ValueError(f"arrangement must be one of {ARRANGEMENTS}, got {arrangement!r}")
    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}")
    if decay_correction not in DECAY_CORRECTIONS:
        raise ValueError(f"decay_correction must be one of {DECAY_CORRECTIONS}, got {decay_correction!r}")
    info = pet_tracer(tracer)
    key = key if key is not None else secrets.token_hex(16)
    patient = patient or synthetic_patient("M", 62, key)
    when = when or datetime.now(UTC).replace(microsecond=0, tzinfo=None)
    gap_s = REST_TO_STRESS_S.get(info.key, 3600.0) if rest_to_stress_s is None else float(rest_to_stress_s)
    rng = np.random.default_rng(int(deterministic_uid("cardionode-synth-pet", key, "order").split(".")[-1]))
    description = f"DYNAMIC CARDIAC PET {info.display_name.upper()} (SYNTHETIC)"

    datasets: list[Dataset] = []
    docs: list[dict[str, Any]] = []
    written: dict[str, PETSeriesInstances] = {}
    truths = {"rest": rest_truth, "stress": stress_truth}
    for number, (state, volume) in enumerate((("rest", rest), ("stress", stress)), start=1):
        if volume is None:
            continue
        day = 1 if state == "stress" and arrangement == "two_studies" else 0
        if arrangement == "two_studies":
            injection = when + timedelta(days=day)
        else:
            injection = when + timedelta(seconds=gap_s if state == "stress" else 0.0)
        study = _study_info(key, day, when + timedelta(days=day), description)
        series = PETSeriesInfo(
            series_uid=deterministic_uid("cardionode-synth-pet", key, state, "series"),
            series_number=number,
            description=pet_series_description(state, info.key),
            tracer=info.key,
            injection=injection,
            vendor=vendor,
            decay_correction=decay_correction,
            dose_mbq=_DOSE_MBQ.get(info.key),
        )
        build = build_enhanced_pet if storage == "enhanced" else build_pet_series
        result = build(volume, patient=patient, study=study, series=series, shuffle_rng=rng if shuffle else None)
        written[state] = result
        datasets.extend(result.datasets)
        assert volume.frame_axis is not None and volume.frame_axis.schedule is not None
        schedule = volume.frame_axis.schedule
        docs.append({
            "state": state,
            "study_instance_uid": study.study_uid,
            "series_instance_uid": series.series_uid,
            "series_description": series.description,
            "series_number": number,
            "injection": injection.isoformat(),
            "acquisition_start": (injection + timedelta(seconds=float(schedule.start_s[0]))).isoformat(),
            "frame_start_s": schedule.start_s.tolist(),
            "frame_duration_s": schedule.duration_s.tolist(),
            "decay_correction": decay_correction,
            "decay_reference_s": result.decay_reference_s,
            "value_scale": result.scale.tolist(),
            "shape": list(volume.voxels.shape),
            "affine": np.asarray(volume.affine).tolist(),
            "n_instances": len(result.datasets),
        })
    truth: dict[str, Any] = {
        "notice": RESEARCH_USE_NOTICE,
        "key": key,
        "tracer": info.key,
        "half_life_s": info.half_life_s,
        "vendor": vendor,
        "decay_correction": decay_correction,
        "arrangement": arrangement,
        "values": "volumes in Bq/mL decay-corrected to their injection; stored = volume x value_scale[frame]",
        "series": docs,
    }
    for state, doc in truths.items():
        if doc is not None and written.get(state) is not None:
            truth[state] = dict(doc)
    return PETStudy(datasets, truth, written)


def truth_document(value: Any) -> Any:
    """A JSON-serialisable copy of a truth object: dataclasses as dicts, arrays as lists, 3-D+ arrays left out."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        out = {}
        for name, item in value.items():
            if isinstance(item, np.ndarray) and item.ndim >= 3:
                continue
            out[str(name)] = truth_document(item)
        return out
    if isinstance(value, (list, tuple)):
        return [truth_document(item) for item in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def build_phantom_pet_study(phantom: PetStudy, **options: Any) -> PETStudy:
    """:func:`build_pet_study` of an image-tier phantom study: its noisy volumes, tracer and truth.

    ``options`` are :func:`build_pet_study`'s keywords (vendor, decay_correction, arrangement,
    shuffle, patient, key, when, rest_to_stress_s). The truth gets the series truths under
    ``rest`` / ``stress`` and the study truth (MFR, defect) under ``study``.
    """
    study = build_pet_study(phantom.rest.volume, phantom.stress.volume, tracer=phantom.spec.tracer,
                            rest_truth=truth_document(phantom.rest.truth),
                            stress_truth=truth_document(phantom.stress.truth), **options)
    study.truth["study"] = truth_document(phantom.truth)
    study.truth["phantom"] = truth_document({"spec": phantom.spec, "parameters": phantom.parameters})
    return study


def write_pet_study(study: PETStudy, folder: Path | str) -> PETStudyFiles:
    """Write ``<STATE>/IMG<image index, 5 digits>.dcm`` for every instance and ``truth.json`` into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state_of = {doc["series_instance_uid"]: doc["state"] for doc in study.truth["series"]}
    paths = []
    for ds in study.datasets:
        sub = folder / str(state_of[str(ds.SeriesInstanceUID)]).upper()
        sub.mkdir(exist_ok=True)
        path = sub / f"IMG{int(ds.ImageIndex):05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    truth_path = folder / "truth.json"
    truth_path.write_text(json.dumps(study.truth, indent=1))
    return PETStudyFiles(folder, tuple(paths), truth_path, study.study_uids)
