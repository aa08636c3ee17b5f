"""Tests of node.pipelines: registry and routing, the SPECT MPI pipeline through ``cardionode process``."""
