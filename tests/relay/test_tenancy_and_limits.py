"""THREATS.md "Tenancy, limits, plans": other companies' ids, the plan, seats and live-session
limits under concurrency, a busy database, and the features each plan grants."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading

import asyncpg
import asyncssh
import httpx
import pytest
from sqlalchemy import make_url

from common.transport import pinned
from tests.relay.conftest import activate, create, db_rows, join_token
from tests.support import PASSWORD, Api, run_cli

ON_BOTH_ENGINES = True  # what this module tests is decided by the store


async def test_another_companys_ids_are_not_found_in_every_route(relay) -> None:
    async with Api(relay.base_url, "alice") as alice, Api(relay.base_url, "carol") as carol:
        theirs = (await create(alice)).json()
        sid = theirs["id"]
        before = await alice.wait_for(sid, lambda v: v["mail_status"] == "outbox")
        audit_before = (await alice.client.get(f"/api/v1/sessions/{sid}/audit")).json()
        requests = [
            ("GET", f"/api/v1/sessions/{sid}"), ("POST", f"/api/v1/sessions/{sid}/end"),
            ("GET", f"/api/v1/sessions/{sid}/audit"), ("POST", f"/api/v1/sessions/{sid}/code"),
            ("GET", f"/api/v1/sessions/{sid}/invitation"),
            ("GET", f"/api/v1/sessions/{sid.upper()}"),
            ("POST", "/api/v1/admin/technicians/alice/disable"),
            ("POST", "/api/v1/admin/technicians/bob/enable"),
        ]
        for method, path in requests:
            response = await carol.client.request(method, path)
            assert response.status_code == 404, (path, response.text)
            assert response.json()["error"] == "not_found"
        reset = await carol.client.post("/api/v1/admin/technicians/bob/reset-password",
                                        json={"password": "a-new-password-1"})
        assert reset.status_code == 404
        listed = (await carol.client.get("/api/v1/sessions")).json()["sessions"]
        assert sid not in {s["id"] for s in listed}
        names = {t["login"] for t in (await carol.client.get(
            "/api/v1/admin/technicians")).json()["technicians"]}
        assert names == {"carol"}

        # Nothing changed for Acme: same session, same audit, same technicians.
        assert await alice.session(sid) == before
        assert (await alice.client.get(f"/api/v1/sessions/{sid}/audit")).json() == audit_before
        async with Api(relay.base_url, "bob") as bob:
            assert (await bob.client.get("/api/v1/me")).status_code == 200

        # Over SSH, carol cannot reach Acme's session either (even once it is active).
        activation = (await activate(relay.base_url, theirs)).json()
        info = await carol.relay_info()
        async with asyncssh.connect(
                relay.ssh_host, relay.ssh_port, username="carol", password=carol.token,
                known_hosts=pinned(info["host_key"]), client_keys=None, agent_path=None,
                config=None) as outer:
            with pytest.raises(asyncssh.ChannelOpenError) as refused:
                await outer.open_connection(activation["session_id"], 22)
            assert "no such session" in str(refused.value.reason)
        tunnels = [a for a in (await alice.client.get(f"/api/v1/sessions/{sid}/audit")).json()[
            "audit"] if a["event"] == "tunnel"]
        assert tunnels == []


async def test_trial_plan_cannot_create_a_session(relay) -> None:
    async with Api(relay.base_url, "tina") as tina:
        response = await create(tina)
        assert response.status_code == 403
        assert response.json()["error"] == "plan"
        assert "trial plan has no ad hoc support" in response.json()["detail"]
        assert (await tina.client.get("/api/v1/sessions")).json()["sessions"] == []


async def test_features_follow_the_plan(relay) -> None:
    async with Api(relay.base_url, "ben") as ben:
        session = (await create(ben)).json()
        granted = (await activate(relay.base_url, session)).json()["features"]
        assert "files" not in granted and "dashboard" not in granted and "shell" in granted
        assert "forward" not in granted
        assert (await ben.session(session["id"]))["features"] == granted
    async with Api(relay.base_url, "carol") as carol:
        session = (await create(carol)).json()
        granted = (await activate(relay.base_url, session)).json()["features"]
        assert {"files", "dashboard", "shell", "forward"} <= set(granted)


async def test_limit_errors_say_which_limit_and_what_to_do(relay) -> None:
    async with Api(relay.base_url, "alice") as alice, Api(relay.base_url, "bob") as bob:
        assert (await create(alice)).status_code == 201
        second = await create(alice)
        assert second.status_code == 409 and second.json()["error"] == "limit"
        assert second.json()["detail"].startswith("technician limit")
        assert "end it" in second.json()["detail"]
        # The administrator takes the seats away on the command line while the relay runs.
        run_cli(relay.data_dir, "company", "set-seats", "Acme", "1")
        no_seat = await create(bob)
        assert no_seat.status_code == 402 and no_seat.json()["error"] == "no_seat"
        assert "ask your administrator for more seats" in no_seat.json()["detail"]
        me = (await bob.client.get("/api/v1/me")).json()
        assert me["limits"]["seats"] == 1 and me["limits"]["live_for_company"] == 1


async def test_sixty_concurrent_creates_never_exceed_a_limit(start_relay) -> None:
    relay = start_relay("--login-rate", "1000/1m")
    logins = [f"crowd{i}" for i in range(10)]
    async with Api(relay.base_url, "alice") as admin:
        for login in logins:
            added = await admin.client.post("/api/v1/admin/technicians", json={
                "login": login, "email": f"{login}@example.com", "password": PASSWORD})
            assert added.status_code == 201, added.text
    # Acme: plus, 3 seats, company limit 5.
    apis = [Api(relay.base_url, login) for login in logins]
    async with contextlib.AsyncExitStack() as stack:
        for api in apis:
            await stack.enter_async_context(api)
        answers = await asyncio.gather(*(create(api, f"c{i}-{j}@example.com")
                                         for i, api in enumerate(apis) for j in range(6)))
    codes = sorted(r.status_code for r in answers)
    assert codes.count(201) == 3, codes
    assert set(codes) <= {201, 402, 409}, [r.text for r in answers if r.status_code >= 500]
    for response in answers:
        if response.status_code != 201:
            assert response.json()["error"] in ("no_seat", "limit")
            assert "locked" not in response.text
    live = db_rows(relay.data_dir, "SELECT technician_id FROM sessions "
                                   "WHERE state IN ('pending', 'active')")
    assert len(live) == 3 and len(set(live)) == 3
    refused = db_rows(relay.data_dir, "SELECT count(*) FROM audit WHERE event = "
                                      "'session_create' AND outcome = 'refused'")
    assert refused == [(57,)]


async def test_a_busy_database_is_waited_for_not_reported_as_a_limit(relay, engine) -> None:
    """Another process (an admin command, a backup, a report) holds what a create needs for a
    moment: SQLite's write lock, or on PostgreSQL the company's row."""
    holding, release = threading.Event(), threading.Event()

    def hold_sqlite_write_lock() -> None:
        db = sqlite3.connect(relay.data_dir / "relay.db", timeout=10, isolation_level=None)
        try:
            db.execute("BEGIN IMMEDIATE")
            holding.set()
            release.wait(30)
            db.execute("COMMIT")
        finally:
            db.close()

    async def hold_company_row() -> None:
        url = make_url(os.environ["ADHOC_DATABASE"])
        db = await asyncpg.connect(host=url.query["host"], user="postgres",
                                   database=url.database)
        try:
            async with db.transaction():
                await db.execute("SELECT * FROM companies WHERE name = 'Acme' FOR UPDATE")
                holding.set()
                await asyncio.to_thread(release.wait, 30)
        finally:
            await db.close()

    holder = threading.Thread(target=hold_sqlite_write_lock if engine == "sqlite" else
                              lambda: asyncio.run(hold_company_row()))
    async with Api(relay.base_url) as api:
        holder.start()
        try:
            assert await asyncio.to_thread(holding.wait, 10)
            pending = asyncio.ensure_future(create(api))
            done, _ = await asyncio.wait({pending}, timeout=1.0)
            assert not done  # it waits for the lock rather than failing
            release.set()
            response = await pending
            assert response.status_code == 201, response.text
        finally:
            release.set()
            holder.join(10)


async def test_a_deadlock_is_retried_not_reported(relay, engine) -> None:
    """PostgreSQL aborts one transaction of a deadlock; when it is the relay's, the relay runs
    it again. Another client takes the lock that orders event ids, then waits for the session
    row the relay's end holds while the relay waits for that lock; with its own deadlock
    timeout longer, the relay's side is the one PostgreSQL aborts."""
    if engine != "postgresql":
        pytest.skip("SQLite has one writer at a time: no deadlocks")
    from relay.db.migrate import ADVISORY_CLASS
    from relay.store import EVENT_ORDER_LOCK

    url = make_url(os.environ["ADHOC_DATABASE"])
    async with Api(relay.base_url) as api:
        session = (await create(api)).json()
        await api.wait_for(session["id"], lambda v: v["mail_status"] == "outbox")
        other = await asyncpg.connect(host=url.query["host"], user="postgres",
                                      database=url.database)
        try:
            async with other.transaction():
                await other.execute("SET LOCAL deadlock_timeout = '60s'")
                await other.execute("SELECT pg_advisory_xact_lock($1, $2)", ADVISORY_CLASS,
                                    EVENT_ORDER_LOCK)
                ending = asyncio.ensure_future(
                    api.client.post(f"/api/v1/sessions/{session['id']}/end"))
                async with asyncio.timeout(20):  # the relay's end now waits for our lock
                    while not await other.fetchval(
                            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                            "AND NOT granted"):
                        await asyncio.sleep(0.05)
                await other.execute("UPDATE sessions SET note = 'x' WHERE id = $1",
                                    session["id"])
            response = await ending
        finally:
            await other.close()
        assert response.status_code == 200 and response.json()["state"] == "ended", \
            response.text
        ended = [a for a in (await api.client.get(f"/api/v1/sessions/{session['id']}/audit")
                             ).json()["audit"] if a["event"] == "ended"]
        assert len(ended) == 1
    log = (relay.data_dir / "relay.log").read_text()
    assert "Traceback" not in log


async def test_disabled_company_and_technician_cannot_log_in(relay) -> None:
    run_cli(relay.data_dir, "company", "disable", "Beta")
    async with httpx.AsyncClient(base_url=relay.base_url) as client:
        refused = await client.post("/api/v1/login", json={"login": "carol",
                                                           "password": PASSWORD})
        assert refused.status_code == 401
    async with Api(relay.base_url, "bob") as bob:
        run_cli(relay.data_dir, "technician", "disable", "bob")
        assert (await bob.client.get("/api/v1/me")).status_code == 401  # token revoked


async def test_join_routes_never_reveal_another_link(relay) -> None:
    async with Api(relay.base_url, "alice") as alice:
        session = (await create(alice)).json()
    async with httpx.AsyncClient(base_url=relay.base_url) as client:
        token = join_token(session)
        for path in (f"/api/v1/join/{token}x", f"/api/v1/join/{token[:20]}",
                     f"/join/{token}x"):
            assert (await client.get(path)).status_code == 404
