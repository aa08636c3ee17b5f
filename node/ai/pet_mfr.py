"""The PET flow-reserve model (issue 16; Yeung et al. 2022): inputs, network, inference and explanations.

Input adapter (shared by the cohort builder and inference, so the network sees in training
exactly what it sees in service): :func:`polar_maps_from_result` turns a
``node.pipelines.pet_mbf.PetMbfResult`` into ``[3, n_u=40, n_psi=72]`` float32 maps on the
node's canonical :class:`node.quant.segments.PolarGrid` (row 0 apex, last row base; column
``j`` azimuth ``5 j`` degrees from anterior toward septum): channel 0 rest MBF, channel 1
stress MBF (mL/min/g), channel 2 MFR (stress/rest ratio, dimensionless).

NaN policy: a cell is *valid* when rest and stress MBF are finite and above
:data:`MBF_MIN` (0.05 mL/min/g; the node's basis-function map writes 0 where a voxel's fit
failed). Invalid cells are 0 in all three channels (never NaN) and False in
:func:`polar_valid_from_result`; a missing state (rest-only or stress-only study) makes the
whole map invalid. MBF is clipped to ``[0, MBF_MAX]`` and MFR to ``[0, MFR_MAX]``.

Network (:class:`node.ai.networks.PetMfrNet`, bundle ``models/pet_mfr``): MONAI's ResNet-50
(bottleneck blocks [3, 4, 6, 3]), 2-D, first convolution 3x3 with stride 2 on the 1 (one map)
or 3 (stacked) input channels, then 3x3/2 max pooling, so the four stages run at 10x18, 5x9,
3x5 and 2x3 cells (the ImageNet stem, 7x7/2 plus pooling, is the same stride: a 224-pixel image
becomes 56 cells, our 40x72 map 10x18; a stride-1 stem would cost 16 times more per study). A
cell of the last stage spans 120 degrees of azimuth, as coarse as a territory, so Grad-CAM reads
the stage the bundle names (``gradcam_target_layer``, chosen on development cases); 19 outputs: 17 segment MFRs (regression, AHA order) and the two
logits of "MFR impaired (< 2.0) in at least one segment". Input scaling: :func:`network_input`.

Explanations: Grad-CAM (:func:`node.ai.explain.gradcam_maps`) of the "impaired" logit, and
occlusion (:func:`occlusion_maps`): the seed's 30x30 black patch on a 224x224 image is 13.4 %
of each axis, here :data:`OCCLUSION_PATCH` = 5 rows x 9 columns of the 40 x 72 grid (12.5 %
of each; 45 degrees of azimuth), tiled without overlap (8 x 8 = 64 occluded copies).

Research use only: trained on synthetic phantoms, not clinically validated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from node.quant.segments import DEFAULT_GRID, TERRITORIES, TERRITORY_SEGMENTS

if TYPE_CHECKING:  # torch only when a model runs
    import torch

    from node.ai.bundles import LoadedBundle
    from node.ai.inference import StudyPredictions

__all__ = [
    "MAP_CHANNELS",
    "MBF_MIN",
    "MBF_MAX",
    "MFR_MAX",
    "polar_maps_from_result",
    "polar_valid_from_result",
    "polar_maps_and_valid",
    "maps_from_mbf",
    "INPUT_SCALE",
    "INPUT_VARIANTS",
    "TRAITS",
    "OCCLUSION_PATCH",
    "IMPAIRED_MFR_BELOW",
    "network_input",
    "PetMfrScores",
    "score_maps",
    "territory_probabilities",
    "gradcam_impaired",
    "occlusion_maps",
    "predict_pet_maps",
    "predict_pet",
    "predict_pet_batch",
]

#: channel order of :func:`polar_maps_from_result`
MAP_CHANNELS: tuple[str, ...] = ("rest_mbf", "stress_mbf", "mfr")
#: rest or stress MBF at or below this (mL/min/g) marks a cell invalid (failed fit, outside the wall)
MBF_MIN = 0.05
#: MBF values are clipped to this (mL/min/g): above any physiological flow
MBF_MAX = 10.0
#: MFR values are clipped to this (ratio)
MFR_MAX = 8.0


def _state_map(state: Any) -> np.ndarray | None:
    if state is None:
        return None
    values = np.asarray(state.polar_mbf_ml_per_min_per_g, dtype=np.float64)
    if values.shape != DEFAULT_GRID.shape:
        raise ValueError(f"{state.state} polar MBF map has shape {values.shape}, expected {DEFAULT_GRID.shape}")
    return values


def maps_from_mbf(rest: np.ndarray, stress: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The three input maps and their valid cells from rest and stress MBF maps (mL/min/g, ``[..., 40, 72]``).

    The one rule behind :func:`polar_maps_and_valid` (module docstring: NaN policy); also used by
    the polar-level phantoms of :mod:`node.ai.training.pet_mfr`. Returns ``(maps [..., 3, 40, 72]
    float32, valid [..., 40, 72] bool)``.
    """
    rest = np.asarray(rest, dtype=np.float64)
    stress = np.asarray(stress, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(rest) & np.isfinite(stress) & (rest > MBF_MIN) & (stress > MBF_MIN)
    safe_rest = np.where(valid, rest, 1.0)
    maps = np.stack([
        np.where(valid, np.clip(np.where(valid, rest, 0.0), 0.0, MBF_MAX), 0.0),
        np.where(valid, np.clip(np.where(valid, stress, 0.0), 0.0, MBF_MAX), 0.0),
        np.where(valid, np.clip(np.where(valid, stress, 0.0) / safe_rest, 0.0, MFR_MAX), 0.0),
    ], axis=-3).astype(np.float32)
    return maps, valid


def polar_maps_and_valid(result: Any) -> tuple[np.ndarray, np.ndarray]:
    """Rest MBF, stress MBF and MFR polar maps of a PET MBF result, and where they are valid.

    Parameters
    ----------
    result : node.pipelines.pet_mbf.PetMbfResult
        The PET pipeline's ``analyse`` result (reads ``rest`` and ``stress``
        ``polar_mbf_ml_per_min_per_g``, each ``[40, 72]``).

    Returns
    -------
    maps : float32 array [3, 40, 72]
        Axis 0 :data:`MAP_CHANNELS` (rest MBF, stress MBF in mL/min/g; MFR ratio), axes 1-2
        the polar grid (row 0 apex). 0 where not valid; never NaN.
    valid : bool array [40, 72]
        Cells where both MBF values are finite and above :data:`MBF_MIN`.
    """
    rest, stress = _state_map(getattr(result, "rest", None)), _state_map(getattr(result, "stress", None))
    if rest is None or stress is None:
        return np.zeros((3, *DEFAULT_GRID.shape), dtype=np.float32), np.zeros(DEFAULT_GRID.shape, dtype=bool)
    return maps_from_mbf(rest, stress)


def polar_maps_from_result(result: Any) -> np.ndarray:
    """The model's input maps ``[3, 40, 72]`` float32 of a PET MBF result (:func:`polar_maps_and_valid`)."""
    return polar_maps_and_valid(result)[0]


def polar_valid_from_result(result: Any) -> np.ndarray:
    """Valid cells ``[40, 72]`` bool of :func:`polar_maps_from_result` (the cohort's ``map_valid``)."""
    return polar_maps_and_valid(result)[1]


# --------------------------------------------------------------------------- network inputs and scores

#: the model's impaired-MFR rule (the seed's label): any AHA segment MFR below this (ratio)
IMPAIRED_MFR_BELOW = 2.0
#: each map channel is divided by this before the network (typical normal values: rest 1, stress 2.5 mL/min/g, MFR 2.5)
INPUT_SCALE: tuple[float, float, float] = (1.0, 2.5, 2.5)
#: input variants of the seed: which map channels each network sees
INPUT_VARIANTS: dict[str, tuple[int, ...]] = {"rest": (0,), "stress": (1,), "mfr": (2,), "stacked": (0, 1, 2)}
#: the risk traits of the trait heads, in head order (the cohort's TRAITS)
TRAITS: tuple[str, ...] = ("female", "diabetes", "hypertension", "dyslipidaemia", "smoking")
#: occlusion patch (rows, columns) of the polar grid: the seed's 30/224 of each image axis
OCCLUSION_PATCH: tuple[int, int] = (5, 9)
#: the network's output columns
SEGMENT_COLUMNS = slice(0, 17)
IMPAIRED_LOGITS = slice(17, 19)
IMPAIRED_COLUMN = 18


def network_input(maps: np.ndarray, variant: str = "stacked") -> np.ndarray:
    """Scale ``maps`` ``[n, 3, 40, 72]`` (or one ``[3, 40, 72]``) and keep the channels of ``variant``.

    Returns float32 ``[n, c, 40, 72]`` (c = 1 for ``rest``/``stress``/``mfr``, 3 for ``stacked``),
    each channel divided by :data:`INPUT_SCALE`; invalid cells stay 0.
    """
    if variant not in INPUT_VARIANTS:
        raise ValueError(f"input variant must be one of {', '.join(INPUT_VARIANTS)}, got {variant!r}")
    m = np.asarray(maps, dtype=np.float32)
    if m.ndim == 3:
        m = m[None]
    if m.shape[1:] != (3, *DEFAULT_GRID.shape):
        raise ValueError(f"maps have shape {m.shape}, expected [n, 3, {DEFAULT_GRID.n_u}, {DEFAULT_GRID.n_psi}]")
    channels = list(INPUT_VARIANTS[variant])
    scale = np.asarray(INPUT_SCALE, dtype=np.float32)[channels][None, :, None, None]
    return np.ascontiguousarray(m[:, channels] / scale, dtype=np.float32)


@dataclass(frozen=True)
class PetMfrScores:
    """Network outputs of ``n`` studies.

    ``impaired`` [n] probability of MFR < 2.0 in at least one segment; ``segment_mfr`` [n, 17] the
    regressed segment MFR (ratio, AHA order); ``territory`` [n, 3] the probability that the
    territory's MFR is below 2.0 (:func:`territory_probabilities`; LAD, LCx, RCA); ``traits``
    [n, 5] trait probabilities (:data:`TRAITS`) or None when not computed.
    """

    impaired: np.ndarray
    segment_mfr: np.ndarray
    territory: np.ndarray
    traits: np.ndarray | None = None


def territory_probabilities(segment_mfr: np.ndarray, residual_sd: float) -> np.ndarray:
    """P(territory MFR < 2.0) from the regressed segment MFRs ``[n, 17]``: ``Phi((2.0 - m_T) / sd)``.

    ``m_T`` is the mean regressed MFR of the territory's segments; ``residual_sd`` is the SD of
    (measured - predicted) territory MFR on the development cohort (bundle metadata). Returns
    ``[n, 3]`` in :data:`node.quant.segments.TERRITORIES` order.
    """
    from scipy.special import ndtr

    seg = np.asarray(segment_mfr, dtype=np.float64)
    means = np.stack([seg[:, [s - 1 for s in TERRITORY_SEGMENTS[t]]].mean(axis=1) for t in TERRITORIES], axis=1)
    return np.asarray(ndtr((IMPAIRED_MFR_BELOW - means) / max(float(residual_sd), 1e-3)), dtype=np.float64)


def _torch() -> Any:
    import torch

    return torch


def score_maps(network: torch.nn.Module, maps: np.ndarray, variant: str = "stacked", *, residual_sd: float = 0.25,
               traits: bool = False, batch: int = 32, device: str | torch.device = "cpu") -> PetMfrScores:
    """Run a :class:`node.ai.networks.PetMfrNet` on ``maps`` ``[n, 3, 40, 72]`` in batches of ``batch``.

    The network is put in eval mode; no gradients. Deterministic on CPU for a given batch split.
    """
    torch = _torch()
    from scipy.special import softmax

    x_all = network_input(maps, variant)
    network.eval()
    outs, trait_outs = [], []
    with torch.no_grad():
        for i in range(0, len(x_all), batch):
            x = torch.from_numpy(x_all[i:i + batch]).to(device)
            outs.append(network(x).cpu().numpy().astype(np.float64))
            if traits:
                trait_outs.append(cast(Any, network).trait_logits(x).cpu().numpy().astype(np.float64))
    out = np.concatenate(outs) if outs else np.zeros((0, 19))
    impaired = softmax(out[:, IMPAIRED_LOGITS], axis=1)[:, 1]
    segment = out[:, SEGMENT_COLUMNS]
    trait_p = softmax(np.concatenate(trait_outs), axis=2)[:, :, 1] if traits and trait_outs else None
    return PetMfrScores(impaired, segment, territory_probabilities(segment, residual_sd), trait_p)


def gradcam_impaired(network: torch.nn.Module, target_layer: str, x: torch.Tensor) -> np.ndarray:
    """Grad-CAM of the "impaired" logit for network inputs ``x`` ``[n, c, 40, 72]``: ``[n, 40, 72]`` in [0, 1]."""
    from node.ai.explain import gradcam_maps

    network.eval()
    return gradcam_maps(network, target_layer, x, IMPAIRED_COLUMN)


def occlusion_maps(network: torch.nn.Module, x: torch.Tensor, patch: tuple[int, int] = OCCLUSION_PATCH) -> np.ndarray:
    """Occlusion sensitivity of the "impaired" probability: ``[n, 40, 72]`` in [0, 1].

    Each ``patch`` (rows, columns) tile of the grid is set to 0 (the seed's black patch; 0 is
    also what an invalid cell reads) in turn; a tile's value is the drop in the impaired
    probability, negative drops set to 0, each map divided by its maximum (all-zero stays zero).
    Costs ``(40 / rows) x (72 / columns)`` forward passes per study (64 for the default patch).
    """
    torch = _torch()
    rows, cols = patch
    n_u, n_psi = DEFAULT_GRID.shape
    if n_u % rows or n_psi % cols:
        raise ValueError(f"patch {patch} must tile the {n_u} x {n_psi} grid")
    network.eval()
    out = np.zeros((x.shape[0], n_u, n_psi))
    with torch.no_grad():
        base = torch.softmax(network(x)[:, IMPAIRED_LOGITS], dim=1)[:, 1].cpu().numpy()
        for i in range(x.shape[0]):
            tiles = []
            copies = x[i:i + 1].repeat(n_u // rows * (n_psi // cols), 1, 1, 1)
            for k, (r, c) in enumerate((r, c) for r in range(0, n_u, rows) for c in range(0, n_psi, cols)):
                copies[k, :, r:r + rows, c:c + cols] = 0.0
                tiles.append((r, c))
            p = torch.softmax(network(copies)[:, IMPAIRED_LOGITS], dim=1)[:, 1].cpu().numpy()
            for (r, c), value in zip(tiles, p, strict=True):
                out[i, r:r + rows, c:c + cols] = base[i] - value
    out = np.clip(out, 0.0, None)
    peak = out.reshape(len(out), -1).max(axis=1)
    return out / np.where(peak > 0, peak, 1.0)[:, None, None]


# --------------------------------------------------------------------------- the PET pipeline's predict step

#: the heat maps' unit: a UCUM annotation (dimensionless); attention, not flow
HEAT_MAP_UNIT = "{relative attention}"
#: the bundle's name in models/
BUNDLE = "pet_mfr"


def _r(value: float, digits: int = 4) -> float:
    return float(round(float(value), digits))


def _trait_note(trait: str, p: float) -> str:
    words = {"female": "female sex", "diabetes": "diabetes", "hypertension": "hypertension",
             "dyslipidaemia": "dyslipidaemia", "smoking": "smoking"}[trait]
    return (f"research output (not a clinical finding): probability that the maps show the planted pattern of "
            f"{words} {p:.2f} (PET MFR model trait head; synthetic traits only)")


def predict_pet_maps(maps: Sequence[np.ndarray], keys: Sequence[str], bundle: LoadedBundle, *, gradcam: bool = True,
                     traits: bool = False, batch_independent: bool = True) -> list[StudyPredictions]:
    """Run the ``pet_mfr`` bundle on the input maps of several studies (one :class:`~node.ai.inference.StudyPredictions` each, same order).

    Parameters
    ----------
    maps : sequence of float32 arrays [3, 40, 72]
        :func:`polar_maps_from_result` of each study.
    keys : sequence of str
        One unique key per study.
    bundle : node.ai.bundles.LoadedBundle
        The loaded ``pet_mfr`` bundle (loaded once per worker, :func:`node.ai.bundles.load_bundle`).
    gradcam : bool
        Add the Grad-CAM heat map of the "impaired" output (a Secondary Capture over the MFR map).
    traits : bool
        Add the trait heads' probabilities as research notes (off by default; ``[pipelines.pet_mbf]
        model_traits``).
    batch_independent : bool
        Each study through the network on its own (default), so its numbers do not depend on its
        batch; False stacks them (faster, last bits may depend on the batch).

    Returns
    -------
    list of :class:`~node.ai.inference.StudyPredictions`; groups: the probability of impaired MFR in any segment and per
    territory (with present/absent/indeterminate verdicts from the bundle's ``reader_outputs``) and the
    Grad-CAM ``MapImage`` (derivation ``gradcam``, overlay ``mfr``). The regressed segment MFRs are not
    reported as SR measurements: a second, model-made MFR per segment beside the measured one (same code)
    would read as a measurement; they are the multi-task training target and feed the territory probabilities.
    """
    torch = _torch()
    from node.ai.inference import StudyPredictions
    from node.results.content import Evaluation, MapImage, Measurement, MeasurementGroup

    keys = list(keys)
    if len(set(keys)) != len(keys):
        raise ValueError("study keys must be unique within a batch")
    if len(keys) != len(maps):
        raise ValueError(f"{len(maps)} maps for {len(keys)} keys")
    meta = bundle.metadata
    variant = str(meta.get("input_variant", "stacked"))
    residual_sd = float(meta.get("territory_residual_sd", 0.25))
    readers = bundle.reader_outputs()
    layer = str(bundle.config.get("gradcam_target_layer", "backbone.layer3"))
    stacked = np.stack([np.asarray(m, np.float32) for m in maps]) if maps else np.zeros((0, 3, *DEFAULT_GRID.shape), np.float32)
    groups_of = [[i] for i in range(len(keys))] if batch_independent else [list(range(len(keys)))]
    scores: dict[int, tuple[float, np.ndarray, np.ndarray, np.ndarray | None]] = {}
    cams: dict[int, np.ndarray] = {}
    for idx in groups_of:
        if not idx:
            continue
        s = score_maps(bundle.network, stacked[idx], variant, residual_sd=residual_sd, traits=traits, device=bundle.device)
        for j, i in enumerate(idx):
            scores[i] = (float(s.impaired[j]), s.segment_mfr[j], s.territory[j], None if s.traits is None else s.traits[j])
        if gradcam:
            x = torch.from_numpy(network_input(stacked[idx], variant)).to(bundle.device)
            for j, cam in enumerate(gradcam_impaired(bundle.network, layer, x)):
                cams[idx[j]] = cam
    algorithm = bundle.algorithm((f"input={variant}", f"impaired_mfr_below={IMPAIRED_MFR_BELOW:g}"))
    out = []
    for i, key in enumerate(keys):
        p_any, seg, terr, trait_p = scores[i]
        pred = StudyPredictions(key)
        heat_key = "gradcam_pet_mfr" if gradcam else None
        whole = readers["impaired"]
        p = _r(p_any)
        pred.probabilities["impaired"] = p
        pred.groups.append(MeasurementGroup(
            label=whole.name, finding="myocardial_flow_reserve", site="left_ventricle", state=None, algorithm=algorithm,
            measurements=(Measurement("probability", p, "1"),),
            evaluations=(Evaluation("classification", whole.verdict(p)),), explanation_image=heat_key))
        for t, territory in enumerate(TERRITORIES):
            reader = readers[f"territory_{territory.lower()}"]
            pt = _r(terr[t])
            pred.probabilities[f"impaired_{territory.lower()}"] = pt
            pred.groups.append(MeasurementGroup(
                label=reader.name, finding="myocardial_flow_reserve", site=f"territory_{territory.lower()}", state=None,
                algorithm=algorithm, measurements=(Measurement("probability", pt, "1"),),
                evaluations=(Evaluation("classification", reader.verdict(pt)),), explanation_image=heat_key))
        for reader in readers.values():
            lo, hi = reader.band
            pred.notes.append(f"{reader.name}: present above {hi:.2f}, absent below {lo:.2f}, indeterminate in between "
                              f"(threshold {reader.threshold:.2f})")
        pred.notes.append("PET MFR model: its 17 regressed segment MFRs (the multi-task training target) are not reported "
                          "as measurements (the node's measured segment MFR is the reference); territory probabilities "
                          f"are Phi((2.0 - mean regressed territory MFR) / {residual_sd:.2f})")
        if gradcam:
            from node.ai.explain import summarise_attention

            cam = cams[i]
            summary = summarise_attention(cam)
            lo, hi = whole.band
            pred.images.append(MapImage(
                key="gradcam_pet_mfr", title=whole.heat_map_title(p),
                subtitle=f"{whole.verdict(p).capitalize()} (indeterminate {lo:.2f}-{hi:.2f}); numbers: segment MFR",
                values=np.round(cam, 3), unit=HEAT_MAP_UNIT, value_range=(0.0, 1.0), colormap="inferno",
                segment_values=tuple(_r(100.0 * v, 1) for v in summary.segment_share), derivation="gradcam",
                algorithm=algorithm, overlay_on="mfr"))
            top = summary.top_segments(3)
            share = max(summary.territory_share.items(), key=lambda kv: kv[1])
            pred.notes.append(f"PET MFR model attention highest in AHA segments {', '.join(map(str, top))} "
                              f"({share[0]} territory {100 * share[1]:.0f} % of it)")
        if traits and trait_p is not None:
            names = tuple(meta.get("traits", TRAITS))
            for t, name in enumerate(names):
                pred.probabilities[f"trait_{name}"] = _r(trait_p[t])
                pred.notes.append(_trait_note(name, float(trait_p[t])))
        out.append(pred)
    return out


def predict_pet_batch(results: Sequence[Any], models_root: Path | None = None, device: str | None = None,
                      gradcam: bool = True, traits: bool = False) -> list[tuple[list[Any], list[Any], list[str]]]:
    """The PET pipeline's predict step for several studies: ``(groups, images, notes)`` per result, same order.

    ``models_root`` is the folder of the bundles (None: those shipped, :func:`node.ai.bundles.models_dir`).
    A study without both rest and stress MBF, or whose maps are mostly invalid (< 80 % of the cells),
    gets a note instead of predictions. A missing bundle raises ``FileNotFoundError`` (the pipeline
    turns it into a note).
    """
    from node.ai import bundles
    from node.ai.spect import AI_NOTICE

    root = Path(models_root) if models_root is not None else bundles.models_dir()
    out: list[tuple[list[Any], list[Any], list[str]]] = [([], [], [AI_NOTICE]) for _ in results]
    usable: list[int] = []
    maps: list[np.ndarray] = []
    for i, result in enumerate(results):
        m, valid = polar_maps_and_valid(result)
        if getattr(result, "rest", None) is None or getattr(result, "stress", None) is None:
            out[i][2].append("PET MFR model not applied: it needs both rest and stress MBF maps")
        elif float(valid.mean()) < 0.8:
            out[i][2].append(f"PET MFR model not applied: only {100 * float(valid.mean()):.0f} % of the polar map "
                             "cells have valid rest and stress MBF (needs 80 %)")
        else:
            usable.append(i)
            maps.append(m)
    if not usable:
        return out
    bundle = bundles.load_bundle(BUNDLE, root / BUNDLE, device)
    keys = [f"{i}" for i in usable]
    for i, pred in zip(usable, predict_pet_maps(maps, keys, bundle, gradcam=gradcam, traits=traits), strict=True):
        out[i][0].extend(pred.groups)
        out[i][1].extend(pred.images)
        out[i][2].extend(pred.notes)
    return out


def predict_pet(result: Any, models_root: Path | None = None, device: str | None = None, gradcam: bool = True,
                traits: bool = False) -> tuple[list[Any], list[Any], list[str]]:
    """:func:`predict_pet_batch` of one ``PetMbfResult``: ``(MeasurementGroups, MapImages, notes)``."""
    return predict_pet_batch([result], models_root, device, gradcam, traits)[0]
