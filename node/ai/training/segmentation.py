"""Training of the ``lv_segmentation`` bundle (the 3D U-Net of :mod:`node.ai.segmentation`) on phantoms.

Training data are phantoms of :mod:`node.synth.spect.phantom` with varied shape,
pose, counts, resolution, extracardiac activity, attenuation artefacts and
defects (:func:`segmentation_phantoms`); the truth is the voxel set whose
cycle-averaged myocardial fraction is >= 0.5 (:func:`phantom_myocardium_mask`),
the same rule synth uses to scale counts. :func:`train_segmentation` trains on
random 32^3 crops of the network's input transform
(:func:`node.ai.segmentation.canonical_image`), picks the mask threshold on the
validation phantoms, compares U-Net and classical threshold masks on held-out
phantoms (:func:`evaluate_segmentation`) and writes the bundle with its metadata
and README. Volumes are ``[slice, row, col]`` with patient-LPS affines.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import monai
import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.losses import DiceCELoss

from node import __version__
from node.ai import bundles
from node.ai.metrics import dice
from node.ai.segmentation import (
    CANONICAL_VOXEL_MM,
    CROP_VOXELS,
    canonical_image,
    largest_component,
    myocardium_probability,
    segment_myocardium,
    to_input_grid,
)
from node.ai.training.common import Progress, TrainResult, seed_everything
from node.imaging.volume import Volume
from node.quant.orientation import classical_myocardium_mask
from node.synth.geometry import LVShape, delay_profile_deg, gate_times, geometry_at
from node.synth.spect.phantom import (
    INTERNAL_UNGATED_SNAPSHOTS,
    Acquisition,
    PhantomSpec,
    make_acquisition,
    territory_defect,
)

if TYPE_CHECKING:
    from node.synth.anatomy import Defect

__all__ = [
    "DEFAULT_EPOCHS",
    "DEFAULT_STEPS_PER_EPOCH",
    "TRAINING_BATCH",
    "SegmentationCase",
    "phantom_myocardium_mask",
    "segmentation_phantoms",
    "train_segmentation",
    "evaluate_segmentation",
]


def phantom_myocardium_mask(acquisition: Acquisition, supersample: int = 2) -> np.ndarray:
    """Truth mask ``[slice, row, col]`` of a phantom acquisition: voxels whose myocardial fraction,
    averaged over the cycle snapshots, is >= 0.5 (same rule synth uses to scale counts)."""
    spec, pose = acquisition.spec, acquisition.pose
    frame = pose.frame
    vol = acquisition.summed
    n = vol.voxels.shape
    times = gate_times(spec.n_gates if spec.n_gates else INTERNAL_UNGATED_SNAPSHOTS)
    delays = delay_profile_deg(spec.phase_delays, pose.jitter_coefficients)
    geoms = [geometry_at(spec.shape, t, delays, spec.waveform, spec.es_fraction) for t in times]
    # candidate voxels: near the LV in LV coordinates
    idx = np.argwhere(np.ones(n, bool))
    lv = frame.to_lv(vol.index_to_patient(idx))
    c_max = max(g.c_epi for g in geoms)
    a_max = max(float(g.a_epi.max()) for g in geoms)
    margin = float(np.max(vol.spacing_mm))
    near = (lv[:, 0] > -margin) & (lv[:, 0] < c_max + margin) & (np.hypot(lv[:, 1], lv[:, 2]) < a_max + margin)
    idx = idx[near]
    off = (np.arange(supersample) + 0.5) / supersample - 0.5
    sub = np.stack(np.meshgrid(off, off, off, indexing="ij"), axis=-1).reshape(-1, 3)
    pts = (idx[:, None, :] + sub[None, :, :]).reshape(-1, 3)
    lv = frame.to_lv(vol.index_to_patient(pts))
    z, r = lv[:, 0], np.hypot(lv[:, 1], lv[:, 2])
    psi = np.mod(np.degrees(np.arctan2(lv[:, 2], lv[:, 1])), 360.0)
    frac = np.zeros(len(pts))
    for g in geoms:
        a, big_a = g.radii_at(psi)
        zeta = z - g.c_epi
        below = zeta <= 0.0
        in_epi = below & ((r / big_a) ** 2 + (zeta / g.c_epi) ** 2 <= 1.0)
        in_endo = below & ((r / a) ** 2 + (zeta / g.c_endo) ** 2 <= 1.0)
        frac += (in_epi & ~in_endo) / len(geoms)
    frac = frac.reshape(len(idx), -1).mean(axis=1)
    mask = np.zeros(n, bool)
    mask[tuple(idx[frac >= 0.5].T)] = True
    return mask


@dataclass
class SegmentationCase:
    """One training or test phantom: its summed volume, truth mask ``[slice, row, col]`` and a description."""

    volume: Volume
    mask: np.ndarray
    description: str


def segmentation_phantoms(n: int, split: str, seed: int, matrix: int = 64, voxel_mm: float = 6.4) -> list[SegmentationCase]:
    """``n`` phantom acquisitions with truth masks; ``split`` selects a disjoint random stream.

    Varied: LV shape (ED short semi-axis 18..38 mm, long/short 1.9..2.6, wall
    7..15 mm), pose (synth's +-15 deg jitter), tracer, sex, counts (40..400 per
    myocardial voxel, log-uniform), FWHM 10..16 mm, extracardiac liver (40 %) or
    bowel (20 %), attenuation artefact (50 %), a territory defect (50 %).
    """
    split_index = {"train": 0, "validation": 1, "test": 2, "external": 3}[split]
    rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(split_index, 7)))
    cases = []
    for i in range(n):
        ed_a = rng.uniform(18, 38)
        ed_c = ed_a * rng.uniform(1.9, 2.6)
        shape = LVShape(f"random{i}", ed_a, ed_c, rng.uniform(7, 15), ed_a * rng.uniform(0.65, 0.9), ed_c * rng.uniform(0.88, 0.95))
        defects: tuple[Defect, ...] = ()
        if rng.random() < 0.5:
            defects = (territory_defect(str(rng.choice(["LAD", "LCx", "RCA"])), float(rng.uniform(0.2, 0.7))),)
        spec = PhantomSpec(
            shape=shape,
            tracer=str(rng.choice(["tc99m_sestamibi", "tc99m_tetrofosmin", "tl201"])),
            sex=str(rng.choice(["M", "F"])),
            n_gates=8,
            matrix=matrix,
            voxel_mm=voxel_mm,
            fwhm_mm=float(rng.uniform(10, 16)),
            counts_per_voxel=float(np.exp(rng.uniform(np.log(40), np.log(400)))),
            defects=defects,
            extracardiac=[None, "liver", "bowel"][int(rng.choice(3, p=[0.4, 0.4, 0.2]))],
            attenuation_artefact=bool(rng.random() < 0.5),
        )
        acq = make_acquisition(spec, "stress", rng)
        desc = f"a={ed_a:.0f}mm counts={spec.counts_per_voxel:.0f} fwhm={spec.fwhm_mm:.1f} extra={spec.extracardiac}"
        cases.append(SegmentationCase(acq.summed, phantom_myocardium_mask(acq), desc))
    return cases


def _cached_phantoms(n: int, split: str, seed: int, cache: Path | None) -> list[SegmentationCase]:
    if cache is None:
        return segmentation_phantoms(n, split, seed)
    path = Path(cache) / f"seg_{split}_{seed}_{n}.npz"
    if path.is_file():
        z = np.load(path, allow_pickle=False)
        return [SegmentationCase(Volume(z[f"v{i}"], z[f"a{i}"]), z[f"m{i}"], str(z[f"d{i}"])) for i in range(n)]
    cases = segmentation_phantoms(n, split, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    for i, c in enumerate(cases):
        arrays[f"v{i}"], arrays[f"a{i}"], arrays[f"m{i}"], arrays[f"d{i}"] = c.volume.voxels.astype(np.float32), c.volume.affine, c.mask, np.array(c.description)
    np.savez_compressed(path, allow_pickle=True, **arrays)  # numpy's default, named so that **arrays cannot bind it
    return cases


def _crops(images: list[np.ndarray], masks: list[np.ndarray], gen: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Random 32^3 crops: 80 % around the myocardium (+-8 voxels jitter), 20 % anywhere; random flips."""
    xs, ys = [], []
    for _ in range(n):
        k = int(gen.integers(len(images)))
        img, m = images[k], masks[k]
        shape = np.array(img.shape)
        if gen.random() < 0.8 and m.any():
            centre = np.argwhere(m).mean(axis=0) + gen.integers(-8, 9, 3)
        else:
            centre = gen.uniform(CROP_VOXELS / 2, shape - CROP_VOXELS / 2)
        lo = np.clip(np.round(centre - CROP_VOXELS / 2).astype(int), 0, np.maximum(shape - CROP_VOXELS, 0))
        sl = tuple(slice(int(a), int(a) + CROP_VOXELS) for a in lo)
        x, y = img[sl], m[sl]
        pad = [(0, CROP_VOXELS - s) for s in x.shape]
        x, y = np.pad(x, pad), np.pad(y, pad)
        for ax in range(3):
            if gen.random() < 0.5:
                x, y = np.flip(x, ax), np.flip(y, ax)
        xs.append(x.copy())
        ys.append(y.copy())
    return np.stack(xs)[:, None], np.stack(ys).astype(np.int64)


