"""LV blood pool, LV myocardium and RV segmentation of cardiac MR short-axis stacks (cine and LGE).

One function, :func:`segment_short_axis`, for every short-axis stack the node reads
(:class:`node.imaging.volume.ShortAxisStack`): bSSFP cine phases (ED, ES or all) and LGE,
magnitude or PSIR. It runs the ``cmr_segmentation`` bundle, a MONAI 2-D U-Net
(channels 16-32-64-128) trained on the phantoms of :mod:`node.synth.cmr` by
:mod:`node.ai.training.cmr_segmentation`, slice by slice, and checks the result
(:class:`SegmentationQuality`).

Labels (:data:`LABELS`): 0 background, 1 LV blood pool, 2 LV myocardium (scar and MVO
included), 3 RV blood pool.

Processing of one slice (the training uses the same :func:`network_input`):

1. resample in plane to :data:`CANONICAL_PIXEL_MM` (bilinear, corner-aligned);
2. scale by the slice's 1st and 99th percentiles to [0, 1] and clip to [-0.5, 1.5]
   (so bright-blood cine, nulled-myocardium LGE magnitude and signed PSIR share one input
   range);
3. add a constant second channel: 0 for cine, 1 for LGE (:data:`CONTRASTS`); one network
   serves both because the two contrasts look alike where it matters (bright blood, dark
   myocardium) and differ in what the channel tells it (bright scar inside the wall on LGE);
4. find the heart: run the network on up to three whole middle slices of the first phase and
   take the centre of the LV found there; then run it on the :data:`WINDOW` x :data:`WINDOW`
   square (192 mm, the size of the training crops) around that centre on every slice and phase
   (whole slices when no LV is found); softmax, background outside the square; resample the
   four class probabilities back to the stack's grid (bilinear) and take the most probable class;
5. keep, per slice, the largest connected LV (blood pool + myocardium) and the largest RV
   component.

Quality (:func:`assess_quality`): at least :data:`MIN_LV_SLICES` slices with LV
myocardium, no slice without LV between LV slices and no missing slice position in the stack
(:meth:`ShortAxisStack.gaps_after`), and on the mid third of the LV slices a myocardial ring
that encloses the blood pool (8-connected background cannot leak through it).

Cross-check (:func:`classical_cross_check`, as the classical threshold mask is for SPECT): a
classical LV blood pool (:func:`classical_blood_pool`: threshold at the midpoint of the blood and
dark levels around the network's LV centre, 3 mm opening, hole filling) compared with the network's
on the mid slices; the blood pool only, because in bSSFP the myocardium and the surrounding tissue
have nearly the same signal, so no threshold finds the epicardium.

Research use only; the bundle is trained on synthetic phantoms and not clinically validated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from node.ai import bundles
from node.imaging.volume import ShortAxisStack
from node.results.content import Algorithm

__all__ = [
    "BUNDLE",
    "CANONICAL_PIXEL_MM",
    "CONTRASTS",
    "LABELS",
    "MIN_LV_SLICES",
    "ModelIdentity",
    "PhaseQuality",
    "SaxSegmentation",
    "SegmentationQuality",
    "CROSS_CHECK_MIN_DICE",
    "CrossCheck",
    "assess_quality",
    "classical_blood_pool",
    "classical_cross_check",
    "canonical_shape",
    "network_input",
    "normalise_slice",
    "resample_slice",
    "segment_short_axis",
]

#: bundle folder name under the models folder
BUNDLE = "cmr_segmentation"
#: in-plane pixel size (mm) of the network's input grid
CANONICAL_PIXEL_MM = 1.5
#: label values of :attr:`SaxSegmentation.labels`
LABELS: dict[str, int] = {"background": 0, "lv_blood_pool": 1, "lv_myocardium": 2, "rv_blood_pool": 3}
#: contrast flag (second input channel) of each contrast the network knows
CONTRASTS: dict[str, float] = {"cine": 0.0, "lge": 1.0}
#: fewest slices with LV myocardium for a usable stack (ukbb_cardiac-style QC)
MIN_LV_SLICES = 6
#: fewest myocardium pixels (mm^2 of area: 60) for a slice to count as an LV slice
MIN_LV_AREA_MM2 = 60.0
#: share of the blood pool that the myocardium must enclose for a closed ring
RING_ENCLOSED_FRACTION = 0.95
#: edge (canonical pixels, 192 mm) of the square around the heart that the network segments (its training crop)
WINDOW = 128
_MULTIPLE = 8
_BATCH = 24


def resample_slice(image: np.ndarray, shape: tuple[int, int], order: int = 1) -> np.ndarray:
    """Resample a 2-D (or ``[channel, row, col]``) array to ``shape`` on a corner-aligned grid
    (the first and last pixel centres map onto each other; the inverse of itself)."""
    arr = np.asarray(image, dtype=np.float32)
    if arr.shape[-2:] == tuple(shape):
        return arr
    rows = np.linspace(0, arr.shape[-2] - 1, shape[0], dtype=np.float32)
    cols = np.linspace(0, arr.shape[-1] - 1, shape[1], dtype=np.float32)
    grid = np.meshgrid(rows, cols, indexing="ij")
    if arr.ndim == 2:
        return ndimage.map_coordinates(arr, grid, order=order, mode="nearest").astype(np.float32)
    return np.stack([ndimage.map_coordinates(a, grid, order=order, mode="nearest") for a in arr]).astype(np.float32)


def canonical_shape(shape: tuple[int, int], pixel_spacing_mm: Sequence[float] | np.ndarray) -> tuple[int, int]:
    """Rows and columns of a slice of ``shape`` at ``pixel_spacing_mm`` (row, column spacing) on the
    :data:`CANONICAL_PIXEL_MM` grid (same field of view)."""
    return (max(8, int(round(shape[0] * float(pixel_spacing_mm[0]) / CANONICAL_PIXEL_MM))),
            max(8, int(round(shape[1] * float(pixel_spacing_mm[1]) / CANONICAL_PIXEL_MM))))


def normalise_slice(image: np.ndarray) -> np.ndarray:
    """Per-slice intensity scaling: ``(x - p1) / (p99 - p1)`` clipped to [-0.5, 1.5] (float32); a flat
    slice (p99 == p1, e.g. all zero) becomes all zeros. Non-finite values count as 0."""
    x = np.nan_to_num(np.asarray(image, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = np.percentile(x, [1.0, 99.0])
    if not hi > lo:
        return np.zeros_like(x)
    return np.clip((x - lo) / (hi - lo), -0.5, 1.5).astype(np.float32)


def network_input(image: np.ndarray, pixel_spacing_mm: Sequence[float] | np.ndarray, contrast: str) -> np.ndarray:
    """The network input ``[2, rows', cols']`` of one slice: resampled to :data:`CANONICAL_PIXEL_MM`,
    normalised (:func:`normalise_slice`) and the contrast flag channel (:data:`CONTRASTS`)."""
    if contrast not in CONTRASTS:
        raise ValueError(f"contrast must be one of {', '.join(CONTRASTS)}, got {contrast!r}")
    image = np.asarray(image, dtype=np.float32)
    x = normalise_slice(resample_slice(image, canonical_shape(image.shape, pixel_spacing_mm)))
    return np.stack([x, np.full_like(x, CONTRASTS[contrast])])


@dataclass(frozen=True)
class ModelIdentity:
    """Which model made a segmentation: bundle name, version, weights digest and training data."""

    name: str
    version: str
    weights_sha256: str
    training_data: str
    intended_use: str


@dataclass(frozen=True)
class PhaseQuality:
    """Checks of one phase: slices with LV myocardium, slices without it between them, and mid
    slices whose myocardial ring does not enclose the blood pool."""

    phase: int
    lv_slices: tuple[int, ...]
    missing_lv_slices: tuple[int, ...]
    mid_slices: tuple[int, ...]
    open_rings: tuple[int, ...]


@dataclass(frozen=True)
class SegmentationQuality:
    """Quality of a segmentation. ``gaps``: indices ``i`` where one or more slice positions are missing
    between slice ``i`` and ``i + 1`` of the stack; ``problems``: plain-word findings, empty when
    ``ok``."""

    per_phase: dict[int, PhaseQuality]
    gaps: tuple[int, ...]
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def lv_slices(self) -> tuple[int, ...]:
        """Slices with LV myocardium in every checked phase."""
        sets = [set(q.lv_slices) for q in self.per_phase.values()]
        return tuple(sorted(set.intersection(*sets))) if sets else ()

    @property
    def open_rings(self) -> tuple[tuple[int, int], ...]:
        """(phase, slice) of each mid slice with an open myocardial ring."""
        return tuple((p, s) for p, q in sorted(self.per_phase.items()) for s in q.open_rings)


@dataclass(frozen=True)
class SaxSegmentation:
    """Labels of a short-axis stack and how they were made.

    ``labels`` uint8 ``[phase, slice, row, col]`` on the stack's grid (:data:`LABELS`); phases
    not in ``phases`` are all 0. ``confidence`` float32 ``[phase, slice]``: mean winning-class
    probability over the pixels labelled non-background (NaN where none; 0 for phases not
    segmented).
    """

    labels: np.ndarray
    phases: tuple[int, ...]
    contrast: str
    confidence: np.ndarray
    model: ModelIdentity
    quality: SegmentationQuality
    pixel_spacing_mm: np.ndarray = field(repr=False, default_factory=lambda: np.ones(2))

    def myocardium(self, phase: int) -> np.ndarray:
        """Boolean LV myocardium ``[slice, row, col]`` of ``phase``."""
        return np.asarray(self.labels[phase] == LABELS["lv_myocardium"])

    def blood_pool(self, phase: int) -> np.ndarray:
        """Boolean LV blood pool ``[slice, row, col]`` of ``phase``."""
        return np.asarray(self.labels[phase] == LABELS["lv_blood_pool"])

    def rv(self, phase: int) -> np.ndarray:
        """Boolean RV blood pool ``[slice, row, col]`` of ``phase``."""
        return np.asarray(self.labels[phase] == LABELS["rv_blood_pool"])

    def algorithm(self) -> Algorithm:
        """Provenance record for the SR (TID 4019)."""
        m = self.model
        return Algorithm(name=f"CardioNode {m.name}", version=m.version,
                         parameters=(f"weights=sha256:{m.weights_sha256}", f"contrast={self.contrast}",
                                     f"pixel_mm={CANONICAL_PIXEL_MM}"),
                         training_data=m.training_data, intended_use=m.intended_use)


def _largest(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = ndimage.sum_labels(mask, labels, np.arange(1, n + 1))
    return np.asarray(labels == (1 + int(np.argmax(sizes))))


def _clean(labels: np.ndarray) -> np.ndarray:
    """Keep the largest LV (blood pool + myocardium) and RV component of one slice."""
    out = labels.copy()
    lv = (labels == 1) | (labels == 2)
    keep_lv = _largest(lv)
    out[lv & ~keep_lv] = 0
    rv = labels == 3
    out[rv & ~_largest(rv)] = 0
    return out


def _run(network: torch.nn.Module, inputs: list[np.ndarray], device: torch.device) -> list[np.ndarray]:
    """Softmax ``[4, r, c]`` of each input ``[2, r, c]`` (batches of up to 24 of one shape, padded to multiples of 8)."""
    out: list[np.ndarray] = [np.zeros(0, np.float32)] * len(inputs)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, x in enumerate(inputs):
        by_shape.setdefault(x.shape, []).append(i)
    with torch.no_grad():
        chunks = [(shape, idx[k: k + _BATCH]) for shape, idx in by_shape.items() for k in range(0, len(idx), _BATCH)]
        for shape, idx in chunks:
            r, c = shape[1], shape[2]
            pr, pc = (-r) % _MULTIPLE, (-c) % _MULTIPLE
            batch = np.stack([inputs[i] for i in idx])
            batch = np.pad(batch, ((0, 0), (0, 0), (pr // 2, pr - pr // 2), (pc // 2, pc - pc // 2)), mode="edge")
            prob = torch.softmax(network(torch.from_numpy(batch).to(device)), dim=1).cpu().numpy()
            prob = prob[:, :, pr // 2: pr // 2 + r, pc // 2: pc // 2 + c]
            for k, i in enumerate(idx):
                out[i] = prob[k]
    return out


def _heart_window_run(network: torch.nn.Module, inputs: list[np.ndarray], n_slices: int,
                      device: torch.device) -> list[np.ndarray]:
    """Class probabilities ``[4, r, c]`` of each canonical input, computed in a :data:`WINDOW` square
    around the heart: the network first runs on the whole of up to three middle slices of the first
    phase (``inputs`` are phase-major) to find the LV; without an LV there, on every whole slice."""
    mid = n_slices // 2
    probe = sorted({min(max(k, 0), n_slices - 1) for k in (mid - 1, mid, mid + 1)})
    first = _run(network, [inputs[k] for k in probe], device)
    lv = np.zeros(inputs[0].shape[1:], bool)
    for prob in first:
        label = np.argmax(prob, axis=0)
        lv |= (label == 1) | (label == 2)
    lv = _largest(lv)
    if not lv.any():
        return _run(network, inputs, device)
    rows, cols = inputs[0].shape[1:]
    centre = np.argwhere(lv).mean(axis=0)
    r0 = int(np.clip(round(centre[0]) - WINDOW // 2, 0, max(rows - WINDOW, 0)))
    c0 = int(np.clip(round(centre[1]) - WINDOW // 2, 0, max(cols - WINDOW, 0)))
    window = (slice(r0, r0 + WINDOW), slice(c0, c0 + WINDOW))
    crops = _run(network, [x[:, window[0], window[1]] for x in inputs], device)
    out = []
    for crop in crops:
        full = np.zeros((4, rows, cols), np.float32)
        full[0] = 1.0
        full[:, window[0], window[1]] = crop
        out.append(full)
    return out


def _ring_closed(myocardium: np.ndarray, blood: np.ndarray) -> bool:
    if not blood.any():
        return False
    enclosed = ndimage.binary_fill_holes(myocardium, structure=np.ones((3, 3), bool)) & ~myocardium
    return float((enclosed & blood).sum()) >= RING_ENCLOSED_FRACTION * float(blood.sum())


def assess_quality(labels: np.ndarray, phases: Sequence[int], stack: ShortAxisStack,
                   min_lv_slices: int = MIN_LV_SLICES, blank: Sequence[tuple[int, int]] = ()) -> SegmentationQuality:
    """Quality checks of ``labels`` ``[phase, slice, row, col]`` for ``phases`` of ``stack``:
    enough LV slices, no LV gaps, no missing slice positions, closed rings on the mid third;
    ``blank`` lists the (phase, slice) images without content (flat), which are named."""
    problems: list[str] = []
    if blank:
        shown = ", ".join(f"{s}" if stack.n_phases == 1 else f"{s} (phase {p})" for p, s in blank[:12])
        more = f" and {len(blank) - 12} more" if len(blank) > 12 else ""
        problems.append(f"blank image (no signal variation) on slice(s) {shown}{more}")
    gaps = tuple(int(i) for i in stack.gaps_after())
    for i in gaps:
        problems.append(f"slice positions missing between slice {i} and {i + 1} "
                        f"({float(np.diff(stack.slice_positions_mm)[i]):.1f} mm apart, median spacing "
                        f"{stack.slice_spacing_mm:.1f} mm)")
    min_pixels = MIN_LV_AREA_MM2 / float(np.prod(stack.pixel_spacing_mm))
    per_phase: dict[int, PhaseQuality] = {}
    for p in phases:
        myo = labels[p] == LABELS["lv_myocardium"]
        blood = labels[p] == LABELS["lv_blood_pool"]
        has_lv = myo.reshape(myo.shape[0], -1).sum(axis=1) >= min_pixels
        lv = tuple(int(s) for s in np.flatnonzero(has_lv))
        missing: tuple[int, ...] = ()
        mid: tuple[int, ...] = ()
        open_rings: list[int] = []
        if lv:
            missing = tuple(s for s in range(lv[0], lv[-1] + 1) if s not in lv)
            n = len(lv)
            mid = lv[n // 3: n - n // 3] if n >= 3 else lv
            open_rings = [s for s in mid if not _ring_closed(myo[s], blood[s])]
        per_phase[int(p)] = PhaseQuality(int(p), lv, missing, tuple(mid), tuple(open_rings))
        where = f"phase {p}: " if len(phases) > 1 or stack.n_phases > 1 else ""
        if len(lv) < min_lv_slices:
            problems.append(f"{where}only {len(lv)} slices with LV myocardium (need {min_lv_slices})"
                            if lv else f"{where}no LV myocardium found")
        if missing:
            problems.append(f"{where}no LV myocardium on slice(s) {', '.join(map(str, missing))} between LV slices")
        if open_rings:
            problems.append(f"{where}myocardial ring open on mid slice(s) {', '.join(map(str, open_rings))}")
    return SegmentationQuality(per_phase, gaps, tuple(problems))


def segment_short_axis(stack: ShortAxisStack, *, phases: Sequence[int] | None = None, model_dir: Path | None = None,
                       contrast: str | None = None, device: str | torch.device | None = None) -> SaxSegmentation:
    """Segment LV blood pool, LV myocardium and RV on ``phases`` of a short-axis stack.

    Parameters
    ----------
    stack : ShortAxisStack
        Cine (several phases) or LGE (one phase, magnitude or PSIR) stack ``[phase, slice, row, col]``.
    phases : sequence of int, optional
        Phase indices to segment; None = all phases.
    model_dir : Path, optional
        The ``cmr_segmentation`` bundle folder; None = the bundle shipped with CardioNode.
    contrast : {"cine", "lge"}, optional
        None = "cine" when the stack has more than one phase, else "lge".
    device : str or torch.device, optional
        Default CUDA when available, else CPU.

    Returns
    -------
    SaxSegmentation
        Labels on the stack's own grid (:data:`LABELS`), confidence, model identity and quality.
    """
    chosen = tuple(range(stack.n_phases)) if phases is None else tuple(int(p) for p in phases)
    for p in chosen:
        if not 0 <= p < stack.n_phases:
            raise ValueError(f"phase {p} is outside the stack's {stack.n_phases} phases")
    kind = contrast if contrast is not None else ("cine" if stack.n_phases > 1 else "lge")
    if kind not in CONTRASTS:
        raise ValueError(f"contrast must be one of {', '.join(CONTRASTS)}, got {kind!r}")
    bundle = bundles.load_bundle(BUNDLE, root=model_dir, device=device)
    n_p, n_s, rows, cols = stack.voxels.shape
    spacing = stack.pixel_spacing_mm
    keys = [(p, s) for p in chosen for s in range(n_s)]
    inputs = [network_input(stack.voxels[p, s], spacing, kind) for p, s in keys]
    probs = _heart_window_run(bundle.network, inputs, n_s, bundle.device)
    labels = np.zeros((n_p, n_s, rows, cols), np.uint8)
    confidence = np.zeros((n_p, n_s), np.float32)
    blank = tuple((p, s) for (p, s), x in zip(keys, inputs, strict=True) if not np.any(x[0]))
    for (p, s), prob in zip(keys, probs, strict=True):
        if (p, s) in blank:  # flat image (p99 == p1): nothing to segment
            confidence[p, s] = np.nan
            continue
        back = resample_slice(prob, (rows, cols))
        lab = _clean(np.argmax(back, axis=0).astype(np.uint8))
        labels[p, s] = lab
        fg = lab > 0
        confidence[p, s] = float(back.max(axis=0)[fg].mean()) if fg.any() else np.nan
    meta = bundle.metadata
    identity = ModelIdentity(BUNDLE, bundle.version, bundle.weights_sha256, str(meta.get("training_data", "")),
                             str(meta.get("intended_use", bundles.INTENDED_USE)))
    quality = assess_quality(labels, chosen, stack, blank=blank)
    return SaxSegmentation(labels, chosen, kind, confidence, identity, quality, np.asarray(spacing, float))


# --------------------------------------------------------------------------- classical cross-check

#: radius (mm) around the network's LV centre inside which the classical blood pool is searched
CROSS_CHECK_RADIUS_MM = 45.0
#: mean blood-pool Dice (classical vs network, mid slices) below which the two are said to disagree
CROSS_CHECK_MIN_DICE = 0.75


def classical_blood_pool(image: np.ndarray, seed: tuple[float, float], pixel_spacing_mm: Sequence[float] | np.ndarray
                         ) -> np.ndarray:
    """LV blood pool of one bright-blood slice (cine, LGE magnitude or PSIR) by thresholding, without a network.

    The blood level is the median within 5 mm of ``seed`` (row, column), the dark level the 10th
    percentile within :data:`CROSS_CHECK_RADIUS_MM`; pixels above their midpoint that connect to the
    seed within that radius, after an opening by a 3 mm disk (which cuts thin bridges to the RV or to
    bright scar) and hole filling, form the mask. Returns bool ``[row, col]`` (empty when the seed is
    not bright)."""
    x = normalise_slice(image)
    rows, cols = np.mgrid[: x.shape[0], : x.shape[1]]
    dist = np.hypot((rows - seed[0]) * float(pixel_spacing_mm[0]), (cols - seed[1]) * float(pixel_spacing_mm[1]))
    near, disk = dist <= CROSS_CHECK_RADIUS_MM, dist <= 5.0
    if not disk.any():
        return np.zeros(x.shape, bool)
    blood, dark = float(np.median(x[disk])), float(np.percentile(x[near], 10))
    if not blood > dark:
        return np.zeros(x.shape, bool)
    bright = (x > 0.5 * (blood + dark)) & near
    radius = max(1, int(round(3.0 / float(min(pixel_spacing_mm)))))
    rr, cc = np.mgrid[-radius: radius + 1, -radius: radius + 1]
    opened = ndimage.binary_opening(bright, structure=(rr**2 + cc**2) <= radius**2)
    labels, _ = ndimage.label(opened)
    centre = labels[int(round(seed[0])), int(round(seed[1]))] if opened[int(round(seed[0])), int(round(seed[1]))] else 0
    if centre == 0:
        inside = labels[disk]
        inside = inside[inside > 0]
        if inside.size == 0:
            return np.zeros(x.shape, bool)
        centre = int(np.bincount(inside).argmax())
    return np.asarray(ndimage.binary_fill_holes(labels == centre))


@dataclass(frozen=True)
class CrossCheck:
    """Classical blood pool against the network's on the mid LV slices: ``dice[phase]`` mean Dice,
    ``slices[phase]`` the slices compared, ``agrees`` when every phase reaches :data:`CROSS_CHECK_MIN_DICE`."""

    dice: dict[int, float]
    slices: dict[int, tuple[int, ...]]
    agrees: bool
    method: str = "threshold at the midpoint of blood and dark levels around the network's LV centre, 3 mm opening"


def classical_cross_check(stack: ShortAxisStack, seg: SaxSegmentation) -> CrossCheck:
    """Compare the network's LV blood pool with :func:`classical_blood_pool` (seeded at the centre of the
    network's blood pool) on the mid third of the LV slices of each segmented phase."""
    scores: dict[int, float] = {}
    used: dict[int, tuple[int, ...]] = {}
    for p in seg.phases:
        q = seg.quality.per_phase[p]
        values = []
        for s in q.mid_slices:
            net = seg.labels[p, s] == LABELS["lv_blood_pool"]
            if not net.any():
                continue
            seed = tuple(float(v) for v in np.argwhere(net).mean(axis=0))
            mask = classical_blood_pool(stack.voxels[p, s], (seed[0], seed[1]), stack.pixel_spacing_mm)
            total = int(mask.sum() + net.sum())
            values.append(2.0 * float((mask & net).sum()) / total if total else 1.0)
        used[p] = tuple(q.mid_slices)
        scores[p] = float(np.mean(values)) if values else float("nan")
    agrees = bool(scores) and all(np.isfinite(v) and v >= CROSS_CHECK_MIN_DICE for v in scores.values())
    return CrossCheck(scores, used, agrees)
