"""Bad input, odd paths, rate limits, secrets kept out of the files, and kill -9 during writes."""

from __future__ import annotations

import asyncio
import random
import re
import time
from pathlib import Path

import asyncssh
import httpx

from common.secret import Secret, reveal
from common.transport import pinned
from relay.config import RelaySettings
from relay.service import RelayService
from relay.store import Store
from tests.relay.conftest import (
    activate,
    agent_connection,
    create,
    db_rows,
    join_token,
    stored,
)
from tests.support import (
    PASSWORD,
    SESSION_PASSWORD,
    Api,
    add_active_session,
    provision_store,
)


async def test_bad_input_is_refused_with_a_clear_422(relay) -> None:
    async with Api(relay.base_url) as api:
        cases = [
            ({"customer_email": "a@example.com", "password": SESSION_PASSWORD, "x": 1}, "x"),
            ({"customer_email": 42, "password": SESSION_PASSWORD}, "customer_email"),
            ({"customer_email": "a@example.com", "password": ["x"]}, "password"),
            ({"customer_email": "not an email", "password": SESSION_PASSWORD},
             "is not an email address"),
            ({"customer_email": "a@example.com", "password": "short"}, "at least 8"),
            ({"customer_email": "a@example.com", "password": "password"}, "password"),
            ({"customer_email": "a@example.com", "password": "abcdefghij"}, "too simple"),
            ({"customer_email": "a@example.com"}, "password"),
            ({"customer_email": "a@example.com", "password": SESSION_PASSWORD,
              "note": "n" * 501}, "note"),
        ]
        for body, mentions in cases:
            response = await api.client.post("/api/v1/sessions", json=body)
            assert response.status_code == 422, (body, response.text)
            assert response.json()["error"] == "invalid"
            assert mentions in response.json()["detail"], response.json()
        not_json = await api.client.post("/api/v1/sessions", content=b"{nope",
                                         headers={"content-type": "application/json"})
        assert not_json.status_code == 422 and not_json.json()["error"] == "invalid"
        assert (await api.client.get("/api/v1/sessions")).json()["sessions"] == []


async def test_oversized_and_deeply_nested_json_are_rejected_cleanly(relay) -> None:
    async with Api(relay.base_url) as api:
        other = (await create(api)).json()
        huge = {"customer_email": "a@example.com", "password": SESSION_PASSWORD,
                "note": "x" * 200_000}
        too_big = await api.client.post("/api/v1/sessions", json=huge)
        assert too_big.status_code == 413 and too_big.json()["error"] == "too_large"

        async def chunks():
            for _ in range(100):
                yield b" " * 10_000
        streamed = await api.client.post("/api/v1/sessions", content=chunks(),
                                         headers={"content-type": "application/json"})
        assert streamed.status_code == 413

        for body in (b"[" * 30_000 + b"]" * 30_000, b'{"a":' * 5_000 + b"1" + b"}" * 5_000,
                     b"[" * 60_000):
            deep = await api.client.post("/api/v1/sessions", content=body,
                                         headers={"content-type": "application/json"})
            assert deep.status_code == 422, deep.text
            assert "nests deeper" in deep.json()["detail"]
        # Brackets inside strings are text, not nesting.
        bracketed = await api.client.post(
            "/api/v1/agent/audit", json={"events": [{"event": "x", "path": "[" * 100}]},
            headers={"Authorization": "Bearer nobody:nothing"})
        assert bracketed.status_code == 401
        # The relay is unharmed: other sessions and requests carry on.
        assert (await api.session(other["id"]))["state"] == "pending"
        assert (await api.client.get("/api/v1/me")).status_code == 200


