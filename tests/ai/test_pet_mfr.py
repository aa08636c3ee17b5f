"""The PET flow-reserve model of issue 16 (node.ai.pet_mfr, bundle models/pet_mfr): the one input adapter, the
ResNet-50 and its stem, the shipped bundle (offline MONAI load, float16 weights, metadata), deterministic and
batch-independent inference, Grad-CAM localisation on single-territory defects, occlusion, a smoke training run
of the whole ``cardionode train pet_mfr`` path (small variant, tiny cohorts), and the PET pipeline's predict step
on a phantom measured by the node (SR groups, heat map, dciodvfy-clean outputs)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from node.ai import bundles
from node.ai.pet_mfr import (
    MBF_MAX,
    MFR_MAX,
    OCCLUSION_PATCH,
    gradcam_impaired,
    network_input,
    occlusion_maps,
    polar_maps_and_valid,
    polar_maps_from_result,
    predict_pet_maps,
)
from node.ai.training import pet_mfr as training
from node.quant.segments import DEFAULT_GRID, TERRITORIES

BUNDLE = bundles.models_dir() / "pet_mfr"


def _state(name: str, values: np.ndarray) -> SimpleNamespace:
    return SimpleNamespace(state=name, polar_mbf_ml_per_min_per_g=values)


def test_the_adapter_gives_three_maps_with_the_stated_nan_policy() -> None:
    rest, stress = np.full(DEFAULT_GRID.shape, 1.0), np.full(DEFAULT_GRID.shape, 2.5)
    rest[0, :3] = np.nan  # a failed fit
    rest[1, 0] = 0.0  # the basis-function map's "no fit" value
    stress[5, 7] = -1.0
    stress[2, 5] = 30.0  # implausible: clipped
    result = SimpleNamespace(rest=_state("rest", rest), stress=_state("stress", stress))
    maps, valid = polar_maps_and_valid(result)
    assert maps.shape == (3, 40, 72) and maps.dtype == np.float32 and np.isfinite(maps).all()
    assert valid.sum() == 40 * 72 - 5 and not valid[0, :3].any() and not valid[1, 0] and not valid[5, 7]
    assert not maps[:, ~valid].any()  # invalid cells are 0 in every channel
    assert maps[1, 2, 5] == MBF_MAX and maps[2, 2, 5] == MFR_MAX
    normal = valid.copy()
    normal[2, 5] = False
    np.testing.assert_allclose(maps[0][normal], 1.0)
    np.testing.assert_allclose(maps[2][normal], 2.5, rtol=1e-6)
    np.testing.assert_array_equal(polar_maps_from_result(result), maps)
    rest_only, none_valid = polar_maps_and_valid(SimpleNamespace(rest=_state("rest", rest), stress=None))
    assert not rest_only.any() and not none_valid.any()


def test_the_resnet50_has_19_outputs_trait_heads_and_the_stated_stem() -> None:
    net = training.make_network("stacked", training.FULL).eval()
    backbone = net.backbone
    assert backbone.conv1.in_channels == 3 and backbone.conv1.kernel_size == (3, 3) and backbone.conv1.stride == (2, 2)
    assert [len(getattr(backbone, f"layer{k}")) for k in range(1, 5)] == [3, 4, 6, 3]
    assert 23_000_000 < sum(p.numel() for p in backbone.parameters()) < 24_000_000
    shapes = {}
    hooks = [getattr(backbone, f"layer{k}").register_forward_hook(
        lambda m, i, o, k=k: shapes.__setitem__(k, tuple(o.shape[2:]))) for k in range(1, 5)]
    with torch.no_grad():
        out = net(torch.zeros(2, 3, 40, 72))
        traits = net.trait_logits(torch.zeros(2, 3, 40, 72))
    for h in hooks:
        h.remove()
    assert out.shape == (2, 19) and traits.shape == (2, 5, 2)
    assert shapes == {1: (10, 18), 2: (5, 9), 3: (3, 5), 4: (2, 3)}
    assert training.make_network("rest", training.TINY).backbone.conv1.in_channels == 1


def test_the_shipped_bundle_loads_offline_with_monai_and_documents_itself(no_network: None) -> None:
    for rel in ("configs/metadata.json", "configs/inference.json", "models/model.pt", "docs/README.md", "docs/evaluation.json"):
        assert (BUNDLE / rel).is_file(), rel
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.json"))
    parser.read_meta(str(BUNDLE / "configs" / "metadata.json"))
    parser["bundle_root"] = str(BUNDLE)
    network = parser.get_parsed_content("network_def")
    state = torch.load(parser.get_parsed_content("checkpoint"), map_location="cpu", weights_only=True)
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float16}  # stored half, loaded float32
    missing, unexpected = network.load_state_dict(state, strict=True)
    assert not missing and not unexpected
    assert all(p.dtype == torch.float32 for p in network.parameters())
    meta = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    for key in ("version", "inputs", "outputs", "training_data", "intended_use", "network_data_format", "reader_outputs"):
        assert meta.get(key), key
    assert meta["intended_use"] == bundles.INTENDED_USE and "synthetic" in meta["training_data"]
    readme = (BUNDLE / "docs" / "README.md").read_text()
    assert "not clinically validated" in readme and "pretrain" in readme.lower() and "ImageNet" in readme
    assert "float16" in readme


@pytest.fixture(scope="module")
def shipped() -> bundles.LoadedBundle:
    return bundles.load_bundle("pet_mfr", device="cpu")


@pytest.fixture(scope="module")
def phantoms() -> training.TrainingData:
    return training.polar_phantoms(48, first_seed=16_800_000)


def test_inference_is_deterministic_and_independent_of_the_batch(shipped, phantoms) -> None:
    maps = [phantoms.maps[i] for i in range(3)]
    first = predict_pet_maps(maps, ["a", "b", "c"], shipped, gradcam=True)
    again = predict_pet_maps(maps[::-1], ["c", "b", "a"], shipped, gradcam=True)
    alone = predict_pet_maps(maps[1:2], ["b"], shipped, gradcam=True)
    assert first[1].probabilities == again[1].probabilities == alone[0].probabilities
    np.testing.assert_array_equal(first[1].images[0].values, alone[0].images[0].values)
    assert set(first[0].probabilities) == {"impaired", *(f"impaired_{t.lower()}" for t in TERRITORIES)}
    assert all(0.0 <= p <= 1.0 for p in first[0].probabilities.values())
    image = first[0].images[0]
    assert image.derivation == "gradcam" and image.overlay_on == "mfr" and image.values.shape == (40, 72)
    assert abs(sum(image.segment_values or ()) - 100.0) < 0.5
    traits = predict_pet_maps(maps[:1], ["a"], shipped, gradcam=False, traits=True)[0]
    assert {k for k in traits.probabilities if k.startswith("trait_")} == {
        "trait_female", "trait_diabetes", "trait_hypertension", "trait_dyslipidaemia", "trait_smoking"}
    assert any(n.startswith("research output (not a clinical finding)") for n in traits.notes)


def test_gradcam_puts_most_of_its_mass_in_the_defect_territory(shipped, phantoms) -> None:
    """Acceptance (small set here; the test-cohort figure is in docs/validation.md): on phantoms with one impaired
    territory, the mean share of Grad-CAM mass in that territory is at least 60 %."""
    single = [i for i, t in enumerate(phantoms.defect_territory)
              if t and phantoms.territory_impaired[i, TERRITORIES.index(str(t))]]
    assert len(single) >= 8
    result = training.gradcam_territory_share(shipped.network, phantoms.subset(np.asarray(single)), "stacked",
                                              shipped.config["gradcam_target_layer"])
    assert result["mean_share"] >= 0.6, result


def test_occlusion_tiles_the_grid_with_the_stated_patch(shipped, phantoms) -> None:
    x = torch.from_numpy(network_input(phantoms.maps[:1]))
    occ = occlusion_maps(shipped.network, x)
    assert occ.shape == (1, 40, 72) and 0.0 <= occ.min() and occ.max() <= 1.0
    rows, cols = OCCLUSION_PATCH
    tiles = occ[0].reshape(40 // rows, rows, 72 // cols, cols)
    assert np.all(tiles == tiles[:, :1, :, :1])  # constant within each 5 x 9 tile
    cam = gradcam_impaired(shipped.network, shipped.config["gradcam_target_layer"], x)
    assert cam.shape == (1, 40, 72) and 0.0 <= cam.min() and cam.max() <= 1.0


@pytest.mark.slow  # the whole cardionode train pet_mfr path at toy size: 15-70 s on the shared 2-core machine
def test_smoke_training_writes_a_bundle_that_loads_and_predicts(tmp_path: Path) -> None:
    cohorts = {"development": training.polar_phantoms(40, first_seed=16_810_000),
               "test": training.polar_phantoms(16, first_seed=16_820_000)}
    plan = training.Plan(pretrain_cases=64, pretrain_epochs=1, cv_cases=40, lambdas=(0.5,), cv_folds=2, cv_epochs=1,
                         small_pretrain_epochs=1, final_epochs=2, compare_epochs=1, per_map_epochs=1, trait_epochs=2,
                         band_cases=16, gradcam_layer_cases=4, size=dict(training.TINY), small=dict(training.TINY))
    out = tmp_path / "pet_mfr"
    evaluation = training.train_pet_mfr(out, tmp_path / "work", plan=plan, cohorts=cohorts, n_boot=50, command="smoke")
    assert set(evaluation["splits"]) == {"test"}
    assert {"stacked", "rest", "stress", "mfr", "small_stacked_scratch", "small_stacked_pretrained",
            "full_pretrained_only"} <= set(evaluation["splits"]["test"]["metrics"])
    assert (tmp_path / "work" / "network_scores.npz").is_file()
    loaded = bundles.load_bundle("pet_mfr", root=out, device="cpu")
    assert loaded.metadata["reader_outputs"]["outputs"]["impaired"]["threshold"] == 0.5
    pred = predict_pet_maps([cohorts["test"].maps[0]], ["x"], loaded)[0]
    assert len(pred.groups) == 4 and len(pred.images) == 1
    assert "not clinically validated" in (out / "docs" / "README.md").read_text()


@pytest.fixture(scope="module")
def measured():
    """One cohort case measured by the node's own PET analysis (a ``PetMbfResult``)."""
    from node.synth.pet.cohort import generate_case, measure_study

    return measure_study(generate_case(16_100_007, "test")[0])


