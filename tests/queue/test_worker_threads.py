"""``cardionode worker`` gives the numerical libraries one thread each unless the operator chose otherwise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from node.cli import WORKER_THREAD_VARIABLES

ROOT = Path(__file__).resolve().parents[2]

#: runs `cardionode worker` with the Celery worker replaced by a probe that reports what the step
#: processes would see: the variables and torch's intra-op threads (torch reads OMP_NUM_THREADS)
_PROBE = """
import json, os, sys
import node.queue.worker as worker
def probe(args):
    import torch
    print(json.dumps({"env": {v: os.environ.get(v) for v in VARIABLES}, "torch": torch.get_num_threads()}))
    return 0
worker.worker_main = probe
from node.cli import main
sys.exit(main(["worker", "--queues", "cpu"]))
""".replace("VARIABLES", repr(WORKER_THREAD_VARIABLES))


def _run(env_extra: dict[str, str]) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in WORKER_THREAD_VARIABLES}
    env.update(env_extra)
    done = subprocess.run([sys.executable, "-c", _PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_worker_runs_numerical_libraries_on_one_thread() -> None:
    seen = _run({})
    assert seen["env"] == {v: "1" for v in WORKER_THREAD_VARIABLES}
    assert seen["torch"] == 1


def test_operator_setting_is_kept() -> None:
    seen = _run({"OMP_NUM_THREADS": "2"})
    assert seen["env"]["OMP_NUM_THREADS"] == "2" and seen["env"]["OPENBLAS_NUM_THREADS"] == "1"
