"""The seed's cardiac MR outcome models: LGE > 5.7 % and clinical event from one basal LGE frame.

Reference note ``cmr_lge.md`` section 1 (Azoulay, Mei, Fauveau et al.) and section 5.1. One basal
LGE short-axis frame per study goes into a ResNet50 or an InceptionV3 backbone with the seed's
head (flatten -> dense 512 -> dropout 0.5 -> output); two binary outputs (logits ``[batch, 2]``):
column 0 "LGE above 5.7 % of the LV myocardium", column 1 "clinical event during follow-up"
(ventricular tachycardia, complete heart block, heart-failure hospitalisation, death).

The network input (:func:`basal_frame_input`, the ONE function the training cohorts and the
pipeline share):

1. **Basal slice** (:func:`choose_basal_slice`). LV slices are those with at least
   :data:`MIN_MYOCARDIUM_MM2` of LV myocardium and some LV blood pool in the node's labels
   (:data:`node.ai.cmr_segmentation.LABELS`). The base is the end of the LV slices toward which
   the blood-pool area is centred (the cavity is widest at the base; the rule of
   :func:`node.quant.sax_segments.sax_segments`). The chosen slice is the most basal LV slice
   whose myocardium encloses at least 95 % of its blood pool (a closed ring, 8-connected
   background cannot leak through it) and whose blood pool is at least
   :data:`MIN_POOL_FRACTION` of the largest blood pool of the stack (so a partial-volume slab
   cut by the valve plane is not taken). Without such a slice: the most basal LV slice with
   that much blood pool; without LV slices the stack has no basal frame (``ValueError``).
2. **Field** (:func:`frame_geometry`, :func:`sample_on_frame`). An :data:`FRAME_SIZE` x
   :data:`FRAME_SIZE` grid of :data:`FRAME_PIXEL_MM` mm pixels (a 144 mm field), rows and
   columns parallel to the image's, centred on the centroid (mm) of the LV (blood pool plus
   myocardium) of the chosen slice; bilinear interpolation, edge values outside the image.
3. **Intensity** (:func:`node.ai.cmr_segmentation.normalise_slice` on the 144 mm field): the
   field's 1st and 99th percentiles map to 0 and 1, clipped to [-0.5, 1.5] (so magnitude and
   PSIR, and every vendor's scaling, share one range).

Research use only; trained on synthetic phantoms, not clinically validated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch
from monai.networks.nets import ResNet
from scipy import ndimage
from torch import nn

from node.ai import bundles
from node.ai.cmr_segmentation import LABELS, RING_ENCLOSED_FRACTION, normalise_slice
from node.ai.explain import gradcam_maps
from node.ai.inception import InceptionV3
from node.imaging.volume import ShortAxisStack
from node.results.content import Algorithm

__all__ = [
    "FRAME_SIZE",
    "FRAME_PIXEL_MM",
    "FRAME_FIELD_MM",
    "MIN_MYOCARDIUM_MM2",
    "MIN_POOL_FRACTION",
    "FrameGeometry",
    "choose_basal_slice",
    "frame_geometry",
    "sample_on_frame",
    "basal_frame_input",
    "BACKBONES",
    "OUTPUTS",
    "CmrOutcomeNet",
    "DEFAULT_BUNDLE",
    "OUTCOME_BUNDLES",
    "OutcomeScores",
    "predict_outcomes",
    "pointing_hits",
    "random_map_hit_probability",
    "pointing_game_test",
]

#: rows and columns of the network's frame
FRAME_SIZE = 80
#: pixel size of the network's frame, mm
FRAME_PIXEL_MM = 1.8
#: edge of the network's field of view, mm
FRAME_FIELD_MM = FRAME_SIZE * FRAME_PIXEL_MM
#: least LV myocardium area (mm^2) for a slice to count as an LV slice
MIN_MYOCARDIUM_MM2 = 60.0
#: least blood-pool area of the basal slice, as a share of the stack's largest LV blood pool
MIN_POOL_FRACTION = 0.5


@dataclass(frozen=True)
class FrameGeometry:
    """Where the network's frame lies on a stack: slice ``slice_index``, centred at ``centre_rc`` (row,
    column in the stack's pixel units), stack pixels ``pixel_spacing_mm`` (between rows, between columns)."""

    slice_index: int
    centre_rc: tuple[float, float]
    pixel_spacing_mm: tuple[float, float]

    def coordinates(self) -> np.ndarray:
        """Stack pixel coordinates ``[2 (row, column), FRAME_SIZE, FRAME_SIZE]`` of the frame's pixel centres."""
        offsets = (np.arange(FRAME_SIZE, dtype=np.float64) - (FRAME_SIZE - 1) / 2.0) * FRAME_PIXEL_MM
        rows = self.centre_rc[0] + offsets / self.pixel_spacing_mm[0]
        cols = self.centre_rc[1] + offsets / self.pixel_spacing_mm[1]
        return np.stack(np.meshgrid(rows, cols, indexing="ij"))


