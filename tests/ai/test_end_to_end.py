"""A synthetic SPECT study through the SPECT pipeline: prediction SR groups and Grad-CAM SC images, validated."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pydicom

from tests.support.tools import dciodvfy_tool


def _content_items(ds: pydicom.Dataset) -> list[pydicom.Dataset]:
    """Every content item of an SR tree, depth first."""
    items = []
    for item in ds.get("ContentSequence", []):
        items.append(item)
        items.extend(_content_items(item))
    return items


def test_study_yields_prediction_groups_and_heat_maps(tmp_path: Path, seed: int) -> None:
    from node.pipelines.process import process_folder
    from node.synth.spect import phantom as ph
    from node.synth.spect.demo import demo_spec
    from node.synth.spect.study import write_study

    rng = np.random.default_rng(seed)
    study = ph.make_study(demo_spec("LAD", "tc99m_sestamibi"), rng, orientation="short_axis")
    write_study(study, tmp_path / "study", seed=seed % 10000)
    out = tmp_path / "out"
    process_folder(tmp_path / "study", out, progress=lambda *a: None)
    sr = pydicom.dcmread(out / "sr.dcm")
    text = str(sr)
    assert "Model-estimated probability" in text, f"seed {seed}: no probability in the SR"
    assert "AI classification of the finding" in text
    # the SR names what each model predicts in clinician words (the bundles' reader_outputs), not model internals
    from node.ai import bundles

    names = [out.name for out in bundles.load_bundle("cad_polar", device="cpu").reader_outputs().values()]
    names.append(bundles.load_bundle("tracer_heads", device="cpu").reader_outputs()["tc99m"].name)
    items = _content_items(sr)
    texts = {str(item.TextValue) for item in items if getattr(item, "ValueType", "") == "TEXT"}
    for name in names:
        assert name in texts, f"seed {seed}: {name!r} not among the SR's text items"
    tracking = {str(item.TextValue) for item in items if getattr(item, "ValueType", "") == "TEXT"
                and item.ConceptNameCodeSequence[0].CodeValue == "112039"}  # (112039, DCM, "Tracking Identifier")
    ai_names = {t for t in tracking if "model" in t.lower()}
    assert ai_names and all(t.startswith("Probability of ") for t in ai_names), f"seed {seed}: {sorted(ai_names)}"
    verdicts = {item.ConceptCodeSequence[0].CodeMeaning for item in items
                if getattr(item, "ValueType", "") == "CODE" and item.ConceptNameCodeSequence[0].CodeMeaning == "AI classification of the finding"}
    assert verdicts and verdicts <= {"Present", "Absent", "Indeterminate"}, f"seed {seed}: {verdicts}"
    heat = pydicom.dcmread(out / "sc_gradcam_cad.dcm")
    assert heat.Modality in ("OT", "NM") and "DERIVED" in heat.ImageType
    tool = dciodvfy_tool()
    for path in (out / "sr.dcm", out / "sc_gradcam_cad.dcm"):
        proc = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=120)
        errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")]
        assert not errors, f"seed {seed}: {path.name}: {errors[:5]}"


def test_cad_model_on_the_nodes_own_maps_of_full_volume_phantoms(seed: int) -> None:
    """Transfer check: maps measured by the SPECT pipeline on full-volume phantoms (not polar-map cohorts).

    docs/validation.md ("Transfer to the node's own maps"): on 60 seeds the highest territory output
    was the defect's territory and Grad-CAM put >= 60 % of its mass there in 60/60 LAD and RCA studies,
    but for LCx defects in 135/140 (argmax) and 58/60 (Grad-CAM) studies. A per-study LCx assertion
    would fail about 1 run in 25, so the LCx defect is drawn three times and two must pass (a miss
    rate of 4 % fails that about 1 run in 200; one of 30 % would fail it 1 run in 5).
    """
    import node.ai as ai
    from node.ai.explain import summarise_attention
    from node.pipelines.spect_mpi import SpectMpiPipeline
    from node.synth.spect import phantom as ph
    from node.synth.spect.demo import demo_spec
    from node.synth.spect.study import build_study_datasets

    pipe = SpectMpiPipeline()
    sex = "M" if seed % 2 else "F"

    def predicted(defect: str, draw: int) -> tuple[dict[str, float], dict[str, float]]:
        rng = np.random.default_rng(seed if draw == 0 else (seed, draw))
        datasets, _ = build_study_datasets(ph.make_study(demo_spec(defect, "tc99m_sestamibi", sex=sex), rng, orientation="short_axis"))
        groups, images, _ = ai.predict_spect(pipe.analyse(datasets))
        p = {g.site: g.measurements[0].value for g in groups if g.finding == "obstructive_cad"}
        cam = next(i for i in images if i.key == "gradcam_cad")
        return p, summarise_attention(cam.values).territory_share

    def localised(territory: str, p: dict[str, float], share: dict[str, float]) -> bool:
        top = max(("LAD", "LCx", "RCA"), key=lambda t: p[f"territory_{t.lower()}"])
        return top == territory and share[territory] >= 0.6

    results = {defect: predicted(defect, 0) for defect in ("none", "LAD", "LCx", "RCA")}
    lcx_draws = [results["LCx"]] + [predicted("LCx", draw) for draw in (1, 2)]
    msg = f"seed {seed} sex {sex}: {results}; LCx draws {lcx_draws}"
    normal = results["none"][0]["heart"]
    assert normal < 0.75, msg  # docs/validation.md: normal phantoms 0.10-0.64 (women higher); calibration is open
    assert np.mean([results[t][0]["heart"] for t in ("LAD", "LCx", "RCA")]) > normal, msg
    for territory in ("LAD", "RCA"):
        assert localised(territory, *results[territory]), msg
    assert sum(localised("LCx", *draw) for draw in lcx_draws) >= 2, msg
