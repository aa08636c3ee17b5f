"""The README's five-minute walkthrough, run as written: real Orthanc, dcmtk ``storescu``, ``cardionode serve``.

The shell and TOML blocks of the section "Five-minute walkthrough" are read from README.md
at test time, so the test breaks when the README drifts from what works. They run in
order, in a temporary folder laid out like the repository folder the README runs from
(``.venv`` and ``docker/`` are links to this checkout's), with only these substitutions,
as the README says:

* ports: 4242 and 8042 (Orthanc's DICOM and HTTP ports), 11112 (the node's) and 8080 (its web page)
  become free ports; the node gets them from ``CARDIONODE_PORT`` and ``CARDIONODE_WEB__PORT`` (the
  README's ``node.toml`` sets none);
* paths: ``/tmp/`` becomes a folder of the test's own.

A TOML block whose first line is ``# FILE ...`` is written to ``FILE``. A shell block runs
command by command (a here-document belongs to its command); a command that ends with ``&``
or runs ``serve`` is a server: it starts in the background (as in a second terminal) and the
test waits until its ports answer, as the reader would. Every other command must exit 0.
Before step 4 the test waits, as the reader does, until the node's results are in Orthanc;
after it, the node is stopped (Ctrl-C) and ``status`` must say so.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.support import REPO
from tests.support.node import node_env
from tests.support.orthanc import Orthanc
from tests.support.ports import free_port, port_open, wait_for

pytestmark = pytest.mark.network

SECTION = "## Five-minute walkthrough"
SR_CLASSES = ("1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.88.22")
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
PDF_CLASS = "1.2.840.10008.5.1.4.1.1.104.1"
#: how long the reader waits for the results (s): the README says "about a minute"
RESULTS_WITHIN_S = 150


@dataclass(frozen=True)
class Block:
    """One fenced block of the walkthrough: ``sh`` or ``toml``, and its text (indentation removed)."""

    language: str
    text: str


def walkthrough_blocks(readme: str) -> list[Block]:
    """The ``sh`` and ``toml`` blocks of the walkthrough section of ``readme``, in order."""
    start = readme.index(SECTION)
    end = readme.find("\n## ", start + len(SECTION))
    section = readme[start:end if end != -1 else len(readme)]
    blocks = []
    for match in re.finditer(r"^( *)```(\w+)\n(.*?)^\1```$", section, flags=re.MULTILINE | re.DOTALL):
        indent, language, body = match.groups()
        lines = [line[len(indent):] if line.startswith(indent) else line for line in body.splitlines()]
        blocks.append(Block(language, "\n".join(lines) + "\n"))
    return blocks


def shell_commands(text: str) -> list[str]:
    """The commands of a shell block: one per line, a here-document (``<<'END'`` ... ``END``) with its command."""
    commands: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        heredoc = re.search(r"<<-?\s*'?\"?(\w+)'?\"?", line)
        if heredoc:
            body = [line]
            while i < len(lines):
                body.append(lines[i])
                i += 1
                if lines[i - 1].strip() == heredoc.group(1):
                    break
            commands.append("\n".join(body))
        else:
            commands.append(line)
    return commands


def is_server(command: str) -> bool:
    """A command the reader leaves running: ``... &``, or ``cardionode ... serve``."""
    return command.rstrip().endswith("&") or re.search(r"\bcardionode\b.*\bserve\b", command) is not None


class Walkthrough:
    """The walkthrough's folder, environment and servers."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.folder = root / "repo"  # the reader's repository folder
        self.tmp = root / "tmp"  # the README's /tmp/
        self.folder.mkdir()
        self.tmp.mkdir()
        (self.folder / ".venv").symlink_to(Path(sys.prefix))
        (self.folder / "docker").symlink_to(REPO / "docker")
        self.pacs = Orthanc(root / "orthanc-client")  # its free ports become 4242 and 8042; it queries the PACS
        self.node_port = free_port()
        self.web_port = free_port()  # the node's web page (default 8080)
        self.env = node_env({"CARDIONODE_PORT": str(self.node_port), "CARDIONODE_WEB__PORT": str(self.web_port)})
        self.servers: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.outputs: list[tuple[str, subprocess.CompletedProcess[str]]] = []

    def substitute(self, text: str) -> str:
        """``text`` with the walkthrough's ports and ``/tmp/`` replaced by this run's."""
        for port, mine in ((4242, self.pacs.dicom_port), (8042, self.pacs.http_port), (11112, self.node_port),
                           (8080, self.web_port)):
            text = re.sub(rf"\b{port}\b", str(mine), text)
        return text.replace("/tmp/", f"{self.tmp}/")

    def run_block(self, block: Block) -> None:
        text = self.substitute(block.text)
        if block.language == "toml":
            name = re.match(r"#\s*(\S+)", text)
            assert name, f"a TOML block of the walkthrough names no file in its first line: {text[:80]!r}"
            (self.folder / name.group(1)).write_text(text, encoding="utf-8")
            return
        for command in shell_commands(text):
            if is_server(command):
                self.start_server(command)
            else:
                result = subprocess.run(["bash", "-c", command], cwd=self.folder, env=self.env, capture_output=True,
                                        text=True, timeout=300)
                self.outputs.append((command, result))
                assert result.returncode == 0, f"{command!r} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"

    def start_server(self, command: str) -> None:
        log = open(self.root / f"server-{len(self.servers)}.log", "wb")  # noqa: SIM115 (the server's lifetime)
        process = subprocess.Popen(["bash", "-c", command.rstrip().removesuffix("&")], cwd=self.folder, env=self.env,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.servers.append((command, process))
        ports = [self.node_port] if re.search(r"\bserve\b", command) else [self.pacs.dicom_port, self.pacs.http_port]

        def listening() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"{command!r} exited {process.returncode}: {self.server_log(process)[-3000:]}")
            return all(port_open(port) for port in ports)

        wait_for(listening, 60, f"{command!r} to listen on {ports}")

    def server_log(self, process: subprocess.Popen[bytes]) -> str:
        index = [p for _, p in self.servers].index(process)
        return (self.root / f"server-{index}.log").read_text(errors="replace")

    def stop(self, process: subprocess.Popen[bytes]) -> int | None:
        """SIGTERM to the server's process group (Ctrl-C in its terminal); its exit status."""
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        return process.returncode

    def output(self, pattern: str) -> str:
        """The standard output of the last foreground command matching ``pattern``."""
        found = [r.stdout for c, r in self.outputs if re.search(pattern, c)]
        assert found, f"no command of the walkthrough matches {pattern!r}"
        return found[-1]


