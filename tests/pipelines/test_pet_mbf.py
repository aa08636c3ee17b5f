"""The PET MBF pipeline on DICOM: vendor timing variants give the image tier's numbers; rest-only, missing
tracer codes and real PT files are handled in words; results travel between workers intact.

The studies are image-tier phantoms (:mod:`node.synth.pet.phantom`) written as PET Image
Storage instances (:mod:`node.synth.pet.study`) and read back by the pipeline from their bytes.
The statistical accuracy of the method over many phantoms is tested in
``tests/quant/test_mbf.py`` and measured by ``bench/validate_pet_image.py``; here the question is
whether DICOM changes anything.
"""

from __future__ import annotations

import copy
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import Dataset

from node.imaging.errors import UnusableSeriesError
from node.imaging.pet import load_dynamic_pet
from node.pipelines.pet_mbf import PIPELINE, PetMbfResult, analyse_pet_study, report_content, report_sources
from node.quant.kinetics import default_model
from node.quant.mbf import analyse_dynamic
from node.queue.codec import decode, encode, schema_for
from node.synth.pet.phantom import PetStudy, make_pet_study
from node.synth.pet.study import build_pet_study, build_phantom_pet_study

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "real"
if not CORPUS.is_dir():
    CORPUS = Path("/work/shared/corpus/real")
WHEN = datetime(2026, 5, 4, 8, 0, 0)


@pytest.fixture(scope="module")
def phantom() -> PetStudy:
    return make_pet_study(np.random.default_rng(20261207), defect_territory="LCx")


def _roundtrip(datasets: list[Dataset]) -> list[Dataset]:
    """The instances as a receiver gets them: written to bytes and read back."""
    out = []
    for ds in datasets:
        buffer = pydicom.filebase.DicomBytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        out.append(pydicom.dcmread(pydicom.filebase.DicomBytesIO(buffer.getvalue())))
    return out


@pytest.mark.parametrize(("vendor", "decay"), [("ge", "START"), ("philips", "ADMIN")])
def test_vendor_timing_variants_give_the_image_tier_mbf(phantom, vendor, decay):
    """Frame starts within 0.5 s of truth, and the stress MBF of the DICOM series equals that of the volume.

    The third variant (siemens, NONE) is in ``tests/synth/test_pet_dicom.py``; frame starts and voxels
    of all nine vendor x decay-correction combinations are checked there, and the MBF of all of them
    over several phantoms by ``bench/validate_pet_dicom.py``."""
    series = phantom.stress
    model = default_model(phantom.spec.tracer)
    image_tier = analyse_dynamic(series.volume, state="stress", model=model)
    study = build_pet_study(None, series.volume, tracer=phantom.spec.tracer, vendor=vendor, decay_correction=decay,
                            shuffle=True, key=f"variants-{vendor}-{decay}", when=WHEN)
    loaded = load_dynamic_pet(_roundtrip(study.datasets))
    truth_start = series.volume.frame_axis.schedule.start_s
    assert np.max(np.abs(loaded.start_s - truth_start)) <= 0.5, (loaded.start_s, truth_start)
    dicom_tier = analyse_dynamic(loaded.volume, state="stress", model=model,
                                 decay_corrected=loaded.decay_correction != "NONE")
    np.testing.assert_allclose(dicom_tier.fit.segment_mbf_ml_per_min_per_g,
                               image_tier.fit.segment_mbf_ml_per_min_per_g, rtol=1e-3)
    assert dicom_tier.fit.global_mbf_ml_per_min_per_g == pytest.approx(image_tier.fit.global_mbf_ml_per_min_per_g,
                                                                        rel=1e-3)


