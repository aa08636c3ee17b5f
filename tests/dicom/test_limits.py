"""Size and memory limits of the Storage SCP (issue 21, defects 4 and 8): deflate bombs, instances
over ``max_instance_mb``, large instances streamed to the spool, malformed instances, the
in-flight memory budget.

Memory is measured as the growth of the listener process's peak resident set size
(``VmHWM`` in ``/proc/<pid>/status``) of a ``cardionode listen`` subprocess, from just
before sending (after a warm-up instance, so that first-use imports do not count) to
just after the answer. The bound, :data:`GROWTH_BOUND_MIB`, is 1/8 of the smallest
instance involved (the 512 MiB bombs inflate to, the 80 MiB instance over the limit):
any held copy of an instance passes it, while what the listener needs per association
is a few PDUs of at most 1 MiB, inflate chunks of 1 MiB and the parse budget of a
small header (about 5 MiB measured, docs/conformance.md).
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.filewriter import write_file_meta_info

from node.config import Settings
from node.dicom.intake import BASE_COST
from node.dicom.storage import Status
from node.uids import deterministic_uid
from tests.support.config import listener_config
from tests.support.dicom_clients import encode, send_raw_answers, storescu
from tests.support.hostile_dicom import DEFLATED, deflate_bomb, malformed_cases, write_large_instance
from tests.support.nm import NM_STORAGE, nm_instance
from tests.support.node import NodeProcess, RunningListener, listener_in_process

pytestmark = pytest.mark.network

#: MiB the listener's peak RSS may grow by while it refuses or streams one of these instances
GROWTH_BOUND_MIB = 64
#: MiB for the large instance that must be stored: growth must stay below half of it
LARGE_MIB = 48


@pytest.fixture()
def listener(tmp_path: Path, seed: int) -> Iterator[tuple[NodeProcess, str, str]]:
    """``cardionode listen`` in its own process with ``max_instance_mb = 64``, warmed up with one
    small instance; (node, study UID, series UID)."""
    config, port = listener_config(tmp_path, max_instance_mb=64)
    study, series = deterministic_uid("limits-study", seed), deterministic_uid("limits-series", seed)
    with NodeProcess(config, port, mode="listener") as node:
        warm = nm_instance(study, series, deterministic_uid("warm", seed))
        ((status, _),) = send_raw_answers(port, [(NM_STORAGE, str(warm.SOPInstanceUID), encode(warm), "1.2.840.10008.1.2.1")])
        assert status == Status.SUCCESS
        yield node, study, series


def _incoming(node: NodeProcess) -> list[Path]:
    return sorted((node.config.parent / "var" / "spool" / ".incoming").glob("*"))


def test_deflate_bomb_is_refused_with_bounded_memory(listener: tuple[NodeProcess, str, str], seed: int) -> None:
    node, study, series = listener
    sop = deterministic_uid("bomb", seed)
    bomb = deflate_bomb(study, series, sop, 512)
    assert len(bomb) < 2**20  # 0.5 MiB on the wire
    before = node.memory_mib()
    ((status, comment),) = send_raw_answers(node.port, [(NM_STORAGE, sop, bomb, DEFLATED)])
    growth = node.memory_mib() - before
    assert growth < GROWTH_BOUND_MIB, f"peak RSS grew {growth:.0f} MiB (from {before:.0f} MiB)"
    assert status == Status.TOO_LARGE, f"seed {seed}: 0x{status or 0:04X} {comment}"
    assert "inflates past max_instance_mb (64 MiB)" in comment
    assert "0xC002" in node.output() and _incoming(node) == []


def test_three_deflate_bombs_in_parallel_keep_memory_bounded(listener: tuple[NodeProcess, str, str], seed: int) -> None:
    node, study, series = listener
    sops = [deterministic_uid("bomb", seed, str(i)) for i in range(3)]
    bombs = [deflate_bomb(study, series, sop, 512) for sop in sops]
    answers: dict[int, tuple[int | None, str]] = {}

    def send(i: int) -> None:
        answers[i] = send_raw_answers(node.port, [(NM_STORAGE, sops[i], bombs[i], DEFLATED)])[0]

    before = node.memory_mib()
    threads = [threading.Thread(target=send, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    growth = node.memory_mib() - before
    assert growth < GROWTH_BOUND_MIB, f"peak RSS grew {growth:.0f} MiB (from {before:.0f} MiB)"
    assert [answers[i][0] for i in range(3)] == [Status.TOO_LARGE] * 3, f"seed {seed}: {answers}"
    assert _incoming(node) == []


def test_instance_over_max_instance_mb_is_refused(listener: tuple[NodeProcess, str, str], tmp_path: Path, seed: int) -> None:
    node, study, series = listener
    sop = deterministic_uid("huge", seed)
    payload = write_large_instance(tmp_path / "huge.bin", study, series, sop, 80)
    before = node.memory_mib()
    ((status, comment),) = send_raw_answers(node.port, [(NM_STORAGE, sop, payload, "1.2.840.10008.1.2.1")])
    growth = node.memory_mib() - before
    assert growth < GROWTH_BOUND_MIB, f"peak RSS grew {growth:.0f} MiB (from {before:.0f} MiB)"
    assert status == Status.TOO_LARGE, f"seed {seed}: 0x{status or 0:04X} {comment}"
    assert "exceeds max_instance_mb (64 MiB)" in comment
    assert _incoming(node) == [] and not list((node.config.parent / "var" / "spool").rglob(f"{sop}.dcm"))


def test_large_instance_is_streamed_and_stored_byte_identical(listener: tuple[NodeProcess, str, str], tmp_path: Path,
                                                              seed: int) -> None:
    node, study, series = listener
    sop = deterministic_uid("large", seed)
    encoded = write_large_instance(tmp_path / "large.bin", study, series, sop, LARGE_MIB)
    sent = tmp_path / "large.dcm"  # the same data set as a Part 10 file for storescu
    ds = nm_instance(study, series, sop)
    with open(sent, "wb") as out:
        out.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(out, ds.file_meta)  # type: ignore[arg-type]  # any binary file will do
        with open(encoded, "rb") as source:
            while chunk := source.read(2**20):
                out.write(chunk)
    before = node.memory_mib()
    result = storescu(node.port, [sent])
    growth = node.memory_mib() - before
    assert result.returncode == 0, result.stdout + result.stderr
    (stored,) = (node.config.parent / "var" / "spool").rglob(f"{sop}.dcm")
    meta = dcmread(stored, stop_before_pixels=True).file_meta
    with open(stored, "rb") as kept:
        kept.seek(128 + 4 + 12 + int(meta.FileMetaInformationGroupLength))  # preamble, DICM, group length element
        assert kept.read() == encoded.read_bytes(), "the spooled data set differs from the one sent"
    assert meta.SourceApplicationEntityTitle == "TESTSCU" and meta.MediaStorageSOPInstanceUID == sop
    assert growth < LARGE_MIB / 2, f"peak RSS grew {growth:.0f} MiB for a {LARGE_MIB} MiB instance (from {before:.0f} MiB)"


# --------------------------------------------------------------------------- in this process
@pytest.fixture()
def node_here(tmp_path: Path) -> Iterator[RunningListener]:
    running = listener_in_process(tmp_path, inflight_wait_s=0.5)
    yield running
    running.stop()


def test_malformed_instances_are_refused_as_the_senders_problem(node_here: RunningListener, seed: int) -> None:
    """Every malformed kind gets the 0xCxxx/0xA9xx status docs/conformance.md promises, never 0xA700."""
    study, series = deterministic_uid("bad-study", seed), deterministic_uid("bad-series", seed)
    cases = malformed_cases(study, series, deterministic_uid("bad", seed))
    answers = send_raw_answers(node_here.port, [(NM_STORAGE, c.sop_instance, c.payload, c.transfer_syntax) for c in cases])
    wrong = [f"{c.name}: 0x{status or 0:04X} {comment!r}" for c, (status, comment) in zip(cases, answers, strict=True)
             if status not in c.allowed or not comment]
    assert not wrong, f"seed {seed}:\n" + "\n".join(wrong)
    good = nm_instance(study, series, deterministic_uid("good", seed))
    bad_request_uid = send_raw_answers(node_here.port, [(NM_STORAGE, "1.2.abc", encode(good), "1.2.840.10008.1.2.1")])
    assert bad_request_uid[0][0] == Status.INVALID_UID
    assert len(node_here.ledger.rejections.find()) == len(cases) + 1
    assert all(r.status != Status.OUT_OF_RESOURCES for r in node_here.ledger.rejections.find())
    ((status, _),) = send_raw_answers(node_here.port, [(NM_STORAGE, str(good.SOPInstanceUID), encode(good), "1.2.840.10008.1.2.1")])
    assert status == Status.SUCCESS and node_here.ledger.instances.count() == 1
    assert list((node_here.listener.storage.spool.incoming_dir).iterdir()) == []


def test_full_memory_budget_is_busy_then_free(node_here: RunningListener, seed: int) -> None:
    """0xA700 is the node's own resources: a budget that stays full; the same instance stores once it frees."""
    storage = node_here.listener.storage
    good = nm_instance(deterministic_uid("s", seed), deterministic_uid("se", seed), deterministic_uid("budget", seed))
    item = (NM_STORAGE, str(good.SOPInstanceUID), encode(good), "1.2.840.10008.1.2.1")
    with storage.budget.reserve(storage.budget.capacity_bytes - BASE_COST, 0):
        ((status, comment),) = send_raw_answers(node_here.port, [item])
    assert status == Status.OUT_OF_RESOURCES and comment.startswith("node busy, in-flight memory budget full"), comment
    ((status, _),) = send_raw_answers(node_here.port, [item])
    assert status == Status.SUCCESS and storage.budget.used_bytes == 0
    assert 0 < storage.budget.peak_bytes <= storage.budget.capacity_bytes