def test_the_pipeline_predict_step_adds_groups_a_heat_map_and_notes(measured) -> None:
    from node.pipelines.options import RunConfig
    from node.pipelines.pet_mbf import PIPELINE, report_content

    result = PIPELINE.predict(measured)
    groups, images, notes = result.predictions
    assert [g.site for g in groups] == ["left_ventricle", "territory_lad", "territory_lcx", "territory_rca"]
    for g in groups:
        (m,) = g.measurements
        assert m.quantity == "probability" and m.unit == "1" and 0.0 <= m.value <= 1.0
        assert g.evaluations[0].quantity == "classification" and g.explanation_image == "gradcam_pet_mfr"
        assert g.algorithm.name == "CardioNode pet_mfr" and any(p.startswith("weights=sha256:") for p in g.algorithm.parameters)
        assert not (g.label.startswith("MFR") and g.label.endswith("territory")) and len(g.label) <= 64
    assert [i.key for i in images] == ["gradcam_pet_mfr"] and "research use" in notes[0]
    assert not any(n.startswith("research output") for n in notes)  # traits are off by default
    content = report_content(result)
    assert {"mfr", "gradcam_pet_mfr"} <= {i.key for i in content.images}
    assert any(a.name == "CardioNode pet_mfr" for a in content.algorithms)
    off = PIPELINE.configured(RunConfig(options={"models": False})).predict(measured)
    assert off.predictions == ((), (), ())
    with_traits = PIPELINE.configured(RunConfig(options={"model_traits": True})).predict(measured)
    assert sum(n.startswith("research output") for n in with_traits.predictions[2]) == 5
    rest_only = PIPELINE.predict(replace(measured, stress=None, reserve=None))
    assert rest_only.predictions[0] == () and any("needs both rest and stress" in n for n in rest_only.predictions[2])