async def test_path_variants_on_unauthenticated_routes_are_404_or_401(relay) -> None:
    async with Api(relay.base_url) as api:
        token = join_token((await create(api)).json())
    paths = []
    for route in ("/api/v1/relay", f"/api/v1/join/{token}", f"/join/{token}",
                  "/api/v1/login", f"/api/v1/join/{token}/activate", "/api/v1/sessions"):
        head, _, tail = route.rpartition("/")
        paths += [f"/{route}", route.upper(), f"{route};a", f"{route}/", f"{head}/%2e%2e/{tail}",
                  f"{head}/./{tail}", f"{route}%00", f"/api/v1/../..{route}", f"{route}/..%2f"]
    paths += ["/api/v1/join/..%2f..%2fapi%2fv1%2fsessions", "/join/..", "/join/%2e%2e/"]
    host, port = relay.base_url.removeprefix("http://").rsplit(":", 1)
    for path in paths:
        for method in ("GET", "POST"):
            status, body = await raw_request(host, int(port), method, path)
            assert status in (401, 404, 405), (method, path, status, body)
            assert b'"error"' in body or status == 404, (path, body)


async def raw_request(host: str, port: int, method: str, path: str) -> tuple[int, bytes]:
    """One HTTP/1.1 request with the path exactly as given (httpx would normalise it)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: "
                     "application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
                     .encode())
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), 20)
    finally:
        writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_login_and_activation_are_rate_limited_per_address(start_relay) -> None:
    relay = start_relay("--login-rate", "3/1h", "--activate-rate", "4/1h")
    async with httpx.AsyncClient(base_url=relay.base_url) as client:
        wrong = {"login": "alice", "password": "not-the-password"}
        answers = [await client.post("/api/v1/login", json=wrong) for _ in range(4)]
        assert [r.status_code for r in answers] == [401, 401, 401, 429]
        assert answers[3].json()["error"] == "rate_limited"
        assert int(answers[3].headers["Retry-After"]) > 0
        assert "wait" in answers[3].json()["detail"]
        # Even the right password waits now: guessing gains nothing.
        right = await client.post("/api/v1/login", json={"login": "alice", "password": PASSWORD})
        assert right.status_code == 429
    refused = db_rows(relay.data_dir, "SELECT count(*) FROM audit WHERE event = 'login' "
                                      "AND outcome = 'rate_limited'")
    assert refused == [(1,)]  # audited once per burst, not once per request

    relay2 = start_relay("--activate-rate", "4/1h")
    async with Api(relay2.base_url, "carol") as carol:
        session = (await create(carol)).json()
        tries = [await activate(relay2.base_url, session, "000000" if session["security_code"]
                                != "000000" else "000001") for _ in range(3)]
        tries.append(await activate(relay2.base_url, session))  # the 4th: right code, allowed
        assert [r.status_code for r in tries] == [403, 403, 403, 200]
        fifth = await activate(relay2.base_url, session)
        assert fifth.status_code == 429 and "Retry-After" in fifth.headers


async def test_codes_tokens_and_passwords_never_reach_files_logs_or_audit(start_relay) -> None:
    relay = start_relay("--login-rate", "1000/1m")
    secrets: dict[str, str] = {"technician password": PASSWORD,
                               "session password": SESSION_PASSWORD}
    async with Api(relay.base_url) as api:
        secrets["api token"] = api.token
        wrong_password = "Wrong-guess-31337"
        async with httpx.AsyncClient(base_url=relay.base_url) as client:
            await client.post("/api/v1/login", json={"login": "alice", "password": wrong_password})
        secrets["mistyped password"] = wrong_password
        session = (await create(api)).json()
        secrets["first code"] = session["security_code"]
        secrets["join token"] = join_token(session)
        wrong_code = f"{(int(session['security_code']) + 1) % 10**6:06d}"
        await activate(relay.base_url, session, wrong_code)
        reissued = (await api.client.post(f"/api/v1/sessions/{session['id']}/code")).json()
        session["security_code"] = secrets["second code"] = reissued["security_code"]
        activation = (await activate(relay.base_url, session)).json()
        secrets["agent secret"] = activation["agent_secret"]
        async with agent_connection(relay, activation):
            await api.wait_for(session["id"], lambda v: v["online"])
            async with asyncssh.connect(
                    relay.ssh_host, relay.ssh_port, username="alice", password=PASSWORD,
                    known_hosts=pinned(activation["relay_host_key"]), client_keys=None,
                    agent_path=None, config=None) as outer:
                _reader, writer = await outer.open_connection(session["id"], 22)
                writer.close()
        async with httpx.AsyncClient(base_url=relay.base_url) as client:
            await client.post("/api/v1/agent/audit", json={"events": [
                {"event": "shell", "actor": "alice", "command": "ls"}]}, headers={
                "Authorization": f"Bearer {session['id']}:{activation['agent_secret']}"})
        new_password = "Reset-password-2718"
        await api.client.post("/api/v1/admin/technicians", json={
            "login": "erin", "email": "erin@example.com", "password": new_password})
        await api.client.post("/api/v1/admin/technicians/erin/reset-password",
                              json={"password": new_password + "x"})
        secrets["new technician password"] = new_password
        await api.client.post(f"/api/v1/sessions/{session['id']}/end")
        audit_text = str((await api.client.get(f"/api/v1/sessions/{session['id']}/audit")).json())

    def files() -> dict[str, bytes]:
        # Not the outbox: an invitation holds its join link by design (docs/ADMIN.md).
        found = {where: data for where, data in stored(relay.data_dir).items()
                 if not where.startswith("outbox/")}
        found["audit rows"] = str(db_rows(relay.data_dir, "SELECT * FROM audit")).encode()
        found["audit route"] = audit_text.encode()
        return found

    def check(found: dict[str, bytes]) -> None:
        assert ("relay.db" in found or "table sessions" in found) and "relay.log" in found
        for where, data in found.items():
            for what, secret in secrets.items():
                # Codes are six digits: only a standalone match counts, not part of a number.
                pattern = rb"(?<!\d)" + re.escape(secret.encode()) + rb"(?!\d)"
                assert not re.search(pattern, data), f"{what} found in {where}"

    check(files())  # while running, with the write-ahead log in place
    relay.stop()
    check(files())


async def test_kill_9_during_writes_loses_nothing_acknowledged(start_relay, data_dir: Path,
                                                                engine: str) -> None:
    rng = random.Random()
    acknowledged: dict[str, dict] = {}  # session id -> what the relay confirmed
    for _round in range(3):
        relay = start_relay("--login-rate", "1000/1m")
        stop = asyncio.Event()

        async def writer(login: str, relay=relay, stop=stop) -> None:
            try:
                async with Api(relay.base_url, login) as api:
                    while not stop.is_set():
                        created = await create(api)
                        if created.status_code != 201:
                            await asyncio.sleep(0.05)
                            continue
                        view = created.json()
                        acknowledged[view["id"]] = {
                            "state": "pending", "invite_expires_at": view["invite_expires_at"]}
                        if rng.random() < 0.5:
                            ended = await api.client.post(f"/api/v1/sessions/{view['id']}/end")
                            if ended.status_code == 200:
                                acknowledged[view["id"]]["state"] = "ended"
            except (httpx.TransportError, AssertionError):
                pass  # the relay died under us: expected

        before = len(acknowledged)
        tasks = [asyncio.create_task(writer(login)) for login in ("alice", "bob", "carol")]
        # Kill at a random moment once writes are flowing (a slow machine takes a while).
        async with asyncio.timeout(60):
            while len(acknowledged) == before:
                await asyncio.sleep(0.02)
        await asyncio.sleep(rng.uniform(0, 0.6))
        relay.kill9()
        stop.set()
        await asyncio.gather(*tasks)

        if engine == "sqlite":  # (PostgreSQL was not killed: only the relay was)
            assert db_rows(data_dir, "PRAGMA integrity_check") == [("ok",)]
        # Sessions left pending by the round before stay pending: end them for a fresh round.
        restarted = start_relay("--login-rate", "1000/1m")
        for login in ("alice", "bob", "carol"):
            async with Api(restarted.base_url, login) as api:
                for view in (await api.client.get("/api/v1/sessions")).json()["sessions"]:
                    if view["id"] in acknowledged:
                        expected = acknowledged[view["id"]]
                        assert view["invite_expires_at"] == expected["invite_expires_at"]
                        if expected["state"] == "ended":
                            assert view["state"] == "ended"
                    if view["state"] == "pending":
                        await api.client.post(f"/api/v1/sessions/{view['id']}/end")
                        if view["id"] in acknowledged:
                            acknowledged[view["id"]]["state"] = "ended"
        restarted.stop()
    rows = dict(db_rows(data_dir, "SELECT id, state FROM sessions"))
    assert set(acknowledged) <= set(rows)
    assert acknowledged, "no write was acknowledged before the kills"
    # Every acknowledged end stayed an end (the listing above only saw recent sessions).
    assert all(rows[i] == "ended" for i, a in acknowledged.items() if a["state"] == "ended")
    assert db_rows(data_dir, "SELECT name, plan, seats FROM companies ORDER BY name") == [
        ("Acme", "plus", 3), ("Basic", "base", 2), ("Beta", "premier", 3), ("Trial Co", "trial", 2)]


async def test_nul_characters_are_stored_as_text_not_a_server_error(relay) -> None:
    """PostgreSQL refuses NUL in text (SQLite keeps it). A hostile login name, note or host
    name carrying one is answered, stored and audited like any other, on both engines."""
    async with httpx.AsyncClient(base_url=relay.base_url) as client:
        refused = await client.post("/api/v1/login",
                                    json={"login": "ev\u0000il", "password": "not-the-one"})
        assert refused.status_code == 401, refused.text
    async with Api(relay.base_url) as api:
        created = await api.client.post("/api/v1/sessions", json={
            "customer_email": "customer@example.com", "password": SESSION_PASSWORD,
            "note": "printer\u0000upstairs"})
        assert created.status_code == 201, created.text
        session = created.json()
        activated = await activate(relay.base_url, session, hostname="pc\u0000\u001b]52;evil")
        assert activated.status_code == 200, activated.text
        view = await api.session(session["id"])
        assert view["note"] == "printer\ufffdupstairs"
        assert view["host"]["hostname"] == "pc\ufffd\u001b]52;evil"
    actors = db_rows(relay.data_dir, "SELECT actor FROM audit WHERE event = 'login'")
    assert ("login:ev\ufffdil@127.0.0.1",) in actors


async def test_a_new_sessions_code_and_link_never_show_in_its_repr(tmp_path: Path) -> None:
    """What create hands back (to the API, to a log line or a crash report by mistake) names
    the code, the join token and the link only when revealed."""
    await provision_store(tmp_path, [("Acme", "plus", 3, ["alice"])])
    store = await Store.open(tmp_path / "relay.db")
    service = RelayService(RelaySettings(data_dir=tmp_path), store, b"k" * 32, "ssh-ed25519 A")
    try:
        tech = await store.technician_by_login("alice")
        created = await service.create_session(tech, "c@example.com", Secret(SESSION_PASSWORD),
                                               "")
        shown = repr(created) + str(created) + f"{created}"
        for secret in (created.security_code, created.join_token, created.join_url):
            assert reveal(secret) and reveal(secret) not in shown
        assert reveal(created.join_token) in reveal(created.join_url)
    finally:
        await service.close()
        await store.close()


async def test_an_ended_sessions_host_problem_is_forgotten(tmp_path: Path) -> None:
    """What an offline agent said about its network is kept in memory until it comes online
    or its session ends: a relay that runs for months does not keep one per ended session."""
    logins = ["alice", "bob", "carol"]  # one live session each
    await provision_store(tmp_path, [("Acme", "plus", 3, logins)])
    store = await Store.open(tmp_path / "relay.db")
    service = RelayService(RelaySettings(data_dir=tmp_path), store, b"k" * 32, "ssh-ed25519 A")
    try:
        techs = [await store.technician_by_login(login) for login in logins]
        ids = [await add_active_session(store, tech, f"secret-{n}")
               for n, tech in enumerate(techs)]
        for n, session_id in enumerate(ids):
            answer = await service.agent_problem(Secret(f"{session_id}:secret-{n}"),
                                                 "name not found")
            assert answer == {"recorded": True}
        view = service.session_view(await store.session(ids[0]))
        assert view["host_problem"]["text"] == "name not found"  # shown while it matters
        await service.end_session(techs[0], ids[0])  # by the technician
        await service.agent_ends(Secret(f"{ids[1]}:secret-1"))  # by the customer
        await store.end_session(ids[2], "expired", time.time(), "relay")  # by another relay
        service.disconnect_agent(ids[2], "expired")  # (relay/cluster/nodes.py follows it)
        assert service.host_problems == {}
    finally:
        await service.close()
        await store.close()
