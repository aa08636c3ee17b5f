"""A secured Redis for broker, result backend and artifact store: password and TLS (issue 21, defect 2).

Each test starts its own ``redis-server`` on a free loopback port in its temporary folder
(:class:`tests.support.redis_server.RedisServer`; the shared Redis on 6379 is left alone) and
drives a whole flowtest job through it: conductor, Redis broker, Redis result backend, Redis
artifact store, this test as the worker. A wrong password or CA is a clear error, from the
check ``cardionode serve`` and ``cardionode worker`` run before they start, and no message,
log line or ``config check`` output shows the password.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from node.config import CompletenessRule, RedisTLSSettings, Settings, redact_url
from node.ledger import Ledger, utcnow
from node.queue.app import QueueSettings, connection_problems
from node.queue.conductor import Conductor
from node.queue.dispatch import JobQueue
from node.workflow.completeness import Assembler
from tests.support.config import write_config
from tests.support.nm import write_nm_study
from tests.support.node import node_env
from tests.support.pipelines import flowtest  # noqa: F401 (registers the test pipeline)
from tests.support.pki import make_pki
from tests.support.redis_server import RedisServer
from tests.support.worker import record_instances, work_step

pytestmark = pytest.mark.uses_test_pipelines

PASSWORD = "s3cr3t:p@ss/word"  # characters that must be percent-encoded in a URL


def _settings(tmp_path: Path, broker_url: str, **extra: Any) -> Settings:
    return Settings(data_dir=tmp_path / "data", broker_url=broker_url,
                    completeness={"default": CompletenessRule(quiet_period_s=5.0, settle_s=1.0)}, **extra)


def _run_job(settings: Settings, tmp_path: Path, seed: int) -> None:
    """A flowtest study through the conductor and the queue of ``settings``: reported, objects in the outbox."""
    ledger = Ledger.from_settings(settings)
    study_uid, _, files = write_nm_study(tmp_path / "study", 2, seed, frames=4)
    record_instances(ledger, files)
    Assembler(ledger, settings).tick(utcnow() + timedelta(seconds=2))
    queue = JobQueue(QueueSettings.from_settings(settings), settings.effective_device_uid())
    conductor = Conductor(ledger, queue, settings)
    try:
        conductor.tick()
        for name in ("cpu", "gpu", "cpu"):  # analyse, predict, report
            work_step(queue, name)
            conductor.tick()
        job = ledger.jobs.find(study_uid=study_uid)[0]
        assert job.state == "reported", job.reason
        assert len(list(settings.outbox_dir.rglob("*.dcm"))) == 2
    finally:
        queue.close()
        ledger.close()


def _worker(settings_file: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "node.cli", "--config", str(settings_file), "worker", "--queues", "cpu"],
                          capture_output=True, text=True, timeout=120, env=node_env(env))


def test_a_password_protected_redis_carries_a_job_and_a_wrong_password_is_a_clear_error(tmp_path: Path, seed: int) -> None:
    with RedisServer(tmp_path / "redis", password=PASSWORD) as server:
        settings = _settings(tmp_path, server.url())
        assert settings.effective_result_backend == settings.effective_artifact_store == server.url()
        assert settings.problems() == []
        assert connection_problems(QueueSettings.from_settings(settings)) == ([], [])
        _run_job(settings, tmp_path, seed)  # broker, results and artifacts all behind the password

        for password, expected in (("wrong", "refused the password"), (None, "needs a password")):
            wrong = _settings(tmp_path / "wrong", server.url(password=password))
            refused, unreachable = connection_problems(QueueSettings.from_settings(wrong))
            assert unreachable == [] and len(refused) == 1, (refused, unreachable)
            assert refused[0].startswith("broker_url and result_backend and artifact_store redis://"), refused
            assert expected in refused[0] and "s3cr3t" not in refused[0], refused

        # `cardionode worker` refuses to start on a wrong password, saying why (and not the password)
        config = write_config(tmp_path / "wrong.toml", data_dir=tmp_path / "wrong-data")
        worker = _worker(config, {"CARDIONODE_BROKER_URL": server.url(password="not-" + PASSWORD)})
        assert worker.returncode == 2, worker.stdout + worker.stderr
        assert "refused the password" in worker.stderr and "s3cr3t" not in worker.stdout + worker.stderr, worker.stderr
        logged = "".join(p.read_text() for p in (tmp_path / "wrong-data" / "logs").glob("*.log"))
        assert "s3cr3t" not in logged

    # down: a warning, not a refusal (Celery keeps retrying)
    refused, unreachable = connection_problems(QueueSettings.from_settings(settings))
    assert refused == [] and len(unreachable) == 1 and "cannot connect" in unreachable[0], unreachable


def test_rediss_with_a_client_certificate_carries_a_job_and_a_wrong_ca_is_a_clear_error(tmp_path: Path, seed: int) -> None:
    pki = make_pki(tmp_path / "pki")
    other = make_pki(tmp_path / "other-pki")
    tls = {"cert": pki["server.pem"], "key": pki["server.key"], "ca": pki["ca.pem"]}
    with RedisServer(tmp_path / "redis", password=PASSWORD, tls=tls, client_certs=True) as server:
        assert server.url().startswith("rediss://")
        client = RedisTLSSettings(ca=pki["ca.pem"], cert=pki["client.pem"], key=pki["client.key"])
        settings = _settings(tmp_path, server.url(), redis_tls=client)
        assert settings.problems() == [] and not any("Redis" in w or "redis_tls" in w for w in settings.warnings())
        assert connection_problems(QueueSettings.from_settings(settings)) == ([], [])
        _run_job(settings, tmp_path, seed)

        for wrong_tls, expected in (
            (RedisTLSSettings(ca=other["ca.pem"], cert=pki["client.pem"], key=pki["client.key"]), "CERTIFICATE_VERIFY_FAILED"),
            (RedisTLSSettings(ca=pki["ca.pem"]), "TLS with the Redis server failed"),  # no client certificate
        ):
            wrong = _settings(tmp_path / "wrong", server.url(), redis_tls=wrong_tls)
            refused, _ = connection_problems(QueueSettings.from_settings(wrong))
            assert len(refused) == 1 and expected in refused[0] and "s3cr3t" not in refused[0], refused


def test_settings_check_redis_urls_and_tls_files_and_hide_passwords(tmp_path: Path) -> None:
    def problems(url: str, **extra: Any) -> list[str]:
        return _settings(tmp_path, url, **extra).problems()

    assert problems("redis://:pw@127.0.0.1:99999/0")[0].startswith("broker_url and result_backend and artifact_store")
    assert any("not a valid Redis URL" in p for p in problems("redis://:pw@127.0.0.1:99999/0"))
    assert any("must be a number" in p for p in problems("redis://127.0.0.1:6379/zero"))
    assert any("turns off the check" in p for p in problems("rediss://h.example:6380/0?ssl_cert_reqs=none"))
    assert any("use rediss://" in p for p in problems("redis://h.example:6379/0?ssl_cert_reqs=required"))
    assert any("set both redis_tls.cert and redis_tls.key" in p
               for p in problems("rediss://h:1/0", redis_tls=RedisTLSSettings(cert=tmp_path / "c.pem")))
    assert any("redis_tls.ca" in p and "does not exist" in p
               for p in problems("rediss://h:1/0", redis_tls=RedisTLSSettings(ca=tmp_path / "none.pem")))
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    assert any("cannot be loaded" in p for p in problems("rediss://h:1/0", redis_tls=RedisTLSSettings(ca=tmp_path / "junk.pem")))

    remote = _settings(tmp_path, "redis://redis.example:6379/0")
    assert any("has no password" in w for w in remote.warnings())
    assert any("not encrypted" in w for w in remote.warnings())
    secured = _settings(tmp_path, f"rediss://cardionode:{PASSWORD.replace('@', '%40').replace('/', '%2F')}@redis.example:6380/0")
    assert not any("password" in w or "encrypted" in w for w in secured.warnings()), secured.warnings()
    assert any("not used" in w for w in _settings(tmp_path, "redis://127.0.0.1:6379/0",
                                                  redis_tls=RedisTLSSettings(ca=tmp_path / "junk.pem")).warnings())

    assert redact_url("rediss://cardionode:s3cr3t@h:6380/0") == "rediss://cardionode:***@h:6380/0"
    assert redact_url("redis://s3cr3t@h:6379/0?password=s3cr3t") == "redis://***@h:6379/0?password=***"
    assert redact_url("sqla+sqlite:////var/broker.sqlite") == "sqla+sqlite:////var/broker.sqlite"
    # `cardionode config check` shows the effective URLs without the password
    config = write_config(tmp_path / "node.toml", data_dir=tmp_path / "var",
                          broker_url="redis://:s3cr3t@127.0.0.1:6379/0", artifact_store="rediss://u:s3cr3t@h:6380/1")
    check = subprocess.run([sys.executable, "-m", "node.cli", "--config", str(config), "config", "check"],
                           capture_output=True, text=True, timeout=60, env=node_env())
    assert '"broker_url": "redis://:***@127.0.0.1:6379/0"' in check.stdout, check.stdout
    assert '"artifact_store": "rediss://u:***@h:6380/1"' in check.stdout
    assert "s3cr3t" not in check.stdout + check.stderr
