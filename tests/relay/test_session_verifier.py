"""Sessions created with a password verifier instead of the password (what the console sends):
the host opens with the session password and refuses others, the relay refuses verifiers it
should not hand to a customer's computer, and the password never reaches the relay at all."""

from __future__ import annotations

import json
from pathlib import Path

import asyncssh
import httpx
import pytest
from argon2 import PasswordHasher, Type

from common.passwords import verifier_problem
from tests.relay.conftest import db_rows, stored
from tests.support import SESSION_PASSWORD, Api, new_agent, technician_ssh
from tui.client import RelayClient, RelayError

# OWASP's smallest argon2id setting, the weakest the relay takes with t=2 (and quick to make).
OWASP_MINIMUM = {"memory_cost": 19456, "time_cost": 2, "parallelism": 1}
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def make_verifier(password: str = SESSION_PASSWORD, **params) -> str:
    return PasswordHasher(**{**OWASP_MINIMUM, **params}).hash(password)


def with_parameters(verifier: str, parameters: str, *, version: str = "v=19") -> str:
    """The same salt and hash under other parameters: the relay only reads them, so a string
    costing 1 GiB need not be computed to be refused."""
    parts = verifier.split("$")
    parts[2], parts[3] = version, parameters
    return "$".join(parts)


async def create_with(api: Api, **secret: str) -> httpx.Response:
    return await api.client.post("/api/v1/sessions",
                                 json={"customer_email": "customer@example.com", **secret})


async def test_a_verifier_opens_the_host_with_the_session_password(relay, agents,
                                                                  tmp_path: Path) -> None:
    sent = make_verifier()
    async with Api(relay.base_url) as api:
        response = await create_with(api, password_verifier=sent)
        assert response.status_code == 201, response.text
        session = response.json()
        assert session["state"] == "pending" and len(session["security_code"]) == 6
        stored = db_rows(relay.data_dir, "SELECT password_verifier FROM sessions WHERE id = ?",
                         (session["id"],))
        assert stored == [(sent,)]

        agent = new_agent(agents, tmp_path, session)
        agent.start()
        await agent.wait_for_line("Connected to the relay")
        view = await api.wait_for(session["id"], lambda v: v["online"])
        async with technician_ssh(relay, api, view) as inner:
            result = await inner.run("echo opened-with-a-verifier", check=True)
            assert result.stdout.strip() == "opened-with-a-verifier"
        with pytest.raises(asyncssh.PermissionDenied):
            async with technician_ssh(relay, api, view, password=SESSION_PASSWORD + "x"):
                pass
        await agent.wait_for_line("wrong session password")


async def test_neither_both_and_unfit_verifiers_are_refused_with_what_to_send(relay) -> None:
    good = make_verifier()
    cases = [
        ({}, "send password_verifier"),
        ({"password": SESSION_PASSWORD, "password_verifier": good}, "not both"),
        ({"password": SESSION_PASSWORD, "password_verifier": None}, "leave the field out"),
        ({"password_verifier": make_verifier(type=Type.I)}, "argon2i hash: hash the session "
                                                            "password with argon2id"),
        ({"password_verifier": good.replace("$argon2id$", "$argon2d$")}, "argon2d hash"),
        ({"password_verifier": "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW"},
         "not an argon2id hash"),
        ({"password_verifier": "garbage"}, "not an argon2id hash"),
        ({"password_verifier": ""}, "not an argon2id hash"),
        ({"password_verifier": make_verifier(memory_cost=8192, time_cost=1)},
         "too weak (m=8192 KiB, t=1)"),
        ({"password_verifier": with_parameters(good, "m=19456,t=1,p=1")}, "too weak"),
        ({"password_verifier": with_parameters(good, "m=1048576,t=3,p=4")},
         "at most 262144 KiB (256 MiB)"),
        ({"password_verifier": with_parameters(good, "m=65536,t=11,p=4")}, "t=10"),
        ({"password_verifier": with_parameters(good, "m=65536,t=3,p=16")}, "p=8"),
        ({"password_verifier": with_parameters(good, "t=2,m=19456,p=1")}, "not an argon2id hash"),
        ({"password_verifier": with_parameters(good, "m=019456,t=2,p=1")},
         "not an argon2id hash"),
        ({"password_verifier": with_parameters(good, "m=19456,t=2,p=1", version="v=16")},
         "version 16"),
        ({"password_verifier": make_verifier(salt_len=8)}, "salt of 8 bytes"),
        ({"password_verifier": make_verifier(hash_len=8)}, "hash of 8 bytes"),
        ({"password_verifier": make_verifier(hash_len=400)}, "at most 512 characters"),
        ({"password_verifier": good.rsplit("$", 1)[0] + "$" + "!" * 43}, "not an argon2id hash"),
        # Base64 whose last character carries bits past the end: argon2 would never match it.
        ({"password_verifier": good[:-1] + B64[B64.index(good[-1]) | 1]},
         "not an argon2id hash"),
        ({"password_verifier": 42}, "password_verifier"),
    ]
    async with Api(relay.base_url) as api:
        for secret, mentions in cases:
            response = await create_with(api, **secret)
            assert response.status_code == 422, (secret, response.text)
            assert response.json()["error"] == "invalid"
            assert mentions in response.json()["detail"], (secret, response.json())
        assert (await api.client.get("/api/v1/sessions")).json()["sessions"] == []
        # None of that used up anything: a fit verifier still creates the session.
        assert (await create_with(api, password_verifier=good)).status_code == 201


