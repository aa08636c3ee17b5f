"""The late-series scenario through the whole node (``cardionode serve``) and a real Orthanc.

Orthanc receives a phantom SPECT study and routes it to the node, which runs a
pipeline whose ``report`` step is :func:`node.results.build_outputs` and sends
the SR, SC and PDF objects back. Asking the node to process the unchanged study
again leaves one SR (deterministic UIDs). The late gated series makes the node
run again: Orthanc then holds two SRs, the second referencing the first in
Predecessor Documents; both are found by C-FIND at IMAGE level.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.config import serve_settings, write_config
from tests.support.dicom_clients import findscu_images, storescu
from tests.support.node import NodeProcess
from tests.support.orthanc import Orthanc
from tests.support.ports import free_port, wait_for
from tests.support.report import phantom_study

pytestmark = pytest.mark.network

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"


def _write(datasets, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _job_states(node) -> dict[int, str]:
    """Run number -> job state, from the JOBS table of ``cardionode status``."""
    out = node.cli("status").stdout
    jobs = out.split("JOBS", 1)[-1].split("SENDS", 1)[0]
    states = {}
    for line in jobs.splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[0].isdigit() and fields[3].isdigit():
            states[int(fields[3])] = fields[4]
    return states


def _srs(orthanc, study_uid: str) -> list[dict]:
    return [i for i in orthanc.study_instances(study_uid) if i["sop_class"] == SR_CLASS]


def test_late_series_through_the_node_gives_two_srs_linked_by_predecessor(tmp_path, seed):
    summed, gated, _ = phantom_study(seed)
    study_uid = str(summed[0].StudyInstanceUID)
    node_port = free_port()
    orthanc = Orthanc(tmp_path / "orthanc", node_port=node_port).start()
    destination = {"name": "pacs", "ae_title": orthanc.ae_title, "host": "127.0.0.1", "port": orthanc.dicom_port}
    config = write_config(tmp_path / "node.toml", **serve_settings(
        tmp_path / "data", node_port, [destination], pipeline_modules=["tests.support.pipelines.results_e2e"]))
    node = NodeProcess(config, node_port, tmp_path / "node.log", mode="serve")
    try:
        node.start()
        storescu(orthanc.dicom_port, _write(summed, tmp_path / "first"), called=orthanc.ae_title, check=True)
        first = wait_for(lambda: _srs(orthanc, study_uid), 120, f"the first SR in Orthanc (seed {seed})", 0.5)
        assert len(first) == 1
        wait_for(lambda: _job_states(node).get(1) == "sent", 60, "the first job to be marked sent", 0.5)
        n_first = len(orthanc.study_instances(study_uid))
        results = sorted((tmp_path / "data" / "outbox").rglob("*.dcm"))  # SR, 3 SC, the result screen's pages, PDF
        assert len(results) >= 6, results
        assert n_first == len(summed) + len(results), orthanc.study_instances(study_uid)

        # the unchanged study processed again: same UIDs, still one SR and no other duplicates
        done = node.cli("complete", study_uid)
        assert done.returncode == 0, done.stdout + done.stderr
        wait_for(lambda: _job_states(node).get(2) == "sent", 120,
                   f"the unchanged re-run to finish (seed {seed})", 0.5)
        assert [s["sop_instance_uid"] for s in _srs(orthanc, study_uid)] == [first[0]["sop_instance_uid"]]
        assert len(orthanc.study_instances(study_uid)) == n_first

        # the late gated series: a revised report that supersedes the first
        storescu(orthanc.dicom_port, _write(gated, tmp_path / "late"), called=orthanc.ae_title, check=True)
        both = wait_for(lambda: len(_srs(orthanc, study_uid)) >= 2 and _srs(orthanc, study_uid), 180,
                          f"the revised SR in Orthanc (seed {seed})", 0.5)
        assert len(both) == 2
        second = next(s for s in both if s["sop_instance_uid"] != first[0]["sop_instance_uid"])
        predecessors = orthanc.tags(str(second["id"]))["PredecessorDocumentsSequence"]
        referenced = predecessors[0]["ReferencedSeriesSequence"][0]["ReferencedSOPSequence"][0]
        assert referenced["ReferencedSOPInstanceUID"] == first[0]["sop_instance_uid"]
        found = findscu_images(
            orthanc.dicom_port, orthanc.ae_title,
            {"StudyInstanceUID": study_uid, "SeriesInstanceUID": "", "SOPClassUID": SR_CLASS, "SOPInstanceUID": ""},
            ("SOPInstanceUID",),
        )
        assert {f["SOPInstanceUID"] for f in found} == {s["sop_instance_uid"] for s in both}
        assert node.stop() == 0
    finally:
        node.stop()
        orthanc.stop()
