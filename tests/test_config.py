"""Settings: embedded defaults, TOML, environment overrides, and `cardionode config check`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from node.config import ConfigError, load_settings
from node.uids import is_valid_uid
from tests.support import REPO
from tests.support.config import write_config


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("CARDIONODE_"):
            monkeypatch.delenv(key)


def test_embedded_defaults_run_out_of_the_box(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = load_settings(None)
    assert (s.ae_title, s.port, s.bind_address) == ("CARDIONODE", 11112, "127.0.0.1")
    assert s.data_dir == Path("var")
    assert s.effective_broker_url == f"sqla+sqlite:///{tmp_path / 'var' / 'broker.sqlite'}"
    assert s.effective_result_backend == f"db+sqlite:///{tmp_path / 'var' / 'results.sqlite'}"
    assert s.effective_ledger_url == f"sqlite:///{tmp_path / 'var' / 'ledger.sqlite'}"
    assert s.spool_dir == Path("var/spool") and s.outbox_dir == Path("var/outbox")
    assert s.completeness_for("spect_mpi").quiet_period_s == 10
    assert s.problems() == []
    assert any("ANY calling AE" in w for w in s.warnings())


def test_toml_file_and_environment_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_config(
        tmp_path / "node.toml",
        ae_title="NODE1",
        port=4100,
        data_dir=tmp_path / "data",
        peers=[{"name": "pacs", "ae_titles": ["PACS1", "PACS2"], "host": "127.0.0.1"}],
        destinations=[{"name": "orthanc", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": 4242}],
    )
    with open(config, "a") as f:
        f.write('[completeness.spect_mpi]\nquiet_period_s = 4\nforce_deadline_s = 60\nforce_action = "give_up"\n')
    monkeypatch.setenv("CARDIONODE_PORT", "4200")
    monkeypatch.setenv("CARDIONODE_TLS__REQUIRE", "true")
    monkeypatch.setenv("CARDIONODE_COMPLETENESS__DEFAULT__QUIET_PERIOD_S", "2.5")
    monkeypatch.setenv("CARDIONODE_BROKER_URL", "redis://127.0.0.1:6379/0")
    s = load_settings(config)
    assert s.ae_title == "NODE1" and s.port == 4200  # environment beats the file
    assert s.tls.require is True
    assert s.peers[0].ae_titles == ["PACS1", "PACS2"] and s.peers[0].host == "127.0.0.1"
    assert s.destinations[0].port == 4242
    rule = s.completeness_for("spect_mpi")
    assert (rule.quiet_period_s, rule.force_deadline_s, rule.force_action) == (4, 60, "give_up")
    assert s.completeness_for("other").quiet_period_s == 2.5
    assert s.effective_broker_url == "redis://127.0.0.1:6379/0"

    monkeypatch.setenv("CARDIONODE_CONFIG", str(config))
    monkeypatch.setenv("CARDIONODE_PEERS", '[{"name": "m", "ae_titles": ["MOD1"]}]')
    s2 = load_settings(None)
    assert s2.ae_title == "NODE1" and [p.name for p in s2.peers] == ["m"]


def test_wrong_types_and_unknown_keys_name_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="port"):
        load_settings(write_config(tmp_path / "a.toml", port="eleven"))
    with pytest.raises(ConfigError, match="ae_tilte"):
        load_settings(write_config(tmp_path / "b.toml", ae_tilte="X"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "missing.toml")
    bad = tmp_path / "c.toml"
    bad.write_text("port = [", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad)


def test_problems_are_listed_in_words(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    config = write_config(
        tmp_path / "node.toml",
        ae_title="A_VERY_LONG_AE_TITLE_X",
        port=70000,
        bind_address="somewhere",
        data_dir=not_a_dir / "var",
        peers=[{"name": "p", "ae_titles": ["BAD\\AE"]}],
        destinations=[
            {"name": "one", "ae_title": "ORTHANC", "host": "pacs", "port": 4242},
            {"name": "two", "ae_title": "ORTHANC", "host": "pacs", "port": 4242},
        ],
        tls={"cert": tmp_path / "missing.pem", "key": tmp_path / "missing.key"},
    )
    problems = "\n".join(load_settings(config).problems())
    for words in (
        "22 characters; DICOM allows at most 16",
        "port 70000 is out of range",
        "bind_address 'somewhere' is not an IP address",
        "characters DICOM does not allow",
        "results would be sent twice",
        f"tls.cert {tmp_path / 'missing.pem'} does not exist",
        f"tls.key {tmp_path / 'missing.key'} does not exist",
        "exists and is not a directory",
    ):
        assert words in problems, problems


def test_config_check_command_exit_codes(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARDIONODE_")}
    env["PYTHONPATH"] = str(REPO)
    good = write_config(tmp_path / "good.toml", data_dir=tmp_path / "var")
    bad = write_config(tmp_path / "bad.toml", data_dir=tmp_path / "var", port=0)
    run = [sys.executable, "-m", "node.cli", "--config"]
    ok = subprocess.run(run + [str(good), "config", "check"], capture_output=True, text=True, env=env, timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert '"ae_title": "CARDIONODE"' in ok.stdout and "configuration OK" in ok.stdout
    ko = subprocess.run(run + [str(bad), "config", "check"], capture_output=True, text=True, env=env, timeout=60)
    assert ko.returncode == 1
    assert "PROBLEM: port: port 0 is out of range (1-65535)" in ko.stdout


def test_device_uid_is_generated_once_per_install(tmp_path: Path) -> None:
    config = write_config(tmp_path / "node.toml", data_dir=tmp_path / "var")
    first = load_settings(config).effective_device_uid()
    again = load_settings(config).effective_device_uid()
    other = load_settings(write_config(tmp_path / "o.toml", data_dir=tmp_path / "other")).effective_device_uid()
    assert is_valid_uid(first) and first == again and other != first
    assert (tmp_path / "var" / "device_uid").read_text().strip() == first


def test_processing_settings_load_from_toml_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from node.config import OutputOptions
    from node.results.content import ReportContext

    defaults = load_settings(None)
    assert (defaults.models_dir, defaults.templates_dir, defaults.clinical_csv, defaults.pipelines) == (None, None, None, {})
    assert (defaults.outputs.pdf_summary, defaults.outputs.multiframe_screen) == (True, False)
    context = ReportContext("1.2.3", "node")  # the report step's defaults are the settings' defaults
    assert (context.pdf_summary, context.multiframe_screen) == (OutputOptions().pdf_summary, OutputOptions().multiframe_screen)

    (tmp_path / "models").mkdir()
    (tmp_path / "templates").mkdir()
    (tmp_path / "clinical.csv").write_text("accession_number,qrs_ms,lbbb,nyha\n")
    config = tmp_path / "node.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "var"}"\n'
        f'models_dir = "{tmp_path / "models"}"\n'
        f'templates_dir = "{tmp_path / "templates"}"\n'
        "[outputs]\npdf_summary = false\n"
        "[pipelines.spect_mpi]\nnormal_limits_version = 1\n",
        encoding="utf-8",
    )
    monkeypatch.setenv("CARDIONODE_CLINICAL_CSV", str(tmp_path / "clinical.csv"))
    monkeypatch.setenv("CARDIONODE_OUTPUTS__MULTIFRAME_SCREEN", "true")
    monkeypatch.setenv("CARDIONODE_PIPELINES__SPECT_MPI__MODELS", "false")
    s = load_settings(config)
    assert s.models_dir == tmp_path / "models" and s.templates_dir == tmp_path / "templates"
    assert s.clinical_csv == tmp_path / "clinical.csv"
    assert (s.outputs.pdf_summary, s.outputs.multiframe_screen) == (False, True)
    assert s.pipelines["spect_mpi"]["normal_limits_version"] == 1  # the file's table and the environment merge
    assert s.problems() == [], s.problems()
    monkeypatch.setenv("CARDIONODE_TEMPLATES", str(tmp_path / "templates"))  # the old spelling is not silently ignored
    assert any("CARDIONODE_TEMPLATES_DIR" in w for w in load_settings(config).warnings())

    from node.pipelines import registry
    from node.pipelines.configure import report_context, run_config

    options = registry.get("spect_mpi").configured(run_config(s, "spect_mpi")).options
    assert (options.normal_limits_version, options.models) == (1, False)  # "false" from the environment, checked
    context = report_context(s)
    assert (context.pdf_summary, context.multiframe_screen, context.templates_dir) == (False, True, tmp_path / "templates")
    assert context.device_uid == s.effective_device_uid() and context.device_name == s.device_name


def test_pipeline_options_are_checked_by_their_pipeline(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "var"}"\n'
        f'models_dir = "{tmp_path / "no-models"}"\n'
        "[pipelines.spect_mpi]\nnormal_limits_version = 9\nmodels = \"perhaps\"\ngradcam_colour = \"red\"\n"
        "[pipelines.pet_mbf]\nkinetic_model = \"1tcm\"\n"
        "[pipelines.cmr_lge]\nthreshold_sd = 5\n",
        encoding="utf-8",
    )
    problems = "\n".join(load_settings(config).problems())
    for words in (
        "pipelines.spect_mpi.normal_limits_version: no normal limits of version 9 (shipped: 1, 2) (got 9)",
        "pipelines.spect_mpi.models: Input should be a valid boolean",
        "pipelines.spect_mpi.gradcam_colour: unknown option (known: normal_limits_version, models)",
        "pipelines.pet_mbf.kinetic_model: unknown option (known: nh3_model, impaired_mfr_below, rv_spillover, "
        "rpp_reference_mmhg_per_min)",
        "pipelines.cmr_lge: no pipeline called 'cmr_lge' is registered (registered: pet_mbf, spect_mpi)",
        f"models_dir {tmp_path / 'no-models'} does not exist",
    ):
        assert words in problems, problems
    with pytest.raises(ConfigError, match="pipelines.spect_mpi"):  # a table, not a value
        load_settings(write_config(tmp_path / "b.toml", pipelines={"spect_mpi": 3}))
