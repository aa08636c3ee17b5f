"""The spool journal (node.dicom.journal): records read back whole, torn tails and bad CRCs
ignored, replay idempotent, and one fdatasync shared by concurrent writers (group commit)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread

from node.dicom.journal import JournalError, JournalRecord, SpoolJournal, read_segment
from node.dicom.spool import FileRange, Spool
from node.dicom.storage import _journal_meta, replay_journal
from node.ledger import InstanceMeta, Ledger
from tests.support.dicom_clients import storescu
from tests.support.nm import write_nm_study
from tests.support.node import RunningListener


def _segments(journal: SpoolJournal) -> list[Path]:
    return sorted(journal.directory.glob("*.journal"))


def _records(journal: SpoolJournal) -> list[JournalRecord]:
    return [record for path in _segments(journal) for record in read_segment(path)]


@pytest.fixture()
def count_fdatasync(monkeypatch: pytest.MonkeyPatch) -> Callable[[], int]:
    """Count os.fdatasync calls (the journal's group commit flushes); slows each by 20 ms as a
    slow disk would, so that concurrent writers pile up behind a flush."""
    calls: list[int] = []
    real = os.fdatasync

    def counting(fd: int) -> None:
        calls.append(fd)
        time.sleep(0.02)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", counting)
    return lambda: len(calls)


def test_records_read_back_whole_from_bytes_and_file_ranges(tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(b"0123456789" * 1000)
    journal = SpoolJournal(tmp_path / "journal")
    first = journal.append({"n": 1}, [b"head", FileRange(source, 10, 5000)])
    second = journal.append({"n": 2, "text": "é"}, [b""])
    journal.wait_durable(second)
    assert first.sequence < second.sequence
    records = _records(journal)
    assert [r.meta for r in records] == [{"n": 1}, {"n": 2, "text": "é"}]
    with open(records[0].data.path, "rb") as fp:
        fp.seek(records[0].data.offset)
        assert fp.read(records[0].data.length) == b"head" + (b"0123456789" * 1000)[10:5010]
    assert records[1].data.length == 0


def test_torn_tail_and_corrupt_record_end_the_segment(tmp_path: Path) -> None:
    journal = SpoolJournal(tmp_path / "journal")
    for n in range(3):
        journal.wait_durable(journal.append({"n": n}, [bytes([n]) * 300]))
    (segment,) = _segments(journal)
    whole = segment.read_bytes()
    record_bytes = len(whole) // 3
    for cut in (1, 31, 32, record_bytes - 1):  # inside the header, at its end, inside the data
        segment.write_bytes(whole[: 2 * record_bytes + cut])
        assert [r.meta["n"] for r in read_segment(segment)] == [0, 1]
    corrupt = bytearray(whole)
    corrupt[record_bytes + 100] ^= 0xFF  # a data byte of the second record
    segment.write_bytes(bytes(corrupt))
    assert [r.meta["n"] for r in read_segment(segment)] == [0]
    corrupt = bytearray(whole)
    corrupt[record_bytes + 9] ^= 0x01  # its meta length field: the header's own CRC32 no longer checks
    segment.write_bytes(bytes(corrupt))
    assert [r.meta["n"] for r in read_segment(segment)] == [0]


def test_group_commit_one_flush_for_concurrent_writers(tmp_path: Path, count_fdatasync: Callable[[], int]) -> None:
    journal = SpoolJournal(tmp_path / "journal")
    journal.wait_durable(journal.append({"n": -1}, [b"x"]))
    assert count_fdatasync() == 1 and journal.flushes == 1  # one writer alone: one flush per record

    writers, rounds = 8, 10
    barrier = threading.Barrier(writers)
    errors: list[BaseException] = []

    def write(index: int) -> None:
        try:
            for n in range(rounds):
                barrier.wait()
                journal.wait_durable(journal.append({"writer": index, "n": n}, [os.urandom(4096)]))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    flushes = count_fdatasync() - 1
    assert journal.records == writers * rounds + 1
    # each round's eight records share one or two flushes (the first may catch only some of them)
    assert flushes <= 2 * rounds, f"{flushes} flushes for {writers * rounds} records"
    assert len(_records(journal)) == writers * rounds + 1


def test_failed_flush_refuses_every_later_wait(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    journal = SpoolJournal(tmp_path / "journal")

    def failing(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", failing)
    with pytest.raises(JournalError):
        journal.wait_durable(journal.append({"n": 1}, [b"x"]))
    monkeypatch.undo()
    with pytest.raises(JournalError):
        journal.append({"n": 2}, [b"y"])


def test_checkpoint_syncs_once_then_keeps_the_segment_as_spare(tmp_path: Path) -> None:
    syncs: list[float] = []
    journal = SpoolJournal(tmp_path / "journal")
    journal.start(lambda: syncs.append(time.monotonic()), interval_s=3600)
    ticket = journal.append({"n": 1}, [b"x"])
    journal.wait_durable(ticket)
    done = threading.Event()

    def checkpoint() -> None:
        journal.checkpoint()
        done.set()

    checkpointer = threading.Thread(target=checkpoint)
    checkpointer.start()
    assert not done.wait(0.3), "checkpoint must wait until the record is settled"
    journal.settled(ticket)
    checkpointer.join(10)
    assert done.is_set() and len(syncs) == 1
    assert [p.name for p in _segments(journal)] == ["000000000002.journal", "spare.journal"]
    journal.close()
    assert _segments(journal) == []


def test_reused_segment_reads_only_its_own_records(tmp_path: Path) -> None:
    """The spare (a checkpointed segment) becomes the next segment and is overwritten from its
    start: the records of its earlier use, past the new ones, are not read back (nor replayed)."""
    journal = SpoolJournal(tmp_path / "journal")
    journal.start(lambda: None, interval_s=3600)
    for n in range(5):
        ticket = journal.append({"old": n}, [bytes([n]) * 2000])
        journal.wait_durable(ticket)
        journal.settled(ticket)
    journal.checkpoint()  # segment 1 -> spare
    ticket = journal.append({"new": 0}, [b"x" * 100])
    journal.wait_durable(ticket)
    journal.settled(ticket)
    journal.checkpoint()  # segment 3 is the spare (segment 1's file) renamed; segment 2 -> spare
    ticket = journal.append({"new": 1}, [b"y" * 100])
    journal.wait_durable(ticket)
    reused = _segment_path_of(journal, 3)
    assert reused.stat().st_size > 5 * 2000, "segment 3 is segment 1's file, reused"
    assert [r.meta for r in read_segment(reused)] == [{"new": 1}]
    # a crash now: the journal opened again replays exactly the unsettled record
    assert [r.meta for r in SpoolJournal(tmp_path / "journal").replay()] == [{"new": 1}]


def _segment_path_of(journal: SpoolJournal, number: int) -> Path:
    return journal.directory / f"{number:012d}.journal"


def _meta(path: Path, spool: Spool) -> InstanceMeta:
    ds = dcmread(path, stop_before_pixels=True)
    return InstanceMeta(
        sop_instance_uid=str(ds.SOPInstanceUID), sop_class_uid=str(ds.SOPClassUID), study_uid=str(ds.StudyInstanceUID),
        series_uid=str(ds.SeriesInstanceUID), size_bytes=path.stat().st_size,
        path=str(spool.path_for(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))),
        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID), routing={"modality": "NM"}, calling_ae="TESTSCU",
    )


def test_replay_restores_lost_files_and_ledger_rows_and_is_idempotent(tmp_path: Path, seed: int) -> None:
    """What a power failure leaves: journal records durable, spool files missing or torn,
    ledger rows missing. Replay restores all of it; a second replay changes nothing."""
    files = write_nm_study(tmp_path / "study", 4, seed, size=32).paths
    spool = Spool(tmp_path / "spool", durable=False)
    journal = SpoolJournal(spool.root / ".journal")
    metas = [_meta(f, spool) for f in files]
    for f, meta in zip(files, metas, strict=True):
        journal.wait_durable(journal.append(_journal_meta(meta), [f.read_bytes()]))
    journal.append({"torn": True}, [b"never flushed"])
    segment = _segments(journal)[-1]
    segment.write_bytes(segment.read_bytes()[:-5])  # the last record torn
    Path(metas[0].path).parent.mkdir(parents=True)
    Path(metas[0].path).write_bytes(files[0].read_bytes()[:100])  # a file torn by the power failure
    Path(metas[1].path).write_bytes(files[1].read_bytes())  # one that survived
    survived = Path(metas[1].path).stat().st_mtime_ns

    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    reopened = SpoolJournal(spool.root / ".journal")
    assert replay_journal(reopened, spool, ledger) == 4
    for f, meta in zip(files, metas, strict=True):
        assert Path(meta.path).read_bytes() == f.read_bytes()
        row = ledger.instances.get(meta.sop_instance_uid)
        assert row is not None and row.path == meta.path and row.size_bytes == meta.size_bytes
    assert Path(metas[1].path).stat().st_mtime_ns == survived, "a whole file is not written again"
    assert ledger.instances.count() == 4
    assert [p.name for p in _segments(reopened)] == ["000000000002.journal"]  # replayed segment deleted

    # replaying the same records again (a crash during the first replay) changes nothing
    again = SpoolJournal(tmp_path / "copy")
    for f, meta in zip(files, metas, strict=True):
        again.wait_durable(again.append(_journal_meta(meta), [f.read_bytes()]))
    assert replay_journal(SpoolJournal(tmp_path / "copy"), spool, ledger) == 4
    assert ledger.instances.count() == 4
    assert ledger.studies.get(metas[0].study_uid).instance_count == 4  # type: ignore[union-attr]
    ledger.close()


@pytest.mark.parametrize(
    ("durable_writes", "ingest_journal", "flushes_per_instance"),
    [(True, True, 1), (True, False, 0), (False, True, 0)],
    ids=["journal", "fsync-per-file", "not-durable"],
)
def test_listener_write_paths_store_and_record_every_instance(
    start_listener: Callable[..., RunningListener], tmp_path: Path, seed: int, count_fdatasync: Callable[[], int],
    durable_writes: bool, ingest_journal: bool, flushes_per_instance: int,
) -> None:
    """Each write path stores every instance in the spool and the ledger; the journal flushes
    once per instance for one sender and leaves no segment behind once the listener stops."""
    files = write_nm_study(tmp_path / "study", 6, seed, size=32).paths
    running = start_listener(durable_writes=durable_writes, ingest_journal=ingest_journal)
    assert storescu(running.port, files).returncode == 0
    assert count_fdatasync() == flushes_per_instance * len(files)
    assert len(running.stored) == len(files) and running.ledger.instances.count() == len(files)
    for meta, sent in zip(sorted(running.stored, key=lambda m: m.sop_instance_uid),
                          sorted(files, key=lambda f: str(dcmread(f).SOPInstanceUID)), strict=True):
        assert dcmread(meta.path).PixelData == dcmread(sent).PixelData
    journal = tmp_path / "var" / "spool" / ".journal"
    running.listener.stop()
    assert not list(journal.glob("*.journal")), "a segment was left after a clean stop"
