"""LV segmentation U-Net on fresh held-out phantoms: Dice >= 0.85 and >= the classical threshold mask."""

from __future__ import annotations

import numpy as np

from node.ai.segmentation import classical_myocardium_mask, dice, segment_myocardium, segmentation_phantoms


def test_unet_dice_on_held_out_phantoms(seed: int) -> None:
    cases = segmentation_phantoms(8, "test", seed)
    unet = [dice(segment_myocardium(c.volume), c.mask) for c in cases]
    classical = [dice(classical_myocardium_mask(c.volume), c.mask) for c in cases]
    msg = f"seed {seed}: U-Net {np.round(unet, 3).tolist()} classical {np.round(classical, 3).tolist()} " + "; ".join(c.description for c in cases)
    print(msg)
    assert np.mean(unet) >= 0.85, msg
    assert np.mean(unet) >= np.mean(classical), msg


def test_mask_shape_matches_a_gated_volume_on_another_grid(seed: int) -> None:
    from node.synth import phantom as ph

    rng = np.random.default_rng(seed)
    acq = ph.make_acquisition(ph.PhantomSpec(matrix=96, voxel_mm=4.4, n_gates=8), "rest", rng)
    mask = segment_myocardium(acq.frames)  # gated 4D input is summed
    assert mask.shape == acq.frames.shape3d and mask.dtype == bool
    from node.ai.segmentation import phantom_myocardium_mask

    truth = phantom_myocardium_mask(acq)
    assert dice(mask, truth) > 0.7, f"seed {seed}: Dice {dice(mask, truth):.3f} on a 4.4 mm grid"
