"""Grad-CAM explanations of the polar-map models (MONAI's ``monai.visualize.GradCAM``).

Maps come back on the canonical polar grid ``[n_u=40, n_psi=72]`` (row 0
apex, azimuth from anterior toward septum), scaled to [0, 1] per study, so
they can be drawn over the stress bull's-eye and summarised per AHA segment
and territory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from monai.visualize import GradCAM

from node.quant.segments import DEFAULT_GRID, TERRITORIES, TERRITORY_SEGMENTS

__all__ = ["gradcam_maps", "AttentionSummary", "summarise_attention"]


def gradcam_maps(network: torch.nn.Module, target_layer: str, x: torch.Tensor, class_idx: int,
                 **forward_kwargs: torch.Tensor) -> np.ndarray:
    """Grad-CAM of output ``class_idx`` for a batch ``x [n, c, 40, 72]``; returns ``[n, 40, 72]`` in [0, 1].

    ``forward_kwargs`` (e.g. ``tabular=...``) are passed to the network's forward.
    The network is used as is (eval mode); gradients are enabled locally.
    MONAI's default post-processing rescales each map to [1, 0] (inverted, for
    its display convention); here the ReLU'd map is divided by its maximum so
    that 1 marks the most important cells (an all-zero map stays zero).
    """
    cam = GradCAM(nn_module=network, target_layers=target_layer, postprocessing=lambda m: m)
    with torch.enable_grad():
        maps = cam(x, class_idx=class_idx, **forward_kwargs)
    out = np.nan_to_num(maps.detach().cpu().numpy()[:, 0].astype(np.float64), nan=0.0)
    out = np.clip(out, 0.0, None)
    peak = out.reshape(len(out), -1).max(axis=1)
    return out / np.where(peak > 0, peak, 1.0)[:, None, None]


@dataclass(frozen=True)
class AttentionSummary:
    """Share of Grad-CAM mass per AHA segment (index 0 = segment 1) and per territory; each sums to 1."""

    segment_share: tuple[float, ...]
    territory_share: dict[str, float]

    def top_segments(self, k: int = 3) -> list[int]:
        order = np.argsort(self.segment_share)[::-1][:k]
        return [int(i) + 1 for i in order]


def summarise_attention(cam: np.ndarray) -> AttentionSummary:
    """Segment and territory shares of one Grad-CAM map ``[40, 72]`` (equal cell weights)."""
    cam = np.clip(np.asarray(cam, float), 0, None)
    ids = DEFAULT_GRID.segment_ids()
    mass = np.bincount(ids.ravel(), weights=cam.ravel(), minlength=18)[1:]
    total = mass.sum()
    share = mass / total if total > 0 else np.full(17, 1.0 / 17)
    territory = {t: float(sum(share[s - 1] for s in TERRITORY_SEGMENTS[t])) for t in TERRITORIES}
    return AttentionSummary(tuple(float(v) for v in share), territory)