def test_the_readme_walkthrough_works_as_written(tmp_path: Path) -> None:
    blocks = walkthrough_blocks((REPO / "README.md").read_text(encoding="utf-8"))
    see = [i for i, b in enumerate(blocks) if b.language == "sh" and "status" in b.text]
    assert [b.language for b in blocks].count("sh") >= 4 and see, "the walkthrough lost its steps"
    walk = Walkthrough(tmp_path)
    try:
        for block in blocks[: see[-1]]:  # steps 1 to 3
            walk.run_block(block)
        check = walk.output(r"config check")
        assert "configuration OK" in check and "node: not running" in check, check

        truth = json.loads(next(walk.tmp.glob("*/truth.json")).read_text())
        study_uid = truth["study_instance_uid"]

        def results_arrived() -> bool:
            classes = {i["sop_class"] for i in walk.pacs.study_instances(study_uid)}
            return bool(classes & set(SR_CLASSES)) and {SC_CLASS, PDF_CLASS} <= classes

        serve = next(p for c, p in walk.servers if "serve" in c)
        wait_for(results_arrived, RESULTS_WITHIN_S,
                 f"the node's results in Orthanc; node output: {tmp_path}/server-*.log", 2.0)

        for block in blocks[see[-1]:]:  # step 4
            walk.run_block(block)
        orthanc_id = requests.post(f"{walk.pacs.url}/tools/lookup", data=study_uid, timeout=10).json()[0]["ID"]
        assert orthanc_id in walk.output(r"curl .*/studies")
        status = walk.output(r"cardionode .*status")
        assert status.startswith(f"node: running (serve, pid {serve.pid}"), status
        study_line = next(line for line in status.splitlines() if line.startswith(study_uid))
        assert " done " in study_line, status
        assert re.search(r"^\d+\s+\S+\s+spect_mpi\s+1\s+sent\s", status, flags=re.MULTILINE), status

        assert walk.stop(serve) == 0, walk.server_log(serve)[-3000:]  # Ctrl-C in the first terminal
        stopped = subprocess.run(["bash", "-c", ".venv/bin/cardionode --config node.toml status"], cwd=walk.folder,
                                 env=walk.env, capture_output=True, text=True, timeout=120)
        assert stopped.returncode == 0 and stopped.stdout.startswith("node: NOT RUNNING"), stopped.stdout
        assert "Traceback" not in walk.server_log(serve)
    finally:
        for _, process in reversed(walk.servers):
            walk.stop(process)
