"""Add the reader-facing names, thresholds and indeterminate bands to bundles trained before they existed.

``python -m node.ai.training.verdict_bands [--models DIR] [--version 1.1.0] [BUNDLE ...]`` regenerates
the validation cohort of each synthetic-cohort bundle from its training record (``training.seed``
and ``--synthetic N`` of ``training.command``), predicts it with the bundle's unchanged weights,
writes ``reader_outputs`` (:func:`node.ai.training.polar.reader_outputs_block`, the same code the
training runs) into ``configs/metadata.json``, records the new version in ``changelog`` and prints
the bands. A bundle trained on a site folder has no regenerable validation cohort: retrain it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from node.ai import bundles
from node.ai.training.polar import (
    _KIND,
    POLAR_BUNDLES,
    reader_outputs_block,
    synthetic_limits,
    synthetic_validation_cohort,
    validation_predictions,
)

__all__ = ["add_reader_outputs", "main"]


def add_reader_outputs(bundle_dir: Path, version: str) -> dict[str, Any]:
    """Write ``reader_outputs`` (and ``version``, with a changelog line) into a bundle's metadata; returns the block."""
    bundle_dir = Path(bundle_dir)
    meta_path = bundle_dir / "configs" / "metadata.json"
    metadata = json.loads(meta_path.read_text())
    name = str(metadata["name"])
    training = metadata.get("training", {})
    match = re.search(r"--synthetic\s+(\d+)", str(training.get("command", "")))
    if match is None:
        raise ValueError(f"{bundle_dir}: not trained on a synthetic cohort (training.command {training.get('command')!r}); retrain it")
    n_train, seed = int(match.group(1)), int(training["seed"])
    loaded = bundles.load_bundle(name, bundle_dir, "cpu")
    validation = synthetic_validation_cohort(_KIND[name], n_train, seed)
    limits = None if name == "crt_response" else synthetic_limits(n_train, seed)
    block = reader_outputs_block(name, validation_predictions(name, loaded.network, validation, limits, metadata["evaluation_summary"]))
    metadata["reader_outputs"] = block
    if version != metadata["version"]:
        metadata["changelog"] = {version: "reader-facing output names, thresholds and indeterminate bands chosen on the validation "
                                          "cohort (node.ai.verdicts.BAND_RULE); weights unchanged", **metadata.get("changelog", {})}
        metadata["version"] = version
    meta_path.write_text(json.dumps(metadata, indent=2, default=float) + "\n")
    return block


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("bundle", nargs="*", default=list(POLAR_BUNDLES), help="bundles (default: all polar-map bundles)")
    ap.add_argument("--models", type=Path, default=None, help="folder of the bundles (default: the shipped ones)")
    ap.add_argument("--version", default="1.1.0", help="bundle version to record (default 1.1.0)")
    args = ap.parse_args(argv)
    root = args.models or bundles.models_dir()
    for name in args.bundle:
        block = add_reader_outputs(root / name, args.version)
        for key, rec in block["outputs"].items():
            lo, hi = rec["indeterminate_band"]
            v = rec["validation"]
            sys.stdout.write(f"{name} {key}: threshold {rec['threshold']:.3f}, indeterminate {lo:.3f}-{hi:.3f}; validation n {v['n']}, "
                             f"in band {v['share_in_band']:.3f}, PPV above {v['ppv_above']:.3f}, NPV below {v['npv_below']:.3f}, "
                             f"accuracy in band {v['accuracy_in_band']:.3f}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
