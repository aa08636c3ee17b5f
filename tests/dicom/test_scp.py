"""The listener with real clients (dcmtk echoscu/storescu, pynetdicom) on loopback."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE

from node.dicom.storage import Status
from node.uids import deterministic_uid
from tests.support.dicom_clients import CALLING_AE, acknowledged_files, echoscu, encode, send_raw, storescu
from tests.support.nm import NM_STORAGE, nm_instance, write_nm_study
from tests.support.node import RunningListener

pytestmark = pytest.mark.network


def test_echo_from_allowed_peer_and_refusals(start_listener: Callable[..., RunningListener]) -> None:
    node = start_listener(peers=[{"name": "pacs", "ae_titles": ["PACS1", "PACS2"]}])
    assert echoscu(node.port, calling="PACS2").returncode == 0
    unknown = echoscu(node.port, calling="STRANGER")
    assert unknown.returncode != 0 and "Association Rejected" in unknown.stderr + unknown.stdout
    wrong_called = echoscu(node.port, calling="PACS1", called="SOMEONE")
    assert wrong_called.returncode != 0
    reasons = [r.reason for r in node.ledger.rejections.find()]
    assert any("'STRANGER' is not in the allowed peers" in r for r in reasons), reasons
    assert any("called AE title 'SOMEONE' is not this node's" in r for r in reasons), reasons


def test_peer_host_check(start_listener: Callable[..., RunningListener]) -> None:
    node = start_listener(peers=[{"name": "far", "ae_titles": ["FAR"], "host": "192.0.2.7"},
                                 {"name": "near", "ae_titles": ["NEAR"], "host": "localhost"}])
    assert echoscu(node.port, calling="NEAR").returncode == 0
    assert echoscu(node.port, calling="FAR").returncode != 0
    assert any("allowed only from 192.0.2.7, not 127.0.0.1" in r.reason for r in node.ledger.rejections.find())


def test_store_spools_records_and_is_idempotent(start_listener: Callable[..., RunningListener], tmp_path: Path, seed: int) -> None:
    node = start_listener()
    files = write_nm_study(tmp_path / "study", 5, seed).paths
    first = storescu(node.port, files)
    assert first.returncode == 0, f"seed {seed}: {first.stderr}"
    again = storescu(node.port, files)
    assert again.returncode == 0 and len(acknowledged_files(again.stderr + again.stdout)) == 5
    assert node.ledger.instances.count() == 5
    assert len(node.stored) == 5  # the callback saw new instances only
    for f in files:
        sent = dcmread(f)
        row = node.ledger.instances.get(sent.SOPInstanceUID)
        assert row is not None and row.calling_ae == CALLING_AE
        kept = dcmread(row.path)
        assert kept.PixelData == sent.PixelData and kept.file_meta.SourceApplicationEntityTitle == CALLING_AE
    summary = node.ledger.studies.summary(str(dcmread(files[0]).StudyInstanceUID))
    assert summary.series[0].radiopharmaceutical_codes == ("424299003",)
    assert summary.series[0].image_type == ("ORIGINAL", "PRIMARY", "RECON TOMO", "EMISSION")


def test_bad_instances_get_failure_status_and_rejection(start_listener: Callable[..., RunningListener], seed: int) -> None:
    node = start_listener()
    study, series = deterministic_uid("s", seed), deterministic_uid("se", seed)
    good = nm_instance(study, series, deterministic_uid("ok", seed))
    bad_uid = nm_instance("1.2.abc", series, deterministic_uid("bu", seed))
    no_pixels = nm_instance(study, series, deterministic_uid("np", seed))
    del no_pixels.PixelData
    short_pixels = nm_instance(study, series, deterministic_uid("sp", seed))
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
    assert len(node.ledger.rejections.find()) == len(cases)
    assert node.ledger.instances.count() == 0
    assert send_raw(node.port, NM_STORAGE, good.SOPInstanceUID, encode(good)) == Status.SUCCESS
    assert node.ledger.instances.count() == 1
    assert list(node.listener.storage.spool.root.rglob("*.dcm")) == [Path(node.ledger.instances.get(good.SOPInstanceUID).path)]  # type: ignore[union-attr]


def test_max_associations(start_listener: Callable[..., RunningListener]) -> None:
    node = start_listener(max_associations=2)
    ae = AE(ae_title=CALLING_AE)
    ae.add_requested_context("1.2.840.10008.1.1")
    held = [ae.associate("127.0.0.1", node.port, ae_title="CARDIONODE") for _ in range(2)]
    assert all(a.is_established for a in held)
    third = ae.associate("127.0.0.1", node.port, ae_title="CARDIONODE")
    assert third.is_rejected
    assert any("max_associations = 2" in r.reason for r in node.ledger.rejections.find())
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
    (rejection,) = node.ledger.rejections.find()
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


def test_hostile_peers_do_not_disturb_a_concurrent_transfer(start_listener: Callable[..., RunningListener], tmp_path: Path, seed: int) -> None:
    node = start_listener()
    files = write_nm_study(tmp_path / "study", 60, seed).paths
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
    assert node.ledger.instances.count() == 60
    assert echoscu(node.port).returncode == 0


def test_start_records_spooled_instances_missing_from_the_ledger(start_listener: Callable[..., RunningListener], tmp_path: Path, seed: int) -> None:
    """After a power failure the ledger may lack its last commits; the fsync'ed spool has them."""
    from node.dicom.spool import Spool

    files = write_nm_study(tmp_path / "study", 4, seed).paths
    spool = Spool(tmp_path / "var" / "spool")
    for f in files:
        ds = dcmread(f)
        spool.store(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID), f.read_bytes())
    node = start_listener()
    assert node.ledger.instances.count() == 4
    summary = node.ledger.studies.summary(str(dcmread(files[0]).StudyInstanceUID))
    assert summary.series[0].instance_count == 4 and summary.series[0].modality == "NM"
