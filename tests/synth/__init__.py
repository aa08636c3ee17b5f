"""Tests of node.synth: phantoms against their truth, NM DICOM writing, the demo."""
