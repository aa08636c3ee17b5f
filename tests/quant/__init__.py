"""Tests of node.quant against phantom truth."""
