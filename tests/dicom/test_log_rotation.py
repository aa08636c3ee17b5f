"""The node's log files: rotated by size (also when several processes write one file), and
libraries' chatter (Celery's banner and per-task lines, alembic's start-up lines) kept out
unless ``log_level_libraries`` asks for it."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.dicom.logs import LogOptions, setup_logging
from node.ledger import Ledger
from tests.support import REPO
from tests.support.config import write_config
from tests.support.node import WorkerProcess
from tests.support.ports import free_port

#: the Celery worker's start-up banner (its configuration table), printed to standard output
BANNER = "[queues]"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Put the root logger's handlers and the library levels back after the test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {name: logging.getLogger(name).level for name in ("alembic", "celery", "highdicom", "celery.apps.worker")}
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)
    for name, old in levels.items():
        logging.getLogger(name).setLevel(old)


def _files(log_dir: Path, component: str) -> list[Path]:
    return sorted(log_dir.glob(f"{component}.log*"), key=lambda p: p.name)


def test_a_log_file_is_rotated_at_its_size_keeping_the_configured_number(tmp_path: Path, restore_logging: None) -> None:
    log = setup_logging(tmp_path / "logs", "unit", stream=None, options=LogOptions(max_bytes=4000, backups=2))
    assert log is not None
    for n in range(400):
        logging.getLogger("node.test").info("record %04d %s", n, "x" * 60)
    names = [p.name for p in _files(tmp_path / "logs", "unit") if not p.name.endswith(".lock")]
    assert names == ["unit.log", "unit.log.1", "unit.log.2"], names
    assert all((tmp_path / "logs" / n).stat().st_size <= 4000 + 200 for n in names)
    assert "record 0399" in log.read_text()  # the newest in the current file, the oldest gone
    assert "record 0000" not in "".join((tmp_path / "logs" / n).read_text() for n in names)


def test_processes_writing_one_log_rotate_it_without_losing_or_doubling_records(tmp_path: Path) -> None:
    """Two processes (as a Celery worker and its pool process) write the same file: each record once,
    in files no larger than the limit plus what the other wrote while one rotated."""
    script = textwrap.dedent(f"""
        import logging, sys
        sys.path.insert(0, {str(REPO)!r})
        from pathlib import Path
        from node.dicom.logs import LogOptions, setup_logging
        setup_logging(Path(sys.argv[1]), "shared", stream=None, options=LogOptions(max_bytes=20000, backups=100))
        for n in range(1500):
            logging.getLogger("node.test").info("writer %s record %05d", sys.argv[2], n)
    """)
    writers = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "logs"), name]) for name in "AB"]
    assert [w.wait(120) for w in writers] == [0, 0]
    files = [p for p in _files(tmp_path / "logs", "shared") if not p.name.endswith(".lock")]
    lines = [line for p in files for line in p.read_text().splitlines()]
    for name in "AB":
        mine = sorted(line.split("record ")[1] for line in lines if f"writer {name} " in line)
        assert mine == [f"{n:05d}" for n in range(1500)], f"writer {name}: {len(mine)} records"
    assert len(files) > 5 and max(p.stat().st_size for p in files) < 2 * 20000


def test_library_chatter_stays_out_unless_asked_for(tmp_path: Path, restore_logging: None) -> None:
    """alembic logs INFO lines whenever a ledger is created: a real library's noise."""
    log = setup_logging(tmp_path / "quiet", "node", stream=None)
    assert log is not None
    Ledger(f"sqlite:///{tmp_path / 'a.sqlite'}").close()
    logging.getLogger("celery.apps.worker").info("celery@host ready.")
    text = log.read_text()
    assert "alembic" not in text and "ready." in text, text

    log = setup_logging(tmp_path / "chatty", "node", stream=None, options=LogOptions(library_level="INFO"))
    assert log is not None
    Ledger(f"sqlite:///{tmp_path / 'b.sqlite'}").close()
    assert "INFO alembic" in log.read_text()


@pytest.mark.parametrize("level", ["WARNING", "INFO"])
def test_the_celery_worker_banner_follows_log_level_libraries(tmp_path: Path, level: str) -> None:
    config = write_config(tmp_path / "node.toml", data_dir=str(tmp_path / "data"), log_level_libraries=level)
    worker = WorkerProcess(config, free_port(), tmp_path / "worker.out")
    with worker:
        pass  # started: Celery said " ready." (kept whatever the level)
    output = worker.output()
    assert (BANNER in output) == (level == "INFO"), output[-3000:]
    worker_log = (tmp_path / "data" / "logs" / "worker-cpu-gpu-io.log").read_text()
    assert " ready." in worker_log