def _labels3(labels: np.ndarray) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim == 4:
        if arr.shape[0] != 1:
            raise ValueError(f"LGE labels must have one phase, got shape {arr.shape}")
        arr = arr[0]
    if arr.ndim != 3:
        raise ValueError(f"labels must be [slice, row, column] (or [1, slice, row, column]), got shape {arr.shape}")
    return arr


def _ring_closed(myocardium: np.ndarray, blood: np.ndarray) -> bool:
    if not blood.any():
        return False
    enclosed = ndimage.binary_fill_holes(myocardium, structure=np.ones((3, 3), bool)) & ~myocardium
    return float((enclosed & blood).sum()) >= RING_ENCLOSED_FRACTION * float(blood.sum())


def choose_basal_slice(labels: np.ndarray, pixel_spacing_mm: Sequence[float] | np.ndarray) -> int:
    """Index of the basal slice (module docstring, rule 1) of LGE labels ``[slice, row, column]``.

    Parameters
    ----------
    labels : array [slice, row, column] (or [1, slice, row, column]) of int
        The node's labels (1 LV blood pool, 2 LV myocardium, 3 RV), slices in stack order.
    pixel_spacing_mm : two floats
        Between rows and between columns, mm.

    Returns
    -------
    int
        The slice index. Raises ``ValueError`` when no slice holds an LV.
    """
    lab = _labels3(labels)
    myo = lab == LABELS["lv_myocardium"]
    blood = lab == LABELS["lv_blood_pool"]
    pixel_mm2 = float(pixel_spacing_mm[0]) * float(pixel_spacing_mm[1])
    myo_area = myo.sum(axis=(1, 2)) * pixel_mm2
    pool = blood.sum(axis=(1, 2)).astype(np.float64)
    lv = np.flatnonzero((myo_area >= MIN_MYOCARDIUM_MM2) & (pool > 0))
    if lv.size == 0:
        raise ValueError("no slice with an LV (myocardium and blood pool) in the labels: no basal frame")
    centre = float(np.sum(lv * pool[lv]) / pool[lv].sum())
    base_last = centre >= 0.5 * (lv[0] + lv[-1])  # cavity centred toward the base
    order = lv[::-1] if base_last else lv  # base -> apex
    big = [int(s) for s in order if pool[s] >= MIN_POOL_FRACTION * pool[lv].max()]
    for s in big:
        if _ring_closed(myo[s], blood[s]):
            return s
    return big[0]


def frame_geometry(labels: np.ndarray, pixel_spacing_mm: Sequence[float] | np.ndarray,
                   slice_index: int | None = None) -> FrameGeometry:
    """The frame of rule 2 (module docstring): the basal slice (or ``slice_index``) and the centroid (mm) of its
    LV (labels 1 and 2) in pixel units. ``ValueError`` when that slice has no LV."""
    lab = _labels3(labels)
    s = choose_basal_slice(lab, pixel_spacing_mm) if slice_index is None else int(slice_index)
    lv = (lab[s] == LABELS["lv_blood_pool"]) | (lab[s] == LABELS["lv_myocardium"])
    if not lv.any():
        raise ValueError(f"slice {s} has no LV in the labels")
    centre = np.argwhere(lv).mean(axis=0)
    spacing = (float(pixel_spacing_mm[0]), float(pixel_spacing_mm[1]))
    return FrameGeometry(s, (float(centre[0]), float(centre[1])), spacing)


