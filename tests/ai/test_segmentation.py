"""LV segmentation U-Net on fresh held-out phantoms: Dice >= 0.85 and >= the classical threshold mask."""

from __future__ import annotations

import numpy as np

from node.ai.metrics import dice
from node.ai.segmentation import segment_myocardium
from node.ai.training.segmentation import evaluate_segmentation, phantom_myocardium_mask, segmentation_phantoms
from node.synth.spect.phantom import PhantomSpec, make_acquisition


def test_unet_dice_on_held_out_phantoms(seed: int) -> None:
    """Acceptance (issue 5): mean U-Net Dice >= 0.85 and >= the classical mask's, on fresh phantoms.

    Shipped weights on 25 fresh cohorts of 8 phantoms (seeds 500-524, 2026-12-03): mean Dice
    0.899 +- 0.014 (lowest cohort 0.864); the weights before (8 steps per epoch) 0.872 +- 0.017,
    3 of 25 cohorts below 0.85 (those cohorts chose the weights; 15 further cohorts, seeds 600-614:
    0.904 +- 0.016, lowest 0.877). Twelve phantoms make the cohort mean's SD about 0.012.
    """
    cases = segmentation_phantoms(12, "test", seed)
    evaluation = evaluate_segmentation(cases)  # a classical failure (LV not found) counts as Dice 0
    msg = f"seed {seed}: " + "; ".join(
        f"{c['case']}: U-Net {c['unet']:.3f} classical {c['classical']:.3f}" for c in evaluation["per_case"]
    )
    print(msg)
    assert evaluation["unet_dice_mean"] >= 0.85, msg
    assert evaluation["unet_dice_mean"] >= evaluation["classical_dice_mean"], msg


def test_mask_shape_matches_a_gated_volume_on_another_grid(seed: int) -> None:
    rng = np.random.default_rng(seed)
    acq = make_acquisition(PhantomSpec(matrix=96, voxel_mm=4.4, n_gates=8), "rest", rng)
    mask = segment_myocardium(acq.frames)  # gated 4D input is summed
    assert mask.shape == acq.frames.shape3d and mask.dtype == bool
    truth = phantom_myocardium_mask(acq)
    assert dice(mask, truth) > 0.7, f"seed {seed}: Dice {dice(mask, truth):.3f} on a 4.4 mm grid"
