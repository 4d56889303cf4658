"""How sessions end (technician, customer, expiry, relay down at expiry), what the agent is told,
and the live event stream a console follows, including resuming after a reconnect."""

from __future__ import annotations

import asyncio
import json
import os
import time
from datetime import datetime

import asyncssh
import httpx
import pytest

from tests.relay.conftest import (
    EventStream,
    activate,
    agent_connection,
    create,
    db_rows,
    wait_closed,
    wait_for_audit,
)
from tests.support import Api

ON_BOTH_ENGINES = True  # what this module tests is decided by the store


async def test_technician_end_tells_the_agent_and_is_idempotent(relay) -> None:
    async with Api(relay.base_url) as api:
        session = (await create(api)).json()
        activation = (await activate(relay.base_url, session)).json()
        async with agent_connection(relay, activation) as agent:
            await api.wait_for(session["id"], lambda v: v["online"])
            first = await api.client.post(f"/api/v1/sessions/{session['id']}/end")
            assert first.json()["state"] == "ended"
            await wait_closed(agent)
            assert "session ended: ended_by_technician" in str(agent.agent.lost_because)
        again = await api.client.post(f"/api/v1/sessions/{session['id']}/end")
        assert again.status_code == 200 and again.json()["ended_reason"] == "ended_by_technician"
        ended = [a for a in (await api.client.get(f"/api/v1/sessions/{session['id']}/audit")
                             ).json()["audit"] if a["event"] == "ended"]
        assert len(ended) == 1 and ended[0]["actor"] == "technician:alice"
        # The ended agent cannot come back: not over SSH (whose credential check the relay
        # keeps in memory once an agent has logged in) and not over HTTP.
        with pytest.raises(asyncssh.PermissionDenied):
            async with agent_connection(relay, activation, register=False):
                pass
        async with httpx.AsyncClient(base_url=relay.base_url) as client:
            refused = await client.post("/api/v1/agent/end", headers={
                "Authorization": f"Bearer {activation['session_id']}:"
                                 f"{activation['agent_secret']}"})
            assert refused.status_code == 401


async def test_customer_end_is_recorded_and_the_seat_freed(relay) -> None:
    async with Api(relay.base_url) as api:
        session = (await create(api)).json()
        activation = (await activate(relay.base_url, session)).json()
        bearer = {"Authorization": f"Bearer {activation['session_id']}:"
                                   f"{activation['agent_secret']}"}
        async with agent_connection(relay, activation) as agent, \
                httpx.AsyncClient(base_url=relay.base_url) as client:
            ended = await client.post("/api/v1/agent/end", headers=bearer)
            assert ended.status_code == 200 and ended.json()["ended_reason"] == "ended_by_customer"
            await wait_closed(agent)
        view = await api.session(session["id"])
        assert view["state"] == "ended" and view["ended_reason"] == "ended_by_customer"
        assert (await create(api)).status_code == 201  # the technician may invite again


async def test_timer_ends_sessions_as_they_expire_and_tells_the_agent(start_relay) -> None:
    relay = start_relay("--invite-ttl", "3s", "--session-lifetime", "2s")
    async with Api(relay.base_url, "alice") as alice, Api(relay.base_url, "bob") as bob:
        active = (await create(alice)).json()
        pending = (await create(bob)).json()
        activation = (await activate(relay.base_url, active)).json()
        view = await alice.session(active["id"])
        lifetime = (datetime.fromisoformat(view["expires_at"])
                    - datetime.fromisoformat(view["activated_at"]))
        assert lifetime.total_seconds() == 2
        async with agent_connection(relay, activation) as agent, EventStream(alice) as events:
            # Nobody asks the relay anything: its timer alone ends both sessions.
            ended = {}
            while len(ended) < 2:
                event = await events.until(lambda e: e["event"] == "ended")
                ended[event["data"]["session_id"]] = event["data"]["reason"]
            assert ended == {active["id"]: "expired", pending["id"]: "invite_expired"}
            await wait_closed(agent)
            assert "session ended: expired" in str(agent.agent.lost_because)


