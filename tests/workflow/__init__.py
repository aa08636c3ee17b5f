"""Tests of node.workflow: study completeness."""
