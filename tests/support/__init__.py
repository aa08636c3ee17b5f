"""The one test harness, used by every test folder and by ``bench/``.

Modules (import them by name; this package imports none of them, so that a test
that needs only a free port does not load pydicom or requests):

* :mod:`tests.support.ports`: a free loopback port, waiting for a port or any condition;
* :mod:`tests.support.config`: one TOML config writer and the node's test settings;
* :mod:`tests.support.nm`: one factory of small synthetic NM instances and studies;
* :mod:`tests.support.dicom_clients`: dcmtk ``echoscu``/``storescu``/``findscu`` and pynetdicom clients;
* :mod:`tests.support.node`: the node in its own process, listener-only or ``cardionode serve``;
* :mod:`tests.support.orthanc`: a real Orthanc PACS on loopback ports;
* :mod:`tests.support.dicomweb`: STOW-RS bodies written by hand (multipart, Part 10 parts) and their answers read;
* :mod:`tests.support.hostile_dicom`: deflate bombs, huge and malformed data sets for the listener's refusal tests;
* :mod:`tests.support.redis_server`: a private Redis (own port, password, TLS) for one test;
* :mod:`tests.support.postgres`: a throw-away PostgreSQL database for one test (CREATE DATABASE, dropped after);
* :mod:`tests.support.pki`: a throw-away CA with server and client certificates for TLS tests;
* :mod:`tests.support.payloads`: hostile bytes (a pickle that runs code) for the refusal tests;
* :mod:`tests.support.worker`: a worker in the test's process (take a step message, run it, store the outcome);
* :mod:`tests.support.tools`: external validators (dciodvfy) and required command-line tools;
* :mod:`tests.support.report`: realistic SPECT report content and phantom source instances (``node.synth``);
* :mod:`tests.support.pipelines`: the test pipelines (registered when imported, never shipped);
* :mod:`tests.support.browser`: Debian's Chromium driven by Playwright (never a downloaded browser), screenshots as artefacts;
* :mod:`tests.support.destination`: a result destination (Storage SCP) in the test's process that refuses for good, then accepts.

Fixtures built on these live in ``tests/conftest.py``. Tests import this package
absolutely (``from tests.support.ports import free_port``); pytest puts the
repository root on ``sys.path`` (``pythonpath`` in pyproject.toml), and a node
subprocess finds it through ``PYTHONPATH`` (:func:`tests.support.node.node_env`).
"""

from __future__ import annotations

import sys
from pathlib import Path

#: the repository root (the folder holding ``node/`` and ``tests/``)
REPO = Path(__file__).resolve().parents[2]
#: the interpreter running the tests; node subprocesses run with it
PYTHON = sys.executable

__all__ = ["PYTHON", "REPO"]
