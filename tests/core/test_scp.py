"""The listener with real clients (dcmtk echoscu/storescu, pynetdicom) on loopback."""

from __future__ import annotations

import tempfile
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset, dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pynetdicom import AE, _config

from core_support import (
    CALLING_AE,
    NM_STORAGE,
    acknowledged_files,
    echoscu,
    fresh_seed,
    make_nm_instance,
    node_config,
    storescu,
    write_study,
)
from node.config import load_settings
from node.ledger import InstanceMeta, Ledger
from node.dicom.scp import DicomListener, Status
from node.uids import deterministic_uid

pytestmark = pytest.mark.network


class RunningListener:
    def __init__(self, listener: DicomListener, ledger: Ledger, stored: list[InstanceMeta]) -> None:
        self.listener, self.ledger, self.stored = listener, ledger, stored

    @property
    def port(self) -> int:
        return self.listener.port


@pytest.fixture()
def start_listener(tmp_path: Path) -> Iterator[Callable[..., RunningListener]]:
    running: list[RunningListener] = []

    def start(**overrides: Any) -> RunningListener:
        config, _ = node_config(tmp_path, **{"port": 0, **overrides})
        settings = load_settings(config)
        ledger = Ledger.from_settings(settings)
        stored: list[InstanceMeta] = []
        listener = DicomListener(settings, ledger, on_instance_stored=stored.append)
        listener.start()
        item = RunningListener(listener, ledger, stored)
        running.append(item)
        return item

    yield start
    for item in running:
        item.listener.stop()
        item.ledger.close()


def send_raw(port: int, sop_class: str, sop_instance: str, payload: bytes, transfer_syntax: str = ExplicitVRLittleEndian,
             calling: str = CALLING_AE) -> int | None:
    """C-STORE ``payload`` (an encoded data set, sent as is, whatever it holds) announced as
    ``sop_class``/``sop_instance``; the response status, or None when no context was accepted."""
    return send_raw_many(port, [(sop_class, sop_instance, payload, transfer_syntax)], calling)[0]


def send_raw_many(port: int, items: list[tuple[str, str, bytes, str]], calling: str = CALLING_AE) -> list[int | None]:
    """Several raw C-STOREs on one association (pynetdicom sends a file's data set bytes unparsed
    when STORE_SEND_CHUNKED_DATASET is on, taking the request's UIDs from its File Meta)."""
    ae = AE(ae_title=calling)
    for sop_class, _, _, ts in items:
        ae.add_requested_context(sop_class, [ts])
    assoc = ae.associate("127.0.0.1", port, ae_title="CARDIONODE")
    if not assoc.is_established:  # e.g. no presentation context accepted
        return [None] * len(items)
    statuses: list[int | None] = []
    with tempfile.TemporaryDirectory() as tmp:
        old = _config.STORE_SEND_CHUNKED_DATASET
        _config.STORE_SEND_CHUNKED_DATASET = True
        try:
            for i, (sop_class, sop_instance, payload, ts) in enumerate(items):
                meta = FileMetaDataset()
                meta.MediaStorageSOPClassUID = sop_class
                meta.MediaStorageSOPInstanceUID = sop_instance
                meta.TransferSyntaxUID = ts
                path = Path(tmp) / f"{i}.dcm"
                with open(path, "wb") as f:
                    f.write(b"\x00" * 128 + b"DICM")
                    write_file_meta_info(f, meta, enforce_standard=False)
                    f.write(payload)
                try:
                    rsp = assoc.send_c_store(path)
                except (ValueError, RuntimeError):
                    statuses.append(None)  # no accepted context for this class/syntax
                    continue
                statuses.append(int(rsp.Status) if "Status" in rsp else None)
        finally:
            _config.STORE_SEND_CHUNKED_DATASET = old
            assoc.release()
    return statuses


def encode(ds: Dataset) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, ds)
    return buffer.getvalue()


