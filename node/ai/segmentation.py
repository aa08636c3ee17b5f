"""LV myocardium segmentation of SPECT volumes with a small 3D MONAI U-Net.

:func:`segment_myocardium` returns a boolean mask on the input grid that
``node.quant.orientation.locate_lv(volume, myocardium_mask=mask)`` uses in
place of its threshold step; the classical method stays the fallback and the
sanity check (the SPECT pipeline reports large disagreement).

Processing: the (summed) volume is resampled to isotropic
:data:`CANONICAL_VOXEL_MM` voxels (trilinear), scaled by its 99.5th
percentile and clipped to [0, 2], padded to a multiple of 4 and passed
through the U-Net in one piece (fully convolutional) to find the heart; a
second pass on the 32^3 crop centred on it (the context the network was
trained on) gives the myocardium probability, which is resampled back to the
input grid; voxels above the bundle's ``mask_threshold`` (chosen on the
validation phantoms) in the largest connected component form the mask.

This module is inference only. The network is trained on phantoms by
:mod:`node.ai.training.segmentation` (``cardionode train lv_segmentation``), which
uses the same input transform (:func:`canonical_image`, :data:`CROP_VOXELS`).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from node.ai import bundles
from node.imaging.volume import Volume

__all__ = [
    "CANONICAL_VOXEL_MM",
    "CROP_VOXELS",
    "segment_myocardium",
    "myocardium_probability",
    "canonical_image",
    "to_input_grid",
    "largest_component",
]

#: isotropic voxel size (mm) of the network's input grid
CANONICAL_VOXEL_MM = 6.4
#: edge (voxels of the canonical grid) of the cubic crop the network was trained on and segments in
CROP_VOXELS = 32


def canonical_image(voxels: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """The network input of a 3-D volume ``[slice, row, col]`` with voxel ``spacing`` (mm): resampled to
    :data:`CANONICAL_VOXEL_MM` isotropic voxels (trilinear), divided by its 99.5th percentile, clipped
    to [0, 2], float32."""
    factors = np.asarray(spacing, float) / CANONICAL_VOXEL_MM
    out = voxels if np.allclose(factors, 1.0) else ndimage.zoom(voxels, factors, order=1)
    scale = float(np.percentile(out, 99.5))
    return np.clip(out / max(scale, 1e-9), 0.0, 2.0).astype(np.float32)


def to_input_grid(prob: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Resample a canonical-grid array to ``shape`` (inverse of ``ndimage.zoom``'s corner-aligned grid)."""
    if prob.shape == tuple(shape):
        return prob
    axes = [np.linspace(0, prob.shape[k] - 1, shape[k]) for k in range(3)]
    grid = np.meshgrid(*axes, indexing="ij")
    return ndimage.map_coordinates(prob, grid, order=1, mode="nearest")


def _run(network: torch.nn.Module, images: np.ndarray, device: torch.device) -> np.ndarray:
    """Myocardium probability of canonical images ``[n, d, h, w]`` (padded internally to multiples of 4)."""
    n, d, h, w = images.shape
    pad = [(-s) % 4 for s in (d, h, w)]
    x = np.pad(images, [(0, 0)] + [(0, p) for p in pad])
    with torch.inference_mode():
        logits = network(torch.from_numpy(x[:, None]).to(device))
        prob = torch.softmax(logits, dim=1)[:, 1].cpu().numpy()
    return prob[:, :d, :h, :w]


def myocardium_probability(volume: Volume, bundle: bundles.LoadedBundle | None = None) -> np.ndarray:
    """Myocardium probability ``[slice, row, col]`` on the grid of ``volume`` (gates are summed)."""
    b = bundle or bundles.load_bundle("lv_segmentation")
    vox = np.asarray(volume.summed().voxels, dtype=np.float32)
    if not np.all(np.isfinite(vox)):
        raise ValueError("the volume contains non-finite values")
    image = canonical_image(vox, volume.spacing_mm)
    coarse = _run(b.network, image[None], b.device)[0]
    found = largest_component(coarse >= 0.5)
    if not found.any():
        return to_input_grid(coarse, vox.shape)
    # second pass on a 32^3 crop centred on the heart: the context the network was trained on
    centre = np.average(np.argwhere(found), axis=0, weights=coarse[found])
    shape = np.array(image.shape)
    lo = np.clip(np.round(centre - CROP_VOXELS / 2).astype(int), 0, np.maximum(shape - CROP_VOXELS, 0))
    sl = tuple(slice(int(a), int(a) + CROP_VOXELS) for a in lo)
    crop = image[sl]
    size = crop.shape
    crop = np.pad(crop, [(0, CROP_VOXELS - n) for n in size])
    fine = _run(b.network, crop[None], b.device)[0][: size[0], : size[1], : size[2]]
    prob = np.zeros_like(coarse)
    prob[sl] = fine
    return to_input_grid(prob, vox.shape)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest connected component (face neighbours) of a boolean mask; the mask itself when it has one or none."""
    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = ndimage.sum_labels(mask, labels, np.arange(1, n + 1))
    return labels == (1 + int(np.argmax(sizes)))


def segment_myocardium(volume: Volume, bundle: bundles.LoadedBundle | None = None) -> np.ndarray:
    """Boolean LV myocardium mask ``[slice, row, col]`` (``volume.shape3d``) for ``locate_lv``.

    ``volume`` may be 3D or gated 4D (gates are summed). Uses the
    ``lv_segmentation`` bundle (loaded once per process). An empty mask means
    the model found no myocardium; callers fall back to the classical method.
    """
    b = bundle or bundles.load_bundle("lv_segmentation")
    threshold = float(b.metadata.get("mask_threshold", 0.5))
    return largest_component(myocardium_probability(volume, b) >= threshold)