def _recalibrate_batch_norm(net: torch.nn.Module, images: list[np.ndarray], masks: list[np.ndarray], seed: int,
                            n_batches: int = 12, batch: int = 8) -> None:
    """Recompute batch-norm running statistics as exact averages over fresh random crops.

    The running averages of a few small crop batches are noisy, and the
    whole-volume inference is sensitive to them; a cumulative average over
    ``n_batches`` crop batches (forward passes only) makes evaluation stable.
    """
    norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    gen = np.random.default_rng(seed)
    net.train()
    with torch.no_grad():
        for _ in range(n_batches):
            x, _ = _crops(images, masks, gen, batch)
            net(torch.from_numpy(x))
    for m, momentum in zip(norms, saved):
        m.momentum = momentum
    net.eval()


#: training: random 32^3 crops per optimiser step, optimiser steps per epoch and epochs by default
TRAINING_BATCH = 8
DEFAULT_STEPS_PER_EPOCH = 8
DEFAULT_EPOCHS = 30


def train_segmentation(out: Path, n_train: int = 0, data: Path | None = None, epochs: int = DEFAULT_EPOCHS, seed: int = 0,
                       checkpoints: Path | None = None, version: str = "1.0.0", command: str = "",
                       cache: Path | None = Path("var") / "cache", init: Path | None = None, lr: float = 3e-3,
                       steps_per_epoch: int = DEFAULT_STEPS_PER_EPOCH) -> TrainResult:
    """Train the ``lv_segmentation`` bundle on phantoms and write it to ``out``.

    ``n_train`` phantoms for training (default 96), a quarter of that for
    validation (best epoch by validation Dice) and a held-out test set of 24
    phantoms for the report (U-Net vs classical Dice). ``init`` (a bundle
    folder) starts from its weights (fine-tuning); the learning rate decays
    from ``lr`` to 0 (cosine) over the run. Each epoch takes ``steps_per_epoch``
    optimiser steps on batches of :data:`TRAINING_BATCH` random 32^3 crops. ``data`` (a folder of
    site volumes) is not supported for this bundle: segmentation truth for site
    data would need manual contours, which the node does not ingest.
    """
    if data is not None:
        raise ValueError("lv_segmentation trains on synthetic phantoms only (--synthetic N); site contours are not supported")
    start = time.monotonic()
    seed_everything(seed)
    n_train = n_train or 96
    n_val = max(n_train // 4, 2)
    n_test = 24 if n_train >= 24 else 2
    train_cases = _cached_phantoms(n_train, "train", seed, cache)
    val_cases = _cached_phantoms(n_val, "validation", seed, cache)
    test_cases = _cached_phantoms(n_test, "test", seed, cache)
    parser = ConfigParser(bundles.inference_config("lv_segmentation"))
    net = parser.get_parsed_content("network_def", instantiate=True)
    if init is not None:
        net.load_state_dict(torch.load(Path(init) / "models" / "model.pt", map_location="cpu", weights_only=True))
    images = [canonical_image(c.volume.voxels, c.volume.spacing_mm) for c in train_cases]
    masks = [(to_input_grid(c.mask.astype(np.float32), im.shape) >= 0.5) if c.mask.shape != im.shape else c.mask for c, im in zip(train_cases, images)]
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    gen = np.random.default_rng(seed)
    steps, batch = steps_per_epoch, TRAINING_BATCH
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs * steps, 1))
    progress = Progress("lv_segmentation", epochs * steps)
    history: list[dict[str, float]] = []
    best, best_state = -1.0, None
    if checkpoints is not None:
        Path(checkpoints).mkdir(parents=True, exist_ok=True)
    loaded = bundles.LoadedBundle("lv_segmentation", Path(out), net, {"version": version}, {}, "", torch.device("cpu"))
    for epoch in range(epochs):
        net.train()
        total = 0.0
        for k in range(steps):
            x, y = _crops(images, masks, gen, batch)
            loss = loss_fn(net(torch.from_numpy(x)), torch.from_numpy(y)[:, None])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
            progress.update(epoch * steps + k + 1, f"epoch {epoch + 1}/{epochs} loss {loss.item():.3f}")
        _recalibrate_batch_norm(net, images, masks, seed + epoch)
        val_dice = float(np.mean([dice(segment_myocardium(c.volume, loaded), c.mask) for c in val_cases]))
        history.append({"epoch": epoch + 1, "train_loss": total / steps, "validation_dice": val_dice})
        sys.stderr.write(f"[lv_segmentation] epoch {epoch + 1}/{epochs} loss {total / steps:.4f} validation Dice {val_dice:.3f}\n")
        if checkpoints is not None:
            torch.save({"epoch": epoch + 1, "model": net.state_dict(), "optimizer": opt.state_dict()}, Path(checkpoints) / f"epoch_{epoch + 1:03d}.pt")
        if val_dice > best:
            best, best_state = val_dice, {k: v.detach().clone() for k, v in net.state_dict().items()}
    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    # probability threshold of the mask: the one with the best mean validation Dice
    probs = [myocardium_probability(c.volume, loaded) for c in val_cases]
    scores = {t: float(np.mean([dice(largest_component(p >= t), c.mask) for p, c in zip(probs, val_cases)]))
              for t in (0.3, 0.4, 0.5, 0.6)}
    threshold = max(scores, key=scores.__getitem__)
    loaded.metadata["mask_threshold"] = threshold
    sys.stderr.write(f"[lv_segmentation] mask threshold {threshold} (validation Dice by threshold {scores})\n")
    evaluation = evaluate_segmentation(test_cases, loaded)
    evaluation["mask_threshold"] = threshold
    evaluation["validation_dice_best"] = best
    metadata = _metadata(version, n_train, n_val, seed, evaluation, history,
                         "random initialisation" if init is None else f"weights of {init} (fine-tuned)")
    readme = _readme(metadata, evaluation, command or f"cardionode train lv_segmentation --synthetic {n_train} --seed {seed}")
    bundles.write_bundle(Path(out), "lv_segmentation", net, metadata, readme)
    (Path(out) / "docs" / "evaluation.json").write_text(json.dumps(evaluation, indent=2, default=float) + "\n")
    return TrainResult("lv_segmentation", Path(out), net, history, evaluation, time.monotonic() - start)


