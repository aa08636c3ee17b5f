"""Tests of node.queue: the conductor, dispatch, workers, artifact stores."""
