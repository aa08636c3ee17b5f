"""Training of the seed's CMR outcome models (``cmr_lge_outcome_resnet50``, ``cmr_lge_outcome_inceptionv3``).

Reference note ``cmr_lge.md`` section 5.1. Data: the synthetic cohorts of issue 18
(:mod:`node.synth.cmr.cohort`, one ``.npz`` per cohort; ``frames`` are :func:`node.ai.cmr_outcome.basal_frame_input`
of each case). What is kept from the seed and what was changed:

* kept: one basal LGE frame per patient; the backbones' topology (ResNet50 bottlenecks [3, 4, 6, 3] with the
  original stem; InceptionV3 stem and Mixed 5b-7c); the head flatten -> dense 512 -> dropout 0.5; lr 0.001 (Adam,
  the Keras default optimiser; the letter names none); batch 8; binary cross-entropy; all layers trainable;
  stratified 4-fold cross-validation (here repeated, on the evaluation's folds stratified by the event label,
  with bootstrap CIs);
  random initialisation;
* changed for this CPU-only machine (stated in each model card): 80 x 80 frames at 1.8 mm instead of 224/299
  pixels; the backbones at 1/8 of the published channel widths (:data:`DEFAULT_WIDTH`; the 5 MB bundle limit and
  the CPU time decide it); one network with two outputs (LGE > 5.7 %, event) instead of one network per task;
  far fewer epochs than the seed's 100 (:class:`Schedule`); ImageNet/RadImageNet initialisation is impossible
  (no downloads), replaced by pretraining on the larger synthetic cohort (``large``) and fine-tuning;
* augmentation (not stated by the seed): random translations of up to :data:`SHIFT_PX` pixels.

The shipped bundles are trained on the ``large`` cohort and evaluated on ``test`` and ``external``; the
small-cohort cross-validation is the seed's design, reported beside it (``docs/evaluation.json``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from node.ai.cmr_outcome import FRAME_PIXEL_MM, FRAME_SIZE, OUTCOME_BUNDLES, OUTPUTS, CmrOutcomeNet
from node.ai.metrics import auc
from node.ai.training.cmr_outcome_eval import bootstrap_auc, cv_folds
from node.ai.training.common import Progress, TrainResult, seed_everything

__all__ = [
    "BUNDLES",
    "DEFAULT_WIDTH",
    "SHIFT_PX",
    "Schedule",
    "bundle_backbone",
    "fit",
    "predict_probabilities",
    "cross_validate",
    "auc_with_ci",
    "write_outcome_bundle",
    "train_cmr_outcome",
    "train_from_command",
    "pointing_game",
]

#: bundle name -> backbone
BUNDLES: dict[str, str] = dict(OUTCOME_BUNDLES)
#: channel multiplier of the shipped backbones (1/8 of the published widths)
DEFAULT_WIDTH = 0.125
#: largest random translation (frame pixels) during training
SHIFT_PX = 4
#: the seed's hyper-parameters
LEARNING_RATE = 1e-3
BATCH_SIZE = 8
N_FOLDS = 4
#: repeats of the evaluation's fold assignment (``cv_folds(event, 4, 5, seed 0)``); the networks use its first rows
CV_FOLD_REPEATS = 5
#: task names of the evaluation report (node.ai.training.cmr_outcome_eval) for each output
TASK_KEYS: dict[str, str] = {"lge_above_5_7": "lge", "event": "event"}
#: Grad-CAM layer of each backbone, chosen on the small (development) cohort by the scar pointing game among
#: ResNet layer1-3 and InceptionV3 Conv2d_4a_3x3 / Mixed_5d (docs/validation.md): 20 x 20 and 16 x 16 cells at 80 x 80
#: input (the deeper layers, 3 x 3 to 10 x 10 cells, pointed no better than random maps)
GRADCAM_LAYERS: dict[str, str] = {"resnet50": "backbone.layer1", "inceptionv3": "backbone.Conv2d_4a_3x3"}


@dataclass(frozen=True)
class Schedule:
    """Epochs of each stage (the seed trained 100 epochs; see the module docstring for why fewer here)."""

    cv_epochs: int = 10
    cv_repeats: int = 1
    large_epochs: int = 8
    finetune_epochs: int = 5
    finetune_repeats: int = 1


def bundle_backbone(bundle: str) -> str:
    """The backbone of bundle ``bundle`` (:data:`BUNDLES`); ``ValueError`` for another name."""
    if bundle not in BUNDLES:
        raise ValueError(f"unknown CMR outcome bundle {bundle!r}; known: {', '.join(BUNDLES)}")
    return BUNDLES[bundle]


def _labels(cohort: Any) -> np.ndarray:
    """``[N, 2]`` float32: LGE > 5.7 % (truth) and event, in :data:`OUTPUTS` order."""
    return np.stack([np.asarray(cohort.lge_above), np.asarray(cohort.event)], axis=1).astype(np.float32)


def _shift(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random translation of each frame by up to :data:`SHIFT_PX` pixels (edge values repeated)."""
    pad = SHIFT_PX
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    offsets = torch.randint(0, 2 * pad + 1, (x.shape[0], 2), generator=gen)
    size = x.shape[-1]
    return torch.stack([padded[i, :, int(r): int(r) + size, int(c): int(c) + size] for i, (r, c) in enumerate(offsets)])