async def test_sessions_that_expired_while_the_relay_was_down_end_before_anything_else(
        start_relay) -> None:
    relay = start_relay("--invite-ttl", "2s", "--session-lifetime", "2s")
    async with Api(relay.base_url, "alice") as alice, Api(relay.base_url, "bob") as bob:
        active = (await create(alice)).json()
        pending = (await create(bob)).json()
        await activate(relay.base_url, active)
        view = await alice.session(active["id"])
        last_expiry = max(datetime.fromisoformat(view["expires_at"]),
                          datetime.fromisoformat(pending["invite_expires_at"]))
    relay.kill9()
    # Wait (bounded) until both have expired, with the relay down.
    await asyncio.sleep(max(0.0, min(10.0, last_expiry.timestamp() - time.time() + 0.2)))
    assert db_rows(relay.data_dir, "SELECT count(*) FROM sessions WHERE state != 'ended'") \
        == [(2,)]
    restarted = start_relay()
    async with Api(restarted.base_url, "alice") as alice:
        (first_login,) = db_rows(restarted.data_dir,
                                 "SELECT max(id) FROM audit WHERE event = 'login'")[0]
        ended = db_rows(restarted.data_dir,
                        "SELECT session_id, id, detail FROM audit WHERE event = 'ended' "
                        "ORDER BY id")
        assert {(sid, json.loads(detail)["reason"]) for sid, _, detail in ended} == {
            (active["id"], "expired"), (pending["id"], "invite_expired")}
        assert all(audit_id < first_login for _, audit_id, _ in ended)
        assert (await alice.session(active["id"]))["ended_reason"] == "expired"


async def test_event_stream_resumes_from_last_event_id_without_gaps(relay) -> None:
    async with Api(relay.base_url, "alice") as alice, Api(relay.base_url, "carol") as carol:
        async with EventStream(alice) as events:
            session = (await create(alice)).json()
            created = await events.until(lambda e: e["event"] == "created")
            assert created["data"]["session_id"] == session["id"]
        # Disconnected: these happen while the console is away.
        other = (await create(carol)).json()  # another company: never shown to alice
        activation = (await activate(relay.base_url, session)).json()
        async with agent_connection(relay, activation):
            await alice.wait_for(session["id"], lambda v: v["online"])
        await alice.wait_for(session["id"], lambda v: not v["online"])
        await wait_for_audit(alice, session["id"], "offline")
        await alice.client.post(f"/api/v1/sessions/{session['id']}/end")

        async with EventStream(alice, last_event_id=created["id"]) as resumed:
            await resumed.until(lambda e: e["event"] == "ended")
        seen = resumed.events
        assert [e["event"] for e in seen if e["event"] != "mail"] == [
            "activated", "online", "offline", "ended"]
        assert all(e["data"]["session_id"] == session["id"] for e in seen)
        assert other["id"] not in str(seen)
        ids = [e["id"] for e in seen]
        assert ids == sorted(ids) and ids[0] > created["id"]
        response = await alice.client.get("/api/v1/events?after=abc")
        assert response.status_code == 422 and response.json()["error"] == "invalid"


async def test_every_state_change_is_audited_and_the_audit_cannot_be_changed(relay) -> None:
    async with Api(relay.base_url) as api:
        session = (await create(api)).json()
        await activate(relay.base_url, session, "999999" if session["security_code"] !=
                       "999999" else "999998")
        activation = (await activate(relay.base_url, session)).json()
        async with agent_connection(relay, activation):
            await api.wait_for(session["id"], lambda v: v["online"])
        await api.wait_for(session["id"], lambda v: not v["online"])
        await wait_for_audit(api, session["id"], "offline")
        await api.client.post(f"/api/v1/sessions/{session['id']}/end")
        audit = (await api.client.get(f"/api/v1/sessions/{session['id']}/audit")).json()["audit"]
    events = [(a["event"], a["outcome"]) for a in audit if a["event"] != "mail"]
    assert events == [("session_created", "ok"), ("code_attempt", "wrong_code"),
                      ("activated", "ok"), ("online", "ok"), ("offline", "ok"), ("ended", "ok")]
    assert all(a["at"] and a["actor"] for a in audit)
    # Not even the database's owner (or superuser) may change it.
    changes = ["UPDATE audit SET outcome = 'ok'", "DELETE FROM audit"]
    if os.environ.get("ADHOC_DATABASE"):
        changes.append("TRUNCATE audit")
    for statement in changes:
        with pytest.raises(Exception, match="append-only"):
            db_rows(relay.data_dir, statement)
    assert len(db_rows(relay.data_dir, "SELECT id FROM audit WHERE session_id = ?",
                       (session["id"],))) == len(audit)
