"""Issue 21 defect 6: a step that runs out of disk space waits and resumes; inputs are not copied.

The node's data directory (spool, artifact store, outbox) is on a 24 MiB tmpfs; its ledger,
broker and result backend are elsewhere, as on a node whose data disk fills. While ``analyse``
holds, the tmpfs is filled, so that the step's result write fails with a real ENOSPC. The job
must stay ``running`` with the reason ``waiting for disk space`` in ``cardionode status``, and
complete once when the filler is removed. Before the fill, the inputs in the artifact store are
hard links to the spool files (same inode): the study's bytes are on the disk once.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from node.queue.conductor import WAITING_FOR_DISK
from tests.support.config import serve_settings, write_config
from tests.support.dicom_clients import storescu
from tests.support.nm import write_nm_study
from tests.support.node import NodeProcess
from tests.support.ports import free_port, wait_for
from tests.support.tmpfs import fill, small_tmpfs

pytestmark = pytest.mark.network


def test_step_out_of_disk_space_waits_and_resumes(tmp_path: Path, seed: int) -> None:
    hold = tmp_path / "hold"
    hold.mkdir()
    with small_tmpfs(tmp_path / "disk") as disk:
        data = disk / "data"
        port = free_port()
        config = write_config(tmp_path / "node.toml", **serve_settings(
            data, port, [], ledger_url=f"sqlite:///{tmp_path / 'ledger.sqlite'}",
            broker_url=f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}",
            result_backend=f"db+sqlite:///{tmp_path / 'results.sqlite'}"))
        node = NodeProcess(config, port, tmp_path / "node-stdout.log", mode="serve", env={"FLOWTEST_HOLD_DIR": str(hold)})
        try:
            node.start()
            _, _, files = write_nm_study(tmp_path / "study", 2, seed, frames=2, size=32)
            storescu(port, files, check=True)
            wait_for(lambda: sorted(hold.glob("started-*")), 60, "the analyse step to start")

            # inputs referenced, not copied (defect 6, second part)
            spool = {p.stat().st_ino for p in (data / "spool").rglob("*.dcm")}
            inputs = sorted((data / "artifacts").rglob("inputs/*.dcm"))
            assert len(inputs) == 2 and {p.stat().st_ino for p in inputs} <= spool, "inputs were copied"

            filler = disk / "filler"
            fill(filler)
            (hold / "release").write_text("")
            status = wait_for(lambda: WAITING_FOR_DISK in (out := node.cli("status").stdout) and out, 30,
                              "the job to wait for disk space")
            assert " running " in status and " failed " not in status, status
            time.sleep(2)  # still waiting, not failed, while the disk is full
            with sqlite3.connect(tmp_path / "ledger.sqlite") as db:
                assert [r[0] for r in db.execute("SELECT state FROM jobs")] == ["running"]

            filler.unlink()
            wait_for(lambda: " reported " in node.cli("status").stdout, 30, "the job to resume when space returned")
            time.sleep(1)
            with sqlite3.connect(tmp_path / "ledger.sqlite") as db:
                assert [r[0] for r in db.execute("SELECT state FROM jobs")] == ["reported"]
                assert db.execute("SELECT COUNT(*) FROM outputs").fetchone()[0] == 2
            assert len(list((data / "outbox").rglob("*.dcm"))) == 2
            assert "ran out of disk space" in node.output()
        finally:
            (hold / "release").write_text("")
            node.stop()
