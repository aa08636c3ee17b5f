"""The PET image tier (node.synth.pet.phantom): truth, voxel values from the model, noise, motion, seeding."""

from __future__ import annotations

import numpy as np
import pytest

from node.quant import kinetics as K
from node.quant.segments import TERRITORY_SEGMENTS
from node.synth.pet import phantom as P
from node.synth.pet.tac import sample_input_shape


def test_study_truth_is_consistent(seed: int) -> None:
    rng = np.random.default_rng(seed)
    study = P.make_pet_study(rng, defect_territory="LCx")
    rest, stress = study.rest.truth, study.stress.truth
    for truth in (rest, stress):
        mbf = truth.segment_mbf_ml_per_min_per_g
        assert truth.global_mbf_ml_per_min_per_g == pytest.approx(mbf.mean())
        for name, segs in TERRITORY_SEGMENTS.items():
            assert truth.territory_mbf_ml_per_min_per_g[name] == pytest.approx(mbf[[s - 1 for s in segs]].mean())
        assert truth.model == "rb82_lortie_1tcm" and truth.schedule.n_frames == 16 and not truth.moved
        np.testing.assert_allclose(truth.parameters["k2_per_min"],
                                   K.Rb82Lortie().k1(mbf) / truth.distribution_volume_ml_per_g)
        assert np.all((truth.vascular_fraction >= 0.08) & (truth.vascular_fraction <= 0.12))
    assert np.all((rest.segment_mbf_ml_per_min_per_g > 0.5) & (rest.segment_mbf_ml_per_min_per_g < 1.6))
    mfr = study.truth.segment_mfr
    np.testing.assert_allclose(mfr, stress.segment_mbf_ml_per_min_per_g / rest.segment_mbf_ml_per_min_per_g)
    lcx = np.array([s - 1 for s in TERRITORY_SEGMENTS["LCx"]])
    others = np.setdiff1d(np.arange(17), lcx)
    factor = study.truth.defect_factor
    assert 0.35 <= factor <= 0.7 and study.truth.defect_territory == "LCx"
    assert np.all(mfr[others] >= 2.4)  # 2.6 x 0.95, or the 4.5 mL/min/g stress cap over rest <= 1.54
    assert np.all(mfr[lcx] <= 0.7 * 3.6 * 1.05 + 1e-9) and mfr[lcx].mean() < mfr[others].mean()
    assert study.truth.global_mfr == pytest.approx(stress.global_mbf_ml_per_min_per_g / rest.global_mbf_ml_per_min_per_g)
    assert set(study.truth.impaired_territories) <= {"LCx"}
    diffuse = P.make_pet_study(rng, diffuse=True, spec=P.PetPhantomSpec(noise_level=0.0))
    assert np.all((diffuse.truth.segment_mfr >= 1.3) & (diffuse.truth.segment_mfr <= 1.9))
    assert diffuse.truth.impaired_territories == ("LAD", "LCx", "RCA")
    # anatomy: the majority labels hold every structure, in plausible volumes (mL)
    labels = study.rest.truth.labels
    voxel_ml = 3.2**3 / 1000.0
    counts = {name: int(np.sum(labels == i)) * voxel_ml for i, name in enumerate(P.LABELS)}
    assert 90 < sum(counts[str(s)] for s in range(1, 18)) < 200
    assert 60 < counts["lv_blood"] < 200 and 40 < counts["rv_blood"] < 250 and counts["liver"] > 50


def test_voxel_values_are_tissue_plus_blood_fraction_times_blood(seed: int) -> None:
    """Unblurred (0.1 mm FWHM), noise-free: a voxel wholly inside a segment is that segment's model curve."""
    rng = np.random.default_rng(seed)
    spec = P.PetPhantomSpec(noise_level=0.0, fwhm_mm=0.1)
    mbf = rng.uniform(0.6, 1.4, 17)
    series = P.make_pet_series(mbf, rng, spec=spec, state="rest")
    truth = series.truth
    t = np.arange(0.0, 400.0, 0.1)
    expected = K.model_curve(K.Rb82Lortie(), truth.schedule, truth.parameters,
                             blood_input=K.SampledInput(t, truth.input_shape(t)), dt_s=0.1)
    fractions = truth.label_fractions
    values = series.noise_free.voxels.reshape(truth.schedule.n_frames, -1).astype(float)
    for segment in (1, 9, 15, 17):
        pure = np.flatnonzero(fractions[segment - 1] > 0.999)  # flat voxel index
        assert pure.size > 5, segment
        np.testing.assert_allclose(values[:, pure].mean(axis=1), expected[:, segment - 1], rtol=1e-4, atol=1.0)
    blood = np.flatnonzero(fractions[P.LABELS.index("lv_blood")] > 0.999)
    np.testing.assert_allclose(values[:, blood].mean(axis=1), truth.blood_bq_per_ml, rtol=1e-4, atol=1.0)
    rv = np.flatnonzero(fractions[P.LABELS.index("rv_blood")] > 0.999)
    np.testing.assert_allclose(values[:, rv].mean(axis=1), truth.rv_bq_per_ml, rtol=1e-4, atol=1.0)
    assert np.argmax(truth.rv_bq_per_ml) <= np.argmax(truth.blood_bq_per_ml)


