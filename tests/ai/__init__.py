"""Tests of node.ai: bundles, inference, explanations, training, the synthetic cohort, segmentation."""