def fit(frames: np.ndarray, labels: np.ndarray, *, backbone: str, width: float = DEFAULT_WIDTH, epochs: int = 10,
        seed: int = 0, init_state: dict[str, torch.Tensor] | None = None,
        progress: Callable[[int, int, float], None] | None = None) -> CmrOutcomeNet:
    """Train a :class:`CmrOutcomeNet` on ``frames [N, 1, 80, 80]`` and ``labels [N, 2]`` (0/1).

    Adam (lr :data:`LEARNING_RATE`), batch :data:`BATCH_SIZE`, binary cross-entropy on both outputs, shuffled
    every epoch, random translations; ``init_state``: start from these weights (pretraining) instead of random.
    ``progress(epoch, epochs, mean_loss)`` after each epoch. Deterministic for a given ``seed`` on CPU.
    Returns the network in eval mode.
    """
    seed_everything(seed)
    net = CmrOutcomeNet(backbone, width, in_size=int(frames.shape[-1]))
    if init_state is not None:
        net.load_state_dict(init_state)
    opt = torch.optim.Adam(net.parameters(), lr=LEARNING_RATE)
    gen = torch.Generator().manual_seed(seed)
    x_all = torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32))
    y_all = torch.from_numpy(np.asarray(labels, dtype=np.float32))
    n = len(x_all)
    net.train()
    for epoch in range(epochs):
        order = torch.randperm(n, generator=gen)
        total, count = 0.0, 0
        for start in range(0, n, BATCH_SIZE):
            idx = order[start: start + BATCH_SIZE]
            if len(idx) < 2:  # batch norm needs two frames
                continue
            x = _shift(x_all[idx], gen)
            loss = F.binary_cross_entropy_with_logits(net(x), y_all[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        if progress is not None:
            progress(epoch + 1, epochs, total / max(count, 1))
    return net.eval()


def predict_probabilities(net: nn.Module, frames: np.ndarray, batch: int = 64) -> np.ndarray:
    """Sigmoid outputs ``[N, 2]`` (float64) of ``net`` in eval mode on ``frames [N, 1, 80, 80]``."""
    net.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(frames), batch):
            x = torch.from_numpy(np.ascontiguousarray(frames[start: start + batch], dtype=np.float32))
            out.append(torch.sigmoid(net(x)).numpy().astype(np.float64))
    return np.concatenate(out) if out else np.zeros((0, len(OUTPUTS)))


def cross_validate(frames: np.ndarray, labels: np.ndarray, folds: np.ndarray, *, backbone: str,
                   width: float = DEFAULT_WIDTH, epochs: int = 10, seed: int = 0,
                   init_state: dict[str, torch.Tensor] | None = None, trainable: np.ndarray | None = None,
                   progress: Callable[[str], None] | None = None) -> np.ndarray:
    """Cross-validation on the fold assignment ``folds [repeats, N]`` (fold index per case and repeat; the
    evaluation's own :func:`node.ai.training.cmr_outcome_eval.cv_folds`, so networks and baselines share folds).

    ``trainable`` (bool ``[N]``): cases that may be in a training fold (default all). Returns out-of-fold
    probabilities ``[repeats, N, 2]``.
    """
    labels = np.asarray(labels)
    ok = np.ones(len(labels), bool) if trainable is None else np.asarray(trainable, bool)
    folds = np.atleast_2d(np.asarray(folds))
    out = np.full((len(folds), len(labels), len(OUTPUTS)), np.nan)
    n_folds = int(folds.max()) + 1
    for r, fold in enumerate(folds):
        for k in range(n_folds):
            train, held = (fold != k) & ok, fold == k
            net = fit(frames[train], labels[train], backbone=backbone, width=width, epochs=epochs,
                      seed=seed + 1000 * r + k, init_state=init_state)
            out[r, held] = predict_probabilities(net, frames[held])
            if progress is not None:
                progress(f"repeat {r + 1}/{len(folds)} fold {k + 1}/{n_folds}")
    return out


def auc_with_ci(labels: np.ndarray, scores: np.ndarray, n_boot: int = 2000, seed: int = 0) -> dict[str, float]:
    """AUC and its 95 % bootstrap interval (the evaluation's
    :func:`node.ai.training.cmr_outcome_eval.bootstrap_auc`: scores ``[N]`` or ``[repeats, N]``, the AUC then the
    mean over repeats) as a dict ``auc, lo, hi, n, positives``."""
    y = np.asarray(labels, dtype=float)
    a, lo, hi = bootstrap_auc(y, np.asarray(scores, dtype=float), n_boot=n_boot, seed=seed)
    return {"auc": round(a, 4), "lo": round(lo, 4), "hi": round(hi, 4), "n": int(len(y)),
            "positives": int(np.sum(y == 1))}


def _fp16_state(net: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with floating tensors stored as float16 (loaded back into float32 parameters)."""
    return {k: (v.detach().cpu().to(torch.float16) if v.is_floating_point() else v.detach().cpu().clone())
            for k, v in net.state_dict().items()}


def inference_config(backbone: str, width: float) -> dict[str, Any]:
    """``configs/inference.json`` of an outcome bundle (MONAI bundle config syntax)."""
    return {
        "imports": ["$import node.ai.cmr_outcome"],
        "bundle_root": ".",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "network_def": {"_target_": "node.ai.cmr_outcome.CmrOutcomeNet", "backbone": backbone, "width": width,
                        "in_size": FRAME_SIZE, "hidden": 512, "dropout": 0.5, "n_outputs": len(OUTPUTS)},
        "network": "$@network_def.to(@device)",
        "checkpoint": "$@bundle_root + '/models/model.pt'",
        "gradcam_target_layer": GRADCAM_LAYERS[backbone],
    }


def _metadata(bundle: str, backbone: str, width: float, version: str, training: dict[str, Any],
              evaluation: dict[str, Any], cohort_version: str) -> dict[str, Any]:
    desc = ("Probability of LGE above 5.7 % of the LV myocardium and of a clinical event (VT, complete heart block, "
            "heart-failure hospitalisation, death) from one basal LGE short-axis frame (after Azoulay, Mei, Fauveau "
            f"et al.; {backbone} backbone at {width:g} of the published widths, the seed's flatten-512-dropout head).")
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json",
        "version": version,
        "changelog": {version: "trained by `cardionode train` on the synthetic CMR cohorts"},
        "monai_version": __import__("monai").__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "required_packages_version": {"cardionode": "0.1.0"},
        "name": bundle,
        "task": desc,
        "description": desc,
        "authors": "CardioNode contributors",
        "copyright": "Apache-2.0",
        "intended_use": "research use; trained on synthetic phantoms; not clinically validated",
        "training_data": (f"synthetic CMR cohorts {cohort_version} (node.synth.cmr.cohort): LGE phantoms and a fixed, "
                          "versioned event process; no real patient data, no pretrained downloads "
                          "(ImageNet/RadImageNet impossible offline)"),
        "training_cohort_version": cohort_version,
        "data_source": "synthetic (node.synth.cmr)",
        "data_type": "one basal LGE short-axis frame (node.ai.cmr_outcome.basal_frame_input)",
        "network_data_format": {
            "inputs": {"image": {
                "type": "image", "format": "magnitude", "modality": "MR", "num_channels": 1,
                "spatial_shape": [FRAME_SIZE, FRAME_SIZE], "dtype": "float32", "value_range": [-0.5, 1.5],
                "is_patch_data": False, "pixel_mm": FRAME_PIXEL_MM,
                "channel_def": {"0": "basal LGE frame, 1.8 mm pixels, 144 mm field centred on the LV, p1/p99 -> 0/1"},
            }},
            "outputs": {"pred": {
                "type": "probabilities", "format": "logits", "num_channels": len(OUTPUTS), "dtype": "float32",
                "value_range": [-1e9, 1e9], "is_patch_data": False,
                "channel_def": {"0": "LGE above 5.7 % of the LV myocardium (logit)",
                                "1": "clinical event during follow-up (logit)"},
            }},
        },
        "inputs": {"image": f"[batch, 1, {FRAME_SIZE}, {FRAME_SIZE}] float32"},
        "outputs": {"pred": "[batch, 2] logits: lge_above_5_7, event"},
        "weights_dtype": "float16 on disk, loaded into float32",
        "gradcam_target_layer": GRADCAM_LAYERS[backbone],
        "training": training,
        "evaluation_summary": evaluation.get("summary", {}),
    }


def _readme(meta: dict[str, Any], evaluation: dict[str, Any]) -> str:
    tr = meta["training"]
    rows = []
    for name, entry in sorted(evaluation.get("summary", {}).items()):
        rows.append(f"| {name} | {entry['auc']:.3f} ({entry['lo']:.3f}-{entry['hi']:.3f}) | {entry['n']} | "
                    f"{entry['positives']} |")
    table = "\n".join(rows) or "| (not evaluated) | | | |"
    return f"""# {meta['name']} {meta['version']}

{meta['description']}

**Research use; trained on synthetic phantoms; not clinically validated.** No real patient data. Every
output of the node that uses it says so.

## Initialisation: no ImageNet, no RadImageNet
The seed compared random, ImageNet and RadImageNet initialisations. Downloads are impossible here (no network
at training or run time, no pretrained weights in the repository), so ImageNet and RadImageNet weights were
**not** used. In their place: random initialisation, and pretraining on a larger synthetic MR cohort
(`large`, {tr.get('large_cases', '?')} cases) followed by fine-tuning on the small cohort; both are compared in
`docs/evaluation.json` (`small_cv_random`, `small_cv_pretrained`). The shipped weights are the model trained on
the large synthetic cohort from random initialisation ({tr.get('large_epochs', '?')} epochs).

## Network and input
- Backbone: `{tr['backbone']}` at {tr['width']:g} of the published channel widths (CPU and the 5 MB bundle
  limit); head: flatten -> dense 512 (ReLU) -> dropout 0.5 -> dense 2 (logits: LGE > 5.7 %, event).
- Input: `node.ai.cmr_outcome.basal_frame_input`: the most basal LV slice with a closed myocardial ring (node
  segmentation), 80 x 80 pixels of 1.8 mm (144 mm field) centred on the LV, p1/p99 of the field -> 0/1.
- Grad-CAM layer: `{meta['gradcam_target_layer']}`.
- Weights: float16 on disk (`models/model.pt`), loaded into float32; deterministic on CPU.

## Training (the seed's hyper-parameters where stated)
Adam, lr 0.001, batch 8, binary cross-entropy on both outputs, all layers trainable, random translations of
up to {SHIFT_PX} pixels. Stratified 4-fold cross-validation on the small cohort (116 cases, the seed's size),
repeated {tr.get('cv_repeats', '?')} times, {tr.get('cv_epochs', '?')} epochs per fold. What was cut for CPU
time: the seed trained 100 epochs at 224/299 pixels at full width; here {tr.get('large_epochs', '?')} epochs on
the large cohort and {tr.get('cv_epochs', '?')} per cross-validation fold, at 80 x 80 and 1/8 width. Seed
{tr.get('seed', 0)}. Command: `{tr.get('command', '')}`.

## Evaluation (AUC, 95 % bootstrap CI; synthetic cohorts)
| model / cohort / task | AUC (95 % CI) | n | positives |
|---|---|---|---|
{table}

Baselines (measured LGE % against 5.7 %, logistic regression on measured LGE % + EF) and the oracle are in the
same report (`docs/evaluation.json`, `docs/validation.md` "Cardiac MR deep learning (issue 18)"). The seed's
AUCs (0.80 LGE, 0.67 events, real patients) are quoted for comparison only.

## Limits
Synthetic phantoms only; one basal frame; the event label is a draw from a fixed hazard process, so the event
AUC cannot exceed the oracle's. Not clinically validated.
"""


def write_outcome_bundle(out: Path, bundle: str, net: CmrOutcomeNet, *, width: float, version: str,
                         training: dict[str, Any], evaluation: dict[str, Any], cohort_version: str) -> Path:
    """Write bundle ``bundle`` to ``out``: configs (inference, metadata), float16 weights, model card, evaluation."""
    backbone = bundle_backbone(bundle)
    out = Path(out)
    for sub in ("configs", "models", "docs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    torch.save(_fp16_state(net), out / "models" / "model.pt")
    meta = _metadata(bundle, backbone, width, version, training, evaluation, cohort_version)
    (out / "configs" / "inference.json").write_text(json.dumps(inference_config(backbone, width), indent=2) + "\n")
    (out / "configs" / "metadata.json").write_text(json.dumps(meta, indent=2, default=float) + "\n")
    (out / "docs" / "README.md").write_text(_readme(meta, evaluation))
    (out / "docs" / "evaluation.json").write_text(json.dumps(evaluation, indent=2, default=float) + "\n")
    return out


@dataclass
class _Cohorts:
    small: Any
    large: Any | None
    test: Any | None
    external: Any | None
    version: str = ""
    notes: list[str] = field(default_factory=list)


def _load_cohorts(folder: Path | None) -> _Cohorts:
    from node.synth.cmr.cohort import CMR_COHORT_VERSION, default_cohort_dir, load_cmr_cohort

    root = Path(folder) if folder is not None else default_cohort_dir()
    loaded: dict[str, Any] = {}
    for name in ("small", "large", "test", "external"):
        path = root / f"{name}.npz"
        loaded[name] = load_cmr_cohort(path) if path.is_file() else None
    if loaded["small"] is None and loaded["large"] is None:
        raise FileNotFoundError(f"no CMR cohort in {root} (build them: node.synth.cmr.cohort.build_cmr_cohort)")
    return _Cohorts(loaded["small"], loaded["large"], loaded["test"], loaded["external"], CMR_COHORT_VERSION)


def _ok(cohort: Any) -> np.ndarray:
    return np.asarray(cohort.frame_ok, bool)


def _evaluate_on(net: nn.Module, cohort: Any, name: str, prefix: str) -> tuple[dict[str, Any], np.ndarray]:
    probs = predict_probabilities(net, cohort.frames)
    labels = _labels(cohort)
    out = {f"{prefix}/{name}/{task}": auc_with_ci(labels[:, k], probs[:, k]) for k, task in enumerate(OUTPUTS)}
    return out, probs


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}


def train_cmr_outcome(out: Path, bundle: str, *, cohorts: Path | None = None, schedule: Schedule | None = None,
                      width: float = DEFAULT_WIDTH, seed: int = 0, version: str = "1.0.0", command: str = "",
                      checkpoints: Path | None = None, stages: Sequence[str] = ("cv", "large", "finetune", "evaluate"),
                      scores_out: Path | None = None, large_limit: int | None = None,
                      resume: bool = False) -> TrainResult:
    """Train and evaluate bundle ``bundle`` (:data:`BUNDLES`) on the cohorts in ``cohorts`` (default: the cohort
    cache folder), write it to ``out`` and return the record.

    Cases whose basal frame could not be made (``frame_ok`` false) are left out of every training set and scored
    like the others (their frame is blank). ``large_limit``: use only the first N large-cohort cases.
    ``stages``: ``cv`` (stratified 4-fold CV on ``small``, random initialisation), ``large`` (train on ``large``:
    the shipped weights, saved as checkpoint ``<checkpoints>/<bundle>_large.pt``), ``finetune`` (CV on ``small``
    starting from the ``large`` weights: synthetic pretraining), ``evaluate`` (the ``large`` weights on ``test`` and
    ``external``). ``resume``: start from the evaluation already in ``out`` and the scores in ``scores_out``, and take
    the ``large`` weights from the checkpoint when ``large`` is not among the stages (a long run done stage by stage
    as the cohorts arrive). ``scores_out``: an ``.npz`` of every score (out-of-fold and held-out) in the evaluation
    report's key format ``<cohort>/<model>/<task>``.
    """
    backbone = bundle_backbone(bundle)
    schedule = schedule or Schedule()
    t0 = time.monotonic()
    data = _load_cohorts(cohorts)
    evaluation: dict[str, Any] = {"summary": {}, "schedule": asdict(schedule), "width": width, "backbone": backbone}
    scores: dict[str, np.ndarray] = {}
    history: list[dict[str, float]] = []
    training: dict[str, Any] = {"backbone": backbone, "width": width, "seed": seed, "command": command,
                                **asdict(schedule), "lr": LEARNING_RATE, "batch": BATCH_SIZE}
    out = Path(out)
    if resume and (out / "docs" / "evaluation.json").is_file():
        evaluation["summary"] = json.loads((out / "docs" / "evaluation.json").read_text()).get("summary", {})
        meta = json.loads((out / "configs" / "metadata.json").read_text()) if (out / "configs" / "metadata.json").is_file() else {}
        training = {**meta.get("training", {}), **{k: v for k, v in training.items() if k != "command"}}
    if resume and scores_out is not None and Path(scores_out).is_file():
        with np.load(scores_out, allow_pickle=False) as old:
            scores = {k: old[k] for k in old.files}
    checkpoint = Path(checkpoints) / f"{bundle}_large.pt" if checkpoints is not None else None
    if checkpoint is not None:
        checkpoint.parent.mkdir(parents=True, exist_ok=True)

    def log_epoch(stage: str) -> Callable[[int, int, float], None]:
        bar = Progress(f"{bundle} {stage}", 1)

        def update(epoch: int, total: int, loss: float) -> None:
            bar.total = total
            bar.update(epoch, f"loss {loss:.4f}")
            history.append({"stage_epoch": float(epoch), "loss": loss})
        return update

    def cv_progress(label: str, total: int) -> Callable[[str], None]:
        bar = Progress(f"{bundle} {label}", total)
        done = [0]

        def step(msg: str) -> None:
            done[0] += 1
            bar.update(done[0], msg)
        return step

    small = data.small
    if small is not None and "cv" in stages:
        folds = cv_folds(np.asarray(small.event), k=N_FOLDS, repeats=CV_FOLD_REPEATS, seed=0)
        oof = cross_validate(small.frames, _labels(small), folds[: schedule.cv_repeats], backbone=backbone,
                             width=width, epochs=schedule.cv_epochs, seed=seed, trainable=_ok(small),
                             progress=cv_progress("small-cohort CV", N_FOLDS * schedule.cv_repeats))
        labels = _labels(small)
        for k, task in enumerate(OUTPUTS):
            scores[f"small/{backbone}_random/{TASK_KEYS[task]}"] = oof[:, :, k]
            entry: dict[str, Any] = dict(auc_with_ci(labels[:, k], oof[:, :, k]))
            entry["fold_repeat_auc"] = [round(auc(labels[:, k], oof[r, :, k]), 4) for r in range(len(oof))]
            evaluation["summary"][f"small_cv_random/{task}"] = entry
        training["small_cases"] = len(small)
    net: CmrOutcomeNet | None = None
    if data.large is not None and "large" in stages:
        large = data.large if large_limit is None else data.large.subset(np.arange(min(large_limit, len(data.large))))
        large = large.subset(_ok(large))
        net = fit(large.frames, _labels(large), backbone=backbone, width=width, epochs=schedule.large_epochs, seed=seed,
                  progress=log_epoch("large cohort"))
        training["large_cases"] = len(large)
        training["shipped_from"] = "large cohort"
        if checkpoint is not None:
            torch.save(_fp16_state(net), checkpoint)
    elif resume and checkpoint is not None and checkpoint.is_file():
        net = CmrOutcomeNet(backbone, width)
        net.load_state_dict(_load_state(checkpoint))
        net.eval()
    if net is not None and "evaluate" in stages:
        for name, cohort in (("test", data.test), ("external", data.external)):
            if cohort is None:
                continue
            entries, probs = _evaluate_on(net, cohort, name, "large")
            evaluation["summary"].update(entries)
            for k, task in enumerate(OUTPUTS):
                scores[f"{name}/{backbone}_random/{TASK_KEYS[task]}"] = probs[:, k]
    if net is not None and small is not None and "finetune" in stages:
        state = {k: v.detach().clone().float() if v.is_floating_point() else v for k, v in net.state_dict().items()}
        folds = cv_folds(np.asarray(small.event), k=N_FOLDS, repeats=CV_FOLD_REPEATS, seed=0)
        oof = cross_validate(small.frames, _labels(small), folds[: schedule.finetune_repeats], backbone=backbone,
                             width=width, epochs=schedule.finetune_epochs, seed=seed + 7, init_state=state,
                             trainable=_ok(small),
                             progress=cv_progress("small-cohort CV, pretrained", N_FOLDS * schedule.finetune_repeats))
        labels = _labels(small)
        for k, task in enumerate(OUTPUTS):
            scores[f"small/{backbone}_synthpretrained/{TASK_KEYS[task]}"] = oof[:, :, k]
            evaluation["summary"][f"small_cv_pretrained/{task}"] = auc_with_ci(labels[:, k], oof[:, :, k])
    if net is None and data.large is None and small is not None:  # no large cohort at all: ship a small-cohort model
        fit_on = small.subset(_ok(small))
        net = fit(fit_on.frames, _labels(fit_on), backbone=backbone, width=width, epochs=schedule.cv_epochs, seed=seed,
                  progress=log_epoch("small cohort"))
        training["shipped_from"] = "small cohort (no large cohort found)"
    training["seconds"] = round(training.get("seconds", 0.0) + time.monotonic() - t0, 1)
    if scores_out is not None:
        Path(scores_out).parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(Path(scores_out), allow_pickle=False, **scores)
    if net is not None:
        write_outcome_bundle(out, bundle, net, width=width, version=version, training=training, evaluation=evaluation,
                             cohort_version=data.version)
    else:  # a stage without weights yet: keep the evaluation for the next stage
        (out / "docs").mkdir(parents=True, exist_ok=True)
        (out / "configs").mkdir(parents=True, exist_ok=True)
        (out / "docs" / "evaluation.json").write_text(json.dumps(evaluation, indent=2, default=float) + "\n")
        (out / "configs" / "metadata.json").write_text(json.dumps({"training": training}, indent=2, default=float) + "\n")
    return TrainResult(bundle, out, net if net is not None else CmrOutcomeNet(backbone, width), history, evaluation,
                       time.monotonic() - t0)


def train_from_command(bundle: str, out: Path, *, data: Path | None = None, synthetic: int | None = None,
                       epochs: int | None = None, seed: int = 0, checkpoints: Path | None = None,
                       version: str = "1.0.0", command: str = "") -> TrainResult:
    """``cardionode train cmr_lge_outcome_<backbone> (--data DIR | --synthetic N) [--epochs E]``.

    ``--data DIR``: a folder of cohort files ``small.npz``, ``large.npz``, ``test.npz``, ``external.npz`` with the keys
    of :data:`node.synth.cmr.cohort.COHORT_KEYS` (a site exports its own cases in this format: ``frames`` from
    :func:`node.ai.cmr_outcome.basal_frame_input`, ``lge_above``, ``event``, ``frame_ok``, ``seed`` as case number);
    ``--synthetic N``: the synthetic cohorts in the cohort cache (``node.synth.cmr.cohort.default_cohort_dir``), of
    which the first ``N`` large-cohort cases are used (0: all). ``--epochs E`` sets every stage's epochs.
    """
    schedule = Schedule() if epochs is None else Schedule(cv_epochs=epochs, large_epochs=epochs, finetune_epochs=epochs)
    return train_cmr_outcome(out, bundle, cohorts=data, schedule=schedule, seed=seed, version=version, command=command,
                             checkpoints=checkpoints, large_limit=synthetic or None)


def pointing_game(model_dir: Path | None, bundle: str, cohort: Any, *, tolerance_px: int = 1,
                  figure: Path | None = None) -> dict[str, Any]:
    """Grad-CAM pointing game of bundle ``bundle`` (folder ``model_dir``; None: shipped) over ``cohort``.

    For each output's Grad-CAM (:func:`node.ai.cmr_outcome.predict_outcomes`): is the map's maximum on the truth
    myocardium (all cases with a frame) and on the planted scar (cases whose frame shows scar), each mask dilated by
    ``tolerance_px`` frame pixels, against random maps (maximum uniform over the frame); one-sided Monte-Carlo
    test :func:`node.ai.cmr_outcome.pointing_game_test`. ``figure``: a PNG of eight cases (the four most and least
    probable LGE-positive and -negative frames) with the LGE output's heat map.
    """
    from node.ai.cmr_outcome import pointing_game_test, pointing_hits, predict_outcomes, random_map_hit_probability

    ok = _ok(cohort)
    frames = cohort.frames[ok]
    myo = np.asarray(cohort.myocardium_mask)[ok]
    scar = np.asarray(cohort.lge_mask)[ok]
    heats, probs = [], []
    for start in range(0, len(frames), 32):
        s = predict_outcomes(frames[start: start + 32], bundle=bundle, model_dir=model_dir, device="cpu")
        assert s.heat_maps is not None
        heats.append(s.heat_maps)
        probs.append(s.probabilities)
    heat = np.concatenate(heats)
    prob = np.concatenate(probs)
    result: dict[str, Any] = {"bundle": bundle, "cases": int(ok.sum()), "tolerance_px": tolerance_px,
                              "test": "one-sided Monte-Carlo (20,000 random-map cohorts, Poisson-binomial hits)"}
    has_scar = scar.reshape(len(scar), -1).any(axis=1)
    for k, output in enumerate(OUTPUTS):
        for target, mask, keep in (("myocardium", myo, np.ones(len(myo), bool)), ("scar", scar, has_scar)):
            hits = pointing_hits(heat[keep, k], mask[keep], tolerance_px)
            chance = random_map_hit_probability(mask[keep], tolerance_px)
            result[f"{output}/{target}"] = pointing_game_test(hits, chance)
    if figure is not None:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt

        label = np.asarray(cohort.lge_above)[ok]
        order = np.argsort(prob[:, 0])
        pos, neg = order[label[order] == 1], order[label[order] == 0]
        picks = [("TP", pos[-2:]), ("FN", pos[:2]), ("TN", neg[:2]), ("FP", neg[-2:])]
        fig, axes = plt.subplots(2, 4, figsize=(12, 6.4))
        for col, (name, idx) in enumerate(picks):
            for row in range(2):
                ax = axes[row, col]
                ax.set_axis_off()
                if row >= len(idx):
                    continue
                i = int(idx[row])
                ax.imshow(np.clip(frames[i, 0], 0, 1), cmap="gray")
                ax.imshow(heat[i, 0], cmap="jet", alpha=0.35)
                ax.contour(scar[i], levels=[0.5], colors="white", linewidths=0.8)
                ax.set_title(f"{name}: p(LGE>5.7%)={prob[i, 0]:.2f}", fontsize=9)
        fig.suptitle(f"{bundle}: Grad-CAM of the LGE output (white: planted scar); synthetic test cohort; "
                     "research use", fontsize=10)
        fig.tight_layout()
        Path(figure).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(figure, dpi=80)
        plt.close(fig)
    return result
