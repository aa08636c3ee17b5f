"""Settings: embedded defaults, TOML, environment overrides, and `cardionode config check`."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from node.config import ConfigError, load_settings
from node.uids import is_valid_uid
from tests.support import REPO
from tests.support.config import write_config
from tests.support.node import COMMANDS
from tests.support.orthanc import Orthanc
from tests.support.ports import free_port


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
    with pytest.raises(ConfigError, match="ae_tilte: unknown setting; did you mean 'ae_title'"):
        load_settings(write_config(tmp_path / "b.toml", ae_tilte="X"))
    with pytest.raises(ConfigError, match=r"destinations\[0\]\.aetitle: unknown setting; did you mean 'ae_title'"):
        load_settings(write_config(tmp_path / "d.toml", destinations=[{"name": "p", "aetitle": "P", "host": "h"}]))
    with pytest.raises(ConfigError, match="tls.xyzzy: unknown setting; known here: cert, key, ca, require"):
        load_settings(write_config(tmp_path / "e.toml", tls={"xyzzy": True}))
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
    from node.pipelines.spect_mpi import SpectMpiOptions

    options = registry.get("spect_mpi").configured(run_config(s, "spect_mpi")).options
    assert isinstance(options, SpectMpiOptions)
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
        "[pipelines.cmr_lge]\nthreshold_sd = 5\n"
        "[pipelines.ct_calcium]\nthreshold_hu = 130\n",
        encoding="utf-8",
    )
    problems = "\n".join(load_settings(config).problems())
    for words in (
        "pipelines.spect_mpi.normal_limits_version: no normal limits of version 9 (shipped: 1, 2) (got 9)",
        "pipelines.spect_mpi.models: Input should be a valid boolean",
        "pipelines.spect_mpi.gradcam_colour: unknown option (known: normal_limits_version, models)",
        "pipelines.pet_mbf.kinetic_model: unknown option (known: nh3_model, impaired_mfr_below, rv_spillover, "
        "rpp_reference_mmhg_per_min",  # and whatever options pet_mbf gains
        "pipelines.cmr_lge.threshold_sd: unknown option (known: n_sd",
        "pipelines.ct_calcium: no pipeline called 'ct_calcium' is registered (registered: cmr_lge, pet_mbf, spect_mpi)",
        f"models_dir {tmp_path / 'no-models'} does not exist",
    ):
        assert words in problems, problems
    with pytest.raises(ConfigError, match="pipelines.spect_mpi"):  # a table, not a value
        load_settings(write_config(tmp_path / "b.toml", pipelines={"spect_mpi": 3}))


def _config_check(config: Path, *args: str, command: tuple[str, ...] = ("config", "check"),
                  cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    from tests.support.node import node_env

    return subprocess.run([sys.executable, "-m", "node.cli", "--config", str(config), *command, *args], cwd=cwd,
                          env=node_env(), capture_output=True, text=True, timeout=120)


def test_data_dir_is_relative_to_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "site").mkdir()
    config = write_config(tmp_path / "site" / "node.toml", data_dir="var")
    monkeypatch.chdir(tmp_path)
    assert load_settings(config).data_dir == tmp_path / "site" / "var"
    assert load_settings(Path("site/node.toml")).data_dir == tmp_path / "site" / "var"
    assert load_settings(write_config(tmp_path / "site" / "default.toml")).data_dir == tmp_path / "site" / "var"
    assert load_settings(None).data_dir == Path("var")  # no file: the working directory (`make run`: ./var)


@pytest.mark.network
def test_config_check_reports_everything_that_cannot_work_in_one_pass(tmp_path: Path) -> None:
    """One configuration with every kind of broken setting: each is reported, in one run."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    taken_port = taken.getsockname()[1]
    taken_web = socket.socket()
    taken_web.bind(("127.0.0.1", 0))
    taken_web.listen()
    taken_web_port = taken_web.getsockname()[1]
    silent_port = free_port()  # nothing listens there: the destination cannot answer C-ECHO
    config = write_config(
        tmp_path / "node.toml",
        ae_tilte="NODE",
        port=taken_port,
        data_dir="/proc/cardionode/var",  # no file can be made there, whoever runs the test
        destinations=[
            {"name": "silent", "ae_title": "NOBODY", "host": "127.0.0.1", "port": silent_port},
            {"name": "typo", "ae_title": "PACS", "host": "pacs.no-such-host.invalid", "port": 104},
        ],
        peers=[{"name": "modality", "ae_titles": ["SCANNER"], "host": "scanner.no-such-host.invalid"}],
        send_retry={"initial_s": 5, "max_attemps": 3},
        web={"port": taken_web_port},
    )
    try:
        result = _config_check(config)
    finally:
        taken.close()
        taken_web.close()
    problems = [line for line in result.stdout.splitlines() if line.startswith("PROBLEM: ")]
    expected = (
        "PROBLEM: ae_tilte: unknown setting; did you mean 'ae_title'?",
        "PROBLEM: send_retry.max_attemps: unknown setting; did you mean 'max_attempts'?",
        "PROBLEM: data_dir /proc/cardionode/var: no file can be created in /proc",
        "PROBLEM: destinations[1] (typo): host name 'pacs.no-such-host.invalid' does not resolve",
        "PROBLEM: peers[0] (modality): host name 'scanner.no-such-host.invalid' does not resolve",
        f"PROBLEM: port: cannot listen on 127.0.0.1:{taken_port}: the port is already in use by another program",
        f"PROBLEM: web.port: cannot listen on 127.0.0.1:{taken_web_port}: the port is already in use by another program",
        f"PROBLEM: destinations[0] (silent): C-ECHO to NOBODY@127.0.0.1:{silent_port} failed: ",
    )
    for words in expected:
        assert any(p.startswith(words) for p in problems), f"{words!r} not in:\n" + "\n".join(problems)
    assert not any("typo" in p and "C-ECHO" in p for p in problems)  # a name that does not resolve: once
    assert result.returncode == 1 and f"{len(problems)} problem(s)" in result.stdout
    assert "Traceback" not in result.stderr, result.stderr


