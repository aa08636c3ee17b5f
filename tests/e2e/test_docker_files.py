"""docker/ cannot run here; check offline what can be checked: the files parse and agree."""

from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path

import pytest
import yaml

DOCKER = Path(__file__).resolve().parents[2] / "docker"


def test_compose_has_the_four_services_and_a_gpu_reservation() -> None:
    compose = yaml.safe_load((DOCKER / "compose.yml").read_text())
    services = compose["services"]
    assert {"redis", "node", "worker-gpu", "orthanc"} <= set(services)
    gpu = services["worker-gpu"]
    assert gpu["command"] == ["worker", "--queues", "gpu", "--concurrency", "1"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert services["node"]["environment"]["CARDIONODE_BROKER_URL"].startswith("redis://redis:")
    for service in ("node", "worker-gpu"):
        assert (DOCKER / services[service]["build"]["dockerfile"].removeprefix("docker/")).is_file()


def test_orthanc_routes_to_the_node_defined_in_the_node_config() -> None:
    orthanc = json.loads((DOCKER / "orthanc.json").read_text())
    node = tomllib.loads((DOCKER / "cardionode.toml").read_text())
    ae, host, port = orthanc["DicomModalities"]["cardionode"]
    assert (ae, port) == (node["ae_title"], node["port"]) and host == "node"
    assert [d["host"] for d in node["destinations"]] == ["orthanc"]
    lua = (DOCKER / Path(orthanc["LuaScripts"][0]).name).read_text()
    assert "SendToModality(instanceId, 'cardionode')" in lua
    assert re.search(r"modality == 'NM'", lua) and "SR" not in re.findall(r"== '(\w+)'", lua)


def test_dockerfiles_pin_torch_and_start_the_cli() -> None:
    cpu = (DOCKER / "Dockerfile").read_text()
    assert "FROM ${PYTHON_IMAGE}" in cpu and "ARG PYTHON_IMAGE=python:3.11-slim" in cpu
    assert cpu.index('"torch==2.13.0"') < cpu.index("pip install .")
    assert 'ENTRYPOINT ["cardionode"]' in cpu
    assert "torch==2.13.0" in (DOCKER / "Dockerfile.cuda").read_text()


def test_node_config_of_the_compose_file_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    from node.config import load_settings

    for name in [n for n in os.environ if n.startswith("CARDIONODE_")]:
        monkeypatch.delenv(name)
    settings = load_settings(DOCKER / "cardionode.toml")
    assert [(w.queues, w.concurrency) for w in settings.workers] == [("cpu,io", 2)]
    assert settings.peers[0].ae_titles == ["ORTHANC"] and settings.destinations[0].port == 4242
    assert not [p for p in settings.problems() if "data_dir" not in p]  # /var/lib/cardionode exists only in the image