def test_the_verifier_rules_at_their_edges() -> None:
    good = make_verifier()
    fit = [good, PasswordHasher().hash(SESSION_PASSWORD),
           with_parameters(good, "m=47104,t=1,p=1"), with_parameters(good, "m=262144,t=10,p=8")]
    assert [verifier_problem(v) for v in fit] == [None] * len(fit)
    unfit = [with_parameters(good, "m=47103,t=1,p=1"), with_parameters(good, "m=19455,t=2,p=1"),
             with_parameters(good, "m=262145,t=2,p=1"), with_parameters(good, "m=19456,t=0,p=1"),
             with_parameters(good, "m=19456,t=2,p=0"), with_parameters(good, "m=19456,t=2,p=9"),
             good + "\n", " " + good, "x" * 600]
    assert all(verifier_problem(v) for v in unfit)


class Wiretap(httpx.AsyncBaseTransport):
    """The console's real network transport, keeping a copy of each request it sends."""

    def __init__(self) -> None:
        self.network = httpx.AsyncHTTPTransport()
        self.sent: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(request)
        return await self.network.handle_async_request(request)

    async def aclose(self) -> None:
        await self.network.aclose()


async def test_the_console_sends_a_verifier_and_the_relay_never_holds_the_password(
        relay) -> None:
    weak = "abcdefghij"
    async with Api(relay.base_url) as api:
        token = api.token
        relay_says = (await create_with(api, password=weak)).json()
    tap = Wiretap()
    client = RelayClient(relay.base_url, token, transport=tap)
    try:
        # A weak password is refused in the console, in the words the relay would use.
        with pytest.raises(RelayError) as refused:
            await client.create_session("customer@example.com", weak)
        assert refused.value.status == 422
        assert {"error": refused.value.code, "detail": refused.value.detail} == relay_says
        assert tap.sent == []
        created = await client.create_session("customer@example.com", SESSION_PASSWORD,
                                              "printer")
    finally:
        await client.aclose()
    assert created["state"] == "pending" and created["note"] == "printer"
    [request] = tap.sent
    body = json.loads(request.content)
    assert sorted(body) == ["customer_email", "note", "password_verifier"]
    assert SESSION_PASSWORD.encode() not in request.content
    assert verifier_problem(body["password_verifier"]) is None
    assert PasswordHasher().verify(body["password_verifier"], SESSION_PASSWORD)

    for moment in ("running", "stopped"):
        found = stored(relay.data_dir)
        assert "relay.log" in found and ("relay.db" in found or "table sessions" in found), \
            (moment, sorted(found))
        assert not [where for where, data in found.items() if SESSION_PASSWORD.encode() in data]
        # The search looks where the relay keeps sessions: the verifier is there.
        assert any(body["password_verifier"].encode() in data for data in found.values())
        relay.stop()
