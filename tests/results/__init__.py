"""Tests of node.results: SR, images, PDF, templates, validators, a real PACS."""
