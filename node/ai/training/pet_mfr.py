"""Training of the PET flow-reserve bundle ``pet_mfr`` (issue 16; the seed: Yeung et al. 2022).

``cardionode train pet_mfr`` (:func:`train_pet_mfr`) runs these stages on the development split
of the PET cohort (:mod:`node.synth.pet.cohort`, P1's generator: image-tier phantoms measured by
the node's own PET analysis) and writes ``models/pet_mfr``-like bundle folders:

1. **Pretraining** on a larger, cheap synthetic cohort (:func:`polar_phantoms`): the same drawn
   designs as the cohort (:func:`node.synth.pet.cohort.draw_design`: traits, disease, sub-segment
   patterns) rendered directly on the polar grid (segment flows x planted patterns, Gaussian blur
   for the scanner's resolution, correlated multiplicative noise) without the image pipeline:
   milliseconds per case instead of seconds. ImageNet pretraining is impossible here (no downloads;
   the seed used ImageNet weights), so this is the pretraining that the comparison of stage 3 tests.
2. **lambda by 5-fold cross-validation** on development (:func:`select_lambda`): the loss is
   ``lambda * CE(impaired) + (1 - lambda) * MSE(17 segment MFR)``; the candidate with the lowest
   mean fold log loss of the impaired task wins. On this CPU budget the CV runs the small variant
   (:data:`SMALL`) with a reduced schedule; the chosen lambda is then used for the ResNet-50.
3. **From scratch vs pretrained** (:func:`compare_pretraining`): the same schedule on development
   from random weights and from the pretrained weights, scored on the test split.
4. **Final model** on all of development (stacked maps; the seed retrained on all development
   data after CV), from the pretrained weights.
5. **Trait heads** (:func:`fine_tune_traits`): per trait the last convolution, its batch norm and a
   2-logit layer are re-trained on the frozen network (the seed fine-tuned "the last 3 layers").
6. **Per-map networks** (rest, stress, MFR inputs) for the seed's comparison, small variant.

Optimiser AdamW, cosine learning-rate decay. Augmentations (the seed's, adapted to polar maps,
:func:`augment`): rest and stress MBF rescaled together by a factor U(0.9, 1.1) (the seed's
+-10 % rescaling; MFR is their ratio and is left as it is, so that the label, a threshold on MFR,
stays true); a roll of up to +-2 columns (+-10 degrees) in azimuth, which on a polar map is
exactly a rotation of the bull's-eye about the LV long axis (the seed rotated its images by
+-10 degrees); pixel dropout: 2 % of the cells set to 0, the value of an invalid cell.

Budgets are CPU seconds of this process (``time.process_time``); a stage stops at its budget and
keeps the weights it has, and says so in the bundle's model card. Training is deterministic for a
given seed on CPU (one generator per stage).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch import nn
from torch.nn import functional as F

from node.ai.networks import PetMfrNet
from node.ai.pet_mfr import (
    IMPAIRED_LOGITS,
    IMPAIRED_MFR_BELOW,
    SEGMENT_COLUMNS,
    maps_from_mbf,
    network_input,
)
from node.quant.segments import DEFAULT_GRID, N_SEGMENTS, TERRITORIES, TERRITORY_SEGMENTS

__all__ = [
    "FULL",
    "SMALL",
    "TINY",
    "PRETRAIN_FIRST_SEED",
    "TrainingData",
    "data_from_cohort",
    "polar_phantoms",
    "augment",
    "make_network",
    "fit",
    "predict",
    "select_lambda",
    "fine_tune_traits",
]

#: the shipped network: ResNet-50 (bottleneck [3, 4, 6, 3], widths 64..512), 3x3/2 stem + max pooling
FULL: dict[str, Any] = {"block": "bottleneck", "layers": [3, 4, 6, 3], "inplanes": [64, 128, 256, 512],
                        "conv1_size": 3, "conv1_stride": 2, "max_pool": True}
#: the small variant (CV, per-map comparison, pretraining comparison): ResNet-10-like, basic blocks [1, 1, 1, 1],
#: widths 16..128, 3x3/2 stem without max pooling (stages at 20x36, 10x18, 5x9, 3x5)
SMALL: dict[str, Any] = {"block": "basic", "layers": [1, 1, 1, 1], "inplanes": [16, 32, 64, 128],
                         "conv1_size": 3, "conv1_stride": 2, "max_pool": False}
#: the CI variant (smoke tests): basic blocks [1, 1, 1, 1], widths 8..32, stride-2 stem
TINY: dict[str, Any] = {"block": "basic", "layers": [1, 1, 1, 1], "inplanes": [8, 16, 24, 32],
                        "conv1_size": 3, "conv1_stride": 2, "max_pool": False}
#: seeds of the polar-level pretraining phantoms (disjoint from the cohort's split seeds 16.0-16.3 M)
PRETRAIN_FIRST_SEED = 16_500_000
_TRAITS = ("female", "diabetes", "hypertension", "dyslipidaemia", "smoking")


@dataclass
class TrainingData:
    """What the trainer reads of a cohort: ``maps`` [N, 3, 40, 72] (rest, stress MBF, MFR), ``segment_mfr``
    [N, 17] (the regression target: the node's measured segment MFR), ``impaired`` [N] (0/1),
    ``territory_impaired`` [N, 3], ``traits`` [N, 5] (recorded), ``defect_territory`` [N] ("" or a
    territory), ``planted_mask`` [N, 40, 72]."""

    maps: np.ndarray
    segment_mfr: np.ndarray
    impaired: np.ndarray
    territory_impaired: np.ndarray
    traits: np.ndarray
    defect_territory: np.ndarray
    planted_mask: np.ndarray
    name: str = ""
    source: Any = None  # the PetCohort it came from (for the evaluation report), None for polar phantoms

    def __len__(self) -> int:
        return int(self.maps.shape[0])

    def subset(self, index: np.ndarray) -> TrainingData:
        return TrainingData(self.maps[index], self.segment_mfr[index], self.impaired[index],
                            self.territory_impaired[index], self.traits[index], self.defect_territory[index],
                            self.planted_mask[index], self.name)


def data_from_cohort(cohort: Any, name: str = "") -> TrainingData:
    """:class:`TrainingData` of a :class:`node.synth.pet.cohort.PetCohort`."""
    return TrainingData(np.asarray(cohort.maps, np.float32), np.asarray(cohort.segment_mfr, np.float32),
                        np.asarray(cohort.impaired, np.int64), np.asarray(cohort.territory_impaired, np.int64),
                        np.asarray(cohort.traits, np.int64), np.asarray(cohort.defect_territory),
                        np.asarray(cohort.planted_mask, bool), name, cohort)


def _segment_means(values: np.ndarray) -> np.ndarray:
    """Mean of a map ``[40, 72]`` per AHA segment ``[17]``."""
    ids = DEFAULT_GRID.segment_ids().ravel()
    sums = np.bincount(ids, weights=values.ravel(), minlength=N_SEGMENTS + 1)[1:]
    counts = np.bincount(ids, minlength=N_SEGMENTS + 1)[1:]
    return sums / np.maximum(counts, 1)


def polar_phantoms(n: int, first_seed: int = PRETRAIN_FIRST_SEED) -> TrainingData:
    """A cheap cohort rendered on the polar grid from the PET cohort's designs (module docstring, stage 1).

    Case ``k`` is :func:`node.synth.pet.cohort.draw_design` ``(first_seed + k, "development")``:
    segment rest/stress MBF with traits and disease, times the planted sub-segment patterns
    (:func:`~node.synth.pet.cohort.pattern_multiplier`) at each cell centre; then per case a
    Gaussian blur of U(1.2, 2.5) cells (rows; the same in mm along the circumference, wrapped in
    azimuth), a common MBF scale U(0.9, 1.1) (partial-volume and input errors, which cancel in MFR),
    and multiplicative correlated noise (SD 7 % rest, 6 % stress, smoothed over 1 cell). Maps and
    valid cells by :func:`node.ai.pet_mfr.maps_from_mbf`; segment MFR = ratio of the segment means;
    ``impaired`` = any segment MFR < 2.0; ``territory_impaired`` = territory MFR (ratio of the
    territory's mean stress and rest) < 2.0.
    """
    from node.synth.pet.cohort import draw_design, pattern_multiplier, planted_masks

    grid = DEFAULT_GRID
    uu, pp = np.meshgrid(grid.u_centres, grid.psi_centres_deg, indexing="ij")
    ids = grid.segment_ids()
    maps = np.zeros((n, 3, *grid.shape), np.float32)
    seg_mfr = np.zeros((n, N_SEGMENTS), np.float32)
    territory = np.zeros((n, 3), np.int64)
    traits = np.zeros((n, 5), np.int64)
    defect = np.empty(n, dtype="<U4")
    planted = np.zeros((n, *grid.shape), bool)
    for k in range(n):
        seed = first_seed + k
        design = draw_design(seed, "development")
        rng = np.random.default_rng([seed, 7])
        sigma_u = rng.uniform(1.2, 2.5)
        scale = rng.uniform(0.9, 1.1)
        states = []
        for state, segment_values, noise_sd in (("rest", design.rest_mbf, 0.07), ("stress", design.stress_mbf, 0.06)):
            values = np.asarray(segment_values)[ids - 1] * pattern_multiplier(design, state, uu, pp, grid.u_cap)
            values = ndimage.gaussian_filter(values, sigma=(sigma_u, 1.6 * sigma_u), mode=("nearest", "wrap"))
            noise = ndimage.gaussian_filter(rng.standard_normal(grid.shape), 1.0, mode=("nearest", "wrap"))
            noise /= max(float(noise.std()), 1e-6)
            states.append(values * scale * (1.0 + noise_sd * noise))
        m, _ = maps_from_mbf(states[0], states[1])
        maps[k] = m
        rest_seg, stress_seg = _segment_means(m[0]), _segment_means(m[1])
        seg_mfr[k] = stress_seg / np.maximum(rest_seg, 1e-6)
        for t, terr in enumerate(TERRITORIES):
            segs = [s - 1 for s in TERRITORY_SEGMENTS[terr]]
            territory[k, t] = int(stress_seg[segs].mean() / max(rest_seg[segs].mean(), 1e-6) < IMPAIRED_MFR_BELOW)
        traits[k] = design.traits
        defect[k] = design.defect_territory
        planted[k] = planted_masks(design)[0]
    impaired = (seg_mfr.min(axis=1) < IMPAIRED_MFR_BELOW).astype(np.int64)
    return TrainingData(maps, seg_mfr, impaired, territory, traits, defect, planted, "polar-phantoms")


# --------------------------------------------------------------------------- network and training loop


def make_network(variant: str = "stacked", size: dict[str, Any] | None = None, n_traits: int = 5) -> PetMfrNet:
    """A fresh :class:`PetMfrNet` for input ``variant`` (1 or 3 channels) of architecture ``size`` (default :data:`FULL`)."""
    spec = dict(FULL if size is None else size)
    return PetMfrNet(in_channels=3 if variant == "stacked" else 1, block=spec["block"], layers=tuple(spec["layers"]),
                     inplanes=tuple(spec["inplanes"]), conv1_size=int(spec["conv1_size"]),
                     conv1_stride=int(spec["conv1_stride"]), max_pool=bool(spec["max_pool"]), n_traits=n_traits)


def augment(x: torch.Tensor, variant: str, gen: torch.Generator, roll: int = 2, dropout: float = 0.02) -> torch.Tensor:
    """The seed's augmentations on network inputs ``x`` ``[b, c, 40, 72]`` (module docstring).

    MBF channels (rest, stress; all channels of the ``rest``/``stress`` variants) are rescaled by one
    factor U(0.9, 1.1) per study; MFR is not; a roll by an integer in [-roll, roll] columns in
    azimuth per study; ``dropout`` of the cells (all channels of a cell) set to 0.
    """
    b = x.shape[0]
    factor = 0.9 + 0.2 * torch.rand(b, generator=gen)
    mbf_channels = {"stacked": [0, 1], "rest": [0], "stress": [0], "mfr": []}[variant]
    out = x.clone()
    if mbf_channels:
        out[:, mbf_channels] = out[:, mbf_channels] * factor[:, None, None, None]
    shifts = torch.randint(-roll, roll + 1, (b,), generator=gen)
    out = torch.stack([torch.roll(out[i], int(shifts[i]), dims=-1) for i in range(b)])
    keep = (torch.rand(b, 1, *out.shape[2:], generator=gen) >= dropout).to(out.dtype)
    return out * keep


def _loss(out: torch.Tensor, seg: torch.Tensor, imp: torch.Tensor, lam: float) -> torch.Tensor:
    return lam * F.cross_entropy(out[:, IMPAIRED_LOGITS], imp) + (1.0 - lam) * F.mse_loss(out[:, SEGMENT_COLUMNS], seg)


@dataclass
class FitResult:
    """History of one :func:`fit`: per epoch the mean training loss, samples/s and CPU seconds."""

    history: list[dict[str, float]] = field(default_factory=list)
    stopped_early: bool = False
    samples_seen: int = 0
    cpu_s: float = 0.0


def fit(net: nn.Module, data: TrainingData, variant: str, *, epochs: float, lam: float, seed: int, lr: float = 1e-3,
        weight_decay: float = 1e-2, batch: int = 32, max_cpu_s: float | None = None, label: str = "",
        progress: Callable[[str], None] | None = None, checkpoint: Path | None = None,
        augmentation: bool = True, checkpoint_every: int = 0, stop_file: Path | None = None) -> FitResult:
    """Train ``net`` on ``data`` with AdamW and cosine decay for ``epochs`` (may be fractional) epochs.

    Stops early when this process has used ``max_cpu_s`` CPU seconds in the call, or when
    ``stop_file`` exists (the result says so). Writes ``checkpoint`` (the state dict) after every
    epoch, and every ``checkpoint_every`` steps when that is > 0.
    """
    gen = torch.Generator().manual_seed(seed)
    x_all = torch.from_numpy(network_input(data.maps, variant))
    seg_all = torch.from_numpy(np.asarray(data.segment_mfr, np.float32))
    imp_all = torch.from_numpy(np.asarray(data.impaired, np.int64))
    n = len(data)
    steps_per_epoch = max(1, math.ceil(n / batch))
    total_steps = max(1, int(round(epochs * steps_per_epoch)))
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, total_steps // 20)) * 0.5 * (1.0 + math.cos(math.pi * min(s, total_steps) / total_steps)))
    result = FitResult()
    t0 = time.process_time()
    step = 0
    epoch = 0
    net.train()
    while step < total_steps:
        order = torch.randperm(n, generator=gen)
        losses: list[float] = []
        e0 = time.process_time()
        seen = 0
        for i in range(0, n, batch):
            if step >= total_steps:
                break
            idx = order[i:i + batch]
            if len(idx) < 2:
                continue
            x = x_all[idx]
            if augmentation:
                x = augment(x, variant, gen)
            opt.zero_grad(set_to_none=True)
            loss = _loss(net(x), seg_all[idx], imp_all[idx], lam)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            seen += len(idx)
            losses.append(float(loss.detach()))
            if checkpoint is not None and checkpoint_every > 0 and step % checkpoint_every == 0:
                checkpoint.parent.mkdir(parents=True, exist_ok=True)
                torch.save(net.state_dict(), checkpoint)
                if progress is not None:
                    progress(f"[{label}] step {step}/{total_steps} loss {np.mean(losses[-checkpoint_every:]):.4f} "
                             f"{time.process_time() - t0:.0f} cpu-s (checkpoint)")
            if (max_cpu_s is not None and time.process_time() - t0 > max_cpu_s) or (stop_file is not None and stop_file.exists()):
                result.stopped_early = True
                break
        epoch += 1
        dt = max(time.process_time() - e0, 1e-9)
        result.samples_seen += seen
        result.history.append({"epoch": float(epoch), "loss": float(np.mean(losses)) if losses else float("nan"),
                               "samples_per_cpu_s": seen / dt, "cpu_s": time.process_time() - t0, "step": float(step)})
        if progress is not None:
            h = result.history[-1]
            progress(f"[{label}] epoch {epoch} step {step}/{total_steps} loss {h['loss']:.4f} "
                     f"{h['samples_per_cpu_s']:.1f} samples/cpu-s, {h['cpu_s']:.0f} cpu-s")
        if checkpoint is not None:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            torch.save(net.state_dict(), checkpoint)
        if result.stopped_early:
            break
    net.eval()
    result.cpu_s = time.process_time() - t0
    return result


def predict(net: nn.Module, data: TrainingData, variant: str, batch: int = 64) -> np.ndarray:
    """Raw network outputs ``[N, 19]`` (float64) in eval mode."""
    x_all = network_input(data.maps, variant)
    net.eval()
    outs = []
    with torch.no_grad():
        for i in range(0, len(x_all), batch):
            outs.append(net(torch.from_numpy(x_all[i:i + batch])).numpy().astype(np.float64))
    return np.concatenate(outs) if outs else np.zeros((0, 19))


def impaired_probability(outputs: np.ndarray) -> np.ndarray:
    """P(impaired) from raw outputs ``[N, 19]``."""
    logits = outputs[:, IMPAIRED_LOGITS]
    logits = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e[:, 1] / e.sum(axis=1)


def _log_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def select_lambda(data: TrainingData, lambdas: Sequence[float] = (0.25, 0.5, 0.75), folds: int = 5, *,
                  epochs: float = 3.0, seed: int = 0, size: dict[str, Any] | None = None, variant: str = "stacked",
                  max_cpu_s_per_fit: float | None = None, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """lambda by ``folds``-fold cross-validation on ``data`` (stratified by ``impaired``).

    Returns ``{"chosen": lambda, "folds": folds, "epochs": epochs, "size": ..., "results": {lambda: {"log_loss":
    mean, "auc": mean, "segment_rmse": mean}}}``; the lowest mean fold log loss of the impaired task wins.
    """
    from node.ai.metrics import auc

    rng = np.random.default_rng(seed)
    fold_of = np.zeros(len(data), int)
    for cls in (0, 1):
        idx = np.flatnonzero(data.impaired == cls)
        rng.shuffle(idx)
        fold_of[idx] = np.arange(len(idx)) % folds
    results: dict[str, dict[str, float]] = {}
    for lam in lambdas:
        ll, aucs, rmse = [], [], []
        for f in range(folds):
            train, val = data.subset(np.flatnonzero(fold_of != f)), data.subset(np.flatnonzero(fold_of == f))
            torch.manual_seed(seed + f)
            net = make_network(variant, size or SMALL, n_traits=0)
            fit(net, train, variant, epochs=epochs, lam=lam, seed=seed + f, max_cpu_s=max_cpu_s_per_fit,
                label=f"cv lambda={lam} fold {f + 1}/{folds}", progress=progress)
            out = predict(net, val, variant)
            p = impaired_probability(out)
            ll.append(_log_loss(val.impaired, p))
            aucs.append(auc(val.impaired, p) if 0 < val.impaired.sum() < len(val) else float("nan"))
            rmse.append(float(np.sqrt(np.mean((out[:, SEGMENT_COLUMNS] - val.segment_mfr) ** 2))))
        results[f"{lam:g}"] = {"log_loss": float(np.mean(ll)), "auc": float(np.nanmean(aucs)),
                               "segment_rmse": float(np.mean(rmse))}
        if progress is not None:
            progress(f"[cv] lambda={lam:g}: log loss {results[f'{lam:g}']['log_loss']:.4f}, AUC "
                     f"{results[f'{lam:g}']['auc']:.3f}, segment RMSE {results[f'{lam:g}']['segment_rmse']:.3f}")
    chosen = min(lambdas, key=lambda lam: results[f"{lam:g}"]["log_loss"])
    return {"chosen": float(chosen), "folds": folds, "epochs": epochs, "size": dict(size or SMALL), "results": results}


def _trait_features(net: PetMfrNet, data: TrainingData, variant: str, batch: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    x_all = torch.from_numpy(network_input(data.maps, variant))
    net.eval()
    hs, rs = [], []
    with torch.no_grad():
        for i in range(0, len(x_all), batch):
            h, r = net.last_block_inputs(x_all[i:i + batch])
            hs.append(h)
            rs.append(r)
    return torch.cat(hs), torch.cat(rs)


def fine_tune_traits(net: PetMfrNet, data: TrainingData, variant: str, *, epochs: int = 30, seed: int = 0,
                     lr: float = 1e-3, batch: int = 64, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Fine-tune each trait head of ``net`` on ``data.traits`` with the rest of the network frozen.

    Each head starts from a copy of the last convolution and batch norm of the impaired-MFR network and
    a fresh 2-logit layer; the features before it are computed once (no augmentation: the frozen
    network's inputs are fixed). Cross-entropy with class weights inverse to the trait's prevalence
    (diabetes 15 %, smoking 14 %). Returns per trait the final training loss.
    """
    hidden, residual = _trait_features(net, data, variant)
    last: Any = net.backbone.layer4[-1]
    conv = getattr(last, net._last_conv)
    norm = last.bn3 if net._last_conv == "conv3" else last.bn2
    out: dict[str, Any] = {}
    heads: list[Any] = list(net.trait_heads)
    for t, head in enumerate(heads):
        head.conv.load_state_dict(conv.state_dict())
        head.norm.load_state_dict(norm.state_dict())
        gen = torch.Generator().manual_seed(seed + t)
        nn.init.normal_(head.fc.weight, std=0.01, generator=gen)
        nn.init.zeros_(head.fc.bias)
        y = torch.from_numpy(np.asarray(data.traits[:, t], np.int64))
        prevalence = float(y.float().mean().clamp(0.02, 0.98))
        weight = torch.tensor([0.5 / (1 - prevalence), 0.5 / prevalence])
        opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-2)
        head.train()
        loss_value = float("nan")
        for _ in range(epochs):
            order = torch.randperm(len(y), generator=gen)
            losses = []
            for i in range(0, len(y), batch):
                idx = order[i:i + batch]
                if len(idx) < 2:
                    continue
                opt.zero_grad(set_to_none=True)
                loss = F.cross_entropy(head(hidden[idx], residual[idx]), y[idx], weight=weight)
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
            loss_value = float(np.mean(losses)) if losses else float("nan")
        head.eval()
        out[_TRAITS[t] if t < len(_TRAITS) else str(t)] = {"train_loss": loss_value, "epochs": epochs}
        if progress is not None:
            progress(f"[traits] {_TRAITS[t] if t < len(_TRAITS) else t}: loss {loss_value:.4f}")
    return out


def save_half(net: nn.Module, path: Path) -> Path:
    """Save ``net``'s state dict as float16 (floating tensors; integer buffers as they are); load to float32."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: (v.detach().cpu().half() if v.is_floating_point() else v.detach().cpu()) for k, v in net.state_dict().items()}
    torch.save(state, path)
    return path


def load_weights(net: nn.Module, path: Path) -> nn.Module:
    """Load a (float16 or float32) state dict into ``net`` as float32."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    net.load_state_dict({k: (v.float() if v.is_floating_point() else v) for k, v in state.items()})
    return net


def _json(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=float)


# --------------------------------------------------------------------------- stages (each cached in the work folder)


@dataclass
class Budget:
    """CPU-second caps of the stages (module docstring; 0 skips a stage where that is allowed)."""

    pretrain_full: float = 1150.0
    pretrain_small: float = 200.0
    cv_fit: float = 60.0
    final: float = 400.0
    compare_fit: float = 120.0
    per_map_fit: float = 90.0


@dataclass
class Plan:
    """Sizes and schedules of :func:`train_pet_mfr` (the shipped bundle's values are the defaults)."""

    pretrain_cases: int = 9000
    pretrain_epochs: float = 1.0
    pretrain_lambda: float = 0.5
    cv_cases: int = 600
    cv_on: str = "polar-phantoms"  # or "development"
    lambdas: tuple[float, ...] = (0.25, 0.5, 0.75)
    cv_folds: int = 5
    cv_epochs: float = 1.5
    small_pretrain_cases: int = 4000
    small_pretrain_epochs: float = 2.0
    final_epochs: float = 4.0
    final_lr: float = 3e-4
    compare_epochs: float = 6.0
    per_map_epochs: float = 6.0
    trait_epochs: int = 30
    band_cases: int = 300
    gradcam_layer_cases: int = 40
    size: dict[str, Any] = field(default_factory=lambda: dict(FULL))
    small: dict[str, Any] = field(default_factory=lambda: dict(SMALL))


def _say(progress: Callable[[str], None] | None, text: str) -> None:
    if progress is not None:
        progress(text)


def stage_pretrain(work: Path, plan: Plan, budget: float, which: str, lam: float, seed: int = 0,
                   progress: Callable[[str], None] | None = None) -> tuple[PetMfrNet, dict[str, Any]]:
    """Pretrain the ``which`` ("full" or "small") stacked network on :func:`polar_phantoms`; cached as
    ``work/pretrain_<which>.pt`` + ``.json``."""
    weights, record = work / f"pretrain_{which}.pt", work / f"pretrain_{which}.json"
    size = plan.size if which == "full" else plan.small
    net = make_network("stacked", size)
    if weights.is_file() and record.is_file():
        net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        return net.eval(), json.loads(record.read_text())
    t0 = time.process_time()
    data = polar_phantoms(plan.pretrain_cases if which == "full" else plan.small_pretrain_cases)
    torch.manual_seed(seed)
    net = make_network("stacked", size)
    epochs = plan.pretrain_epochs if which == "full" else plan.small_pretrain_epochs
    r = fit(net, data, "stacked", epochs=epochs, lam=lam, seed=seed, max_cpu_s=budget, label=f"pretrain-{which}",
            progress=progress, checkpoint=weights, checkpoint_every=10 if which == "full" else 0,
            stop_file=work / f"STOP_pretrain_{which}")
    info = {"history": r.history, "stopped_early": r.stopped_early, "samples_seen": r.samples_seen,
            "cpu_s": time.process_time() - t0, "cases": plan.pretrain_cases, "lam": lam, "epochs_planned": epochs}
    record.write_text(_json(info))
    return net.eval(), info


def stage_cv(work: Path, plan: Plan, dev: TrainingData | None, budget: float, seed: int = 0,
             progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """lambda by 5-fold CV (:func:`select_lambda`, small variant); cached as ``work/cv_small.json``."""
    record = work / "cv_small.json"
    if record.is_file():
        return dict(json.loads(record.read_text()))
    t0 = time.process_time()
    if plan.cv_on == "development" and dev is not None:
        data, what = dev, f"development split ({len(dev)} cases)"
    else:
        data, what = polar_phantoms(plan.cv_cases, first_seed=16_600_000), \
            f"{plan.cv_cases} polar-level phantoms (seeds 16,600,000..), development designs"
    cv = select_lambda(data, plan.lambdas, plan.cv_folds, epochs=plan.cv_epochs, seed=seed, size=plan.small,
                       max_cpu_s_per_fit=budget, progress=progress)
    cv["data"] = what
    cv["cpu_s"] = time.process_time() - t0
    record.write_text(_json(cv))
    return cv


def stage_train(work: Path, name: str, data: TrainingData, variant: str, size: dict[str, Any], *, epochs: float,
                lam: float, budget: float, lr: float = 1e-3, init: PetMfrNet | None = None, seed: int = 0,
                progress: Callable[[str], None] | None = None) -> tuple[PetMfrNet, dict[str, Any]]:
    """Train (or fine-tune from ``init``) one network; cached as ``work/<name>.pt`` + ``.json``."""
    weights, record = work / f"{name}.pt", work / f"{name}.json"
    net = make_network(variant, size)
    if weights.is_file() and record.is_file():
        net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        return net.eval(), json.loads(record.read_text())
    torch.manual_seed(seed)
    net = make_network(variant, size)
    if init is not None:
        net.load_state_dict(init.state_dict())
    r = fit(net, data, variant, epochs=epochs, lam=lam, lr=lr, seed=seed, max_cpu_s=budget, label=name,
            progress=progress)
    torch.save(net.state_dict(), weights)
    info = {"history": r.history, "stopped_early": r.stopped_early, "samples_seen": r.samples_seen, "cpu_s": r.cpu_s,
            "epochs_planned": epochs, "lam": lam, "lr": lr, "init": "pretrained" if init is not None else "scratch",
            "cases": len(data), "variant": variant}
    record.write_text(_json(info))
    return net.eval(), info


def territory_residual_sd(net: nn.Module, data: TrainingData, variant: str) -> float:
    """SD of (measured - predicted) territory MFR on ``data`` (the territory probabilities' scale)."""
    out = predict(net, data, variant)[:, SEGMENT_COLUMNS]
    residuals = []
    for terr in TERRITORIES:
        segs = [s - 1 for s in TERRITORY_SEGMENTS[terr]]
        residuals.append(data.segment_mfr[:, segs].mean(axis=1) - out[:, segs].mean(axis=1))
    return float(np.std(np.concatenate(residuals)))


def gradcam_territory_share(net: nn.Module, data: TrainingData, variant: str, layer: str,
                            only_impaired: bool = False, limit: int | None = None) -> dict[str, Any]:
    """Mean Grad-CAM mass share in the planted territory over the single-territory cases of ``data``.

    ``only_impaired`` keeps the cases whose planted territory is measured impaired. Returns
    ``{"n", "mean_share", "median_share", "share_ge_60", "layer"}``.
    """
    from node.ai.explain import summarise_attention
    from node.ai.pet_mfr import gradcam_impaired

    idx = [i for i, t in enumerate(data.defect_territory) if str(t)]
    if only_impaired:
        idx = [i for i in idx if data.territory_impaired[i, TERRITORIES.index(str(data.defect_territory[i]))]]
    idx = idx[:limit] if limit is not None else idx
    shares = []
    for k in range(0, len(idx), 16):
        chunk = idx[k:k + 16]
        x = torch.from_numpy(network_input(data.maps[chunk], variant))
        cams = gradcam_impaired(net, layer, x)
        for j, i in enumerate(chunk):
            shares.append(summarise_attention(cams[j]).territory_share[str(data.defect_territory[i])])
    arr = np.asarray(shares, float)
    return {"n": int(len(arr)), "mean_share": float(arr.mean()) if len(arr) else float("nan"),
            "median_share": float(np.median(arr)) if len(arr) else float("nan"),
            "share_ge_60": float(np.mean(arr >= 0.6)) if len(arr) else float("nan"), "layer": layer,
            "only_impaired": only_impaired}


def scores_of(net: PetMfrNet, data: TrainingData, variant: str, residual_sd: float, traits: bool = True) -> dict[str, Any]:
    """The network's scores on ``data`` in the evaluation report's layout for one input ``variant``:
    ``{"impaired": [N], "territory": {"LAD"|"LCx"|"RCA": [N]}, "traits": {trait: [N]}, "segment_mfr": [N, 17]}``."""
    from node.ai.pet_mfr import score_maps

    s = score_maps(net, data.maps, variant, residual_sd=residual_sd, traits=traits, batch=64)
    out: dict[str, Any] = {"impaired": s.impaired, "territory": {t: s.territory[:, k] for k, t in enumerate(TERRITORIES)},
                           "segment_mfr": s.segment_mfr}
    if s.traits is not None:
        out["traits"] = {t: s.traits[:, k] for k, t in enumerate(_TRAITS)}
    return out


def network_scores(per_variant: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Regroup ``{variant: scores_of(...)}`` of one split as ``{"impaired": {variant: [N]}, "territory": {T: {variant:
    [N]}}, "traits": {trait: {variant: [N]}}}`` (the layout of ``evaluation_report``'s ``network_scores[split]``)."""
    out: dict[str, Any] = {"impaired": {}, "territory": {t: {} for t in TERRITORIES}, "traits": {t: {} for t in _TRAITS}}
    for variant, s in per_variant.items():
        out["impaired"][variant] = np.asarray(s["impaired"])
        for t in TERRITORIES:
            out["territory"][t][variant] = np.asarray(s["territory"][t])
        for t in s.get("traits", {}):
            out["traits"][t][variant] = np.asarray(s["traits"][t])
    return out


def simple_metrics(y: np.ndarray, p: np.ndarray, seed: int = 0, n_boot: int = 4000) -> dict[str, float]:
    """AUC with an ``n_boot``-sample bootstrap 95 % CI, accuracy at 0.5, log loss (``y`` 0/1, ``p`` probabilities)."""
    from node.ai.training.pet_mfr_eval import bootstrap_auc

    y = np.asarray(y, int)
    p = np.asarray(p, float)
    if not 0 < y.sum() < len(y):
        return {"n": float(len(y)), "auc": float("nan"), "auc_lo": float("nan"), "auc_hi": float("nan")}
    value, lo, hi = bootstrap_auc(y, p, n=n_boot, seed=seed)
    return {"n": float(len(y)), "prevalence": float(y.mean()), "auc": float(value), "auc_lo": float(lo),
            "auc_hi": float(hi), "accuracy": float(np.mean((p >= 0.5) == (y == 1))), "log_loss": _log_loss(y, p)}


def write_pet_bundle(out: Path, net: PetMfrNet, size: dict[str, Any], metadata: dict[str, Any], readme: str,
                     evaluation: dict[str, Any], gradcam_layer: str) -> Path:
    """Write the ``pet_mfr`` bundle folder: configs (MONAI), float16 weights, model card and evaluation."""
    from node.ai import bundles

    out = Path(out)
    for sub in ("configs", "models", "docs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    save_half(net, out / "models" / "model.pt")
    config = {
        "imports": ["$import node.ai.networks"],
        "bundle_root": ".",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "network_def": {"_target_": "node.ai.networks.PetMfrNet", "in_channels": int(net.backbone.conv1.in_channels),
                        "block": size["block"], "layers": list(size["layers"]), "inplanes": list(size["inplanes"]),
                        "conv1_size": int(size["conv1_size"]), "conv1_stride": int(size["conv1_stride"]),
                        "max_pool": bool(size["max_pool"]), "n_outputs": 19, "n_traits": len(net.trait_heads)},
        "network": "$@network_def.to(@device)",
        "checkpoint": "$@bundle_root + '/models/model.pt'",
        "gradcam_target_layer": gradcam_layer,
    }
    (out / "configs" / "inference.json").write_text(_json(config) + "\n")
    (out / "configs" / "metadata.json").write_text(_json(metadata) + "\n")
    (out / "docs" / "README.md").write_text(readme)
    (out / "docs" / "evaluation.json").write_text(_json(evaluation) + "\n")
    with bundles._LOCK:
        for key in [k for k in bundles._CACHE if k[0] == "pet_mfr"]:
            del bundles._CACHE[key]
    return out


# --------------------------------------------------------------------------- the whole run: cardionode train pet_mfr

#: seeds of the polar-level phantoms that set the verdicts' indeterminate bands (unseen in training)
BAND_FIRST_SEED = 16_700_000
#: Grad-CAM layers tried on development single-territory cases (the best mean territory share is shipped)
GRADCAM_CANDIDATES: tuple[str, ...] = ("backbone.layer1", "backbone.layer2", "backbone.layer3", "backbone.layer4")
READER_NAMES: dict[str, str] = {
    "impaired": "Probability of impaired MFR in any segment (PET MFR model)",
    **{f"territory_{t.lower()}": f"Probability of impaired MFR, {t} territory (PET MFR model)" for t in TERRITORIES},
}


def _cohorts(cohort_dir: Path | None, synthetic: int | None, progress: Callable[[str], None] | None) -> dict[str, TrainingData]:
    """The development, test and external splits (``.npz``, else the finished parts of a running build; with
    ``synthetic`` N and nothing on disk: built here, N development and N/4 test and external cases)."""
    from node.synth.pet import cohort as pet_cohort

    out: dict[str, TrainingData] = {}
    for split in pet_cohort.SPLITS:
        path = pet_cohort.cohort_path(split, cohort_dir)
        if not path.is_file() and synthetic:
            n = synthetic if split == "development" else max(synthetic // 4, 8)
            _say(progress, f"building the {split} split ({n} cases; seconds per case) at {path}")
            pet_cohort.build_cohort(split, n, out=path)
        if path.is_file():
            out[split] = data_from_cohort(pet_cohort.load_cohort(path), split)
        elif hasattr(pet_cohort, "load_parts") and path.with_name(path.name + ".parts").is_dir():
            c = pet_cohort.load_parts(split, cohort_dir)
            if c is not None and len(c):
                out[split] = data_from_cohort(c, f"{split} (partial: {len(c)} finished cases)")
    if "development" not in out:
        raise FileNotFoundError(f"no development split under {pet_cohort.cohort_path('development', cohort_dir).parent} "
                                "(build it: bench/pet_cohort.py, or cardionode train pet_mfr --synthetic N)")
    return out


def reader_outputs_block(net: PetMfrNet, residual_sd: float, n: int = 300, seed: int = BAND_FIRST_SEED) -> dict[str, Any]:
    """Names, thresholds (0.5) and indeterminate bands of the reported outputs, bands from ``n`` unseen polar phantoms."""
    from node.ai.pet_mfr import territory_probabilities
    from node.ai.verdicts import BAND_RULE, BAND_SHARE, indeterminate_band

    data = polar_phantoms(n, first_seed=seed)
    out = predict(net, data, "stacked")
    p_any = impaired_probability(out)
    p_terr = territory_probabilities(out[:, SEGMENT_COLUMNS], residual_sd)
    outputs: dict[str, Any] = {}
    for key, name in READER_NAMES.items():
        if key == "impaired":
            labels, scores = data.impaired, p_any
        else:
            t = [f"territory_{x.lower()}" for x in TERRITORIES].index(key)
            labels, scores = data.territory_impaired[:, t], p_terr[:, t]
        band = indeterminate_band(labels.astype(float), scores, 0.5)
        outputs[key] = {"name": name, "model": "PET MFR model", "threshold": 0.5, **band}
    return {"band_rule": BAND_RULE, "band_share": BAND_SHARE,
            "band_cohort": f"validation: {n} polar-level phantoms (seeds {seed}..), unseen in training", "outputs": outputs}


def _metadata(version: str, size: dict[str, Any], record: dict[str, Any], reader: dict[str, Any], residual_sd: float,
              training_data: str, cohort_version: str) -> dict[str, Any]:
    import monai

    from node import __version__
    from node.ai.bundles import INTENDED_USE

    channel_def = {"0": "rest MBF (mL/min/g) / 1.0", "1": "stress MBF (mL/min/g) / 2.5", "2": "MFR (ratio) / 2.5"}
    task = ("Impaired myocardial flow reserve (MFR < 2.0 in at least one AHA segment) and the 17 segment MFRs from "
            "rest MBF, stress MBF and MFR polar maps (Yeung et al., J Nucl Cardiol 2022), plus five risk-trait heads "
            "(research outputs)")
    image = {"type": "image", "format": "polar-map", "num_channels": 3, "spatial_shape": [40, 72], "dtype": "float32",
             "value_range": [0, 4], "is_patch_data": False, "channel_def": channel_def}
    pred = {"type": "probabilities", "format": "logits+regression", "num_channels": 19, "dtype": "float32",
            "channel_def": {**{str(k): f"MFR AHA segment {k + 1} (ratio, regression)" for k in range(17)},
                            "17": "logit: MFR not impaired", "18": "logit: MFR impaired in >= 1 segment"}}
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json",
        "version": version,
        "changelog": {version: "ResNet-50 pretrained on polar-level phantoms, fine-tuned on the PET cohort's development split"},
        "monai_version": monai.__version__, "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__, "required_packages_version": {"cardionode": __version__},
        "name": "pet_mfr", "task": task, "description": task, "authors": "CardioNode contributors", "copyright": "Apache-2.0",
        "intended_use": INTENDED_USE, "training_data": training_data, "training_cohort_version": cohort_version,
        "data_source": "synthetic (node.synth.pet.cohort; polar-level phantoms for pretraining); no real patient data, "
                       "no pretrained downloads (ImageNet weights are not available here)",
        "data_type": "polar maps on the canonical grid [40, 72] (node.quant.segments.PolarGrid), row 0 apex",
        "network_data_format": {"inputs": {"image": image}, "outputs": {"pred": pred}},
        "inputs": {"image": image}, "outputs": {"pred": pred,
                                                "traits": {"type": "probabilities", "format": "logits", "num_channels": 10,
                                                           "channel_def": {t: "2 logits" for t in _TRAITS}}},
        "input_variant": "stacked", "traits": list(_TRAITS), "territory_residual_sd": residual_sd,
        "impaired_mfr_below": IMPAIRED_MFR_BELOW, "weights_dtype": "float16 (load as float32)",
        "architecture": {"backbone": "monai.networks.nets.ResNet", **size},
        "training": record, "reader_outputs": reader,
    }


def train_pet_mfr(out: Path, work: Path, cohort_dir: Path | None = None, synthetic: int | None = None, seed: int = 0,
                  plan: Plan | None = None, budget: Budget | None = None, version: str = "1.0.0", command: str = "",
                  progress: Callable[[str], None] | None = None, n_boot: int = 4000,
                  cohorts: dict[str, TrainingData] | None = None) -> dict[str, Any]:
    """Run every stage of the module docstring (each cached in ``work``) and write the bundle to ``out``.

    ``cohorts`` (tests) replaces the cohort files. Returns the evaluation record (also
    ``out/docs/evaluation.json``).
    """
    plan = plan or Plan()
    budget = budget or Budget()
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.process_time()
    cohorts = cohorts if cohorts is not None else _cohorts(cohort_dir, synthetic, progress)
    dev = cohorts["development"]
    _say(progress, f"cohorts: {', '.join(f'{k} {len(v)}' for k, v in cohorts.items())}")
    full_pre, pre_info = stage_pretrain(work, plan, budget.pretrain_full, "full", plan.pretrain_lambda, seed, progress)
    cv = stage_cv(work, plan, dev, budget.cv_fit, seed, progress)
    lam = float(cv["chosen"])
    final, final_info = stage_train(work, "final_full", dev, "stacked", plan.size, epochs=plan.final_epochs, lam=lam,
                                    budget=budget.final, lr=plan.final_lr, init=full_pre, seed=seed, progress=progress)
    residual_sd = territory_residual_sd(final, dev, "stacked")
    layers = {layer: gradcam_territory_share(final, dev, "stacked", layer, limit=plan.gradcam_layer_cases)
              for layer in GRADCAM_CANDIDATES}
    layer = max(layers, key=lambda k: layers[k]["mean_share"] if np.isfinite(layers[k]["mean_share"]) else -1.0)
    trait_info = fine_tune_traits(final, dev, "stacked", epochs=plan.trait_epochs, seed=seed, progress=progress)
    small_pre, small_pre_info = stage_pretrain(work, plan, budget.pretrain_small, "small", lam, seed, progress)
    small: dict[str, PetMfrNet] = {}
    small_info: dict[str, Any] = {}
    for name, variant, init in (("small_stacked_scratch", "stacked", None), ("small_stacked_pretrained", "stacked", small_pre),
                                ("small_rest", "rest", None), ("small_stress", "stress", None), ("small_mfr", "mfr", None)):
        epochs = plan.compare_epochs if "stacked" in name else plan.per_map_epochs
        net, info = stage_train(work, name, dev, variant, plan.small, epochs=epochs, lam=lam,
                                budget=budget.compare_fit if "stacked" in name else budget.per_map_fit,
                                init=init, seed=seed, progress=progress)
        info["traits"] = fine_tune_traits(net, dev, variant, epochs=plan.trait_epochs, seed=seed)
        small[name], small_info[name] = net, info
    evaluation = evaluate(cohorts, final, full_pre, small, residual_sd, layer, seed=seed, work=work, n_boot=n_boot)
    evaluation["gradcam_layer_choice"] = {"on": f"development single-territory cases (first {plan.gradcam_layer_cases})",
                                          "layers": layers,
                                          "chosen": layer}
    record = {
        "seed": seed, "command": command, "cpu_s_this_run": time.process_time() - t0,
        "plan": {k: v for k, v in plan.__dict__.items()}, "budget_cpu_s": budget.__dict__,
        "pretrain_full": pre_info, "cv": cv, "lambda": lam, "final": final_info, "traits": trait_info,
        "small": small_info, "small_pretrain": small_pre_info,
        "cohorts": {k: v.name or k for k, v in cohorts.items()}, "cohort_sizes": {k: len(v) for k, v in cohorts.items()},
    }
    from node.synth.pet.cohort import PET_COHORT_VERSION

    training_data = (f"synthetic: PET cohort {PET_COHORT_VERSION} development split ({len(dev)} cases, image-tier "
                     f"Rb-82 phantoms measured by the node) after pretraining on {plan.pretrain_cases} polar-level "
                     "phantoms of the same generative process; no real patient data, no pretrained weights")
    reader = reader_outputs_block(final, residual_sd, n=plan.band_cases)
    meta = _metadata(version, plan.size, record, reader, residual_sd, training_data, PET_COHORT_VERSION)
    meta["evaluation_summary"] = evaluation_summary(evaluation)
    card = readme(meta, evaluation, command)
    write_pet_bundle(out, final, plan.size, meta, card, evaluation, layer)
    return evaluation


def evaluate(cohorts: dict[str, TrainingData], final: PetMfrNet, pretrained_only: PetMfrNet, small: dict[str, PetMfrNet],
             residual_sd: float, layer: str, seed: int = 0, work: Path | None = None, n_boot: int = 4000) -> dict[str, Any]:
    """Scores and figures on every split but development: the shipped network (stacked), the pretrained-only
    ResNet-50 (no fine-tuning), the small variants (per map; stacked from scratch and pretrained); AUC with
    bootstrap CI per task; Grad-CAM territory share on the single-territory cases; the evaluation report of
    :mod:`node.ai.training.pet_mfr_eval` (baselines side by side) when the cohorts are whole PetCohorts.
    Writes ``work/network_scores.npz`` (keys ``<split>/<task>/<input>``) when ``work`` is given."""
    out: dict[str, Any] = {"splits": {}, "residual_sd": residual_sd, "gradcam_layer": layer}
    report_scores: dict[str, Any] = {}
    flat: dict[str, np.ndarray] = {}
    for split, data in cohorts.items():
        if split == "development":
            continue
        per_variant = {"stacked": scores_of(final, data, "stacked", residual_sd)}
        for v in ("rest", "stress", "mfr"):
            if f"small_{v}" in small:
                per_variant[v] = scores_of(small[f"small_{v}"], data, v, residual_sd)
        extra = {"full_pretrained_only": scores_of(pretrained_only, data, "stacked", residual_sd, traits=False)}
        for name in ("small_stacked_scratch", "small_stacked_pretrained"):
            if name in small:
                extra[name] = scores_of(small[name], data, "stacked", residual_sd)
        ns = network_scores(per_variant)
        report_scores[split] = ns
        for task, by_input in (("impaired", ns["impaired"]),):
            for v, sc in by_input.items():
                flat[f"{split}/{task}/{v}"] = sc
        for t in TERRITORIES:
            for v, sc in ns["territory"][t].items():
                flat[f"{split}/{t}/{v}"] = sc
        for t in _TRAITS:
            for v, sc in ns["traits"][t].items():
                flat[f"{split}/{t}/{v}"] = sc
        metrics: dict[str, Any] = {}
        for name, sc in {**per_variant, **extra}.items():
            m: dict[str, Any] = {"impaired": simple_metrics(data.impaired, sc["impaired"], seed, n_boot)}
            for k, t in enumerate(TERRITORIES):
                m[t] = simple_metrics(data.territory_impaired[:, k], sc["territory"][t], seed, n_boot)
            for k, t in enumerate(_TRAITS):
                if "traits" in sc:
                    m[t] = simple_metrics(data.traits[:, k], sc["traits"][t], seed, n_boot)
            m["segment_rmse"] = float(np.sqrt(np.mean((sc["segment_mfr"] - data.segment_mfr) ** 2)))
            metrics[name] = m
        out["splits"][split] = {
            "n": len(data), "name": data.name, "metrics": metrics,
            "gradcam_all_single_territory": gradcam_territory_share(final, data, "stacked", layer),
            "gradcam_impaired_single_territory": gradcam_territory_share(final, data, "stacked", layer, only_impaired=True),
        }
    if work is not None and flat:
        savez: Any = np.savez
        savez(Path(work) / "network_scores.npz", **flat)
    if all(d.source is not None for d in cohorts.values()) and len(cohorts) > 1:
        from node.ai.training.pet_mfr_eval import evaluation_report

        report = evaluation_report({k: d.source for k, d in cohorts.items()}, report_scores, seed=seed, n_boot=n_boot)
        out["report"] = report
    return out


def evaluation_summary(evaluation: dict[str, Any]) -> dict[str, Any]:
    """The metadata's short form: per split the shipped network's impaired and trait AUCs and Grad-CAM shares."""
    summary: dict[str, Any] = {}
    for split, rec in evaluation.get("splits", {}).items():
        m = rec["metrics"]
        summary[split] = {
            "n": rec["n"],
            "network_stacked": {k: v for k, v in m.get("stacked", {}).items() if isinstance(v, dict)},
            "gradcam_territory_share": rec["gradcam_all_single_territory"]["mean_share"],
        }
    return summary


def _fmt_auc(m: dict[str, float]) -> str:
    if not m or not np.isfinite(m.get("auc", float("nan"))):
        return "n/a"
    return f"{m['auc']:.2f} ({m['auc_lo']:.2f}-{m['auc_hi']:.2f})"


def readme(meta: dict[str, Any], evaluation: dict[str, Any], command: str) -> str:
    """The bundle's model card (docs/README.md) from its metadata and evaluation."""
    rec = meta["training"]
    lines = [
        "# pet_mfr: impaired myocardial flow reserve from PET polar maps (ResNet-50, after Yeung et al. 2022)",
        "",
        "**Research use only. Trained on synthetic phantoms; not clinically validated.** No real patient data and "
        "no pretrained weights were used: ImageNet pretraining (the seed's starting point) is impossible here (no "
        "downloads), so the network was pretrained on a larger cheap synthetic cohort instead (below).",
        "",
        "## What it does",
        "Input: rest MBF, stress MBF (mL/min/g) and MFR polar maps `[3, 40, 72]` on the node's canonical grid "
        "(`node.ai.pet_mfr.polar_maps_from_result`; invalid cells 0), each divided by (1.0, 2.5, 2.5). "
        "Outputs: 19 = 17 regressed segment MFRs + 2 logits of *MFR < 2.0 in at least one AHA segment*; territory "
        "probabilities Phi((2.0 - mean regressed territory MFR) / sd) with sd "
        f"{meta['territory_residual_sd']:.3f} (development residuals); five risk-trait heads (research outputs, off in "
        "the pipeline unless `[pipelines.pet_mbf] model_traits = true`).",
        "",
        "## Network",
        "MONAI `ResNet` with bottleneck blocks [3, 4, 6, 3] (ResNet-50, 23.5 M parameters), 2-D; first convolution "
        "3x3 with stride 2 on 3 input channels (the stacked maps; 1 for a single map), then 3x3/2 max pooling, so the "
        "stages run at 10x18, 5x9, 3x5 and 2x3 cells of the 40x72 map: the overall stride of the ImageNet stem "
        "(7x7/2 + pooling) with a 3x3 first kernel for a small map; a stride-1 stem would cost 16 times more. Grad-CAM "
        f"layer `{evaluation.get('gradcam_layer', '')}` (chosen on development single-territory cases among layers 1-4 "
        "by the mean share of Grad-CAM mass in the planted territory). Trait heads: per trait a copy of the last "
        "1x1 convolution and batch norm of the last residual block plus a 2-logit layer, fine-tuned on the frozen "
        "network (the seed fine-tuned the last 3 layers).",
        "",
        "Weights are stored as **float16** (`models/model.pt`, about 58 MB with the trait heads) and loaded as float32.",
        "",
        "## Training (what was run; CPU seconds measured by the process)",
        f"- Pretraining: {rec['pretrain_full'].get('samples_seen', 0)} samples of {rec['plan']['pretrain_cases']} "
        "polar-level phantoms (`node.ai.training.pet_mfr.polar_phantoms`: the cohort's own designs rendered on the "
        f"polar grid), lambda {rec['pretrain_full'].get('lam', 0.5)}, {rec['pretrain_full'].get('cpu_s', 0):.0f} CPU-s"
        + (" (stopped at its budget before the planned schedule)" if rec["pretrain_full"].get("stopped_early") else "") + ".",
        f"- lambda by 5-fold CV on {rec['cv'].get('data', '')}, small variant, {rec['cv'].get('epochs')} epochs per fold: "
        + ", ".join(f"lambda {k}: log loss {v['log_loss']:.3f}, AUC {v['auc']:.3f}" for k, v in rec["cv"]["results"].items())
        + f" -> **lambda = {rec['lambda']:g}**.",
        f"- Final model: fine-tuned from the pretrained weights on the development split ({rec['cohort_sizes'].get('development')} "
        f"cases), {rec['final'].get('samples_seen', 0)} samples, lr {rec['final'].get('lr')}, "
        f"{rec['final'].get('cpu_s', 0):.0f} CPU-s" + (" (stopped at its budget)" if rec["final"].get("stopped_early") else "") + ".",
        f"- Trait heads: {rec['plan']['trait_epochs']} epochs each on cached features of the development split.",
        "- AdamW (weight decay 0.01), cosine decay; augmentations: MBF channels rescaled together by U(0.9, 1.1) (MFR "
        "untouched: the label is a threshold on it), azimuthal roll of up to +-2 columns (+-10 degrees; a roll is "
        "exactly a rotation of the bull's-eye), 2 % pixel dropout (cells set to 0 like invalid cells).",
        "",
        "## Evaluation (synthetic cohort; see docs/evaluation.json and docs/validation.md)",
        "| split | model | impaired AUC (95 % CI) | female | smoking | Grad-CAM share in planted territory |",
        "|---|---|---|---|---|---|",
    ]
    for split, s in evaluation.get("splits", {}).items():
        for name, m in s["metrics"].items():
            share = s["gradcam_all_single_territory"]["mean_share"] if name == "stacked" else float("nan")
            lines.append(f"| {split} ({s['n']}) | {name} | {_fmt_auc(m.get('impaired', {}))} | {_fmt_auc(m.get('female', {}))} | "
                         f"{_fmt_auc(m.get('smoking', {}))} | {'' if not np.isfinite(share) else f'{100 * share:.0f} %'} |")
    lines += [
        "",
        "`stacked` is the shipped ResNet-50; `rest`/`stress`/`mfr` and `small_stacked_*` are the small variant "
        "(ResNet-10-like) trained on the same development split (per-map comparison and scratch-vs-pretrained "
        "comparison at the small size, because of the CPU budget); `full_pretrained_only` is the ResNet-50 before "
        "fine-tuning. Baselines (rules and logistic regression on segment values) are in docs/validation.md.",
        "",
        "## Limits",
        "- Synthetic phantoms only; planted traits are properties of the generator, not claims about patients.",
        "- The impaired-MFR label is computed from the MFR map the model sees (label leakage, as in the seed): a "
        "rule on the measured segment MFR is the reference for that task.",
        "- Training budget: about 9 CPU-minutes for the ResNet-50 (one pretraining epoch over the polar-level "
        "phantoms, a few fine-tuning epochs on the development cases finished at training time).",
        "- The shipped network's trait heads (fine-tuned on frozen impaired-MFR features) are weak (female and "
        "smoking AUC near chance on the stacked maps, table above); the small per-map networks show that the rest map "
        "carries the female pattern. Trait outputs are off in the pipeline by default and only ever research notes.",
        "",
        "## Site data (`cardionode train pet_mfr --data DIR`)",
        "`DIR/maps/<case_id>.npy` (float32 `[3, 40, 72]`: rest MBF, stress MBF, MFR on the node's grid, as "
        "`node.ai.pet_mfr.polar_maps_from_result` writes them) and `DIR/labels.csv` with `case_id`, `split` "
        "(development/test/external), `segment_mfr_1`..`segment_mfr_17` and optionally the five traits (0/1); "
        "`node.ai.training.pet_mfr.load_site_folder`. The same stages run; pretraining stays synthetic.",
        "",
        "## Regenerate",
        "```",
        (command or "cardionode train pet_mfr --synthetic 1000 --out DIR").split(" (shipped run")[0],
        "```",
        "The shipped weights ran these stages (`node.ai.training.pet_mfr.train_pet_mfr`) on the cohort cases finished "
        f"at training time ({', '.join(f'{k} {v}' for k, v in rec.get('cohort_sizes', {}).items())}); pretraining and "
        "the lambda CV ran earlier as separate processes through the same stage functions, cached in the work folder.",
        "",
    ]
    return "\n".join(lines)


def load_site_folder(folder: Path) -> dict[str, TrainingData]:
    """A site's data for ``cardionode train pet_mfr --data DIR``: ``DIR/labels.csv`` plus ``DIR/maps/<case_id>.npy``.

    Each ``.npy`` is float32 ``[3, 40, 72]``: rest MBF, stress MBF (mL/min/g), MFR on the node's polar grid (what
    :func:`node.ai.pet_mfr.polar_maps_from_result` writes; invalid cells 0). ``labels.csv`` (header required):
    ``case_id``, ``split`` (``development``, ``test`` or ``external``), ``segment_mfr_1`` .. ``segment_mfr_17``
    (the site's measured segment MFR, AHA order) and optionally ``female``, ``diabetes``, ``hypertension``,
    ``dyslipidaemia``, ``smoking`` (0/1). ``impaired`` is the seed's rule on the segment MFRs (any < 2.0), a
    territory is impaired when the mean MFR of its segments is < 2.0. Returns the splits present.
    """
    import csv

    folder = Path(folder)
    rows: dict[str, list[dict[str, str]]] = {}
    with open(folder / "labels.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        needed = {"case_id", "split", *(f"segment_mfr_{k}" for k in range(1, 18))}
        if reader.fieldnames is None or not needed <= set(reader.fieldnames):
            raise ValueError(f"{folder / 'labels.csv'}: needs the columns case_id, split, segment_mfr_1..segment_mfr_17")
        for row in reader:
            rows.setdefault(row["split"].strip(), []).append(row)
    out: dict[str, TrainingData] = {}
    for split, items in rows.items():
        maps = np.stack([np.load(folder / "maps" / f"{r['case_id'].strip()}.npy").astype(np.float32) for r in items])
        if maps.shape[1:] != (3, *DEFAULT_GRID.shape):
            raise ValueError(f"{folder / 'maps'}: maps must be [3, 40, 72], got {maps.shape[1:]}")
        seg = np.array([[float(r[f"segment_mfr_{k}"]) for k in range(1, 18)] for r in items], np.float32)
        territory = np.stack([(seg[:, [s - 1 for s in TERRITORY_SEGMENTS[t]]].mean(axis=1) < IMPAIRED_MFR_BELOW)
                              for t in TERRITORIES], axis=1).astype(np.int64)
        traits = np.array([[int(float(r.get(t) or 0)) for t in _TRAITS] for r in items], np.int64)
        out[split] = TrainingData(maps, seg, (seg.min(axis=1) < IMPAIRED_MFR_BELOW).astype(np.int64), territory, traits,
                                  np.array([""] * len(items), dtype="<U4"), np.zeros((len(items), *DEFAULT_GRID.shape), bool),
                                  f"{split} (site folder {folder.name})")
    if "development" not in out:
        raise ValueError(f"{folder / 'labels.csv'}: no case with split 'development'")
    return out


def train_from_command(out: Path, data: Path | None = None, synthetic: int | None = None, epochs: int | None = None,
                       seed: int = 0, checkpoints: Path | None = None, version: str = "1.0.0", command: str = "",
                       plan: Plan | None = None, budget: Budget | None = None) -> Any:
    """``cardionode train pet_mfr --synthetic N`` (:func:`train_pet_mfr`; ``epochs`` sets the final model's epochs;
    ``checkpoints`` is the work folder of the cached stages). Returns a :class:`node.ai.training.common.TrainResult`."""
    import sys

    from node.ai.training.common import TrainResult

    plan = plan or Plan()
    if epochs is not None:
        plan.final_epochs = float(epochs)
    work = Path(checkpoints) if checkpoints is not None else Path(out) / "work"
    t0 = time.monotonic()

    def say(text: str) -> None:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()

    site = load_site_folder(Path(data)) if data is not None else None
    evaluation = train_pet_mfr(Path(out), work, synthetic=synthetic, seed=seed, plan=plan, budget=budget, version=version,
                               command=command, progress=say, cohorts=site)
    net = make_network("stacked", plan.size)
    load_weights(net, Path(out) / "models" / "model.pt")
    return TrainResult("pet_mfr", Path(out), net, [], evaluation, time.monotonic() - t0)


def validation_markdown(evaluation: dict[str, Any], metadata: dict[str, Any]) -> str:
    """The network's subsections of docs/validation.md ("PET deep learning (issue 16)") from a bundle's
    ``docs/evaluation.json`` and ``configs/metadata.json``."""
    rec = metadata["training"]
    lines = ["### The network (pet_mfr): training that was run", "",
             f"Bundle `models/pet_mfr` {metadata['version']} (ResNet-50, MONAI; float16 weights). Stages and measured "
             "CPU seconds (one thread, nice 15, on a shared 2-core machine):", "",
             f"- pretraining on polar-level phantoms: {rec['pretrain_full'].get('samples_seen', 0)} samples, "
             f"{rec['pretrain_full'].get('cpu_s', 0):.0f} CPU-s"
             + (" (stopped at its deadline, before the planned epoch ended)" if rec["pretrain_full"].get("stopped_early") else ""),
             f"- lambda by 5-fold CV ({rec['cv'].get('data', '')}; small variant, {rec['cv'].get('epochs')} epochs): "
             + "; ".join(f"{k}: log loss {v['log_loss']:.3f}, AUC {v['auc']:.3f}" for k, v in rec["cv"]["results"].items())
             + f"; chosen {rec['lambda']:g}",
             f"- fine-tuning on development ({rec['cohort_sizes'].get('development')} cases): "
             f"{rec['final'].get('samples_seen', 0)} samples, {rec['final'].get('cpu_s', 0):.0f} CPU-s", ""]
    for split, s in evaluation.get("splits", {}).items():
        lines += [f"### The network on the {split} split ({s['n']} cases{'' if s['name'] == split else ', ' + s['name']})", "",
                  "| model (input) | impaired | LAD | LCx | RCA | female | diabetes | hypertension | dyslipidaemia | smoking |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for name, m in s["metrics"].items():
            lines.append(f"| {name} | " + " | ".join(_fmt_auc(m.get(t, {})) for t in
                                                    ("impaired", *TERRITORIES, *_TRAITS)) + " |")
        g, gi = s["gradcam_all_single_territory"], s["gradcam_impaired_single_territory"]
        lines += ["", f"AUC (95 % bootstrap CI, 4,000 resamples). Grad-CAM (`{evaluation.get('gradcam_layer')}`) on the "
                  f"{g['n']} single-territory cases: mean share of its mass in the planted territory "
                  f"{100 * g['mean_share']:.0f} % (median {100 * g['median_share']:.0f} %, {100 * g['share_ge_60']:.0f} % of "
                  f"cases >= 60 %); on the {gi['n']} whose territory is measured impaired: {100 * gi['mean_share']:.0f} %.", ""]
    report = evaluation.get("report")
    if report:
        lines += ["### Network against the baselines (node.ai.training.pet_mfr_eval)", ""]
        lines += [f"- {v}" for v in report.get("verdicts", [])]
        lines.append("")
    return "\n".join(lines)


def reevaluate(out: Path, work: Path, cohorts: dict[str, TrainingData], plan: Plan | None = None, seed: int = 0,
               n_boot: int = 4000) -> dict[str, Any]:
    """Evaluate a written bundle again on ``cohorts`` (e.g. when a split finished after training) with the networks
    of the bundle and of the work folder; rewrites ``docs/evaluation.json``, the model card and the metadata's
    ``evaluation_summary`` (weights, configs and training record unchanged). ``cohorts`` must hold the
    development split the bundle was trained on (the baselines are fitted there)."""
    plan = plan or Plan()
    out, work = Path(out), Path(work)
    meta = json.loads((out / "configs" / "metadata.json").read_text())
    config = json.loads((out / "configs" / "inference.json").read_text())
    final = make_network("stacked", plan.size)
    load_weights(final, out / "models" / "model.pt")
    final.eval()
    pretrained = make_network("stacked", plan.size)
    pretrained.load_state_dict(torch.load(work / "pretrain_full.pt", map_location="cpu", weights_only=True))
    small: dict[str, PetMfrNet] = {}
    for name, variant in (("small_stacked_scratch", "stacked"), ("small_stacked_pretrained", "stacked"),
                          ("small_rest", "rest"), ("small_stress", "stress"), ("small_mfr", "mfr")):
        if (work / f"{name}.pt").is_file():
            net = make_network(variant, plan.small)
            net.load_state_dict(torch.load(work / f"{name}.pt", map_location="cpu", weights_only=True))
            fine_tune_traits(net, cohorts["development"], variant, epochs=plan.trait_epochs, seed=seed)
            small[name] = net.eval()
    old = json.loads((out / "docs" / "evaluation.json").read_text())
    evaluation = evaluate(cohorts, final, pretrained.eval(), small, float(meta["territory_residual_sd"]),
                          str(config["gradcam_target_layer"]), seed=seed, work=work, n_boot=n_boot)
    evaluation["gradcam_layer_choice"] = old.get("gradcam_layer_choice")
    meta["evaluation_summary"] = evaluation_summary(evaluation)
    (out / "configs" / "metadata.json").write_text(_json(meta) + "\n")
    (out / "docs" / "evaluation.json").write_text(_json(evaluation) + "\n")
    (out / "docs" / "README.md").write_text(readme(meta, evaluation, str(meta["training"].get("command", ""))))
    return evaluation
