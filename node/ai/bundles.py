"""MONAI bundles of CardioNode: what each one is, how it is written and how it is loaded.

A bundle is a folder ``models/<name>/`` with

* ``configs/metadata.json``: version, inputs, outputs, training data, intended
  use, metrics, input scaling and the cohort version it was trained on; for the
  polar-map bundles also ``reader_outputs``: what each reported output predicts in
  clinician words, its threshold and indeterminate band (:mod:`node.ai.verdicts`),
  the one place the node takes these from;
* ``configs/inference.json``: a MONAI bundle config whose ``network_def``
  instantiates the network (``monai.bundle.ConfigParser``);
* ``models/model.pt``: the ``state_dict`` (loaded with ``torch.load(...,
  weights_only=True)``; no pickled code);
* ``docs/README.md``: model card (training data, metrics, limits).

Loading never touches the network. The folder holding the bundles is the one the
caller names (the setting ``models_dir``, sent to the workers in the step message), by
default the bundles shipped with the package (:func:`models_dir`, :mod:`node.resources`).
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser

from node import RESEARCH_USE_NOTICE
from node.ai.verdicts import ReaderOutput, reader_outputs
from node.resources import default_models_dir
from node.results.content import Algorithm

__all__ = [
    "INTENDED_USE",
    "BUNDLE_NAMES",
    "LoadedBundle",
    "models_dir",
    "inference_config",
    "load_bundle",
    "write_bundle",
    "file_sha256",
]

INTENDED_USE = "research use; trained on synthetic phantoms; not clinically validated"
BUNDLE_NAMES: tuple[str, ...] = ("lv_segmentation", "cad_polar", "tracer_heads", "crt_response", "cmr_segmentation",
                                 "cmr_lge_outcome_resnet50", "cmr_lge_outcome_inceptionv3", "pet_mfr")

_NETWORKS: dict[str, dict[str, Any]] = {
    "cad_polar": {"_target_": "node.ai.networks.CADPolarNet", "in_channels": 5, "n_tabular": 4, "stages": [16, 32, 48], "n_outputs": 4},
    "tracer_heads": {"_target_": "node.ai.networks.TracerHeadsNet", "in_channels": 6, "stages": [16, 32, 48]},
    "crt_response": {"_target_": "node.ai.networks.CRTResponseNet", "n_tabular": 13, "blocks": [[8], [16, 16], [32, 32], [48, 48]]},
    "lv_segmentation": {
        "_target_": "monai.networks.nets.UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2,
        "channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1,
    },
    "cmr_segmentation": {
        "_target_": "monai.networks.nets.UNet", "spatial_dims": 2, "in_channels": 2, "out_channels": 4,
        "channels": [16, 32, 64, 128], "strides": [2, 2, 2], "num_res_units": 1,
    },
}
_GRADCAM_LAYERS = {"cad_polar": "encoder.body.stage2", "tracer_heads": "encoder.body.stage2", "crt_response": "features.23"}


def models_dir() -> Path:
    """The folder of the bundles shipped with the package (``node.models``, the repository's ``models/``)."""
    return default_models_dir()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def inference_config(name: str) -> dict[str, Any]:
    """The ``configs/inference.json`` content of bundle ``name`` (MONAI bundle config syntax)."""
    if name not in _NETWORKS:
        raise ValueError(f"unknown bundle {name!r}; known: {', '.join(BUNDLE_NAMES)}")
    config: dict[str, Any] = {
        "imports": ["$import node.ai.networks"],
        "bundle_root": ".",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "network_def": dict(_NETWORKS[name]),
        "network": "$@network_def.to(@device)",
        "checkpoint": "$@bundle_root + '/models/model.pt'",
    }
    if name in _GRADCAM_LAYERS:
        config["gradcam_target_layer"] = _GRADCAM_LAYERS[name]
    return config


@dataclass
class LoadedBundle:
    """A bundle ready for inference: network in eval mode on ``device`` plus its records."""

    name: str
    root: Path
    network: torch.nn.Module
    metadata: dict[str, Any]
    config: dict[str, Any]
    weights_sha256: str
    device: torch.device

    @property
    def version(self) -> str:
        return str(self.metadata["version"])

    def reader_outputs(self) -> dict[str, ReaderOutput]:
        """Per reported output: its name in clinician words, threshold and indeterminate band (metadata
        ``reader_outputs``, :func:`node.ai.verdicts.reader_outputs`); ``RuntimeError`` when absent."""
        return reader_outputs(self.metadata, self.name)

    def algorithm(self, extra: tuple[str, ...] = ()) -> Algorithm:
        """Provenance record for the SR (TID 4019 + model card text)."""
        return Algorithm(
            name=f"CardioNode {self.name}",
            version=self.version,
            parameters=(f"weights=sha256:{self.weights_sha256}", f"cohort={self.metadata.get('training_cohort_version', '')}") + extra,
            training_data=str(self.metadata.get("training_data", "")),
            intended_use=f"{INTENDED_USE}. {RESEARCH_USE_NOTICE}",
        )


_CACHE: dict[tuple[str, str, str], LoadedBundle] = {}
_LOCK = threading.Lock()


def load_bundle(name: str, root: Path | None = None, device: str | torch.device | None = None) -> LoadedBundle:
    """Load bundle ``name`` once per process (cached by folder and device).

    ``root`` is the bundle's folder; None = ``models_dir() / name`` (shipped with the package).
    The network comes from ``configs/inference.json`` via
    ``monai.bundle.ConfigParser``; weights from ``models/model.pt`` with
    ``torch.load(weights_only=True)``. ``device`` defaults to CUDA when
    available, else CPU. Raises ``FileNotFoundError`` naming the missing file.
    """
    bundle_root = Path(root) if root is not None else models_dir() / name
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    key = (name, str(bundle_root.resolve()), str(dev))
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
        for rel in ("configs/metadata.json", "configs/inference.json", "models/model.pt"):
            if not (bundle_root / rel).is_file():
                raise FileNotFoundError(f"model bundle {name!r}: {bundle_root / rel} is missing (train it: cardionode train {name} --synthetic N)")
        parser = ConfigParser()
        parser.read_config(str(bundle_root / "configs" / "inference.json"))
        parser.read_meta(str(bundle_root / "configs" / "metadata.json"))
        parser["bundle_root"] = str(bundle_root)
        network = parser.get_parsed_content("network_def", instantiate=True)
        weights = bundle_root / "models" / "model.pt"
        state = torch.load(weights, map_location="cpu", weights_only=True)
        network.load_state_dict(state)
        network.to(dev).eval()
        loaded = LoadedBundle(name, bundle_root, network, dict(parser.get("_meta_")), parser.get(), file_sha256(weights), dev)
        _CACHE[key] = loaded
        return loaded


def write_bundle(out: Path, name: str, network: torch.nn.Module, metadata: dict[str, Any], readme: str) -> Path:
    """Write a complete bundle folder (configs, weights, model card); returns ``out``."""
    out = Path(out)
    (out / "configs").mkdir(parents=True, exist_ok=True)
    (out / "models").mkdir(parents=True, exist_ok=True)
    (out / "docs").mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in network.state_dict().items()}
    torch.save(state, out / "models" / "model.pt")
    (out / "configs" / "inference.json").write_text(json.dumps(inference_config(name), indent=2) + "\n")
    (out / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=2, default=float) + "\n")
    (out / "docs" / "README.md").write_text(readme)
    with _LOCK:
        for key in [k for k in _CACHE if k[0] == name]:
            del _CACHE[key]
    return out
