"""Passwords, codes and agent secrets are held as `Secret` from the edge that receives them
(the relay's SSH password handler, the API's request models) to the check: whatever carries
one shows `Secret('********')`, never the value, and a right one still passes while a wrong
one fails (a real relay, real SSH and HTTP logins)."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncssh
import httpx
import pytest

from common.secret import REDACTED, Secret
from relay.config import RelaySettings
from relay.server import RelayServer
from relay.service import RelayService
from tests.support import PASSWORD, SESSION_PASSWORD, Api, add_active_session, provision_store

AGENT_SECRET = "agent-secret-7f3a9c"
SEEN = ("agent_may_connect", "agent_for_secret", "agent_for_bearer", "login",
        "technician_for_token", "technician_for_ssh_password", "create_session", "activate",
        "add_technician", "reset_technician_password")


@pytest.fixture
async def relay(tmp_path: Path) -> AsyncIterator[RelayService]:
    await provision_store(tmp_path, [("Acme", "plus", 5, ["alice", "bob"])])
    server = RelayServer(RelaySettings(data_dir=tmp_path, http_port=0, ssh_port=0))
    service = await server.start()
    try:
        yield service
    finally:
        await server.stop()


def record_calls(service: RelayService) -> list[tuple[str, tuple, dict]]:
    """Every call of the use cases that check a secret, with its arguments, passed through."""
    calls: list[tuple[str, tuple, dict]] = []
    for name in SEEN:
        method = getattr(service, name)

        @functools.wraps(method)
        async def recorded(*args, _name=name, _method=method, **kwargs):
            calls.append((_name, args, kwargs))
            return await _method(*args, **kwargs)

        setattr(service, name, recorded)
    return calls


def assert_held(calls, name: str, *values: str) -> None:
    """`name` was called, and each of `values` reached it only inside a Secret."""
    made = [(args, kwargs) for called, args, kwargs in calls if called == name]
    assert made, f"{name} was not called"
    for args, kwargs in made:
        shown = repr((args, kwargs)) + str(args) + f"{kwargs}"
        for value in values:
            assert value not in shown, f"{name} got {value!r} in the clear: {shown}"
        held = [a for a in (*args, *kwargs.values()) if isinstance(a, Secret)]
        assert held and all(repr(s) == str(s) == REDACTED for s in held), shown


async def ssh_login(service: RelayService, username: str, password: str) -> bool:
    try:
        conn = await asyncssh.connect(
            "127.0.0.1", service.ssh_port, username=username, password=password,
            known_hosts=None, client_keys=None, agent_path=None, preferred_auth="password",
            config=None)
    except asyncssh.PermissionDenied:
        return False
    conn.close()
    await conn.wait_closed()
    return True


async def test_an_agent_secret_is_held_as_a_secret_over_ssh_and_http(relay) -> None:
    alice = (await relay.store.technicians())[0]
    session_id = await add_active_session(relay.store, alice, AGENT_SECRET)
    calls = record_calls(relay)
    assert await ssh_login(relay, session_id, AGENT_SECRET)
    assert not await ssh_login(relay, session_id, AGENT_SECRET + "x")
    assert_held(calls, "agent_may_connect", AGENT_SECRET)
    async with httpx.AsyncClient(base_url=relay.base_url) as http:
        for secret, status in ((AGENT_SECRET, 200), ("wrong-secret", 401)):
            answer = await http.post("/api/v1/agent/problem", json={"problem": None},
                                     headers={"Authorization":
                                              f"Bearer {session_id}:{secret}"})
            assert answer.status_code == status, answer.text
    assert_held(calls, "agent_for_bearer", AGENT_SECRET, "wrong-secret")
    assert_held(calls, "agent_for_secret", AGENT_SECRET, "wrong-secret")


async def test_passwords_and_codes_are_held_as_secrets(relay) -> None:
    calls = record_calls(relay)
    async with httpx.AsyncClient(base_url=relay.base_url) as http:
        wrong = await http.post("/api/v1/login",
                                json={"login": "alice", "password": "not-the-password"})
        assert wrong.status_code == 401
    assert_held(calls, "login", "not-the-password")
    assert await ssh_login(relay, "alice", PASSWORD)
    assert not await ssh_login(relay, "alice", "not-the-password")
    assert_held(calls, "technician_for_ssh_password", PASSWORD, "not-the-password")
    async with Api(relay.base_url) as api:
        assert_held(calls, "login", PASSWORD)
        created = await api.create_session()
        assert_held(calls, "create_session", SESSION_PASSWORD)
        assert_held(calls, "technician_for_token", api.token)
        token = urlsplit(created["join_url"]).path.rstrip("/").rsplit("/", 1)[-1]
        code = created["security_code"]
        body = {"host_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIC8Q8UmtNCJe2k1Ff0cnyZDqBCBxF"
                            "kRwDEk8lPkApQjJ", "hostname": "pc"}
        wrong = await api.client.post(f"/api/v1/join/{token}/activate",
                                      json={**body, "code": "000-000"})
        assert wrong.status_code == 403, wrong.text
        right = await api.client.post(f"/api/v1/join/{token}/activate",
                                      json={**body, "code": code})
        assert right.status_code == 200, right.text
        assert_held(calls, "activate", code, "000-000")
        added = await api.client.post("/api/v1/admin/technicians", json={
            "login": "carol", "email": "carol@example.com", "password": "Carol-pass-4821"})
        assert added.status_code == 201, added.text
        assert_held(calls, "add_technician", "Carol-pass-4821")
        reset = await api.client.post("/api/v1/admin/technicians/carol/reset-password",
                                      json={"password": "Carol-pass-9913"})
        assert reset.status_code == 200, reset.text
        assert_held(calls, "reset_technician_password", "Carol-pass-9913")
    assert await ssh_login(relay, "carol", "Carol-pass-9913")
    assert not await ssh_login(relay, "carol", "Carol-pass-4821")
