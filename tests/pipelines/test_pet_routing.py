"""Routing of PET studies: dynamic rest/stress PET of an MBF tracer goes to ``pet_mbf``, and nothing else does.

The series are real PET Image Storage bytes from the test factory (one instance per slice
per frame); routing reads them with the one extractor the listener and ``cardionode process``
use (:func:`node.pipelines.routing.routing_attributes`).
"""

from __future__ import annotations

import pytest
from pydicom import Dataset
from pydicom.sequence import Sequence as DicomSequence

from node.pipelines import registry
from node.pipelines.routing import SeriesSummary, StudySummary, routing_attributes
from node.uids import deterministic_uid
from tests.support.pet import dynamic_pet_series


def _series(description: str, seed: int, study_uid: str = "") -> list[Dataset]:
    datasets, _ = dynamic_pet_series("ge", seed=seed, n_slices=3, rows=8, cols=8, description=description)
    series_uid = deterministic_uid("routing-series", description, str(seed))
    for ds in datasets:
        ds.SeriesInstanceUID = series_uid
        if study_uid:
            ds.StudyInstanceUID = study_uid
    return datasets


def _study(*descriptions: str) -> list[Dataset]:
    study_uid = deterministic_uid("routing-study", *descriptions)
    return [ds for n, d in enumerate(descriptions) for ds in _series(d, n + 1, study_uid)]


def _route(datasets: list[Dataset]) -> tuple[str | None, str, bool]:
    summary = StudySummary.from_datasets(datasets)
    pipeline, reason = registry.route(summary)
    complete = pipeline.accept(summary).complete if pipeline is not None else False
    return (pipeline.name if pipeline is not None else None), reason, complete


def test_routing_attributes_of_a_dynamic_pet_instance_name_its_kind_tracer_and_state():
    ds = _series("STRESS RB82 REGADENOSON", 1)[0]
    attributes = routing_attributes(ds)
    assert attributes["modality"] == "PT"
    assert attributes["pet_series_kind"] == "dynamic"
    assert attributes["tracer"] == "rb82_chloride"
    assert attributes["state"] == "stress"
    assert attributes["radiopharmaceutical_codes"] == ["129503007"]


def test_rest_and_stress_dynamic_rb82_is_complete_for_pet_mbf():
    name, reason, complete = _route(_study("REST RB82 DYNAMIC", "STRESS RB82 DYNAMIC"))
    assert name == "pet_mbf", reason
    assert complete, reason


def test_a_dynamic_series_counts_only_with_all_its_slices_and_frames():
    datasets = _study("REST RB82 DYNAMIC", "STRESS RB82 DYNAMIC")
    first = datasets[0]
    expected = int(first.NumberOfSlices) * int(first.NumberOfTimeSlices)
    assert routing_attributes(first)["expected_instances"] == str(expected)
    # the stress series' last instance has not arrived: both series present, the study is not complete
    name, reason, complete = _route(datasets[:-1])
    assert name == "pet_mbf" and not complete, reason
    assert f"{expected - 1} of {expected} instances" in reason and "STRESS" in reason
    name, reason, complete = _route(datasets)
    assert complete, reason


def test_a_rest_only_pet_study_is_accepted_but_waits_for_stress():
    name, reason, complete = _route(_study("REST RB82 DYNAMIC"))
    assert name == "pet_mbf"
    assert not complete
    assert "no series for 'stress'" in reason


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda ds: setattr(ds, "SeriesType", ["STATIC", "IMAGE"]), "PET series kind is static"),
        (lambda ds: setattr(ds, "SeriesType", ["GATED", "IMAGE"]), "PET series kind is gated"),
        (lambda ds: delattr(ds, "SeriesType"), "PET series kind is unknown"),
        (lambda ds: ds.RadiopharmaceuticalInformationSequence[0].RadiopharmaceuticalCodeSequence[0].__setattr__(
            "CodeValue", "35321007"), "tracer f18_fdg not in"),
        (lambda ds: setattr(ds, "RadiopharmaceuticalInformationSequence", DicomSequence([])),
         "tracer (not recognised) not in"),
    ],
    ids=["static", "gated", "no-series-type", "fdg", "no-radiopharmaceutical"],
)
def test_pet_that_is_not_dynamic_mbf_pet_is_not_routed_and_the_reason_names_the_attribute(change, why):
    datasets = _study("REST RB82 DYNAMIC", "STRESS RB82 DYNAMIC")
    for ds in datasets:
        change(ds)
    name, reason, _ = _route(datasets)
    assert name is None, reason
    assert why in reason, reason


def test_a_tracer_named_only_in_text_is_routed_by_its_name():
    datasets = _study("REST N13 AMMONIA DYN", "STRESS N13 AMMONIA DYN")
    for ds in datasets:
        item = ds.RadiopharmaceuticalInformationSequence[0]
        del item.RadiopharmaceuticalCodeSequence
        item.Radiopharmaceutical = "Ammonia N-13"
    name, reason, complete = _route(datasets)
    assert (name, complete) == ("pet_mbf", True), reason
    assert routing_attributes(datasets[0])["tracer"] == "n13_ammonia"


def test_the_state_comes_from_the_same_rule_as_spect_and_an_unnamed_state_is_not_routed():
    datasets = _study("RB82 DYNAMIC 1", "RB82 DYNAMIC 2")
    name, reason, _ = _route(datasets)
    assert name is None
    assert "acquisition state is unknown" in reason


def test_spect_studies_still_go_to_spect_and_pet_never_does():
    spect = StudySummary("1.2.3", (
        SeriesSummary("1.2.3.1", modality="NM", image_type=("ORIGINAL", "PRIMARY", "RECON TOMO"), state="stress"),
        SeriesSummary("1.2.3.2", modality="NM", image_type=("ORIGINAL", "PRIMARY", "RECON TOMO"), state="rest"),
    ))
    pipeline, reason = registry.route(spect)
    assert pipeline is not None and pipeline.name == "spect_mpi", reason
    pet = registry.get("pet_mbf")
    assert not pet.accept(spect).accepted
    pet_study = _study("REST RB82 DYNAMIC", "STRESS RB82 DYNAMIC")
    assert not registry.get("spect_mpi").accept(StudySummary.from_datasets(pet_study)).accepted