def test_prediction_groups_and_the_heat_map_encode_as_valid_dicom(tmp_path: Path, shipped, phantoms) -> None:
    from node.results import build_outputs
    from tests.support.pet_report import pet_report
    from tests.support.report import context, write_outputs
    from tests.support.tools import assert_dciodvfy_clean

    report = pet_report(20261207)
    pred = predict_pet_maps([phantoms.maps[0]], ["x"], shipped)[0]
    content = replace(report.content, groups=report.content.groups + tuple(pred.groups), plots=(), parametric_maps=(),
                      images=report.content.images + tuple(pred.images),
                      algorithms=report.content.algorithms + (pred.groups[0].algorithm,),
                      notes=report.content.notes + tuple(pred.notes))
    files = write_outputs(build_outputs(content, report.sources, context(results_screen=False, pdf_summary=False)),
                          content, tmp_path)
    assert "sc_gradcam_pet_mfr" in files, sorted(files)
    assert_dciodvfy_clean(files["sr"], "PET SR with the model's groups", "Comprehensive3DSR")
    assert_dciodvfy_clean(files["sc_gradcam_pet_mfr"], "PET MFR heat map", "SCImage")
    import highdicom as hd

    sr = hd.sr.srread(files["sr"]).content
    labels = {g.tracking_identifier for g in sr.get_image_measurement_groups()}
    assert {g.label for g in pred.groups} <= labels


def test_a_site_folder_reads_as_training_data(tmp_path: Path) -> None:
    data = training.polar_phantoms(4, first_seed=16_830_000)
    (tmp_path / "maps").mkdir()
    lines = ["case_id,split," + ",".join(f"segment_mfr_{k}" for k in range(1, 18)) + ",female"]
    for i in range(4):
        np.save(tmp_path / "maps" / f"c{i}.npy", data.maps[i])
        lines.append(f"c{i},{'development' if i < 3 else 'test'}," + ",".join(f"{v:.3f}" for v in data.segment_mfr[i])
                     + f",{data.traits[i, 0]}")
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    site = training.load_site_folder(tmp_path)
    assert {k: len(v) for k, v in site.items()} == {"development": 3, "test": 1}
    np.testing.assert_array_equal(site["development"].maps, data.maps[:3])
    np.testing.assert_array_equal(site["development"].impaired, (data.segment_mfr[:3].round(3).min(axis=1) < 2.0))
    assert site["test"].traits[0, 0] == data.traits[3, 0] and not site["test"].traits[0, 1:].any()
    (tmp_path / "labels.csv").write_text("case_id,split\nc0,development\n")
    with pytest.raises(ValueError, match="segment_mfr_17"):
        training.load_site_folder(tmp_path)