def sample_on_frame(image: np.ndarray, geometry: FrameGeometry, order: int = 1) -> np.ndarray:
    """Sample a 2-D array ``[row, column]`` on the stack's grid onto the frame ``[FRAME_SIZE, FRAME_SIZE]``.

    ``order`` 1: bilinear (images; float32 out); 0: nearest (masks and labels; the input dtype out).
    Outside the image the edge value is repeated.
    """
    arr = np.asarray(image)
    if arr.ndim != 2:
        raise ValueError(f"image must be [row, column], got shape {arr.shape}")
    coords = geometry.coordinates()
    if order == 0:
        r = np.clip(np.rint(coords[0]), 0, arr.shape[0] - 1).astype(np.intp)
        c = np.clip(np.rint(coords[1]), 0, arr.shape[1] - 1).astype(np.intp)
        return arr[r, c]
    values = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    return ndimage.map_coordinates(values, coords, order=order, mode="nearest").astype(np.float32)


def basal_frame_input(stack: ShortAxisStack, labels: np.ndarray) -> tuple[np.ndarray, int]:
    """The network input of one LGE study (module docstring, rules 1-3).

    Parameters
    ----------
    stack : ShortAxisStack
        The LGE short-axis stack ``[1, slice, row, column]`` (magnitude or PSIR; rescaled pixel values).
    labels : array [slice, row, column] (or [1, slice, row, column]) of int
        The node's segmentation of ``stack`` (:func:`node.ai.cmr_segmentation.segment_short_axis`).

    Returns
    -------
    frame : float32 array [1, FRAME_SIZE, FRAME_SIZE]
        The normalised basal frame (channel, row, column), 1.8 mm pixels, 144 mm field centred on the LV.
    slice_index : int
        The stack slice it came from (its image is named in the report by SOP Instance UID).
    """
    lab = _labels3(labels)
    if lab.shape != stack.voxels.shape[1:]:
        raise ValueError(f"labels {lab.shape} do not match the stack's slices {stack.voxels.shape[1:]}")
    geometry = frame_geometry(lab, stack.pixel_spacing_mm)
    frame = normalise_slice(sample_on_frame(stack.voxels[0, geometry.slice_index], geometry))
    return frame[None].astype(np.float32), geometry.slice_index


# --------------------------------------------------------------------------- networks

#: backbone names of :class:`CmrOutcomeNet`
BACKBONES: tuple[str, ...] = ("resnet50", "inceptionv3")
#: the two outputs (logit columns) of :class:`CmrOutcomeNet`
OUTPUTS: tuple[str, ...] = ("lge_above_5_7", "event")