def test_echo_from_allowed_peer_and_refusals(start_listener: Callable[..., RunningListener]) -> None:
    node = start_listener(peers=[{"name": "pacs", "ae_titles": ["PACS1", "PACS2"]}])
    assert echoscu(node.port, calling="PACS2").returncode == 0
    unknown = echoscu(node.port, calling="STRANGER")
    assert unknown.returncode != 0 and "Association Rejected" in unknown.stderr + unknown.stdout
    wrong_called = echoscu(node.port, calling="PACS1", called="SOMEONE")
    assert wrong_called.returncode != 0
    reasons = [r.reason for r in node.ledger.rejections()]
    assert any("'STRANGER' is not in the allowed peers" in r for r in reasons), reasons
    assert any("called AE title 'SOMEONE' is not this node's" in r for r in reasons), reasons


def test_peer_host_check(start_listener: Callable[..., RunningListener]) -> None:
    node = start_listener(peers=[{"name": "far", "ae_titles": ["FAR"], "host": "192.0.2.7"},
                                 {"name": "near", "ae_titles": ["NEAR"], "host": "localhost"}])
    assert echoscu(node.port, calling="NEAR").returncode == 0
    assert echoscu(node.port, calling="FAR").returncode != 0
    assert any("allowed only from 192.0.2.7, not 127.0.0.1" in r.reason for r in node.ledger.rejections())


def test_store_spools_records_and_is_idempotent(start_listener: Callable[..., RunningListener], tmp_path: Path) -> None:
    node = start_listener()
    seed = fresh_seed()
    files = write_study(tmp_path / "study", 5, seed)
    first = storescu(node.port, files)
    assert first.returncode == 0, f"seed {seed}: {first.stderr}"
    again = storescu(node.port, files)
    assert again.returncode == 0 and len(acknowledged_files(again.stderr + again.stdout)) == 5
    assert node.ledger.instance_count() == 5
    assert len(node.stored) == 5  # the callback saw new instances only
    for f in files:
        sent = dcmread(f)
        row = node.ledger.instance(sent.SOPInstanceUID)
        assert row is not None and row.calling_ae == CALLING_AE
        kept = dcmread(row.path)
        assert kept.PixelData == sent.PixelData and kept.file_meta.SourceApplicationEntityTitle == CALLING_AE
    summary = node.ledger.study_summary(str(dcmread(files[0]).StudyInstanceUID))
    assert summary.series[0].radiopharmaceutical_codes == ("424299003",)
    assert summary.series[0].image_type == ("ORIGINAL", "PRIMARY", "RECON TOMO", "EMISSION")


def test_bad_instances_get_failure_status_and_rejection(start_listener: Callable[..., RunningListener]) -> None:
    node = start_listener()
    seed = fresh_seed()
    study, series = deterministic_uid("s", seed), deterministic_uid("se", seed)
    good = make_nm_instance(study, series, deterministic_uid("ok", seed))
    bad_uid = make_nm_instance("1.2.abc", series, deterministic_uid("bu", seed))
    no_pixels = make_nm_instance(study, series, deterministic_uid("np", seed))
    del no_pixels.PixelData
    short_pixels = make_nm_instance(study, series, deterministic_uid("sp", seed))
    short_pixels.PixelData = short_pixels.PixelData[:100]
    cases = [
        (NM_STORAGE, bad_uid.SOPInstanceUID, encode(bad_uid), Status.INVALID_UID),
        (NM_STORAGE, "1.2.3.999", encode(good), Status.INVALID_UID),  # request and data set disagree
        ("1.2.840.10008.5.1.4.1.1.2", good.SOPInstanceUID, encode(good), Status.DATASET_DOES_NOT_MATCH),
        (NM_STORAGE, no_pixels.SOPInstanceUID, encode(no_pixels), Status.DATASET_DOES_NOT_MATCH),
        (NM_STORAGE, short_pixels.SOPInstanceUID, encode(short_pixels), Status.DATASET_DOES_NOT_MATCH),
        (NM_STORAGE, good.SOPInstanceUID, encode(good)[:57], Status.CANNOT_UNDERSTAND),  # truncated data set
        (NM_STORAGE, good.SOPInstanceUID, b"\xff" * 64, Status.CANNOT_UNDERSTAND),
    ]
    for sop_class, sop_instance, payload, expected in cases:
        assert send_raw(node.port, sop_class, sop_instance, payload) == expected, f"seed {seed}: {sop_instance}"
    assert len(node.ledger.rejections()) == len(cases)
    assert node.ledger.instance_count() == 0
    assert send_raw(node.port, NM_STORAGE, good.SOPInstanceUID, encode(good)) == Status.SUCCESS
    assert node.ledger.instance_count() == 1
    assert list(node.listener.spool.root.rglob("*.dcm")) == [Path(node.ledger.instance(good.SOPInstanceUID).path)]  # type: ignore[union-attr]


