"""Each shipped bundle loads with MONAI's bundle tools from models/, offline, and documents itself."""

from __future__ import annotations

import json

import pytest
import torch
from monai.bundle import ConfigParser

from node.ai import bundles

REQUIRED_METADATA = ("version", "inputs", "outputs", "training_data", "intended_use", "network_data_format")
#: weights stay under 5 MB so that the repository stays small; the one exception is the full ResNet-50 that issue 16
#: asks for (the seed's network; 23.5 M parameters plus five trait heads, stored as float16)
WEIGHT_LIMIT_BYTES = {"pet_mfr": 64 * 1024 * 1024}
DEFAULT_WEIGHT_LIMIT_BYTES = 5 * 1024 * 1024


@pytest.mark.parametrize("name", bundles.BUNDLE_NAMES)
def test_bundle_loads_offline_with_monai(name: str, no_network: None) -> None:
    root = bundles.models_dir() / name
    for rel in ("configs/metadata.json", "configs/inference.json", "models/model.pt", "docs/README.md"):
        assert (root / rel).is_file(), f"{name}: {rel} missing"
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    parser.read_meta(str(root / "configs" / "metadata.json"))
    parser["bundle_root"] = str(root)
    network = parser.get_parsed_content("network_def")
    assert isinstance(network, torch.nn.Module)
    state = torch.load(parser.get_parsed_content("checkpoint"), map_location="cpu", weights_only=True)
    missing, unexpected = network.load_state_dict(state, strict=True)
    assert not missing and not unexpected
    assert parser.get_parsed_content("network") is not None  # the "$@network_def.to(@device)" expression resolves
    size = (root / "models" / "model.pt").stat().st_size
    limit = WEIGHT_LIMIT_BYTES.get(name, DEFAULT_WEIGHT_LIMIT_BYTES)
    assert size < limit, f"{name}: weights are {size} bytes (limit {limit} bytes)"


@pytest.mark.parametrize("name", bundles.BUNDLE_NAMES)
def test_metadata_names_version_io_training_data_and_intended_use(name: str) -> None:
    meta = json.loads((bundles.models_dir() / name / "configs" / "metadata.json").read_text())
    for key in REQUIRED_METADATA:
        assert meta.get(key), f"{name}: metadata lacks {key}"
    assert meta["intended_use"] == "research use; trained on synthetic phantoms; not clinically validated"
    assert "synthetic" in meta["training_data"] or "phantom" in meta["training_data"]
    assert meta["inputs"] and meta["outputs"]
    readme = (bundles.models_dir() / name / "docs" / "README.md").read_text()
    assert "not clinically validated" in readme
    assert "pretrain" in readme.lower()


def test_load_bundle_caches_once_per_process() -> None:
    a = bundles.load_bundle("cad_polar", device="cpu")
    b = bundles.load_bundle("cad_polar", device="cpu")
    assert a is b
    assert len(a.weights_sha256) == 64
    alg = a.algorithm()
    assert any(p.startswith("weights=sha256:") for p in alg.parameters)
    assert "not clinically validated" in alg.intended_use


def test_missing_bundle_names_the_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="metadata.json"):
        bundles.load_bundle("cad_polar", root=tmp_path / "cad_polar")
