"""Artifact stores (directory and Redis) and the automatic choice between them."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from node.config import Settings
from node.queue.artifacts import (
    ArtifactTooLargeError,
    DirectoryStore,
    MissingArtifactError,
    RedisStore,
    open_store,
    validate_key,
)


def _exercise(store) -> None:  # type: ignore[no-untyped-def]
    store.put("jobs/9.1/inputs/00000.dcm", b"abc")
    store.put("jobs/9.1/analyse.values", b"\x00" * 1000)
    assert store.get("jobs/9.1/inputs/00000.dcm") == b"abc"
    assert list(store.keys("jobs/9.1")) == ["jobs/9.1/analyse.values", "jobs/9.1/inputs/00000.dcm"]
    assert store.get("jobs/9.1/analyse.values", max_bytes=1000) == b"\x00" * 1000
    with pytest.raises(ArtifactTooLargeError, match="1000 bytes, more than the 999 accepted"):
        store.get("jobs/9.1/analyse.values", max_bytes=999)  # refused before it is read
    store.delete_prefix("jobs/9.1")
    assert not store.exists("jobs/9.1/analyse.values")
    with pytest.raises(MissingArtifactError):
        store.get("jobs/9.1/analyse.values")


def test_directory_store(tmp_path: Path) -> None:
    _exercise(DirectoryStore(tmp_path))
    with pytest.raises(ValueError):
        validate_key("../etc/passwd")


def test_redis_store_and_automatic_choice(tmp_path: Path) -> None:
    url = "redis://127.0.0.1:6379/13"
    redis.Redis.from_url(url).ping()
    store = RedisStore(url, namespace=f"flowtest:{tmp_path.name}")
    _exercise(store)
    redis_settings = Settings(data_dir=tmp_path, broker_url=url)
    assert redis_settings.effective_artifact_store == url
    assert redis_settings.effective_result_backend == url
    assert isinstance(open_store(redis_settings.effective_artifact_store), RedisStore)
    sqlite_settings = Settings(data_dir=tmp_path)
    assert sqlite_settings.effective_result_backend.startswith("db+sqlite:///")
    assert isinstance(open_store(sqlite_settings.effective_artifact_store), DirectoryStore)