def test_max_associations(start_listener: Callable[..., RunningListener]) -> None:
    node = start_listener(max_associations=2)
    ae = AE(ae_title=CALLING_AE)
    ae.add_requested_context("1.2.840.10008.1.1")
    held = [ae.associate("127.0.0.1", node.port, ae_title="CARDIONODE") for _ in range(2)]
    assert all(a.is_established for a in held)
    third = ae.associate("127.0.0.1", node.port, ae_title="CARDIONODE")
    assert third.is_rejected
    assert any("max_associations = 2" in r.reason for r in node.ledger.rejections())
    held[0].release()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and echoscu(node.port).returncode != 0:
        time.sleep(0.2)
    assert echoscu(node.port).returncode == 0
    held[1].release()


def test_disk_watermark_refuses_associations(start_listener: Callable[..., RunningListener]) -> None:
    node = start_listener(disk_watermark_mb=1e12)
    result = echoscu(node.port)
    assert result.returncode != 0 and "Association Rejected" in result.stderr + result.stdout
    (rejection,) = node.ledger.rejections()
    assert "below the watermark of 1000000000000 MiB" in rejection.reason


def _hostile_non_dicom(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 50)
        try:
            s.recv(1024)
        except OSError:
            pass


def _hostile_truncated_pdu(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(struct.pack(">BBI", 0x01, 0x00, 4000) + b"\x00\x01" + b"\x00" * 30)  # A-ASSOCIATE-RQ cut short


def _hostile_disconnect_mid_transfer(port: int) -> None:
    ae = AE(ae_title=CALLING_AE)
    ae.add_requested_context(NM_STORAGE, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title="CARDIONODE")
    assert assoc.is_established
    raw = assoc.dul.socket.socket  # type: ignore[union-attr]
    # P-DATA-TF announcing 1 MB, of which 2000 bytes arrive, then the peer vanishes
    raw.sendall(struct.pack(">BBI", 0x04, 0x00, 1_000_000) + struct.pack(">IB", 999_996, 1) + b"\x00" * 2000)
    raw.shutdown(socket.SHUT_RDWR)
    raw.close()
    assoc.kill()


def test_hostile_peers_do_not_disturb_a_concurrent_transfer(start_listener: Callable[..., RunningListener], tmp_path: Path) -> None:
    node = start_listener()
    seed = fresh_seed()
    files = write_study(tmp_path / "study", 60, seed)
    result: dict[str, Any] = {}

    def transfer() -> None:
        result["run"] = storescu(node.port, files)

    sender = threading.Thread(target=transfer)
    sender.start()
    for attack in (_hostile_non_dicom, _hostile_truncated_pdu, _hostile_disconnect_mid_transfer) * 2:
        attack(node.port)
    sender.join(120)
    run = result["run"]
    assert run.returncode == 0, f"seed {seed}: {run.stderr[-2000:]}"
    assert len(acknowledged_files(run.stderr + run.stdout)) == 60
    assert node.ledger.instance_count() == 60
    assert echoscu(node.port).returncode == 0


def test_start_records_spooled_instances_missing_from_the_ledger(start_listener: Callable[..., RunningListener], tmp_path: Path) -> None:
    """After a power failure the ledger may lack its last commits; the fsync'ed spool has them."""
    from node.dicom.spool import Spool

    seed = fresh_seed()
    files = write_study(tmp_path / "study", 4, seed)
    spool = Spool(tmp_path / "var" / "spool")
    for f in files:
        ds = dcmread(f)
        spool.store(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID), f.read_bytes())
    node = start_listener()
    assert node.ledger.instance_count() == 4
    summary = node.ledger.study_summary(str(dcmread(files[0]).StudyInstanceUID))
    assert summary.series[0].instance_count == 4 and summary.series[0].modality == "NM"
