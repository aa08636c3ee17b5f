"""``cardionode train BUNDLE --data DIR | --synthetic N``: pick the trainer, run it, report.

:func:`train_bundle` trains ``lv_segmentation`` with :mod:`node.ai.training.segmentation`
and ``cmr_segmentation`` with :mod:`node.ai.training.cmr_segmentation` (phantoms only) and the polar-map bundles with :mod:`node.ai.training.polar`;
:func:`train_main` is the handler of the ``cardionode train`` command.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from node.ai import bundles
from node.ai.training import cmr_outcome, cmr_segmentation, segmentation
from node.ai.training.common import TrainResult, seed_everything
from node.ai.training.polar import evaluation_markdown, train_polar_bundle

__all__ = ["shipped_bundle_problem", "train_bundle", "train_main"]


def train_bundle(bundle: str, out: Path, data: Path | None = None, synthetic: int | None = None, epochs: int | None = None,
                 seed: int = 0, checkpoints: Path | None = None, version: str = "1.0.0", pretrain: int = 0,
                 command: str = "", init: Path | None = None, steps_per_epoch: int | None = None) -> TrainResult:
    """Train ``bundle`` on a folder or a synthetic cohort (phantoms for ``lv_segmentation``), evaluate, and write
    the bundle to ``out``. ``init`` and ``steps_per_epoch`` apply to ``lv_segmentation`` and ``cmr_segmentation``
    (which trains ``epochs x steps_per_epoch`` steps, default 8 x 150, on ``synthetic`` CMR phantoms)."""
    seed_everything(seed)
    if bundle in ("pet_mfr", "pet_mfr_multitask"):  # issue 16: the PET flow-reserve model, on node.synth.pet.cohort
        from node.ai.training import pet_mfr

        return pet_mfr.train_from_command(out, data=data, synthetic=synthetic, epochs=epochs, seed=seed,
                                          checkpoints=checkpoints, version=version, command=command)
    if bundle in cmr_outcome.BUNDLES:  # the seed's CMR outcome models, on the cohorts of node.synth.cmr.cohort
        return cmr_outcome.train_from_command(bundle, out, data=data, synthetic=synthetic, epochs=epochs, seed=seed,
                                              checkpoints=checkpoints, version=version, command=command)
    if bundle == "cmr_segmentation":
        return cmr_segmentation.train_cmr_segmentation(
            out, n_phantoms=synthetic or cmr_segmentation.DEFAULT_PHANTOMS, seed=seed, version=version, command=command, init=init,
            steps=(epochs or 8) * (steps_per_epoch or cmr_segmentation.DEFAULT_STEPS // 8))
    if bundle == "lv_segmentation":
        return segmentation.train_segmentation(
            out, n_train=synthetic or 0, data=data, epochs=epochs or segmentation.DEFAULT_EPOCHS, seed=seed,
            checkpoints=checkpoints, version=version, command=command, init=init, lr=3e-3 if init is None else 1e-3,
            steps_per_epoch=steps_per_epoch or segmentation.DEFAULT_STEPS_PER_EPOCH)
    if init is not None or steps_per_epoch is not None:
        raise ValueError("--init and --steps-per-epoch are supported for cmr_segmentation and lv_segmentation only")
    return train_polar_bundle(bundle, out, data=data, synthetic=synthetic, epochs=epochs, seed=seed,
                              checkpoints=checkpoints, version=version, pretrain=pretrain, command=command)


def shipped_bundle_problem(out: Path, overwrite_shipped: bool = False) -> str | None:
    """Why ``out`` may not receive a trained bundle, or None: it is the folder of the bundles shipped
    with CardioNode or inside it (``models/``), and ``overwrite_shipped`` is not set."""
    shipped = bundles.models_dir().resolve()
    target = out.resolve()
    if overwrite_shipped or not (target == shipped or target.is_relative_to(shipped)):
        return None
    return (f"--out {out} is inside the folder of the bundles shipped with CardioNode ({shipped}); "
            "training would replace their weights. Choose another --out (the default is DATA_DIR/models/BUNDLE), "
            "or add --overwrite-shipped to replace them")


def train_main(args: argparse.Namespace) -> int:
    """Handler of ``cardionode train``.

    Writes the bundle to ``--out`` (default ``<data_dir>/models/<bundle>``) and checkpoints to
    ``--checkpoints`` (default ``<data_dir>/checkpoints/<bundle>``); refuses (2), before training,
    an ``--out`` among the shipped bundles unless ``--overwrite-shipped``.
    """
    from node.config import ConfigError, load_settings

    try:
        data_dir = load_settings(getattr(args, "config", None)).data_dir
    except ConfigError as exc:
        sys.stderr.write(f"cardionode train: {exc}\n")
        return 2
    out = Path(args.out) if args.out else data_dir / "models" / args.bundle
    problem = shipped_bundle_problem(out, bool(getattr(args, "overwrite_shipped", False)))
    if problem is not None:
        sys.stderr.write(f"cardionode train: {problem}\n")
        return 2
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    checkpoints = getattr(args, "checkpoints", None) or data_dir / "checkpoints" / args.bundle
    cmd = "cardionode train " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else ""
    try:
        result = train_bundle(args.bundle, Path(out), data=args.data, synthetic=args.synthetic, epochs=args.epochs,
                              seed=args.seed, checkpoints=Path(checkpoints), pretrain=getattr(args, "pretrain", 0) or 0,
                              command=cmd, init=getattr(args, "init", None),
                              steps_per_epoch=getattr(args, "steps_per_epoch", None))
    except (ValueError, FileNotFoundError) as exc:
        sys.stderr.write(f"cardionode train: {exc}\n")
        return 2
    sys.stderr.write(f"wrote bundle {result.out} in {result.seconds:.0f} s\n")
    sys.stdout.write(evaluation_markdown(args.bundle, result.evaluation) + "\n")
    return 0