@pytest.mark.network
def test_config_check_and_echo_verify_destinations_with_c_echo(tmp_path: Path, orthanc: Orthanc) -> None:
    silent_port = free_port()
    config = write_config(
        tmp_path / "node.toml", data_dir=tmp_path / "var", port=free_port(),
        destinations=[{"name": "pacs", "ae_title": orthanc.ae_title, "host": "localhost", "port": orthanc.dicom_port},
                      {"name": "silent", "ae_title": "NOBODY", "host": "127.0.0.1", "port": silent_port}],
    )
    echo = _config_check(config, "pacs", command=("echo",))
    assert echo.returncode == 0, echo.stdout + echo.stderr
    assert echo.stdout.startswith(f"pacs: C-ECHO to ORTHANC@localhost:{orthanc.dicom_port}: Success in "), echo.stdout
    both = _config_check(config, command=("echo",))
    assert both.returncode == 1 and len(both.stdout.splitlines()) == 2, both.stdout
    assert f"silent: C-ECHO to NOBODY@127.0.0.1:{silent_port} failed: " in both.stdout
    unknown = _config_check(config, "pacz", command=("echo",))
    assert unknown.returncode == 1 and "no destination called 'pacz'; configured: pacs, silent" in unknown.stderr

    check = _config_check(config)
    problems = [line for line in check.stdout.splitlines() if line.startswith("PROBLEM: ")]
    assert problems == [f"PROBLEM: destinations[1] (silent): C-ECHO to NOBODY@127.0.0.1:{silent_port} failed: "
                        + both.stdout.split("failed: ", 1)[1].strip()], check.stdout
    assert "node: not running" in check.stdout


@pytest.mark.network
@pytest.mark.parametrize("mode", ["listener", "serve"])
def test_a_taken_port_or_a_running_node_stops_start_up_in_one_line(tmp_path: Path, mode: str) -> None:
    from tests.support.config import listener_config
    from tests.support.node import NodeProcess

    command = COMMANDS[mode][0]
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    taken_port = taken.getsockname()[1]
    config, _ = listener_config(tmp_path, port=taken_port)
    try:
        result = _config_check(config, command=(command,), cwd=tmp_path)
    finally:
        taken.close()
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.splitlines() == [
        f"cardionode {command}: cannot listen on 127.0.0.1:{taken_port}: the port is already in use by "
        f"another program (`ss -ltnp 'sport = :{taken_port}'` shows which); stop it, or set another port"]

    # the walkthrough's old collision: a second node with the same data directory (and port)
    config, port = listener_config(tmp_path)
    with NodeProcess(config, port, mode="listener") as first:
        assert first.process is not None
        pid = first.process.pid
        second = _config_check(config, command=(command,), cwd=tmp_path)
        check = _config_check(config)
    assert second.returncode == 2 and len(second.stderr.splitlines()) == 1, second.stderr
    assert second.stderr.startswith(f"cardionode {command}: a node already runs with this data directory "
                                    f"(listen, pid {pid}, listening on 127.0.0.1:{port}, since ")
    assert f"node: running (listen, pid {pid}" in check.stdout and "PROBLEM: port" not in check.stdout