def test_noise_level_blur_and_determinism(seed: int) -> None:
    spec = P.PetPhantomSpec(noise_level=0.2)
    a = P.make_pet_study(np.random.default_rng(seed), spec=spec)
    b = P.make_pet_study(np.random.default_rng(seed), spec=spec)
    np.testing.assert_array_equal(a.stress.volume.voxels, b.stress.volume.voxels)
    assert a.stress.volume.voxels.dtype == np.float32 and a.stress.volume.voxels.shape == (16, 40, 64, 64)
    assert a.stress.volume.frame_axis.kind == "dynamic"
    np.testing.assert_allclose(a.stress.volume.frame_axis.schedule.start_s[:3], [0.0, 10.0, 20.0])
    series = a.rest
    myo = series.truth.myocardium_fraction >= 0.5
    last = series.volume.voxels[-1].astype(float)
    clean = series.noise_free.voxels[-1].astype(float)
    relative = (last - clean)[myo] / clean[myo]
    assert 0.16 < relative.std() < 0.24  # noise_level 0.2 at the mean myocardial value
    # blur: the noise-free wall is below its unblurred (model) level, by partial volume
    truth = series.truth
    t = np.arange(0.0, 400.0, 0.1)
    model_last = K.model_curve(K.Rb82Lortie(), truth.schedule, truth.parameters,
                               blood_input=K.SampledInput(t, truth.input_shape(t)), dt_s=0.1)[-1]
    assert 0.55 < clean[myo].mean() / model_last.mean() < 0.95


def test_motion_shifts_the_late_frames_only(seed: int) -> None:
    spec = P.PetPhantomSpec(noise_level=0.0)
    rng_still, rng_moved = np.random.default_rng(seed), np.random.default_rng(seed)
    mbf = np.full(17, 1.0)
    shape = sample_input_shape("Rb-82", np.random.default_rng(seed))
    frame = P.make_pet_series(mbf, np.random.default_rng(seed), spec=spec, input_shape=shape).truth.frame
    kwargs = dict(spec=spec, input_shape=shape, frame=frame, grid_centre_mm=np.array([20.0, -20.0, -10.0]),
                  vascular_fraction=0.1, distribution_volume_ml_per_g=3.5, rv_lead_s=4.0)
    still = P.make_pet_series(mbf, rng_still, **kwargs)
    moved = P.make_pet_series(mbf, rng_moved, motion_start_s=150.0, motion_direction=np.array([1.0, 0.0, 0.0]), **kwargs)
    assert moved.truth.moved and not still.truth.moved
    np.testing.assert_allclose(moved.truth.motion_shift_mm, [10.0, 0.0, 0.0])
    start = moved.truth.schedule.start_s
    a, b = still.noise_free.voxels.astype(float), moved.noise_free.voxels.astype(float)
    np.testing.assert_allclose(a[start < 150.0], b[start < 150.0], rtol=1e-6, atol=1e-3)
    # the centroid of the last frame moves by +10 mm in x (columns)
    cols = np.arange(a.shape[-1]) * 3.2

    def centroid_x(v: np.ndarray) -> float:
        w = np.clip(v - 0.5 * v.max(), 0.0, None)
        return float((w.sum(axis=(0, 1)) * cols).sum() / w.sum())

    assert centroid_x(b[-1]) - centroid_x(a[-1]) == pytest.approx(10.0, abs=1.0)


def test_planted_faults_and_refusals(seed: int) -> None:
    rng = np.random.default_rng(seed)
    with pytest.raises(ValueError, match="O-15"):
        P.make_pet_series(np.ones(17), rng, model=K.H2OIida())
    with pytest.raises(ValueError, match="17"):
        P.make_pet_series(np.ones(5), rng)
    with pytest.raises(ValueError, match="territory"):
        P.draw_study_flows(rng, defect_territory="LM")
    late_rv = P.make_pet_series(np.ones(17), rng, spec=P.PetPhantomSpec(noise_level=0.0), rv_lead_s=-10.0)
    assert np.argmax(late_rv.truth.rv_bq_per_ml) >= np.argmax(late_rv.truth.blood_bq_per_ml)
