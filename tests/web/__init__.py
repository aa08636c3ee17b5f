"""Tests of the operator web app (node.web): pages in a real browser, no patient data, metrics, STOW-RS."""
