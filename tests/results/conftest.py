"""Fixtures of the results tests: one realistic report built once per session and written to disk."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset

from node.results import build_outputs
from node.results.content import ReportContent, ReportContext
from tests.support.report import context, make_content, phantom_study, write_outputs


@dataclass
class Run:
    seed: int
    sources: list[Dataset]  # summed stress and rest NM instances of a gated phantom study
    gated: list[Dataset]  # the gated series of the same study (the "late series" of the revision tests)
    content: ReportContent
    context: ReportContext
    outputs: list[Dataset]
    files: dict[str, Path]  # kind -> file: sr, sc_<key>, screen, pdf


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