class CmrOutcomeNet(nn.Module):
    """A backbone with the seed's head: flatten -> dense 512 (ReLU) -> dropout 0.5 -> dense ``n_outputs`` (logits).

    Parameters
    ----------
    backbone : {"resnet50", "inceptionv3"}
        ``resnet50``: MONAI :class:`monai.networks.nets.ResNet` with bottleneck blocks [3, 4, 6, 3], 2-D, one
        input channel, the original stem (7 x 7 stride-2 convolution, 3 x 3 stride-2 max-pool), projection
        shortcuts without bias; ``inceptionv3``: :class:`node.ai.inception.InceptionV3`.
    width : float
        Channel multiplier of the backbone (1.0 = the published widths; the shipped bundles are narrower, see
        their model cards).
    in_size : int
        Rows = columns of the input frame (the flatten layer's size depends on it).
    hidden, dropout, n_outputs : int, float, int
        The head: 512, 0.5 and 2 (:data:`OUTPUTS`) in the seed.

    Input ``[batch, 1, in_size, in_size]``, output logits ``[batch, n_outputs]``.
    """

    def __init__(self, backbone: str = "resnet50", width: float = 1.0, in_size: int = FRAME_SIZE, hidden: int = 512,
                 dropout: float = 0.5, n_outputs: int = 2) -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {', '.join(BACKBONES)}, got {backbone!r}")
        self.backbone_name = backbone
        if backbone == "resnet50":
            self.backbone: nn.Module = ResNet(
                block="bottleneck", layers=[3, 4, 6, 3], block_inplanes=[64, 128, 256, 512], spatial_dims=2,
                n_input_channels=1, conv1_t_size=7, conv1_t_stride=2, no_max_pool=False, shortcut_type="B",
                widen_factor=float(width), feed_forward=False, bias_downsample=False)
        else:
            self.backbone = InceptionV3(1, float(width))
        self.backbone.eval()  # the size probe runs one frame (batch norm in training mode needs more)
        with torch.no_grad():
            n_features = int(self.features(torch.zeros(1, 1, in_size, in_size)).numel())
        self.backbone.train()
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(n_features, hidden), nn.ReLU(), nn.Dropout(dropout),
                                  nn.Linear(hidden, n_outputs))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's last feature map ``[batch, channels, r, c]`` (ResNet ``layer4``, InceptionV3 ``Mixed_7c``)."""
        b = self.backbone
        if isinstance(b, ResNet):
            x = b.maxpool(b.act(b.bn1(b.conv1(x))))
            return cast(torch.Tensor, b.layer4(b.layer3(b.layer2(b.layer1(x)))))
        return cast(torch.Tensor, b(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, self.head(self.features(x)))


# --------------------------------------------------------------------------- inference

#: the bundle the CMR pipeline runs: InceptionV3, the backbone whose Grad-CAM beats random maps in the pointing game on
#: the synthetic test cohort, with AUCs within the CIs of ResNet50's (docs/validation.md, issue 18)
DEFAULT_BUNDLE = "cmr_lge_outcome_inceptionv3"
#: the outcome bundles, one per backbone
OUTCOME_BUNDLES: dict[str, str] = {"cmr_lge_outcome_resnet50": "resnet50", "cmr_lge_outcome_inceptionv3": "inceptionv3"}


@dataclass(frozen=True)
class OutcomeScores:
    """Predictions of one bundle for a batch of studies: ``probabilities`` ``[n, 2]`` (:data:`OUTPUTS` order, rounded
    to 4 decimals), ``heat_maps`` ``[n, 2, FRAME_SIZE, FRAME_SIZE]`` Grad-CAM of each output on the frame, in [0, 1]
    (rounded to 3 decimals; None when not asked), and the model: bundle name, version, weights digest, Grad-CAM
    layer, training data and provenance (:class:`node.results.content.Algorithm` via ``algorithm``)."""

    probabilities: np.ndarray
    heat_maps: np.ndarray | None
    bundle: str
    version: str
    weights_sha256: str
    gradcam_layer: str
    algorithm: Algorithm


def predict_outcomes(frames: np.ndarray, *, bundle: str = DEFAULT_BUNDLE, model_dir: Path | None = None,
                     device: str | torch.device | None = None, gradcam: bool = True) -> OutcomeScores:
    """Run outcome bundle ``bundle`` on frames ``[n, 1, FRAME_SIZE, FRAME_SIZE]`` of :func:`basal_frame_input`.

    The bundle is loaded once per process (:func:`node.ai.bundles.load_bundle`); all ``n`` studies go through in one
    batch (the ``gpu`` queue batches across studies). Grad-CAM (:func:`node.ai.explain.gradcam_maps`, MONAI) of each
    output at the bundle's ``gradcam_target_layer``, upsampled to the frame. Deterministic on CPU: eval mode,
    no dropout; batch norm uses its stored statistics, so a study's numbers do not depend on its batch.
    ``model_dir``: the bundle's folder (None: the shipped one).
    """
    if bundle not in OUTCOME_BUNDLES:
        raise ValueError(f"unknown outcome bundle {bundle!r}; known: {', '.join(OUTCOME_BUNDLES)}")
    x = np.asarray(frames, dtype=np.float32)
    if x.ndim != 4 or x.shape[1:] != (1, FRAME_SIZE, FRAME_SIZE):
        raise ValueError(f"frames must be [n, 1, {FRAME_SIZE}, {FRAME_SIZE}], got {x.shape}")
    loaded = bundles.load_bundle(bundle, root=model_dir, device=device)
    net = loaded.network
    xt = torch.from_numpy(np.ascontiguousarray(x)).to(loaded.device)
    with torch.no_grad():
        probs = torch.sigmoid(net(xt)).cpu().numpy().astype(np.float64)
    layer = str(loaded.config.get("gradcam_target_layer", ""))
    heat = None
    if gradcam:
        heat = np.stack([gradcam_maps(net, layer, xt, k) for k in range(len(OUTPUTS))], axis=1)
        heat = np.round(heat, 3).astype(np.float32)
    algorithm = loaded.algorithm((f"input=basal LGE frame {FRAME_SIZE}x{FRAME_SIZE} at {FRAME_PIXEL_MM} mm",
                                  f"gradcam_layer={layer}"))
    return OutcomeScores(np.round(probs, 4), heat, bundle, loaded.version, loaded.weights_sha256, layer, algorithm)


# --------------------------------------------------------------------------- pointing game

def pointing_hits(heat_maps: np.ndarray, masks: np.ndarray, tolerance_px: int = 1) -> np.ndarray:
    """Pointing game: bool ``[n]``, whether the maximum of each map ``[n, r, c]`` lies on its mask ``[n, r, c]``
    dilated by ``tolerance_px`` pixels (cases with an empty mask: False). Ties: the first maximum in row order."""
    maps = np.asarray(heat_maps, dtype=np.float64)
    m = np.asarray(masks, bool)
    if tolerance_px > 0:
        m = ndimage.binary_dilation(m, structure=np.ones((1, 3, 3), bool), iterations=tolerance_px)
    flat = maps.reshape(len(maps), -1).argmax(axis=1)
    return np.asarray(m.reshape(len(m), -1)[np.arange(len(m)), flat] & m.reshape(len(m), -1).any(axis=1))


def random_map_hit_probability(masks: np.ndarray, tolerance_px: int = 1) -> np.ndarray:
    """The hit probability ``[n]`` of a random map (its maximum uniform over the frame): the dilated mask's share
    of the frame's pixels."""
    m = np.asarray(masks, bool)
    if tolerance_px > 0:
        m = ndimage.binary_dilation(m, structure=np.ones((1, 3, 3), bool), iterations=tolerance_px)
    return np.asarray(m.reshape(len(m), -1).mean(axis=1), dtype=np.float64)


def pointing_game_test(hits: np.ndarray, chance: np.ndarray, n_sim: int = 20000, seed: int = 0) -> dict[str, float]:
    """One-sided test that Grad-CAM hits more often than random maps: the p-value is the share of ``n_sim``
    simulated random-map cohorts (each case hit with its own ``chance``, a Poisson-binomial count) whose hit count
    reaches the observed one (plus one, over ``n_sim + 1``). Returns hits, n, hit_rate, random_rate, p_value."""
    h = np.asarray(hits, bool)
    p = np.asarray(chance, dtype=np.float64)
    rng = np.random.default_rng(seed)
    sims = (rng.random((n_sim, len(p))) < p[None, :]).sum(axis=1)
    observed = int(h.sum())
    p_value = (1.0 + float(np.sum(sims >= observed))) / (n_sim + 1.0)
    return {"hits": float(observed), "n": float(len(h)), "hit_rate": float(h.mean()) if len(h) else float("nan"),
            "random_rate": float(p.mean()) if len(p) else float("nan"), "p_value": p_value}