def evaluate_segmentation(cases: list[SegmentationCase], bundle: bundles.LoadedBundle | None = None) -> dict[str, Any]:
    """Dice of the U-Net and of the classical threshold mask against the truth, per case and summarised."""
    unet, classical = [], []
    for c in cases:
        unet.append(dice(segment_myocardium(c.volume, bundle), c.mask))
        try:
            classical.append(dice(classical_myocardium_mask(c.volume), c.mask))
        except Exception as exc:  # the classical method failing (LVNotFoundError, ...) is itself a result: Dice 0
            sys.stderr.write(f"classical mask failed on {c.description}: {exc}\n")
            classical.append(0.0)
    u, k = np.array(unet), np.array(classical)
    return {
        "n_test_phantoms": len(cases),
        "unet_dice_mean": float(u.mean()), "unet_dice_min": float(u.min()), "unet_dice_median": float(np.median(u)),
        "classical_dice_mean": float(k.mean()), "classical_dice_min": float(k.min()), "classical_dice_median": float(np.median(k)),
        "unet_better_fraction": float(np.mean(u >= k)),
        "per_case": [{"case": c.description, "unet": float(a), "classical": float(b)} for c, a, b in zip(cases, u, k)],
    }


def _metadata(version: str, n_train: int, n_val: int, seed: int, evaluation: dict[str, Any], history: list,
              init_note: str = "random initialisation") -> dict[str, Any]:
    io_in = {"image": {"type": "image", "format": "magnitude", "modality": "NM (SPECT)", "num_channels": 1,
                       "spatial_shape": ["4*n", "4*n", "4*n"], "dtype": "float32", "value_range": [0, 2], "is_patch_data": False,
                       "channel_def": {"0": f"summed SPECT counts resampled to {CANONICAL_VOXEL_MM} mm isotropic, / 99.5th percentile, clipped to [0, 2]"}}}
    io_out = {"pred": {"type": "image", "format": "segmentation", "num_channels": 2, "spatial_shape": ["4*n", "4*n", "4*n"],
                       "dtype": "float32", "value_range": [0, 1], "is_patch_data": False,
                       "channel_def": {"0": "background", "1": "LV myocardium"}}}
    training = (f"{n_train} training and {n_val} validation phantoms of node.synth.spect.phantom (seed {seed}; random LV shape, pose, "
                f"tracer, counts 40-400/voxel, FWHM 10-16 mm, liver/bowel activity, attenuation artefacts, defects); "
                f"no real patient data, no pretrained weights")
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json",
        "version": version, "changelog": {version: "trained by `cardionode train lv_segmentation` on phantoms"},
        "monai_version": monai.__version__, "pytorch_version": torch.__version__.split("+")[0], "numpy_version": np.__version__,
        "required_packages_version": {"cardionode": __version__}, "name": "lv_segmentation",
        "task": "LV myocardium segmentation of SPECT volumes", "description": "Small 3D MONAI U-Net; its mask replaces the threshold step of locate_lv.",
        "authors": "CardioNode contributors", "copyright": "Apache-2.0",
        "intended_use": bundles.INTENDED_USE, "training_data": training, "training_cohort_version": f"node.synth.spect.phantom via node.ai.training.segmentation.segmentation_phantoms (seed {seed})",
        "data_source": "synthetic (node.synth.spect.phantom)", "data_type": "SPECT volume",
        "network_data_format": {"inputs": io_in, "outputs": io_out}, "inputs": io_in, "outputs": io_out,
        "canonical_voxel_mm": CANONICAL_VOXEL_MM,
        "mask_threshold": evaluation.get("mask_threshold", 0.5),
        "evaluation_summary": {k: v for k, v in evaluation.items() if k != "per_case"},
        "training": {"seed": seed, "n_train": n_train, "epochs": len(history), "history": history, "initialised_from": init_note},
    }


