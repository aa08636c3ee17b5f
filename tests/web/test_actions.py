"""The operator's actions on the web page: refused without CSRF token or from another origin, and otherwise
exactly what ``cardionode retry|discard|complete`` do (the same functions, the same ledger changes and audit
events, ``actor`` aside), shown on the next page, and the node woken.

The site (a real SQLite ledger filled through the ledger API) is :func:`tests.web.test_app.make_site`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from node.cli import main as cli_main
from node.ledger import InstanceMeta, Ledger
from tests.web.test_app import ORIGIN, Site, make_site

pytestmark = pytest.mark.uses_test_pipelines


def _snapshot(ledger: Ledger) -> dict[str, Any]:
    """Everything an action can change: studies, jobs, sends (states, reasons, rules) and the state changes."""
    return {
        "studies": sorted((s.study_uid, s.state, s.reason, s.rule, s.pipeline, s.run) for s in ledger.studies.find()),
        "jobs": sorted((j.id, j.state, j.reason, j.attempts, j.last_error) for j in ledger.jobs.find()),
        "sends": sorted((x.id, x.state, x.attempts, x.last_error) for x in ledger.sends.find()),
        "events": [(e.entity, e.entity_id, e.from_state, e.to_state, e.reason, e.rule) for e in ledger.events.find()],
    }


def _admin_events(site: Site) -> list[dict[str, Any]]:
    """The audit log's ``admin.*`` events without their time."""
    return [{k: v for k, v in e.items() if k != "at"} for e in site.audit_events() if e["event"].startswith("admin.")]


@pytest.fixture
def site(tmp_path: Path, seed: int) -> Any:
    made = make_site(tmp_path, seed)
    yield made
    made.client.close()
    made.audit.close()
    made.ledger.close()


