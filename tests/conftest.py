"""Fixtures shared by the whole suite."""

from __future__ import annotations

import random
from pathlib import Path

import pytest


@pytest.fixture
def seed() -> int:
    """A fresh random seed for phantom tests; shown in the test id output on failure."""
    value = random.SystemRandom().randrange(2**31)
    print(f"random seed: {value}")
    return value


@pytest.fixture(autouse=True)
def _test_pipelines_stay_in_their_own_tests(request: pytest.FixtureRequest):
    """Keep pipelines that tests register out of tests of the shipped pipelines.

    Test pipelines (tests/flow, tests/results) register themselves when their
    module is imported, as the node's ``pipeline_modules`` require, and
    pytest imports them at collection. Elsewhere only the pipelines in
    ``node`` may route a study; the registry is restored in its original
    order afterwards.
    """
    if Path(str(request.node.fspath)).parent.name in ("flow", "results"):
        yield
        return
    from node.pipelines import registry

    registered = registry.all_pipelines()
    for pipeline in registered:
        if not type(pipeline).__module__.startswith("node."):
            registry.unregister(pipeline.name)
    yield
    for pipeline in registered:
        registry.unregister(pipeline.name)
    for pipeline in registered:
        registry.register(pipeline)


@pytest.fixture(scope="session")
def node_harness():
    """The flow tests' helpers for a real Orthanc (routing to the node) and ``cardionode serve`` subprocesses."""
    import importlib.util

    path = Path(__file__).resolve().parent / "flow" / "flow_support.py"
    spec = importlib.util.spec_from_file_location("node_harness", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
