"""Every real vendor file of the shared corpus is stored, or refused with a status and a ledger entry."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from node.uids import deterministic_uid
from tests.support.dicom_clients import acknowledged_files, echoscu, send_raw, storescu
from tests.support.node import RunningListener, listener_in_process

pytestmark = pytest.mark.network

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "real"
if not CORPUS.is_dir():
    CORPUS = Path("/work/shared/corpus/real")
FILES = sorted(p for p in CORPUS.rglob("*") if p.is_file() and "LICENSES" not in p.parts and p.name != "MANIFEST.md")
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def _raw_payload(path: Path) -> tuple[str, str, bytes, str]:
    """What a careless sender would transmit for a file storescu will not read:
    the bytes after the File Meta (or the whole file), announced with whatever UIDs can be found."""
    data = path.read_bytes()
    sop_class, sop_instance, syntax, offset = SECONDARY_CAPTURE, deterministic_uid("corpus", path.name), ExplicitVRLittleEndian, 0
    try:
        ds = dcmread(path, force=True, stop_before_pixels=True)
        meta = getattr(ds, "file_meta", None)
        if meta is not None and "TransferSyntaxUID" in meta:
            syntax = str(meta.TransferSyntaxUID)
            offset = data.find(b"DICM") + 4 if data[128:132] == b"DICM" else 0
            offset += 12 + int.from_bytes(data[offset + 8: offset + 12], "little") if offset else 0
        else:
            syntax = ImplicitVRLittleEndian if data[4:6] not in (b"UL", b"CS", b"UI", b"SH", b"OB") else ExplicitVRLittleEndian
        sop_class = str(ds.get("SOPClassUID") or sop_class)
        sop_instance = str(ds.get("SOPInstanceUID") or sop_instance)
    except Exception:
        pass
    return sop_class, sop_instance, data[offset:], syntax


@pytest.fixture(scope="module")
def corpus_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningListener]:
    """One listener for the whole corpus: a bad file must not disturb the next one."""
    node = listener_in_process(tmp_path_factory.mktemp("corpus"), record=False)
    yield node
    node.stop()


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(CORPUS)) for p in FILES])
def test_corpus_file_is_stored_or_refused_with_reason(path: Path, corpus_node: RunningListener) -> None:
    node = corpus_node
    spool = node.listener.storage.spool.root
    files_before = set(spool.rglob("*.dcm"))
    instances_before = node.ledger.instances.count()
    rejections_before = {r.id for r in node.ledger.rejections.find()}

    sent = storescu(node.port, [path])
    output = sent.stdout + sent.stderr
    if "I: Sending Store Request" in output:  # storescu read the file and sent it
        acked = acknowledged_files(output)
    else:
        sop_class, sop_instance, payload, syntax = _raw_payload(path)
        status = send_raw(node.port, sop_class, sop_instance, payload, syntax)
        output = f"storescu could not send it; raw C-STORE answered {status}"
        acked = [str(path)] if status == 0 else []

    new_files = set(spool.rglob("*.dcm")) - files_before
    new_rejections = [r for r in node.ledger.rejections.find() if r.id not in rejections_before]
    if acked:
        assert node.ledger.instances.count() == instances_before + 1, f"{path.name}: Success but not in the ledger"
        (stored,) = new_files
        row = node.ledger.instances.get(stored.stem)
        assert row is not None and Path(row.path) == stored
        assert str(dcmread(stored).SOPInstanceUID) == stored.stem
        assert new_rejections == []
    else:
        assert node.ledger.instances.count() == instances_before and not new_files
        assert new_rejections, f"{path.name}: refused without a ledger entry: {output[-800:]}"
        assert all(r.reason for r in new_rejections)
    assert echoscu(node.port).returncode == 0  # still serving
