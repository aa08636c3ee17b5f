"""The PET time-activity tier (node.synth.pet.tac): schedules, inputs, truth, noise level, seeding."""

from __future__ import annotations

import numpy as np
import pytest

from node.quant import kinetics as K
from node.synth.pet import tac


@pytest.mark.parametrize("tracer,variant,n_frames,total_s", [
    ("Rb-82", "default", 16, 360.0), ("Rb-82", "short", 14, 360.0), ("Rb-82", "fast", 22, 360.0),
    ("N-13 ammonia", "default", 22, 540.0), ("O-15 water", "default", 24, 280.0),
])
def test_frame_schedules(tracer, variant, n_frames, total_s) -> None:
    schedule = tac.frame_schedule(tracer, variant)
    assert schedule.n_frames == n_frames and schedule.end_s[-1] == total_s and schedule.start_s[0] == 0.0
    np.testing.assert_allclose(schedule.start_s[1:], schedule.end_s[:-1])  # contiguous
    assert tac.frame_schedule(K.NH3UCLA()).n_frames == 22  # a model selects its tracer's schedule


def test_input_shapes(seed) -> None:
    rng = np.random.default_rng(seed)
    for tracer, ranges in tac.INPUT_RANGES.items():
        shape = tac.sample_input_shape(tracer, rng)
        for name, (lo, hi) in ranges.items():
            assert lo <= getattr(shape, name) <= hi, (seed, tracer, name)
        t = np.arange(0, 400, 0.05)
        lv = shape(t)
        assert np.all(lv[t <= shape.delay_s] == 0) and np.all(lv >= 0)
        assert abs(t[np.argmax(lv)] - shape.peak_time_s) < 1.0, (seed, tracer)
        assert 0.99 * shape.peak_bq_per_ml < lv.max() < 1.3 * shape.peak_bq_per_ml
        late = lv[(t > 200) & (t < 240)].mean() / lv.max()
        assert 0.3 * shape.plateau_fraction < late < 1.5 * (shape.plateau_fraction + shape.recirculation_fraction)
        rv = shape.rv(4.0)
        assert t[np.argmax(rv(t))] < t[np.argmax(lv)] - 2.0  # RV peaks earlier
        assert rv(t).max() > lv.max()
        np.testing.assert_allclose(rv(np.array([300.0])), shape(np.array([300.0])), rtol=0.02)  # same plateau level
    assert tac.sample_input_shape("Rb-82", rng, alpha=3.0).alpha == 3.0


def test_truth_and_noise_free_tacs_follow_the_model(seed) -> None:
    rng = np.random.default_rng(seed)
    model = K.Rb82Lortie()
    mbf = rng.uniform(0.6, 1.4, 17)
    study = tac.make_tac_study(model, mbf, rng, noise_level=0.0, rv_fraction=0.1)
    truth = study.truth
    np.testing.assert_allclose(truth.parameters["k2_per_min"], model.k1(mbf) / truth.distribution_volume_ml_per_g)
    assert 2.8 <= truth.distribution_volume_ml_per_g <= 4.0
    assert np.all((truth.parameters["blood_fraction"] >= 0.25) & (truth.parameters["blood_fraction"] <= 0.45))
    septal = np.zeros(17, bool)
    septal[[s - 1 for s in K.SEPTAL_SEGMENTS]] = True
    assert np.all(truth.parameters["rv_fraction"][septal] == 0.1) and np.all(truth.parameters["rv_fraction"][~septal] == 0)
    np.testing.assert_array_equal(study.segment_tacs_bq_per_ml, study.noise_free_segment_tacs_bq_per_ml)
    again = K.model_curve(model, study.schedule, truth.parameters, blood_input=study.blood_input,
                          rv_input=study.rv_input, dt_s=0.1)
    np.testing.assert_allclose(again, study.segment_tacs_bq_per_ml, rtol=1e-12)
    assert truth.model == model.name and truth.constants["extraction_a"] == 0.77
    water = tac.make_tac_study(K.H2OIida(), mbf, rng, noise_level=0.0)
    np.testing.assert_allclose(water.truth.parameters["ptmbf_ml_per_min_per_ml"]
                               * water.truth.parameters["perfusable_tissue_fraction"], mbf)
    for model in (K.NH3DeGrado(), K.NH3UCLA()):
        study = tac.make_tac_study(model, mbf, rng, noise_level=0.0)
        assert study.tracer == "N-13 ammonia" and np.all(study.segment_tacs_bq_per_ml[-1] > 0)