def test_a_forged_post_is_refused_and_changes_nothing(site: Site) -> None:
    csrf = site.sign_in()
    job = site.jobs["failed"]
    before = _snapshot(site.ledger)
    refusals = {
        "no CSRF token": site.post(f"/jobs/{job}/retry", {"next": "/jobs"}),
        "a wrong CSRF token": site.post(f"/jobs/{job}/retry", {"csrf": csrf[:-3] + "abc"}),
        "a foreign Origin": site.post(f"/jobs/{job}/retry", {"csrf": csrf}, origin="http://evil.example"),
        "another port": site.post(f"/jobs/{job}/discard", {"csrf": csrf}, origin="http://127.0.0.1:9999"),
        "neither Origin nor Referer": site.post(f"/jobs/{job}/discard", {"csrf": csrf}, origin=None),
        "a foreign Referer": site.client.post(f"/jobs/{job}/discard", data={"csrf": csrf},
                                              headers={"Referer": "http://evil.example/jobs"}),
        "complete, no token": site.post(f"/studies/{site.studies['receiving']}/complete", {"pipeline": "flowtest_nm"}),
        "a JSON body": site.client.post(f"/jobs/{job}/retry", json={"csrf": csrf}, headers={"Origin": ORIGIN}),
    }
    for why, response in refusals.items():
        assert response.status_code == 403, (why, response.status_code)
        assert "Refused (403)" in response.text and "nothing was changed" in response.text, why
    assert _snapshot(site.ledger) == before
    assert _admin_events(site) == [] and site.woken == []
    # the same request with the token from the page and its own origin (a Referer will do too) goes through
    done = site.client.post(f"/jobs/{job}/retry", data={"csrf": csrf, "next": "/jobs"},
                            headers={"Referer": f"{ORIGIN}/jobs"}, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == "/jobs"
    assert site.ledger.jobs.get(job).state == "queued"  # type: ignore[union-attr]
    assert site.client.post(f"/jobs/{job}/discard", data={"csrf": "x"}, headers={"X-CSRF-Token": csrf, "Origin": ORIGIN},
                            follow_redirects=False).status_code == 303  # the header works for scripts


def test_web_actions_do_exactly_what_the_cli_does(tmp_path: Path, seed: int) -> None:
    """Two identical ledgers: the CLI acts on one, the web page on the other; the ledgers and the audit
    events end up the same (``actor`` aside)."""
    web = make_site(tmp_path / "web", seed)
    cli = make_site(tmp_path / "cli", seed)  # same seed: the same UIDs
    config = tmp_path / "cli" / "node.toml"
    try:
        assert web.studies == cli.studies and web.jobs == cli.jobs
        csrf = web.sign_in()
        steps: list[tuple[list[str], str, dict[str, str]]] = [
            (["retry", str(cli.jobs["failed"])], f"/jobs/{web.jobs['failed']}/retry", {}),
            (["retry", str(cli.jobs["dead"])], f"/jobs/{web.jobs['dead']}/retry", {}),  # resends the dead letter
            (["discard", str(cli.jobs["failed"])], f"/jobs/{web.jobs['failed']}/discard", {}),
            (["retry", str(cli.jobs["dead"])], f"/jobs/{web.jobs['dead']}/retry", {}),  # refused: sending
            (["complete", cli.studies["receiving"], "--pipeline", "flowtest_nm"],
             f"/studies/{web.studies['receiving']}/complete", {"pipeline": "flowtest_nm"}),
            (["complete", "1.2.3.4"], "/studies/1.2.3.4/complete", {}),  # no such study
            (["retry", "999"], "/jobs/999/retry", {}),  # no such job
        ]
        messages = []
        for command, path, form in steps:
            code = cli_main(["--config", str(config), *command])
            response = web.post(path, {"csrf": csrf, "next": "/jobs", **form})
            assert response.status_code == 303, (path, response.text[:500])
            page = web.client.get(response.headers["location"]).text
            assert ("flash ok" in page) == (code == 0), (command, code, page[:2000])
            messages.append(page)
            assert _snapshot(web.ledger)["studies"] == _snapshot(cli.ledger)["studies"], command
            assert _snapshot(web.ledger)["jobs"] == _snapshot(cli.ledger)["jobs"], command
            assert _snapshot(web.ledger)["sends"] == _snapshot(cli.ledger)["sends"], command
        web_snapshot, cli_snapshot = _snapshot(web.ledger), _snapshot(cli.ledger)
        assert web_snapshot["events"] == cli_snapshot["events"]
        web_events, cli_events = _admin_events(web), _admin_events(cli)
        assert [e.pop("actor") for e in web_events] == ["web"] * 4
        assert [e.pop("actor") for e in cli_events] == ["cli"] * 4
        assert web_events == cli_events and [e["event"] for e in web_events] == [
            "admin.retry", "admin.retry", "admin.discard", "admin.complete"]
        assert len(web.woken) == 4  # each change woke the node
        assert "is sending its results" in messages[3] and "no study 1.2.3.4" in messages[5] and "no job 999" in messages[6]
        sends = web.ledger.sends.find()
        assert [x.state for x in sends] == ["pending"]
    finally:
        for site in (web, cli):
            site.client.close()
            site.audit.close()
            site.ledger.close()


def test_retry_a_dead_letter_from_the_sends_page_and_see_the_state_change(site: Site) -> None:
    csrf = site.sign_in()
    page = site.client.get("/sends?state=dead_letter").text
    assert 'class="state s-dead_letter"' in page and f'action="/jobs/{site.jobs["dead"]}/retry"' in page
    assert "0xA900" in page and "destination answered 0xA900 (refused)" in page
    response = site.post(f"/jobs/{site.jobs['dead']}/retry", {"csrf": csrf, "next": "/sends?state=dead_letter"})
    assert response.headers["location"] == "/sends?state=dead_letter"
    after = site.client.get(response.headers["location"]).text
    assert "Done:" in after and f"job {site.jobs['dead']} is now reported: sending again (operator retry)" in after
    assert "no send in state dead letter" in after
    assert 'class="state s-pending stale">pending (node not running)<' in site.client.get("/sends").text
    assert "Done:" not in site.client.get("/sends").text  # the outcome is shown once


def test_mark_a_study_complete_says_why_not_or_uses_the_chosen_pipeline(site: Site, tmp_path: Path) -> None:
    csrf = site.sign_in()
    uid = "2.25.4242"
    site.ledger.instances.record(InstanceMeta("2.25.4242.1.1", "1.2.840.10008.5.1.4.1.1.7", uid, "2.25.4242.1", "", 0,
                                              routing={"modality": "OT"}))  # a study no pipeline accepts
    page = site.client.get(f"/studies/{uid}").text
    assert '<select id="pipeline" name="pipeline">' in page and '<option value="flowtest_nm">' in page
    response = site.post(f"/studies/{uid}/complete", {"csrf": csrf, "next": f"/studies/{uid}"})
    refused = site.client.get(response.headers["location"]).text
    assert "Not done:" in refused and "no pipeline can process it" in refused and "flowtest_nm: " in refused
    assert site.ledger.studies.get(uid).state == "receiving"  # type: ignore[union-attr]
    response = site.post(f"/studies/{uid}/complete", {"csrf": csrf, "pipeline": "flowtest_nm", "next": f"/studies/{uid}"})
    done = site.client.get(response.headers["location"]).text
    assert "Done:" in done and "does not accept the study by its rules" in done
    study_row = site.ledger.studies.get(uid)
    assert study_row is not None and (study_row.state, study_row.rule, study_row.pipeline) == ("complete", "manual", "flowtest_nm")
    assert site.audit_events()[-1]["event"] == "admin.complete" and site.audit_events()[-1]["actor"] == "web"
