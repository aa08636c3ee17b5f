"""Fixtures shared by the whole suite, built on the harness in ``tests/support``."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.orthanc import Orthanc


@pytest.fixture
def seed() -> int:
    """A fresh random seed for phantom tests; shown in the test id output on failure."""
    value = random.SystemRandom().randrange(2**31)
    print(f"random seed: {value}")
    return value


@pytest.fixture(autouse=True)
def _test_pipelines_stay_in_their_own_tests(request: pytest.FixtureRequest) -> Iterator[None]:
    """Keep pipelines that tests register out of tests of the shipped pipelines.

    Test pipelines (tests/support/pipelines) register themselves when their
    module is imported, as the node's ``pipeline_modules`` require, and
    pytest imports them at collection. Only tests marked
    ``uses_test_pipelines`` see them (``uses_test_pipelines("flowtest")``: only those of
    ``tests.support.pipelines.flowtest``); elsewhere only the pipelines in
    ``node`` may route a study, and they come before the shipped ones, as the
    node orders ``pipeline_modules`` (so a test does not depend on which test
    module was imported first). Every test leaves the registry as it found it.
    """
    from node.pipelines import registry

    registered = registry.all_pipelines()
    shipped = [p for p in registered if type(p).__module__.startswith("node.")]
    for pipeline in registered:
        registry.unregister(pipeline.name)
    marker = request.node.get_closest_marker("uses_test_pipelines")
    if marker is not None:
        # as the node orders them: site (here: test) pipelines before the shipped ones, whatever
        # order the test modules happened to be imported in; the marker's arguments, when given,
        # name the only test pipeline modules the test's node loads (as its pipeline_modules)
        wanted = {f"tests.support.pipelines.{name}" for name in marker.args}
        for pipeline in registered:
            if pipeline not in shipped and (not wanted or type(pipeline).__module__ in wanted):
                registry.register(pipeline)
    for pipeline in shipped:
        registry.register(pipeline)
    yield
    for pipeline in registry.all_pipelines():
        registry.unregister(pipeline.name)
    for pipeline in registered:
        registry.register(pipeline)


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    """A started Orthanc (no routing to a node) with its files under ``tmp_path/orthanc``; stopped afterwards."""
    server = Orthanc(tmp_path / "orthanc").start()
    yield server
    server.stop()