def test_seeded_and_reproducible(seed) -> None:
    model = K.Rb82Lortie()
    a = tac.make_rest_stress(model, np.random.default_rng(seed))
    b = tac.make_rest_stress(model, np.random.default_rng(seed))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.segment_tacs_bq_per_ml, y.segment_tacs_bq_per_ml)
        np.testing.assert_array_equal(x.blood_bq_per_ml, y.blood_bq_per_ml)
    c = tac.make_rest_stress(model, np.random.default_rng(seed + 1))
    assert not np.array_equal(a[0].segment_tacs_bq_per_ml, c[0].segment_tacs_bq_per_ml)
    rest, stress = a
    assert rest.state == "rest" and stress.state == "stress"
    ratio = stress.truth.mbf_ml_per_min_per_g / rest.truth.mbf_ml_per_min_per_g
    assert np.all((ratio >= 2.0 - 1e-12) & (ratio <= 3.5 + 1e-12)) or np.any(stress.truth.mbf_ml_per_min_per_g == 4.5)
    assert np.all(stress.truth.mbf_ml_per_min_per_g <= 4.5)
    np.testing.assert_array_equal(rest.truth.parameters["blood_fraction"], stress.truth.parameters["blood_fraction"])


def test_noise_level_on_the_last_frame(seed) -> None:
    """5 % relative SD on the last frame of each segment TAC, 2.5 % on the blood TAC (300 replicates)."""
    model = K.Rb82Lortie()
    shape = tac.sample_input_shape(model, np.random.default_rng(seed))
    rng = np.random.default_rng(seed)
    runs = [tac.make_tac_study(model, np.full(17, 1.0), rng, input_shape=shape, blood_fraction=0.35,
                               distribution_volume_ml_per_g=3.5, rv_lead_s=4.0) for _ in range(300)]
    clean = runs[0].noise_free_segment_tacs_bq_per_ml
    tissue = np.stack([r.segment_tacs_bq_per_ml for r in runs])
    blood = np.stack([r.blood_bq_per_ml for r in runs])
    rel_last = tissue[:, -1, :].std(axis=0) / clean[-1]
    assert 0.046 < rel_last.mean() < 0.054, (seed, rel_last.mean())
    rel_blood = blood[:, -1].std() / runs[0].noise_free_blood_bq_per_ml[-1]
    assert 0.020 < rel_blood < 0.030, (seed, rel_blood)
    assert abs(tissue.mean(axis=0)[-1] / clean[-1] - 1).max() < 0.02  # unbiased
    # the noise shape var ~ C / (duration * mean decay factor): 10 s uptake frames of Rb-82 come out
    # at 4-10 % (decay correction amplifies the late frame's noise more than the short frames')
    mid = (tissue.std(axis=0)[4:12] / clean[4:12]).mean()
    assert 0.03 < mid < 0.12, (seed, mid)


def test_decay_uncorrected_output(seed) -> None:
    model = K.H2OIida()
    rng = np.random.default_rng(seed)
    mbf = rng.uniform(0.6, 4.0, 17)
    corrected = tac.make_tac_study(model, mbf, np.random.default_rng(seed), noise_level=0.05)
    raw = tac.make_tac_study(model, mbf, np.random.default_rng(seed), noise_level=0.05, decay_corrected=False)
    d = corrected.schedule.mean_decay_factor(model.decay_constant_per_s)
    np.testing.assert_allclose(raw.segment_tacs_bq_per_ml, corrected.segment_tacs_bq_per_ml * d[:, None], rtol=1e-12)
    np.testing.assert_allclose(raw.blood_bq_per_ml, corrected.blood_bq_per_ml * d, rtol=1e-12)
    assert not raw.decay_corrected and corrected.decay_corrected
    with pytest.raises(ValueError):
        tac.make_tac_study(model, mbf[:5], rng)
