"""A phantom SPECT study through the real pipeline (node.pipelines.spect_mpi) into the result objects.

The pipeline's ``report`` step calls :func:`node.results.build_outputs`; every object must pass
dciodvfy, the SR must read back with highdicom to exactly the pipeline's report content, and the
summary must stay one page.
"""

from __future__ import annotations

import random
import re
import subprocess

import highdicom as hd
import pydicom
import pytest

from node.results.tables import reading_order
from node.results.templates import load_templates
from tests.support.report import context, phantom_study, write_outputs
from tests.support.tools import dciodvfy


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    from node.pipelines.spect_mpi import PIPELINE, report_content

    seed = random.SystemRandom().randrange(2**31)
    summed, gated, _ = phantom_study(seed)
    instances = [*summed, *gated]
    result = PIPELINE.analyse(instances)
    content = report_content(result)
    outputs = PIPELINE.report(result, context())
    files = write_outputs(outputs, content, tmp_path_factory.mktemp("pipeline"))
    return seed, content, outputs, files


def test_pipeline_outputs_pass_dciodvfy(pipeline_run):
    seed, _, _, files = pipeline_run
    assert "sr" in files and "pdf" in files and any(k.startswith("sc_") for k in files)
    for kind, path in files.items():
        errors = [line for line in dciodvfy(path) if line.startswith("Error")]
        assert not errors, f"{kind} (seed {seed}): {errors}"


def test_pipeline_sr_reads_back_as_its_report_content(pipeline_run):
    seed, content, _, files = pipeline_run
    templates = load_templates()
    groups = hd.sr.srread(files["sr"]).content.get_image_measurement_groups()
    assert len(groups) == len(content.groups) >= 17 * 2, f"seed {seed}"
    for expected, got in zip(reading_order(content), groups):  # the SR lists the summary first
        assert got.tracking_identifier == expected.label
        assert got.finding_sites[0].value.value == templates.site(expected.site)[0].value
        measured = {m.name.value: (m.value, m.unit.value) for m in got.get_measurements()}
        for m in expected.measurements:
            q = templates.quantity(m.quantity, content.pipeline)
            value, unit = measured[q.code.value]
            assert unit == m.unit and value == pytest.approx(m.value, rel=1e-9, abs=1e-9), (expected.label, m, seed)


def test_pipeline_summary_is_landscape_a4(pipeline_run, tmp_path):
    _, _, _, files = pipeline_run
    ds = pydicom.dcmread(files["pdf"])
    pdf = tmp_path / "s.pdf"
    pdf.write_bytes(bytes(ds.EncapsulatedDocument)[: ds.EncapsulatedDocumentLength])
    info = subprocess.run(["pdfinfo", str(pdf)], capture_output=True, text=True, timeout=60).stdout
    assert re.search(r"^Page size:\s+841\.89 x 595\.\d+ pts \(A4\)", info, re.M), info  # as many pages as needed
