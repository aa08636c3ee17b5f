"""One TOML writer for node configurations, and the settings the tests start from."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.support.ports import free_port

__all__ = ["listener_config", "serve_settings", "toml_value", "write_config", "FLOWTEST_PIPELINE_MODULE"]

#: the test pipeline that ``cardionode serve`` loads in the end-to-end tests
FLOWTEST_PIPELINE_MODULE = "tests.support.pipelines.flowtest"


def toml_value(value: Any) -> str:
    """``value`` as a TOML value: booleans, numbers, strings and paths, arrays, inline tables (``None`` keys left out)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (str, Path)):
        return json.dumps(str(value))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items() if v is not None) + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


def write_config(path: Path, **settings: Any) -> Path:
    """Write a TOML config and return its path.

    Scalars and arrays come first; a dict becomes a ``[table]`` (its dict values inline
    tables), a list of dicts an array of tables ``[[key]]``; ``None`` values in tables are
    left out.
    """
    lines: list[str] = []
    tables: list[str] = []

    def table(header: str, items: dict[str, Any]) -> None:
        tables.append(header)
        tables.extend(f"{k} = {toml_value(v)}" for k, v in items.items() if v is not None)

    for key, value in settings.items():
        if isinstance(value, dict):
            table(f"[{key}]", value)
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for item in value:
                table(f"[[{key}]]", item)
        else:
            lines.append(f"{key} = {toml_value(value)}")
    path.write_text("\n".join(lines + tables) + "\n", encoding="utf-8")
    return path


def listener_config(tmp: Path, **overrides: Any) -> tuple[Path, int]:
    """A config for a listener on a free loopback port with its data under ``tmp/var``, and a free web port
    for ``serve``; (path, port)."""
    settings: dict[str, Any] = {
        "ae_title": "CARDIONODE",
        "port": free_port(),
        "bind_address": "127.0.0.1",
        "data_dir": tmp / "var",
        "disk_watermark_mb": 1,
        "web": {"port": free_port()},  # `serve` with this config starts the web page: never on the shared default 8080
    }
    settings.update(overrides)
    return write_config(tmp / "node.toml", **settings), int(settings["port"])


def serve_settings(data_dir: Path, port: int, destinations: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """Settings of ``cardionode serve`` for the end-to-end tests: the flow test pipeline, short
    completeness and retry times, the web page on a free port; ``extra`` overrides any of them."""
    settings: dict[str, Any] = {
        "ae_title": "CARDIONODE",
        "port": port,
        "data_dir": str(data_dir),
        "disk_watermark_mb": 1,
        "destinations": destinations,
        "pipeline_modules": [FLOWTEST_PIPELINE_MODULE],
        "completeness": {"default": {"quiet_period_s": 2.0, "force_deadline_s": 600.0,
                                     "force_action": "process", "settle_s": 1.0}},
        "send_retry": {"initial_s": 1.0, "max_s": 2.0, "max_attempts": 4},
        "network_timeout_s": 5.0,
        "web": {"port": free_port()},  # every node its own web port (tests start many nodes; the default is 8080)
    }
    settings.update(extra)
    return settings
