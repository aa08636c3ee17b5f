"""Tests of node.imaging: loading and rejecting NM series."""
