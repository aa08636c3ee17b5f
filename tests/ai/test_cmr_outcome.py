"""The seed's CMR outcome models (issue 18): the basal frame, the networks, the shipped bundles, a smoke training on
the tiny cohort, Grad-CAM and the pointing game, and the CMR pipeline's prediction groups and heat maps."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
import torch

from node.ai import bundles
from node.ai.cmr_outcome import (
    FRAME_PIXEL_MM,
    FRAME_SIZE,
    OUTCOME_BUNDLES,
    CmrOutcomeNet,
    basal_frame_input,
    choose_basal_slice,
    frame_geometry,
    pointing_game_test,
    pointing_hits,
    predict_outcomes,
    random_map_hit_probability,
    sample_on_frame,
)
from node.ai.inception import InceptionV3
from node.imaging.volume import ShortAxisStack
from node.pipelines import cmr_lge
from tests.results.test_cmr_outputs import truth_labels
from tests.support.cmr import cmr_study
from tests.support.report import context

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"


def _texts(ds) -> str:
    """Every TEXT and UIDREF value of an SR content tree, joined (``str(dataset)`` shortens long values)."""
    out = []
    for item in ds.get("ContentSequence", []):
        out += [str(item.get("TextValue", "")), str(item.get("UID", "")), _texts(item)]
    return " ".join(out)


def _ring_stack(pool_radii: list[float], open_slices: tuple[int, ...] = (), spacing: float = 2.0,
                centre: tuple[float, float] = (60.0, 70.0)) -> tuple[ShortAxisStack, np.ndarray]:
    """A stack of LV rings: blood pool of radius ``pool_radii[s]`` (pixels), wall 4 pixels; ``open_slices`` have a
    gap cut through the wall. Image: blood 100, myocardium 10, background 40; scar 300 on the wall's right side."""
    n, size = len(pool_radii), 128
    rows, cols = np.mgrid[:size, :size]
    dist = np.hypot(rows - centre[0], cols - centre[1])
    labels = np.zeros((n, size, size), np.uint8)
    image = np.full((n, size, size), 40.0, np.float32)
    for s, radius in enumerate(pool_radii):
        myo = (dist > radius) & (dist <= radius + 4)
        if s in open_slices:
            myo &= ~((np.abs(rows - centre[0]) < 2) & (cols > centre[1]))
        labels[s][dist <= radius] = 1
        labels[s][myo] = 2
        image[s][dist <= radius] = 100.0
        image[s][myo] = 10.0
        image[s][myo & (cols > centre[1] + radius)] = 300.0
    stack = ShortAxisStack(voxels=image[None], positions_mm=np.stack([np.zeros(n), np.zeros(n), 8.0 * np.arange(n)], 1),
                           row_cosine=np.array([1.0, 0.0, 0.0]), column_cosine=np.array([0.0, 1.0, 0.0]),
                           pixel_spacing_mm=np.array([spacing, spacing]), slice_thickness_mm=8.0,
                           trigger_ms=np.full((1, n), np.nan))
    return stack, labels


def test_the_basal_frame_is_the_most_basal_closed_ring_on_an_80_pixel_grid_centred_on_the_lv():
    # apex at slice 0 (small cavity), base at the end; the last slice's ring is open (valve plane)
    stack, labels = _ring_stack([4, 7, 9, 11, 12, 12], open_slices=(5,))
    frame, index = basal_frame_input(stack, labels)
    assert index == 4 and frame.shape == (1, FRAME_SIZE, FRAME_SIZE) and frame.dtype == np.float32
    assert -0.5 <= frame.min() and frame.max() <= 1.5
    # the LV is centred: the frame's centre is blood pool, bright after the p1/p99 scaling
    assert frame[0, 38:42, 38:42].mean() > 0.2
    # the reversed stack (base first) picks the same ring
    flipped = replace(stack, voxels=stack.voxels[:, ::-1].copy())
    assert choose_basal_slice(labels[::-1], stack.pixel_spacing_mm) == 1
    assert basal_frame_input(flipped, labels[::-1])[1] == 1
    # masks go onto the same grid (nearest), the field is 144 mm: the 2-mm ring of radius 16 px spans 2 * 16 * 2 / 1.8
    geometry = frame_geometry(labels, stack.pixel_spacing_mm)
    pool = sample_on_frame(labels[index] == 1, geometry, order=0)
    assert pool.dtype == bool and pool.sum() == pytest.approx(np.pi * (12 * 2.0 / FRAME_PIXEL_MM) ** 2, rel=0.1)
    with pytest.raises(ValueError, match="no slice with an LV"):
        basal_frame_input(stack, np.zeros_like(labels))


