"""``/healthz`` and ``/readyz`` (node.web.health, node.web.probes) against real components.

``/readyz`` of ``cardionode web`` (:class:`~node.web.probes.StandaloneProbe`) beside a real
``cardionode listen`` (which holds the data directory's node lock) and a Redis broker of the
test's own: ready while everything answers; 503 naming the broker once that Redis server is
stopped, naming the disk when the watermark is above the free space, naming the listener
once the listener stops. Then ``/readyz`` of ``cardionode serve`` itself
(:class:`~node.web.probes.LiveProbe`, over HTTP): 503 naming the broker when the node's Redis
broker stops, and naming the disk when the node runs below its watermark; its ready state is
checked by the flow test in test_metrics.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from node.config import Settings, load_settings
from node.ledger import Ledger
from node.web.context import WebContext
from node.web.health import health_routes
from node.web.probes import READINESS, StandaloneProbe
from tests.support.config import listener_config, serve_settings, write_config
from tests.support.node import ListenerProcess, ServeProcess
from tests.support.ports import free_port, port_open, wait_for
from tests.support.redis_server import RedisServer


def _client(settings: Settings, ledger: Ledger) -> TestClient:
    context = WebContext(settings, ledger, StandaloneProbe(settings, ledger))
    return TestClient(Starlette(routes=health_routes(context)))


def _components(answer: Any) -> dict[str, bool]:
    return {name: state["ok"] for name, state in answer.json()["components"].items()}


def test_healthz_says_alive_and_checks_nothing(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", broker_url=f"redis://127.0.0.1:{free_port()}/0")
    ledger = Ledger.from_settings(settings)
    try:
        answer = _client(settings, ledger).get("/healthz")
    finally:
        ledger.close()
    assert answer.status_code == 200
    assert answer.json() == {"status": "alive"}
    assert answer.headers["cache-control"] == "no-store"


@pytest.mark.network
def test_readyz_names_the_broker_the_disk_and_the_listener_when_they_fail(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "redis") as redis:
        config, port = listener_config(tmp_path, broker_url=redis.url())
        settings = load_settings(config)
        listener = ListenerProcess(config, port).start()
        ledger = Ledger.from_settings(settings)
        try:
            client = _client(settings, ledger)
            ready = client.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert ready.json()["status"] == "ready"
            assert _components(ready) == {"ledger": True, "broker": True, "listener": True, "disk": True,
                                          "workers": True}
            details = {name: state["detail"] for name, state in ready.json()["components"].items()}
            assert f"127.0.0.1:{redis.port}" in details["broker"]
            assert f"listen, pid {listener.process.pid}" in details["listener"] and f":{port}" in details["listener"]
            assert "MiB free" in details["disk"]

            huge = settings.model_copy(update={"disk_watermark_mb": 1e12})  # more than any disk here
            full = _client(huge, ledger).get("/readyz")
            assert full.status_code == 503, full.text
            assert full.json()["status"] == "not ready"
            assert _components(full) == {**_components(ready), "disk": False}
            assert "below the watermark" in full.json()["components"]["disk"]["detail"]

            redis.stop()
            down = client.get("/readyz")
            assert down.status_code == 503, down.text
            assert _components(down) == {**_components(ready), "broker": False}
            assert f"127.0.0.1:{redis.port}" in down.json()["components"]["broker"]["detail"]
            assert "cannot connect" in down.json()["components"]["broker"]["detail"]

            listener.stop()
            gone = client.get("/readyz")
            assert gone.status_code == 503
            assert [name for name in READINESS if not _components(gone)[name]] == ["broker", "listener"]
            assert "no node runs" in gone.json()["components"]["listener"]["detail"]
        finally:
            listener.stop()
            ledger.close()


def test_readyz_with_a_sqlite_broker_that_no_node_has_created(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", port=free_port())
    ledger = Ledger.from_settings(settings)
    try:
        answer = _client(settings, ledger).get("/readyz")
    finally:
        ledger.close()
    assert answer.status_code == 503
    components = answer.json()["components"]
    assert (components["ledger"]["ok"], components["broker"]["ok"], components["disk"]["ok"]) == (True, False, True)
    assert "broker.sqlite" in components["broker"]["detail"] and "does not exist" in components["broker"]["detail"]


def _serve(tmp_path: Path, **extra: Any) -> tuple[ServeProcess, str]:
    """``cardionode serve`` without local workers (none is needed to be ready) and its web page's URL."""
    port, web_port = free_port(), free_port()
    config = write_config(tmp_path / "node.toml", **serve_settings(tmp_path / "data", port, [], workers=[],
                                                                    web={"port": web_port}, **extra))
    node = ServeProcess(config, port, tmp_path / "serve.out")
    node.start()
    try:
        wait_for(lambda: port_open(web_port), 60, "the web page to listen")
    except BaseException:
        node.stop()
        raise
    return node, f"http://127.0.0.1:{web_port}"


@pytest.mark.slow
@pytest.mark.network
def test_the_served_node_is_not_ready_once_its_broker_stops(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "redis") as redis:
        node, web = _serve(tmp_path, broker_url=redis.url())
        try:
            ready = httpx.get(f"{web}/readyz", timeout=30)
            assert ready.status_code == 200, ready.text
            assert _components(ready) == {"ledger": True, "broker": True, "listener": True, "disk": True, "workers": True}
            assert "no local workers" in ready.json()["components"]["workers"]["detail"]
            redis.stop()
            down = httpx.get(f"{web}/readyz", timeout=30)
            assert down.status_code == 503, down.text
            assert down.json()["status"] == "not ready"
            assert _components(down) == {**_components(ready), "broker": False}
            assert f"redis://127.0.0.1:{redis.port}/0: cannot connect" in down.json()["components"]["broker"]["detail"]
            assert httpx.get(f"{web}/healthz", timeout=30).status_code == 200  # alive all the same
        finally:
            node.stop()


@pytest.mark.slow
@pytest.mark.network
def test_the_served_node_below_its_disk_watermark_is_not_ready(tmp_path: Path) -> None:
    node, web = _serve(tmp_path, disk_watermark_mb=1e12)  # more than any disk here: the listener refuses studies
    try:
        answer = httpx.get(f"{web}/readyz", timeout=30)
    finally:
        node.stop()
    assert answer.status_code == 503, answer.text
    assert [name for name in READINESS if not _components(answer)[name]] == ["disk"]
    assert "below the watermark" in answer.json()["components"]["disk"]["detail"]
