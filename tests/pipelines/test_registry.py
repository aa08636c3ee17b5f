"""The pipeline registry: routing a study summary to the pipeline that accepts it, with reasons."""

from __future__ import annotations

import pytest

from node.pipelines import registry
from tests.support.pipelines import flowtest as flowtest_pipeline
from tests.support.pipelines import study_summary as _study

pytestmark = pytest.mark.uses_test_pipelines


def test_route_accepts_nm_and_explains_refusal() -> None:
    pipeline, reason = registry.route(_study("NM"))
    assert pipeline is not None and pipeline.name == flowtest_pipeline.NAME, reason
    pipeline, reason = registry.route(_study("CT"))
    assert pipeline is None
    assert "CT" in reason and flowtest_pipeline.NAME in reason


def test_get_unknown_pipeline_names_the_registered_ones() -> None:
    with pytest.raises(registry.UnknownPipelineError) as err:
        registry.get("no_such_pipeline")
    assert flowtest_pipeline.NAME in str(err.value)


def test_a_pipeline_must_declare_the_dataclass_its_steps_return() -> None:
    """Results travel between workers only as values of a declared dataclass (node.queue.codec), never pickled."""

    class Undeclared(flowtest_pipeline.FlowTestPipeline):
        name = "undeclared_result"
        result_type = None  # type: ignore[assignment]

    with pytest.raises(ValueError, match="result_type must be the dataclass its analyse and predict return"):
        registry.register(Undeclared())
    with pytest.raises(registry.UnknownPipelineError):
        registry.get("undeclared_result")