def test_networks_have_the_seed_head_and_the_published_stems():
    for backbone in ("resnet50", "inceptionv3"):
        net = CmrOutcomeNet(backbone, width=0.125).eval()
        with torch.no_grad():
            out = net(torch.zeros(3, 1, FRAME_SIZE, FRAME_SIZE))
        assert out.shape == (3, 2)
        head = list(net.head)
        assert isinstance(head[0], torch.nn.Flatten) and head[1].out_features == 512
        assert isinstance(head[3], torch.nn.Dropout) and head[3].p == 0.5
    resnet = CmrOutcomeNet("resnet50", width=0.125).backbone
    assert resnet.conv1.kernel_size == (7, 7) and resnet.conv1.stride == (2, 2) and not resnet.no_max_pool
    assert [len(getattr(resnet, f"layer{k}")) for k in range(1, 5)] == [3, 4, 6, 3]
    # InceptionV3 at the published widths: 21.8 M backbone parameters (Keras: 21,802,784), 2048 channels
    full = InceptionV3(1, 1.0)
    n = sum(p.numel() for p in full.parameters())
    assert n == pytest.approx(21.8e6, rel=0.02) and full.out_channels == 2048
    with pytest.raises(ValueError):
        CmrOutcomeNet("vgg16")


@pytest.mark.parametrize("bundle", sorted(OUTCOME_BUNDLES))
def test_shipped_bundles_are_deterministic_batch_independent_and_fast(bundle, no_network):
    frames = np.random.default_rng(3).normal(0.3, 0.3, (4, 1, FRAME_SIZE, FRAME_SIZE)).astype(np.float32)
    a = predict_outcomes(frames, bundle=bundle, device="cpu")
    b = predict_outcomes(frames[1:2], bundle=bundle, device="cpu")
    assert a.probabilities.shape == (4, 2) and np.all((a.probabilities >= 0) & (a.probabilities <= 1))
    np.testing.assert_array_equal(a.probabilities[1], b.probabilities[0])
    assert a.heat_maps is not None and b.heat_maps is not None and a.heat_maps.shape == (4, 2, FRAME_SIZE, FRAME_SIZE)
    np.testing.assert_allclose(a.heat_maps[1], b.heat_maps[0], atol=2e-3)
    assert a.heat_maps.min() >= 0 and a.heat_maps.max() <= 1
    weights = torch.load(bundles.models_dir() / bundle / "models" / "model.pt", weights_only=True)
    assert {v.dtype for v in weights.values() if v.is_floating_point()} == {torch.float16}
    assert next(bundles.load_bundle(bundle, device="cpu").network.parameters()).dtype == torch.float32
    start = time.perf_counter()
    predict_outcomes(frames[:1], bundle=bundle, device="cpu")
    assert time.perf_counter() - start < 1.0  # one study, Grad-CAM of both outputs included, one core


def test_pointing_game_functions_and_their_test():
    masks = np.zeros((40, 20, 20), bool)
    masks[:, 5:8, 5:8] = True
    chance = random_map_hit_probability(masks, tolerance_px=0)
    assert chance == pytest.approx(np.full(40, 9 / 400))
    good = np.zeros((40, 20, 20))
    good[:, 6, 6] = 1.0
    bad = np.zeros((40, 20, 20))
    bad[:, 15, 15] = 1.0
    assert pointing_hits(good, masks, 0).all() and not pointing_hits(bad, masks, 0).any()
    assert pointing_hits(bad, masks, 1).sum() == 0 and pointing_hits(np.roll(good, 2, axis=2), masks, 1).all()
    assert pointing_game_test(pointing_hits(good, masks, 0), chance)["p_value"] < 0.001
    assert pointing_game_test(pointing_hits(bad, masks, 0), chance)["p_value"] == 1.0


@pytest.fixture(scope="module")
def tiny():
    from node.synth.cmr.cohort import tiny_cmr_cohort

    return tiny_cmr_cohort(4, 0)


