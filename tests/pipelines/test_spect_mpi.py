"""The SPECT MPI pipeline end to end on written phantom studies (no server).

``cardionode process FOLDER --out DIR`` on a stress + rest (gated and summed) NM study written by
``node.synth.spect.study``; the LAD defect (reversible) must show in the stress results only.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pydicom
import pytest

from node.cli import main as cli_main
from node.imaging.errors import UnusableSeriesError
from node.imaging.states import state_from_text
from node.pipelines.routing import SeriesSummary, StudySummary
from node.pipelines.spect_mpi import PIPELINE, SpectMpiResult, report_content
from node.quant.segments import TERRITORY_SEGMENTS
from node.queue.codec import decode, encode, schema_for
from node.synth.spect.phantom import PhantomSpec, make_study, territory_defect
from node.synth.spect.study import write_study

NM = "1.2.840.10008.5.1.4.1.1.20"


def _seed() -> int:
    return random.SystemRandom().randrange(2**31)


def _write(folder: Path, seed: int, orientation: str) -> Path:
    rng = np.random.default_rng(seed)
    spec = PhantomSpec(n_gates=8, defects=(territory_defect("LAD", 0.5, reversible=True),))
    study = make_study(spec, rng, orientation=orientation)
    write_study(study, folder, seed=seed)
    return folder


def test_process_transaxial_study_end_to_end(tmp_path: Path) -> None:
    seed = _seed()
    folder = _write(tmp_path / "study", seed, "transaxial")
    out = tmp_path / "out"
    code = cli_main(["process", str(folder), "--out", str(out), "--no-models"])
    summary_path = out / "summary.json"
    assert summary_path.exists(), f"seed={seed} exit code {code}"
    summary = json.loads(summary_path.read_text())
    assert "Research use only" in summary["notice"]
    stress = np.array(summary["states"]["stress"]["segment_uptake_pct"])
    rest = np.array(summary["states"]["rest"]["segment_uptake_pct"])
    lad = np.array(TERRITORY_SEGMENTS["LAD"]) - 1
    other = np.setdiff1d(np.arange(17), lad)
    msg = f"seed={seed} stress={np.round(stress).tolist()} rest={np.round(rest).tolist()}"
    print(msg)
    assert stress[lad].mean() < stress[other].mean() - 15, msg  # reversible LAD defect under stress
    assert abs(rest[lad].mean() - rest[other].mean()) < 10, msg  # gone at rest
    function = summary["states"]["rest"]["function"]
    assert 35 < function["lvef_pct"] < 70, msg
    assert summary["tid_ratio"] == pytest.approx(1.0, abs=0.15), msg
    keys = {g["site"] for g in summary["groups"]}
    assert {"aha_1", "aha_17", "left_ventricle"} <= keys
    quantities = {m["quantity"] for g in summary["groups"] for m in g["measurements"]}
    assert {"relative_uptake", "edv", "esv", "lvef", "stroke_volume", "tid_ratio"} <= quantities
    # DICOM outputs and previews (node.results); the exit code reports whether they were written
    if code == 0:
        assert any(p.suffix == ".png" for p in out.iterdir()), sorted(p.name for p in out.iterdir())
        assert (out / "sr.dcm").exists()


def test_short_axis_study_and_stored_result(tmp_path: Path) -> None:
    seed = _seed()
    folder = _write(tmp_path / "sa", seed, "short_axis")
    datasets = [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]
    result = PIPELINE.analyse(datasets)
    assert isinstance(result, SpectMpiResult)
    assert result.stress is not None and result.rest is not None
    assert result.stress.orientation == "short_axis"
    assert result.stress.function is not None and result.stress.phase is not None
    clone = decode(encode(result, schema_for(PIPELINE.result_type)), schema_for(PIPELINE.result_type))  # as workers store it
    np.testing.assert_array_equal(clone.stress.perfusion.values, result.stress.perfusion.values)
    # deterministic: a second run gives the same numbers
    again = PIPELINE.analyse(datasets)
    np.testing.assert_array_equal(again.stress.perfusion.values, result.stress.perfusion.values)
    content = report_content(result)
    keys = {image.key for image in content.images}
    assert {"stress_perfusion", "rest_perfusion", "defect_difference", "ed_perfusion", "es_perfusion",
            "thickening", "wall_motion", "phase"} <= keys
    states = {g.state for g in content.groups}
    assert {"stress", "rest", "difference"} <= states


def test_series_rules_and_unusable_input() -> None:
    def series(desc: str, image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "RECON TOMO", "EMISSION")) -> SeriesSummary:
        return SeriesSummary(f"1.2.3.{abs(hash(desc)) % 1000}", "NM", NM, image_type, desc, state=state_from_text(desc))

    stress_only = StudySummary("1.2.3", (series("STRESS SA"),))
    both = StudySummary("1.2.3", (series("STRESS SA"), series("REST GATED SA", ("ORIGINAL", "PRIMARY", "RECON GATED TOMO"))))
    ct = StudySummary("1.2.3", (SeriesSummary("1.2.4", "CT", "1.2.840.10008.5.1.4.1.1.2", (), "CHEST"),))
    a = PIPELINE.accept(stress_only)
    assert a.accepted and not a.complete
    assert PIPELINE.accept(both).complete
    assert not PIPELINE.accept(ct).accepted
    with pytest.raises(UnusableSeriesError):
        PIPELINE.analyse([])


def test_predict_step_reports_model_outputs_in_clinician_words(tmp_path: Path) -> None:
    """The predict step's groups and heat maps reach the report content with the bundles' reader-facing names,
    a verdict of present / absent / indeterminate and heat maps titled with probability and threshold."""
    from node.ai import bundles
    from node.ai.inference import HEAT_MAP_UNIT
    from node.ai.verdicts import VERDICTS

    seed = _seed()
    folder = _write(tmp_path / "sa", seed, "short_axis")
    datasets = [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]
    content = report_content(PIPELINE.predict(PIPELINE.analyse(datasets)))
    cad = bundles.load_bundle("cad_polar", device="cpu").reader_outputs()
    groups = {g.label: g for g in content.groups if g.finding == "obstructive_cad"}
    assert set(groups) == {out.name for out in cad.values()}, f"seed={seed}: {sorted(groups)}"
    patient = groups[cad["patient"].name]
    p = patient.measurements[0].value
    assert patient.evaluations[0].value == cad["patient"].verdict(p) and patient.evaluations[0].value in VERDICTS, f"seed={seed}"
    heat = next(image for image in content.images if image.key == patient.explanation_image)
    assert heat.title == cad["patient"].heat_map_title(p) and f"{p:.2f}" in heat.title, f"seed={seed}: {heat.title}"
    assert heat.unit == HEAT_MAP_UNIT and heat.derivation == "gradcam"
    assert any("indeterminate" in note for note in content.notes), f"seed={seed}"