def test_limit_settings_are_checked(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, max_instance_mb=0, max_inflight_mb=1, inflight_wait_s=-1)
    problems = "\n".join(settings.problems())
    assert "max_instance_mb is 0" in problems and "max_inflight_mb is 1" in problems and "inflight_wait_s is -1" in problems
    defaults = Settings(data_dir=tmp_path)
    assert (defaults.max_instance_mb, defaults.max_inflight_mb, defaults.inflight_wait_s) == (512, 256, 10)


def test_deflated_instance_is_stored_as_received(node_here: RunningListener, seed: int) -> None:
    """An ordinary deflated instance is inflated only to be checked: the spool keeps the deflated bytes sent."""
    good = nm_instance(deterministic_uid("s", seed), deterministic_uid("se", seed), deterministic_uid("deflated", seed),
                       frames=8, rows=64, cols=64, seed=seed)
    deflater = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    payload = deflater.compress(encode(good)) + deflater.flush()
    ((status, comment),) = send_raw_answers(node_here.port, [(NM_STORAGE, str(good.SOPInstanceUID), payload, DEFLATED)])
    assert status == Status.SUCCESS, comment
    row = node_here.ledger.instances.get(str(good.SOPInstanceUID))
    assert row is not None and row.transfer_syntax_uid == DEFLATED
    stored = Path(row.path).read_bytes()
    assert stored.endswith(payload) and len(stored) == row.size_bytes
    kept = dcmread(row.path)
    assert kept.PixelData == good.PixelData and kept.file_meta.TransferSyntaxUID == DEFLATED
    assert list(node_here.listener.storage.spool.incoming_dir.iterdir()) == []