def test_smoke_training_on_the_tiny_cohort_writes_a_bundle_that_loads(tiny, tmp_path):
    from node.ai.training.cmr_outcome import Schedule, train_cmr_outcome
    from node.synth.cmr.cohort import write_cmr_cohort

    for name in ("small", "large", "test"):
        write_cmr_cohort(tiny, tmp_path / "cohorts" / f"{name}.npz")
    out = tmp_path / "cmr_lge_outcome_resnet50"
    result = train_cmr_outcome(out, "cmr_lge_outcome_resnet50", cohorts=tmp_path / "cohorts", width=1 / 16,
                               schedule=Schedule(cv_epochs=1, cv_repeats=1, large_epochs=1, finetune_epochs=1),
                               checkpoints=tmp_path / "ckpt", scores_out=tmp_path / "scores.npz")
    summary = result.evaluation["summary"]
    assert {"small_cv_random/event", "small_cv_pretrained/event", "large/test/lge_above_5_7"} <= set(summary)
    with np.load(tmp_path / "scores.npz") as scores:
        assert scores["small/resnet50_random/event"].shape == (1, len(tiny))
        assert scores["test/resnet50_random/lge"].shape == (len(tiny),)
    loaded = bundles.load_bundle("cmr_lge_outcome_resnet50", root=out, device="cpu")
    assert loaded.metadata["intended_use"] == bundles.INTENDED_USE and "synthetic" in loaded.metadata["training_data"]
    assert "ImageNet" in (out / "docs" / "README.md").read_text()
    scores = predict_outcomes(tiny.frames, model_dir=out, device="cpu")
    assert scores.heat_maps is not None and np.isfinite(scores.heat_maps).all()


def test_grad_cam_of_the_shipped_model_points_into_the_field_on_the_tiny_cohort(tiny):
    scores = predict_outcomes(tiny.frames)
    assert scores.heat_maps is not None
    hits = pointing_hits(scores.heat_maps[:, 0], tiny.myocardium_mask, tolerance_px=2)
    chance = random_map_hit_probability(tiny.myocardium_mask, tolerance_px=2)
    result = pointing_game_test(hits, chance)
    assert 0.0 < result["random_rate"] < 0.5 and result["n"] == len(tiny)
    assert all(float(m.max()) == 1.0 for m in scores.heat_maps[:, 0])  # each map scaled to its maximum


def test_the_pipeline_reports_both_predictions_with_heat_maps_naming_the_basal_frame():
    study = cmr_study("standard", 1, "sarcoid_multifocal_rv")
    loaded = cmr_lge.PIPELINE.analyse(study.datasets)
    assert loaded.lge_stack is not None
    labels = truth_labels(study.lge.fractions)
    outcome, note = cmr_lge.predict_outcome(loaded, labels, "cmr_lge_outcome_resnet50")
    assert outcome is not None and note is None
    assert outcome.sop_instance_uid == loaded.lge_sop_uids[outcome.slice_index]
    assert outcome.frame.shape == (FRAME_SIZE, FRAME_SIZE)
    result = replace(cmr_lge.quantify_result(loaded, labels, None), outcome=outcome)
    outputs = cmr_lge.PIPELINE.report(result, context())
    sr = outputs[0]
    assert str(sr.SOPClassUID) == SR_CLASS
    heat = {str(ds.SOPInstanceUID): ds for ds in outputs if "Grad-CAM" in str(ds.get("SeriesDescription", ""))}
    assert len(heat) == 2
    for ds in heat.values():
        assert [str(i.ReferencedSOPInstanceUID) for i in ds.SourceImageSequence] == [outcome.sop_instance_uid]
        assert ds.DerivationCodeSequence[0].CodeValue == "130403"
    report = hd.sr.srread(sr) if not isinstance(sr, hd.sr.Comprehensive3DSR) else sr
    groups = [g for g in report.content.get_image_measurement_groups() if str(g.tracking_identifier).startswith("AI:")]
    assert len(groups) == 2
    values = sorted(float(m.value) for g in groups for m in g.get_measurements())
    assert values == sorted([outcome.probability_lge, outcome.probability_event])
    text = _texts(sr)
    assert f"basal_frame_sop_instance_uid={outcome.sop_instance_uid}" in text and "not clinically validated" in text
    referenced = {str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
                  for g in groups for item in g[0].ContentSequence if item.ValueType == "IMAGE"}
    assert referenced == set(heat)
    # the prediction travels through the queue's codec with the result
    from node.queue.codec import decode, encode, schema_for

    schema = schema_for(cmr_lge.PIPELINE.result_type)
    back = decode(encode(result, schema), schema)
    assert back.outcome is not None and back.outcome.probability_event == outcome.probability_event
    np.testing.assert_array_equal(back.outcome.heat_lge, outcome.heat_lge)


def test_no_outcome_model_option_and_a_missing_bundle_are_notes(tmp_path):
    stack, labels = _ring_stack([4, 7, 9, 11, 12, 12])
    loaded = cmr_lge.CmrLgeResult("1.2.3", (), "lge_mag", ("1.2.3.4",) * 6, tuple(f"1.2.3.5.{k}" for k in range(6)),
                                  (1,) * 6, lge_stack=stack)
    outcome, note = cmr_lge.predict_outcome(loaded, labels, "cmr_lge_outcome_resnet50", Path(tmp_path / "none"))
    assert outcome is None and note is not None and "outcome model not applied" in note
    assert cmr_lge.CmrLgeOptions(outcome_model="none").outcome_model == "none"