def _readme(metadata: dict[str, Any], ev: dict[str, Any], command: str) -> str:
    return f"""# lv_segmentation (version {metadata['version']})

Small 3D MONAI U-Net (channels 8/16/32, two stride-2 levels, one residual unit, batch norm) that segments the LV
myocardium in a SPECT volume. The SPECT pipeline passes its mask to `locate_lv`; the classical threshold method is
the fallback and the sanity check.

**Intended use: {bundles.INTENDED_USE}.**

## Training data

{metadata['training_data']}. Truth: voxels whose cycle-averaged myocardial fraction is >= 0.5. Training uses random
32^3 crops (80 % around the heart, 20 % anywhere, random flips), batch-norm statistics re-estimated on fresh crops
before each validation. Inference resamples the volume to {CANONICAL_VOXEL_MM} mm, finds the heart with a pass over
the whole volume and segments it with a second pass on the 32^3 crop centred on it (the training context); mask =
probability >= {metadata.get('mask_threshold', 0.5)} (chosen on the validation phantoms), largest component.

## Pretraining

No pretrained weights exist for this task and none can be downloaded here; trained from scratch.

## Metrics (held-out phantoms, shipped weights)

| method | mean Dice | median | min |
|---|---|---|---|
| U-Net | {ev['unet_dice_mean']:.3f} | {ev['unet_dice_median']:.3f} | {ev['unet_dice_min']:.3f} |
| classical threshold mask (node.quant.orientation) | {ev['classical_dice_mean']:.3f} | {ev['classical_dice_median']:.3f} | {ev['classical_dice_min']:.3f} |

{ev['n_test_phantoms']} test phantoms; U-Net >= classical in {100 * ev['unet_better_fraction']:.0f} % of them.
Regenerate (runs in order): `{command}`

## Limits

Phantoms are ellipsoidal LVs with Gaussian blur and Poisson noise: no scatter, no reconstruction artefacts, no
real extracardiac anatomy. Real volumes may differ; the pipeline compares the mask with the classical method and
reports large disagreement.
"""
