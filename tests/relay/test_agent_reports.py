"""THREATS.md: what an agent posts to the audit log. Only the agent vocabulary, marked as the
agent's word with its fields under one key, capped per session, and never a 500; the session's
audit is read a page at a time."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from common.protocol import AGENT_EVENTS
from tests.relay.conftest import activate, create
from tests.support import Api


async def _agent(relay, api: Api) -> tuple[dict, dict]:
    session = (await create(api)).json()
    activation = (await activate(relay.base_url, session)).json()
    return session, {"Authorization": f"Bearer {session['id']}:{activation['agent_secret']}"}


async def _audit(api: Api, session_id: str, **params) -> dict:
    response = await api.client.get(f"/api/v1/sessions/{session_id}/audit", params=params)
    assert response.status_code == 200, response.text
    return response.json()


async def test_only_the_agent_vocabulary_is_recorded_and_marked_as_the_agents(relay) -> None:
    async with Api(relay.base_url) as api, httpx.AsyncClient(base_url=relay.base_url) as client:
        session, bearer = await _agent(relay, api)
        response = await client.post("/api/v1/agent/audit", headers=bearer, json={"events": [
            {"event": "file_written", "actor": "alice", "path": "/tmp/x", "size": 3,
             "at": "2020-01-01", "company_id": 999, "session_id": "someone-else", "self": 1,
             "nested": {"deep": [1, 2]}, "long": "y" * 20000},
            {"event": "tunnel", "actor": "bob"},            # a relay event
            {"event": "ended", "actor": "technician:bob"},  # another
            {"event": "command", "actor": "technician:bob", "command": "id"},
            {"event": "shell_opened", "outcome": "granted"},
            {"event": "file_read", "bad key": 1},
            {"event": "logins_unlocked", "actor": "customer", "refused": 2},
        ]})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["recorded"] == 3
        assert [r["index"] for r in body["refused"]] == [1, 2, 4, 5]
        assert "not an event an agent reports" in body["refused"][0]["reason"]
        rows = (await _audit(api, session["id"]))["audit"]
        reported = [r for r in rows if r["reported_by"] == "agent"]
        assert [r["event"] for r in reported] == ["file_written", "command", "logins_unlocked"]
        assert all(r["actor"] == "agent-report" for r in reported)
        written = reported[0]["detail"]
        assert list(written) == ["agent"]  # the agent's fields under one key
        assert written["agent"]["company_id"] == 999 and written["agent"]["self"] == 1
        assert written["agent"]["technician"] == "alice"
        assert written["agent"]["nested"] == '{"deep": [1, 2]}'
        assert written["agent"]["long"].endswith("… [+11808 chars]")
        assert reported[1]["detail"]["agent"]["technician"] == "?"  # not a login name
        # The customer's own action is the customer's, not a technician called "customer".
        assert reported[2]["detail"]["agent"]["by"] == "customer"
        assert "technician" not in reported[2]["detail"]["agent"]
        assert not reported[0]["at"].startswith("2020")
        assert not [r for r in rows if r["event"] in ("tunnel", "ended")]


async def test_agent_reports_are_capped_per_session_with_a_clear_429(start_relay,
                                                                     monkeypatch) -> None:
    monkeypatch.setenv("ADHOC_RELAY_AGENT_REPORT_BURST", "150")
    monkeypatch.setenv("ADHOC_RELAY_AGENT_REPORTS_PER_SESSION", "250")
    relay = start_relay()
    batch = {"events": [{"event": "file_read", "actor": "alice", "path": f"/f{n}"}
                        for n in range(100)]}
    async with Api(relay.base_url) as api, httpx.AsyncClient(base_url=relay.base_url) as client:
        session, bearer = await _agent(relay, api)
        assert (await client.post("/api/v1/agent/audit", headers=bearer, json=batch)).json()[
            "recorded"] == 100
        flood = await client.post("/api/v1/agent/audit", headers=bearer, json=batch)
        assert flood.status_code == 429 and int(flood.headers["Retry-After"]) >= 1
        assert "too many events" in flood.json()["detail"]
        # At 15 a second the bucket refills: wait as told, until the volume cap answers.
        async with asyncio.timeout(60):
            while True:
                response = await client.post("/api/v1/agent/audit", headers=bearer, json=batch)
                if response.status_code == 200:
                    continue
                assert response.status_code == 429, response.text
                if response.json()["error"] == "audit_full":
                    break
                await asyncio.sleep(float(response.headers["Retry-After"]))
        assert "the most one session may" in response.json()["detail"]
        rows = (await _audit(api, session["id"]))["audit"]
        assert len([r for r in rows if r["reported_by"] == "agent"]) == 200
        assert [r["event"] for r in rows].count("audit_capped") == 1


async def test_an_agent_reports_its_last_events_shortly_after_the_session_ended(
        start_relay, monkeypatch) -> None:
    """What the agent saw as the session ended (a digest cut short) still reaches the audit;
    a wrong secret never does, and nothing does once the grace is over."""
    monkeypatch.setenv("ADHOC_RELAY_AGENT_REPORT_GRACE", "2")
    relay = start_relay()
    last = {"events": [{"event": "file_read", "actor": "alice", "path": "/etc/shadow",
                        "error": "the session ended before the digest was taken"}]}
    async with Api(relay.base_url) as api, httpx.AsyncClient(base_url=relay.base_url) as client:
        session, bearer = await _agent(relay, api)
        ended = await api.client.post(f"/api/v1/sessions/{session['id']}/end")
        assert ended.status_code == 200
        wrong = {"Authorization": f"Bearer {session['id']}:not-the-secret"}
        assert (await client.post("/api/v1/agent/audit", headers=wrong, json=last)
                ).status_code == 401
        response = await client.post("/api/v1/agent/audit", headers=bearer, json=last)
        assert response.status_code == 200 and response.json()["recorded"] == 1
        rows = (await _audit(api, session["id"]))["audit"]
        assert [r["detail"]["agent"]["path"] for r in rows if r["event"] == "file_read"] == \
            ["/etc/shadow"]
        await asyncio.sleep(2.5)
        late = await client.post("/api/v1/agent/audit", headers=bearer, json=last)
        assert late.status_code == 401
        assert "no longer active" in late.json()["detail"]


async def test_the_session_audit_is_read_a_page_at_a_time(relay) -> None:
    async with Api(relay.base_url) as api, httpx.AsyncClient(base_url=relay.base_url) as client:
        session, bearer = await _agent(relay, api)
        await client.post("/api/v1/agent/audit", headers=bearer, json={"events": [
            {"event": "file_read", "actor": "alice", "path": f"/f{n}"} for n in range(30)]})
        everything = await _audit(api, session["id"])
        assert everything["next"] is None and len(everything["audit"]) > 30
        pages, after = [], 0
        while after is not None:
            page = await _audit(api, session["id"], after=after, limit=7)
            assert len(page["audit"]) <= 7
            pages.extend(page["audit"])
            after = page["next"]
        assert pages == everything["audit"]
        for bad in ({"limit": 0}, {"limit": 100000}, {"after": -1}, {"after": "x"}):
            response = await api.client.get(f"/api/v1/sessions/{session['id']}/audit",
                                            params=bad)
            assert response.status_code == 422, bad


@pytest.mark.parametrize("event", sorted(AGENT_EVENTS))
def test_every_agent_event_is_documented(event: str) -> None:
    from pathlib import Path

    protocol = (Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md").read_text()
    assert f"`{event}`" in protocol
