"""Fixtures of the results tests: one realistic report built once per session and written to disk."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from results_factory import make_content, phantom_study  # noqa: E402
from results_support import Run, context, write_outputs  # noqa: E402

from node.results import build_outputs  # noqa: E402


@pytest.fixture(scope="session")
def run(tmp_path_factory) -> Run:
    seed = random.SystemRandom().randrange(2**31)
    print(f"results run seed: {seed}")
    sources, gated, truth = phantom_study(seed)
    maps = {}
    for state in ("stress", "rest"):
        blurred = np.asarray(truth[state]["polar_map_blurred"], dtype=float)
        maps[state] = 100.0 * blurred / np.nanmax(blurred)
    content = make_content(sources, seed=seed, stress_map=maps["stress"], rest_map=maps["rest"])
    ctx = context(multiframe_screen=True)
    outputs = build_outputs(content, sources, ctx)
    files = write_outputs(outputs, content, tmp_path_factory.mktemp("results"))
    return Run(seed, sources, gated, content, ctx, outputs, files)