def test_a_rest_stress_study_gives_mbf_mfr_and_the_defect_territory(phantom):
    study = build_phantom_pet_study(phantom, vendor="ge", shuffle=True, key="pipeline-full", when=WHEN)
    result = PIPELINE.analyse(_roundtrip(study.datasets))
    assert result.rest is not None and result.stress is not None and result.reserve is not None
    truth = phantom.truth
    assert result.reserve.global_mfr == pytest.approx(truth.global_mfr, rel=0.15)
    impaired = {t for t, flag in result.reserve.territory_impaired.items() if flag}
    assert impaired == set(truth.impaired_territories), (result.reserve.territory_mfr, truth.impaired_territories)
    # every source instance of both series is referenced, and the voxel maps' sources are one frame's slices
    assert sorted(s.sop_instance_uid for s in result.sources) == sorted(str(ds.SOPInstanceUID) for ds in study.datasets)
    by_uid = {str(ds.SOPInstanceUID): ds for ds in study.datasets}
    assert all((s.study_instance_uid, s.series_instance_uid, s.sop_class_uid) == (
        str(by_uid[s.sop_instance_uid].StudyInstanceUID), str(by_uid[s.sop_instance_uid].SeriesInstanceUID),
        str(by_uid[s.sop_instance_uid].SOPClassUID)) for s in result.sources)
    assert all("PixelData" not in ds for ds in result.source_headers)
    n_slices = result.stress.voxel_mbf_ml_per_min_per_g.shape[0]
    assert len(result.parametric_sources["stress"]) == n_slices
    # whole headers only for what the report reads individually: each series' first instance and the maps' slices
    kept = {str(ds.SOPInstanceUID) for ds in result.source_headers}
    assert kept == {uid for uids in result.parametric_sources.values() for uid in uids} | {
        next(s.sop_instance_uid for s in result.sources if s.series_instance_uid == series)
        for series in result.series_uids.values()}
    assert len(kept) < len(result.sources) / 10
    sources = report_sources(result)
    assert [str(ds.SOPInstanceUID) for ds in sources] == [s.sop_instance_uid for s in result.sources]
    positions = {str(ds.SOPInstanceUID): float(ds.ImagePositionPatient[2]) for ds in study.datasets}
    z = [positions[uid] for uid in result.parametric_sources["stress"]]
    assert z == sorted(z) or z == sorted(z, reverse=True)
    # the stored result decodes to the same numbers (the queue carries it between workers)
    schema = schema_for(PetMbfResult)
    back = decode(encode(result, schema), schema)
    np.testing.assert_array_equal(back.reserve.segment_mfr, result.reserve.segment_mfr)
    np.testing.assert_array_equal(back.stress.voxel_mbf_ml_per_min_per_g, result.stress.voxel_mbf_ml_per_min_per_g)
    assert [f.code for f in back.all_flags] == [f.code for f in result.all_flags]
    # the global verdict is the global MFR's; the seed's "any segment" label is its own, named group
    verdicts = {group.label: group.evaluations[0].value for group in report_content(result).groups
                if group.finding == "myocardial_flow_reserve" and group.site == "left_ventricle"}
    assert verdicts == {
        "MFR global": "present" if result.reserve.global_impaired else "absent",
        "MFR impaired in any AHA segment": "present" if result.reserve.any_segment_impaired else "absent",
    }


def test_a_rest_only_study_reports_rest_mbf_with_a_note(phantom):
    study = build_pet_study(phantom.rest.volume, None, tracer=phantom.spec.tracer, key="rest-only", when=WHEN)
    result = analyse_pet_study(study.datasets)
    assert result.stress is None and result.reserve is None
    assert result.rest is not None and np.isfinite(result.rest.fit.global_mbf_ml_per_min_per_g)
    assert any("no stress series" in note for note in result.notes), result.notes


def test_a_tracer_named_but_not_coded_is_used_and_flagged(phantom):
    study = build_pet_study(phantom.rest.volume, None, tracer=phantom.spec.tracer, key="uncoded", when=WHEN)
    datasets = copy.deepcopy(study.datasets)
    for ds in datasets:
        del ds.RadiopharmaceuticalInformationSequence[0].RadiopharmaceuticalCodeSequence
    result = analyse_pet_study(datasets)
    assert [f.code for f in result.flags] == ["tracer_code_missing"]
    assert "not coded" in result.flags[0].text


def test_a_series_without_timing_is_refused_with_the_attribute_named(phantom):
    study = build_pet_study(phantom.rest.volume, None, tracer=phantom.spec.tracer, key="no-duration", when=WHEN)
    datasets = copy.deepcopy(study.datasets)
    del datasets[5].ActualFrameDuration
    with pytest.raises(UnusableSeriesError) as caught:
        analyse_pet_study(datasets)
    assert "ActualFrameDuration (0018,1242)" in str(caught.value)


def test_real_pt_files_are_refused_with_their_reasons():
    files = sorted((CORPUS / "pt").glob("*"))
    if not files:
        pytest.skip("real corpus not present")
    for path in files:
        ds = pydicom.dcmread(path, force=True)
        with pytest.raises(UnusableSeriesError) as caught:
            analyse_pet_study([ds])
        message = str(caught.value)
        assert "no usable dynamic PET series" in message, (path.name, message)
        assert "(0054," in message or "(0008," in message or "(0028," in message, (path.name, message)


def test_an_enhanced_pet_study_is_routed_and_gives_the_same_mbf_as_pet_image_storage(phantom):
    """Enhanced PET (one multi-frame instance per series, per-frame timing) routes to pet_mbf, completes, and
    gives the numbers of the same volumes stored as PET Image Storage."""
    from node.pipelines import registry
    from node.pipelines.routing import StudySummary

    enhanced = build_phantom_pet_study(phantom, storage="enhanced", key="enhanced-study", when=WHEN)
    legacy = build_phantom_pet_study(phantom, storage="legacy", key="enhanced-study", when=WHEN)
    datasets = _roundtrip(enhanced.datasets)
    assert len(datasets) == 2
    summary = StudySummary.from_datasets(datasets)
    pipeline, reason = registry.route(summary)
    assert pipeline is not None and pipeline.name == "pet_mbf", reason
    assert pipeline.accept(summary).complete, reason
    from_enhanced = analyse_pet_study(datasets)
    from_legacy = analyse_pet_study(legacy.datasets)
    for state in ("rest", "stress"):
        a, b = getattr(from_enhanced, state), getattr(from_legacy, state)
        np.testing.assert_allclose(a.fit.segment_mbf_ml_per_min_per_g, b.fit.segment_mbf_ml_per_min_per_g, rtol=1e-3)
    # the Parametric Map of an Enhanced series references the multi-frame source (one instance for all slices)
    assert set(from_enhanced.parametric_sources["stress"]) <= {str(ds.SOPInstanceUID) for ds in datasets}
