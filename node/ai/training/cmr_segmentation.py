"""Training of the ``cmr_segmentation`` bundle (the 2-D U-Net of :mod:`node.ai.cmr_segmentation`) on phantoms.

``python -m node.ai.training.cmr_segmentation --out DIR [--phantoms N] [--steps N] [--seed S]``
(also ``cardionode train cmr_segmentation --synthetic N``).

Data (:func:`phantom_slices`): phantoms of :mod:`node.synth.cmr.phantom` with random anatomy
(LV shape, RV arc and depth, septal angle, in-plane rotation, slice thickness 6-10 mm, gap
0-2 mm, pixels 1.3-2.6 mm), every LGE pattern of :data:`node.synth.cmr.phantom.PATTERNS`
(SNR of scar 10-40; magnitude and PSIR) and a cine at ED and ES (SNR of blood 20-60). Each
slice goes through the inference transform (:func:`node.ai.cmr_segmentation.network_input`);
its label is the most occupied of background, LV blood pool, LV myocardium (scar and MVO
included) and RV blood pool, from the phantom's tissue fractions resampled the same way. A
128 x 128 crop around the LV (offset up to +-24 pixels) is kept.

Training (:func:`train_cmr_segmentation`): MONAI ``UNet`` 2-D (channels 16-32-64-128,
strides 2, one residual unit), Dice + cross-entropy (``monai.losses.DiceCELoss``, softmax,
one-hot target), AdamW, batch 16, cosine learning-rate decay; augmentation on the fly:
rotation +-60 deg and scale 0.9-1.1 (an affine grid; no flips, which would move the septum
to the wrong side and mirror the RV), intensity gain, offset and noise. Seeds fix everything
(:func:`node.ai.training.common.seed_everything`); LGE slices with scar are drawn
:data:`SCAR_WEIGHT` times as often as the others; the validation phantoms come from a
separate stream. With ``dense_scar`` (``--dense-scar``; a 1.1.0 candidate, not shipped: docs/validation.md) the phantoms
cycle through :data:`DENSE_SCAR_CYCLE` (transmural scar with MVO 3 in 10, multifocal with RV
2 in 10, every other pattern once), the fields of view reach 400 mm (the full-size studies are
384 mm) and LGE slices with dense scar (an MVO core, or scar on at least :data:`DENSE_SHARE` of the
slice's myocardium) are drawn :data:`DENSE_WEIGHT` times as often. Writes the bundle (:func:`node.ai.bundles.write_bundle`) with metadata and
model card.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.losses import DiceCELoss
from torch.nn import functional as F

from node import __version__
from node.ai import bundles
from node.ai.cmr_segmentation import (
    BUNDLE,
    CANONICAL_PIXEL_MM,
    CONTRASTS,
    canonical_shape,
    network_input,
    resample_slice,
)
from node.ai.metrics import dice
from node.ai.training.common import Progress, TrainResult, seed_everything
from node.synth.cmr.phantom import (
    PATTERNS,
    TISSUES,
    Sampling,
    TissueFractions,
    cine_phantom,
    draw_anatomy,
    draw_pattern,
    lge_phantom,
)

__all__ = [
    "CROP",
    "DENSE_SCAR_CYCLE",
    "DEFAULT_PHANTOMS",
    "DEFAULT_STEPS",
    "SliceSet",
    "label_of_fractions",
    "phantom_slices",
    "train_cmr_segmentation",
    "main",
]

#: edge (pixels of the canonical grid) of the training crops
CROP = 128
DEFAULT_PHANTOMS = 120
DEFAULT_STEPS = 1200
BATCH = 16
#: scar pixels that make an LGE training slice a "scar slice", and how much more often those are drawn
SCAR_PIXELS = 20
SCAR_WEIGHT = 3.0
#: dense-scar fine-tuning: MVO pixels, or share of the slice's myocardium pixels that is scar, that make a
#: "dense scar" LGE slice, and how much more often those are drawn (bright scar across the wall looks like blood)
MVO_PIXELS = 5
DENSE_SHARE = 0.25
DENSE_WEIGHT = 6.0
#: pattern cycle of the dense-scar phantoms (10 phantoms)
DENSE_SCAR_CYCLE: tuple[str, ...] = (
    "scar_free", "ischaemic_transmural_mvo", "ischaemic_subendocardial", "sarcoid_multifocal_rv",
    "ischaemic_transmural_mvo", "sarcoid_midwall_septal", "sarcoid_epicardial", "ischaemic_transmural_mvo",
    "sarcoid_multifocal_rv", "fat_pad_decoy")
#: field of view (mm) of the training phantoms: default, and with ``dense_scar``
FOV_MM = (200.0, 280.0)
DENSE_FOV_MM = (200.0, 400.0)
_SPLITS = {"train": 1, "validation": 2}
_GROUPS = (("background", "fat", "rv_wall", "rv_scar"), ("lv_blood",), ("myocardium", "scar", "mvo"), ("rv_blood",))


def label_of_fractions(fractions: TissueFractions, index: int) -> np.ndarray:
    """Grouped class fractions ``[4, row, col]`` of slice ``index`` (background, LV blood pool, LV
    myocardium incl. scar and MVO, RV blood pool); fat, RV wall and RV scar count as background."""
    f = fractions.fractions[:, index]
    return np.stack([sum((f[TISSUES.index(t)] for t in group), np.zeros_like(f[0])) for group in _GROUPS])


@dataclass
class SliceSet:
    """Training slices: ``images`` float16 ``[n, CROP, CROP]`` (normalised), ``contrast`` float32
    ``[n]`` (the flag of :data:`CONTRASTS`), ``labels`` uint8 ``[n, CROP, CROP]``, ``phantom`` int
    ``[n]`` (which phantom each slice came from), ``scar`` bool ``[n]``: an LGE slice with at least
    :data:`SCAR_PIXELS` pixels of scar (fraction >= 0.5), drawn :data:`SCAR_WEIGHT` times as often
    in training (bright scar that spans the wall looks like blood); ``dense`` bool ``[n]``: an LGE slice
    with an MVO core (:data:`MVO_PIXELS`) or scar on :data:`DENSE_SHARE` of its myocardium."""

    images: np.ndarray
    contrast: np.ndarray
    labels: np.ndarray
    phantom: np.ndarray
    scar: np.ndarray
    dense: np.ndarray

    def __len__(self) -> int:
        return int(self.images.shape[0])


def _crop(arr: np.ndarray, centre: tuple[float, float], fill: float) -> np.ndarray:
    """``CROP x CROP`` window of the last two axes centred on ``centre`` (padding with ``fill``)."""
    r0 = int(round(centre[0])) - CROP // 2
    c0 = int(round(centre[1])) - CROP // 2
    out = np.full(arr.shape[:-2] + (CROP, CROP), fill, dtype=arr.dtype)
    rs, cs = arr.shape[-2:]
    a, b = max(r0, 0), min(r0 + CROP, rs)
    c, d = max(c0, 0), min(c0 + CROP, cs)
    if a < b and c < d:
        out[..., a - r0: b - r0, c - c0: d - c0] = arr[..., a:b, c:d]
    return out


def phantom_slices(n: int, seed: int, split: str = "train", *, patterns: tuple[str, ...] = PATTERNS,
                   fov_mm: tuple[float, float] = FOV_MM) -> SliceSet:
    """Slices of ``n`` phantoms (LGE magnitude, LGE PSIR, cine ED and ES of each) from the stream
    (``seed``, ``split``); phantom ``i`` has pattern ``patterns[i % len(patterns)]`` and a field of view
    drawn uniformly in ``fov_mm`` (mm); deterministic."""
    images: list[np.ndarray] = []
    contrast: list[float] = []
    labels: list[np.ndarray] = []
    owner: list[int] = []
    scar: list[bool] = []
    dense: list[bool] = []
    progress = Progress(f"phantoms {split}", n)
    for i in range(n):
        rng = np.random.default_rng([seed, _SPLITS[split], i])
        pixel = float(rng.uniform(1.3, 2.6))
        fov = float(rng.uniform(*fov_mm))
        matrix = int(round(fov / pixel))
        anatomy = draw_anatomy(rng, matrix=(matrix, matrix), pixel_mm=pixel, thickness_mm=float(rng.uniform(6.0, 10.0)),
                               gap_mm=float(rng.uniform(0.0, 2.0)))
        pattern = draw_pattern(patterns[i % len(patterns)], rng)
        sampling = Sampling(in_plane=2, through=2)
        lge = lge_phantom(anatomy, pattern, rng, snr_scar=float(rng.uniform(10.0, 40.0)), sampling=sampling)
        cine = cine_phantom(anatomy, rng, n_phases=3, snr_blood=float(rng.uniform(20.0, 60.0)), sampling=sampling)
        es = cine.truth.es_phase
        views = ((lge.magnitude, lge.fractions, "lge"), (lge.psir, lge.fractions, "lge"),
                 (cine.images[0], cine.ed_fractions, "cine"), (cine.images[es], cine.es_fractions, "cine"))
        st = anatomy.stack
        scale = pixel / CANONICAL_PIXEL_MM
        for image, fractions, kind in views:
            for s in range(st.n_slices):
                x = network_input(image[s], (pixel, pixel), kind)
                shape = canonical_shape(image[s].shape, (pixel, pixel))
                y = np.argmax(resample_slice(label_of_fractions(fractions, s), shape), axis=0).astype(np.uint8)
                centre = (st.axis_pixel[0] * scale + rng.uniform(-24, 24), st.axis_pixel[1] * scale + rng.uniform(-24, 24))
                images.append(_crop(x[0], centre, 0.0).astype(np.float16))
                labels.append(_crop(y, centre, 0))
                contrast.append(CONTRASTS[kind])
                owner.append(i)
                n_scar = int((fractions.lv_scar[s] >= 0.5).sum())
                scar.append(kind == "lge" and n_scar >= SCAR_PIXELS)
                n_myo = int((fractions.lv_myocardium[s] >= 0.5).sum())
                dense.append(kind == "lge" and n_scar >= SCAR_PIXELS
                             and (int((fractions.of("mvo")[s] >= 0.5).sum()) >= MVO_PIXELS or n_scar >= DENSE_SHARE * n_myo))
        progress.update(i + 1)
    return SliceSet(np.stack(images), np.asarray(contrast, np.float32), np.stack(labels), np.asarray(owner),
                    np.asarray(scar, bool), np.asarray(dense, bool))


def _augment(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotation +-60 deg, scale 0.9-1.1 (one affine grid for image and one-hot label), then gain, offset
    and noise on the image channel. ``x`` ``[b, 2, h, w]``, ``y`` one-hot ``[b, 4, h, w]``."""
    b = x.shape[0]
    angle = (torch.rand(b, generator=gen) * 2 - 1) * np.pi / 3
    scale = 0.9 + 0.2 * torch.rand(b, generator=gen)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, torch.zeros(b)], 1), torch.stack([sin, cos, torch.zeros(b)], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    img = F.grid_sample(x[:, :1], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    lab = F.grid_sample(y, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    lab[:, 0] += (lab.sum(1) < 0.5).float()  # outside the image: background
    lab = F.one_hot(lab.argmax(1), 4).permute(0, 3, 1, 2).float()
    gain = 0.8 + 0.4 * torch.rand(b, 1, 1, 1, generator=gen)
    offset = (torch.rand(b, 1, 1, 1, generator=gen) - 0.5) * 0.2
    noise = torch.randn(img.shape, generator=gen) * 0.05 * torch.rand(b, 1, 1, 1, generator=gen)
    img = (img * gain + offset + noise).clamp(-0.5, 1.5)
    return torch.cat([img, x[:, 1:]], 1), lab


def _batch(data: SliceSet, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    img = torch.from_numpy(data.images[idx].astype(np.float32))[:, None]
    flag = torch.from_numpy(data.contrast[idx])[:, None, None, None].expand_as(img)
    lab = torch.from_numpy(data.labels[idx].astype(np.int64))
    return torch.cat([img, flag], 1), F.one_hot(lab, 4).permute(0, 3, 1, 2).float()


def _predict(network: torch.nn.Module, data: SliceSet) -> np.ndarray:
    out = []
    network.eval()
    with torch.no_grad():
        for start in range(0, len(data), 64):
            x, _ = _batch(data, np.arange(start, min(start + 64, len(data))))
            out.append(network(x).argmax(1).numpy().astype(np.uint8))
    network.train()
    return np.concatenate(out)


def evaluate(network: torch.nn.Module, data: SliceSet) -> dict[str, Any]:
    """Per-phantom-view Dice of each class on crops (validation during training)."""
    pred = _predict(network, data)
    names = ("lv_blood_pool", "lv_myocardium", "rv_blood_pool")
    out: dict[str, Any] = {}
    for k, name in enumerate(names, start=1):
        scores = [dice(pred[data.phantom == p] == k, data.labels[data.phantom == p] == k) for p in np.unique(data.phantom)]
        out[f"{name}_dice_mean"] = float(np.mean(scores))
        out[f"{name}_dice_min"] = float(np.min(scores))
    return out


def _readme(metadata: dict[str, Any]) -> str:
    ev = metadata["evaluation_summary"]
    tr = metadata["training"]
    versions = "\n".join(f"- {v}: {text}" for v, text in metadata.get("changelog", {}).items())
    return f"""# cmr_segmentation {metadata['version']}

LV blood pool, LV myocardium (scar included) and RV blood pool on cardiac MR short-axis slices, cine (bSSFP)
and LGE (magnitude or PSIR). Used by `node.ai.cmr_segmentation.segment_short_axis`.

**Research use; trained on synthetic phantoms; not clinically validated.** No real patient data and no
pretrained weights were used (initialisation: {tr.get('initialised_from', 'random')}; nothing is downloaded).

## Network and input
- MONAI `UNet`, 2-D, channels 16-32-64-128, strides 2-2-2, one residual unit, 4 output classes
  (0 background, 1 LV blood pool, 2 LV myocardium, 3 RV blood pool).
- Input channel 0: the slice resampled to {CANONICAL_PIXEL_MM} mm pixels, scaled by its 1st/99th percentiles to [0, 1],
  clipped to [-0.5, 1.5]; channel 1: contrast flag (0 cine, 1 LGE). Fully convolutional (any size, multiple of 8).

## Training data
{metadata['training_data']}

## Training
`{tr['command']}`: {tr['steps']} AdamW steps (batch {BATCH}, lr {tr['lr']}, cosine decay), Dice + cross-entropy,
augmentation: rotation +-60 deg, scale 0.9-1.1, intensity gain/offset/noise (no flips: they would put the RV on
the wrong side). Seed {tr['seed']}. {tr['n_slices']} slices from {tr['n_phantoms']} phantoms; generation
{tr['generation_seconds']:.0f} s, training {tr['training_seconds']:.0f} s on {tr['threads']} CPU thread(s) of a shared 2-core machine.

## Evaluation
Validation phantoms (separate stream, {ev['n_validation_phantoms']} phantoms x 4 views, 128 x 128 crops): myocardium Dice
mean {ev['lv_myocardium_dice_mean']:.3f} (min {ev['lv_myocardium_dice_min']:.3f}), LV blood pool {ev['lv_blood_pool_dice_mean']:.3f},
RV {ev['rv_blood_pool_dice_mean']:.3f}. Held-out test on fresh phantoms through `segment_short_axis`:
tests/ai/test_cmr_segmentation.py and docs/validation.md.

## Versions
{versions}

## Limits
- Phantoms only: smooth analytic shapes, no papillary muscles or trabeculation, no real artefacts. Expect worse
  on real images; fine-tune on site data before any research use on patients.
- The RV is the blood pool only (the RV wall is background).
- Trained on the SAX standard view +-60 deg in-plane rotation.
"""


def train_cmr_segmentation(out: Path, *, n_phantoms: int = DEFAULT_PHANTOMS, n_validation: int = 12, steps: int = DEFAULT_STEPS,
                           seed: int = 0, lr: float = 2e-3, version: str = "1.0.0", command: str = "",
                           init: Path | None = None, dense_scar: bool = False) -> TrainResult:
    """Generate phantom slices, train the 2-D U-Net, evaluate on validation phantoms and write the bundle to ``out``;
    ``init`` is a bundle folder whose weights the training starts from (fine-tuning; default random initialisation);
    ``dense_scar`` selects the dense-scar mix (module docstring: :data:`DENSE_SCAR_CYCLE`, :data:`DENSE_FOV_MM`,
    :data:`DENSE_WEIGHT`)."""
    seed_everything(seed)
    start = time.monotonic()
    mix: dict[str, Any] = {"patterns": DENSE_SCAR_CYCLE, "fov_mm": DENSE_FOV_MM} if dense_scar else {}
    train = phantom_slices(n_phantoms, seed, "train", **mix)
    valid = phantom_slices(n_validation, seed, "validation", **mix)
    generation = time.monotonic() - start
    parser = ConfigParser(bundles.inference_config(BUNDLE))
    network = parser.get_parsed_content("network_def", instantiate=True)
    if init is not None:
        network.load_state_dict(torch.load(Path(init) / "models" / "model.pt", map_location="cpu", weights_only=True))
    network.train()
    loss_fn = DiceCELoss(softmax=True, to_onehot_y=False, include_background=False, smooth_nr=1e-5, smooth_dr=1e-5)
    optimiser = torch.optim.AdamW(network.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=steps, eta_min=lr * 0.02)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    weights = np.where(train.scar, SCAR_WEIGHT, 1.0)
    if dense_scar:
        weights = np.where(train.dense, DENSE_WEIGHT, weights)
    weights /= weights.sum()
    history: list[dict[str, float]] = []
    progress = Progress("train cmr_segmentation", steps)
    t0 = time.monotonic()
    running = 0.0
    for step in range(1, steps + 1):
        idx = rng.choice(len(train), size=BATCH, p=weights)
        x, y = _augment(*_batch(train, idx), gen)
        optimiser.zero_grad()
        loss = loss_fn(network(x), y)
        loss.backward()
        optimiser.step()
        schedule.step()
        running += float(loss.detach())
        if step % 100 == 0 or step == steps:
            entry = {"step": float(step), "train_loss": running / (100 if step % 100 == 0 else step % 100)}
            running = 0.0
            if step % 400 == 0 or step == steps:
                entry["validation_myocardium_dice"] = evaluate(network, valid)["lv_myocardium_dice_mean"]
            history.append(entry)
            progress.update(step, f"loss {entry['train_loss']:.3f}")
    training = time.monotonic() - t0
    network.eval()
    evaluation = evaluate(network, valid)
    evaluation["n_validation_phantoms"] = n_validation
    metadata = _metadata(version, n_phantoms, n_validation, len(train), steps, seed, lr, generation, training,
                         evaluation, history, command or f"python -m node.ai.training.cmr_segmentation --out {out}", init,
                         dense_scar, int(train.dense.sum()))
    bundles.write_bundle(out, BUNDLE, network, metadata, _readme(metadata))
    return TrainResult(BUNDLE, Path(out), network, history, evaluation, time.monotonic() - start)


def _metadata(version: str, n_phantoms: int, n_validation: int, n_slices: int, steps: int, seed: int, lr: float,
              generation: float, training: float, evaluation: dict[str, Any], history: list[dict[str, float]],
              command: str, init: Path | None = None, dense_scar: bool = False, n_dense: int = 0) -> dict[str, Any]:
    import monai

    changelog: dict[str, str] = {}
    if init is not None and (Path(init) / "configs" / "metadata.json").is_file():
        previous = json.loads((Path(init) / "configs" / "metadata.json").read_text())
        changelog.update(previous.get("changelog", {}))
    changelog[version] = ("fine-tuned from the weights of the previous version on dense-scar phantoms (transmural scar with "
                          "MVO 3 in 10 phantoms, multifocal with RV 2 in 10, fields of view 200-400 mm, dense-scar LGE slices "
                          f"drawn {DENSE_WEIGHT:g}x) so that bright scar and MVO stay in the myocardium label"
                          if dense_scar else "trained by `python -m node.ai.training.cmr_segmentation` on CMR phantoms")
    mix = (f"pattern cycle {', '.join(DENSE_SCAR_CYCLE)}; fields of view {DENSE_FOV_MM[0]:.0f}-{DENSE_FOV_MM[1]:.0f} mm; "
           f"{n_dense} dense-scar LGE slices drawn {DENSE_WEIGHT:g}x" if dense_scar else
           f"every pattern in turn; fields of view {FOV_MM[0]:.0f}-{FOV_MM[1]:.0f} mm")

    image = {
        "type": "image", "format": "magnitude", "modality": "MR", "num_channels": 2,
        "spatial_shape": ["8*n", "8*n"], "dtype": "float32", "value_range": [-0.5, 1.5], "is_patch_data": False,
        "channel_def": {"0": f"short-axis slice resampled to {CANONICAL_PIXEL_MM} mm pixels, (x - p1) / (p99 - p1) "
                             "per slice, clipped to [-0.5, 1.5]", "1": "contrast flag: 0 cine (bSSFP), 1 LGE (magnitude or PSIR)"},
    }
    pred = {
        "type": "image", "format": "segmentation", "num_channels": 4, "spatial_shape": ["8*n", "8*n"],
        "dtype": "float32", "value_range": [0, 1], "is_patch_data": False,
        "channel_def": {"0": "background", "1": "LV blood pool", "2": "LV myocardium (scar and MVO included)",
                        "3": "RV blood pool"},
    }
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json",
        "version": version,
        "changelog": changelog,
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "required_packages_version": {"cardionode": __version__},
        "name": BUNDLE,
        "task": "LV blood pool, LV myocardium and RV segmentation of cardiac MR short-axis slices (cine and LGE)",
        "description": "MONAI 2-D U-Net, one network for cine and LGE (contrast flag channel); trained on synthetic phantoms.",
        "authors": "CardioNode contributors",
        "copyright": "Apache-2.0",
        "intended_use": bundles.INTENDED_USE,
        "training_data": (f"{n_phantoms} training and {n_validation} validation phantoms of node.synth.cmr.phantom (seed {seed}; "
                          "random LV/RV anatomy, septal angle, in-plane rotation, pixels 1.3-2.6 mm, slices 6-10 mm, "
                          "all LGE patterns incl. scar-free, MVO and fat-pad decoy, SNR scar 10-40, magnitude and PSIR; "
                          f"cine ED and ES, SNR blood 20-60; Rician noise, coil field, partial volume; {mix}); "
                          "trained on synthetic phantoms; no real patient data, no pretrained weights"),
        "training_cohort_version": f"node.synth.cmr.phantom via node.ai.training.cmr_segmentation.phantom_slices (seed {seed})",
        "data_source": "synthetic (node.synth.cmr)",
        "data_type": "MR short-axis slice",
        "network_data_format": {"inputs": {"image": image}, "outputs": {"pred": pred}},
        "inputs": {"image": image},
        "outputs": {"pred": pred},
        "canonical_pixel_mm": CANONICAL_PIXEL_MM,
        "labels": {"0": "background", "1": "LV blood pool", "2": "LV myocardium", "3": "RV blood pool"},
        "evaluation_summary": evaluation,
        "training": {"seed": seed, "n_phantoms": n_phantoms, "n_slices": n_slices, "steps": steps, "batch": BATCH, "lr": lr,
                     "generation_seconds": round(generation, 1), "training_seconds": round(training, 1),
                     "threads": torch.get_num_threads(), "command": command, "history": history, "dense_scar": dense_scar,
                     "initialised_from": "random (no pretrained weights)" if init is None else f"weights of {init} (fine-tuned)"},
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m node.ai.training.cmr_segmentation``: train and write the bundle."""
    p = argparse.ArgumentParser(prog="python -m node.ai.training.cmr_segmentation", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    p.add_argument("--phantoms", type=int, default=DEFAULT_PHANTOMS)
    p.add_argument("--validation", type=int, default=12)
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--init", type=Path, default=None, metavar="BUNDLE_DIR", help="start from this bundle's weights")
    p.add_argument("--dense-scar", action="store_true",
                   help="dense-scar mix: more transmural scar with MVO and multifocal phantoms, fields of view to 400 mm")
    p.add_argument("--version", default="1.0.0", help="bundle version written to the metadata")
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    command = "python -m node.ai.training.cmr_segmentation " + " ".join(argv if argv is not None else sys.argv[1:])
    result = train_cmr_segmentation(args.out, n_phantoms=args.phantoms, n_validation=args.validation, steps=args.steps,
                                    seed=args.seed, lr=args.lr, command=command, init=args.init,
                                    dense_scar=args.dense_scar, version=args.version)
    sys.stderr.write(f"wrote bundle {result.out} in {result.seconds:.0f} s: {result.evaluation}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
