"""DICOM TLS: dcmtk clients with certificates succeed, plain TCP and anonymous clients are refused."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from pynetdicom import AE

from node.config import TLSSettings
from node.dicom.tls import client_context
from tests.support.dicom_clients import acknowledged_files, echoscu, storescu
from tests.support.nm import write_nm_study
from tests.support.node import RunningListener
from tests.support.pki import make_pki

pytestmark = pytest.mark.network


def test_tls_listener(start_listener: Callable[..., RunningListener], tmp_path: Path, seed: int) -> None:
    pki = make_pki(tmp_path / "pki")
    node = start_listener(tls={"cert": pki["server.pem"], "key": pki["server.key"], "ca": pki["ca.pem"], "require": True})
    tls_args = ["+tls", str(pki["client.key"]), str(pki["client.pem"]), "+cf", str(pki["ca.pem"])]

    echo = echoscu(node.port, extra=tls_args)
    assert echo.returncode == 0, echo.stderr
    files = write_nm_study(tmp_path / "study", 3, seed).paths
    store = storescu(node.port, files, extra=tls_args)
    assert store.returncode == 0 and len(acknowledged_files(store.stderr)) == 3, f"seed {seed}: {store.stderr}"
    assert node.ledger.instances.count() == 3

    assert echoscu(node.port).returncode != 0  # plain TCP
    anonymous = echoscu(node.port, extra=["+tla", "+cf", str(pki["ca.pem"])])  # TLS without a client certificate
    assert anonymous.returncode != 0
    assert echoscu(node.port, extra=tls_args).returncode == 0  # still serving after the refusals

    # the sender's context (node.dicom.tls.client_context) works against the same listener
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context("1.2.840.10008.1.1")
    context = client_context(TLSSettings(cert=pki["client.pem"], key=pki["client.key"], ca=pki["ca.pem"]))
    assoc = ae.associate("127.0.0.1", node.port, ae_title="CARDIONODE", tls_args=(context, "localhost"))
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0
    assoc.release()
