"""THREATS.md "Links and the security code": the code, the count of wrong codes, re-issuing,
links used twice or too late, racing agents, and what the agent is shown."""

from __future__ import annotations

import asyncio
import secrets

import asyncssh
import httpx

from tests.relay.conftest import (
    activate,
    agent_connection,
    create,
    db_rows,
    db_write,
    join_token,
)
from tests.support import Api


def wrong(code: str) -> str:
    return f"{(int(code) + 1) % 10**6:06d}"


async def test_five_wrong_codes_burn_the_link_even_across_a_reissued_code(relay) -> None:
    async with Api(relay.base_url) as api:
        session = (await create(api)).json()
        answers = []
        for attempt in range(1, 6):
            if attempt == 3:
                # The technician reads out a new code: the count of wrong ones is kept.
                reissued = await api.client.post(f"/api/v1/sessions/{session['id']}/code")
                assert reissued.status_code == 200, reissued.text
                assert reissued.json()["code_attempts"] == 2
                assert reissued.json()["attempts_left"] == 3
                old_code, session["security_code"] = (session["security_code"],
                                                      reissued.json()["security_code"])
                # The old code no longer works, and that try counts too.
                answers.append(await activate(relay.base_url, session, old_code))
                continue
            answers.append(await activate(relay.base_url, session,
                                          wrong(session["security_code"])))
        assert [r.status_code for r in answers] == [403, 403, 403, 403, 410]
        assert [r.json()["error"] for r in answers] == ["wrong_code"] * 4 + ["link_burnt"]
        assert "1 try left" in answers[3].json()["detail"]

        sixth = await activate(relay.base_url, session)  # the right code, too late
        assert sixth.status_code == 410 and sixth.json()["error"] == "link_used"

        view = await api.session(session["id"])
        assert view["state"] == "ended" and view["ended_reason"] == "code_attempts"
        audit = (await api.client.get(f"/api/v1/sessions/{session['id']}/audit")).json()["audit"]
        attempts = [a for a in audit if a["event"] == "code_attempt"]
        assert [a["outcome"] for a in attempts] == ["wrong_code"] * 5 + ["refused"]
        assert [a["event"] for a in audit if a["event"] in ("code_reissued", "ended")] == [
            "code_reissued", "ended"]
        # A burnt link cannot get a new code either.
        again = await api.client.post(f"/api/v1/sessions/{session['id']}/code")
        assert again.status_code == 409 and again.json()["error"] == "not_pending"


async def test_codes_against_random_links_all_get_the_same_not_found(relay) -> None:
    async with Api(relay.base_url) as api:
        session = (await create(api)).json()
    real = join_token(session)
    bodies = set()
    async with httpx.AsyncClient(base_url=relay.base_url) as client:
        for token in (secrets.token_urlsafe(32), real[:-1] + ("A" if real[-1] != "A" else "B"),
                      "x", real.upper() if real.upper() != real else real.lower()):
            for code in (session["security_code"], "000000"):
                response = await client.post(
                    f"/api/v1/join/{token}/activate",
                    json={"code": code, "host_key": "ssh-ed25519 AAAA", "hostname": "h"})
                assert response.status_code == 404
                bodies.add(response.text)
            info = await client.get(f"/api/v1/join/{token}")
            assert info.status_code == 404
            bodies.add(info.text)
    assert len(bodies) == 1, bodies
    # None of those tries touched the real link.
    async with Api(relay.base_url) as api:
        assert (await api.session(session["id"]))["code_attempts"] == 0


async def test_link_used_again_after_activation_is_refused(relay) -> None:
    async with Api(relay.base_url) as api:
        session = (await create(api)).json()
        first = await activate(relay.base_url, session)
        assert first.status_code == 200, first.text
        again = await activate(relay.base_url, session)
        assert again.status_code == 410 and again.json()["error"] == "link_used"
        assert "new invitation" in again.json()["detail"]
        # The join page says so too, to a person and to a script.
        async with httpx.AsyncClient(base_url=relay.base_url) as client:
            page = await client.get(f"/join/{join_token(session)}", headers={"accept": "text/html"})
            assert page.status_code == 410 and "already used" in page.text
        reissue = await api.client.post(f"/api/v1/sessions/{session['id']}/code")
        assert reissue.status_code == 409 and reissue.json()["error"] == "not_pending"
        assert (await api.session(session["id"]))["state"] == "active"


async def test_link_after_its_invite_ttl_is_refused(start_relay) -> None:
    relay = start_relay("--invite-ttl", "1s")
    async with Api(relay.base_url) as api:
        session = (await create(api)).json()
        view = await api.wait_for(session["id"], lambda v: v["state"] == "ended", timeout=20)
        assert view["ended_reason"] == "invite_expired"
        late = await activate(relay.base_url, session)
        assert late.status_code == 410 and late.json()["error"] == "link_used"


async def test_two_agents_activating_one_link_at_once_exactly_one_wins(relay) -> None:
    async with Api(relay.base_url) as api:
        session = (await create(api)).json()
        answers = await asyncio.gather(*(
            activate(relay.base_url, session, machine_id=f"machine-{i}", hostname=f"pc-{i}")
            for i in range(8)))
        assert sorted(r.status_code for r in answers) == [200] + [410] * 7
        winner = next(r.json() for r in answers if r.status_code == 200)
        view = await api.session(session["id"])
        assert view["state"] == "active" and winner["session_id"] == session["id"]
        assert sum(a["event"] == "activated" for a in (await api.client.get(
            f"/api/v1/sessions/{session['id']}/audit")).json()["audit"]) == 1


async def test_the_agent_is_shown_who_is_asking(relay) -> None:
    async with Api(relay.base_url) as api:
        session = (await create(api)).json()
    async with httpx.AsyncClient(base_url=relay.base_url) as client:
        info = (await client.get(f"/api/v1/join/{join_token(session)}")).json()
        assert info["company"] == "Acme" and info["technician"] == "alice"
        page = await client.get(f"/join/{join_token(session)}", headers={"user-agent": "curl/8"})
        assert "alice of Acme" in page.text
        assert "Only continue if you asked Acme for help" in page.text


async def test_activation_hands_the_agent_its_features_and_secret(relay) -> None:
    async with Api(relay.base_url) as api:
        session = (await create(api)).json()
        result = await activate(relay.base_url, session)
    body = result.json()
    assert set(body) >= {"session_id", "agent_secret", "ssh", "relay_host_key", "expires_at",
                         "features", "password_verifier"}
    # Acme is on plus
    assert set(body["features"]) == {"shell", "chat", "files", "dashboard", "forward"}
    assert body["password_verifier"].startswith("$argon2id$")
    async with agent_connection(relay, body):
        async with Api(relay.base_url) as api:
            view = await api.wait_for(session["id"], lambda v: v["online"])
            assert view["host"]["hostname"] == "customer-pc"


async def test_a_computer_already_in_a_session_cannot_join_another(relay) -> None:
    async with Api(relay.base_url, "alice") as alice, Api(relay.base_url, "bob") as bob:
        first = (await create(alice)).json()
        second = (await create(bob)).json()
        assert (await activate(relay.base_url, first, machine_id="same-machine")).status_code \
            == 200
        refused = await activate(relay.base_url, second, machine_id="same-machine")
        assert refused.status_code == 409 and refused.json()["error"] == "machine_in_session"
        # The second link is still usable from another computer.
        assert (await bob.session(second["id"]))["state"] == "pending"
        # Once the first session ends, the computer may join again.
        await alice.client.post(f"/api/v1/sessions/{first['id']}/end")
        assert (await activate(relay.base_url, second, machine_id="same-machine")).status_code \
            == 200
    # The machine id itself is never stored, only a hash of it.
    from tests.relay.conftest import db_rows
    dump = "\n".join(str(r) for r in db_rows(relay.data_dir, "SELECT * FROM sessions"))
    assert "same-machine" not in dump


async def test_sixty_concurrent_wrong_codes_on_one_link_are_five_judged(start_relay) -> None:
    relay = start_relay("--activate-rate", "1000/1m")
    async with Api(relay.base_url) as api:
        session = (await create(api)).json()
        wrong = "000000" if session["security_code"] != "000000" else "111111"
        responses = await asyncio.gather(*(activate(relay.base_url, session, wrong)
                                           for _ in range(60)))
        errors = [r.json()["error"] for r in responses]
        assert errors.count("wrong_code") == 4 and errors.count("link_burnt") == 1, errors
        assert errors.count("link_used") == 55
        view = await api.session(session["id"])
        assert view["state"] == "ended" and view["code_attempts"] == 5
        assert view["code_attempts_left"] == 0
    judged = db_rows(relay.data_dir, "SELECT count(*) FROM audit WHERE event = 'code_attempt' "
                                     "AND outcome = 'wrong_code'")
    assert judged == [(5,)]


async def test_the_join_page_is_plain_text_safe_and_not_cached(relay) -> None:
    db_write(relay.data_dir, "UPDATE companies SET name = ? WHERE name = 'Acme'",
             ("Acme\x1b]0;pwned\x07\u202eevil",))
    async with Api(relay.base_url) as api:
        session = (await create(api)).json()
        async with httpx.AsyncClient() as client:
            for headers in ({"User-Agent": "curl/8.0"}, {"Accept": "text/html"}):
                page = await client.get(session["join_url"], headers=headers)
                assert page.status_code == 200
                assert "\x1b" not in page.text and "\u202e" not in page.text
                assert "\\x1b]0;pwned\\x07\\u202eevil" in page.text
                assert "sudo adhoc-host join" in page.text
                assert page.headers["Cache-Control"] == "no-store"
                assert page.headers["Referrer-Policy"] == "no-referrer"
                assert page.headers["X-Content-Type-Options"] == "nosniff"
                assert "default-src 'none'" in page.headers["Content-Security-Policy"]
            gone = await client.get(session["join_url"] + "x", headers={"Accept": "text/html"})
            assert gone.status_code == 404 and gone.headers["Cache-Control"] == "no-store"
        activation = (await activate(relay.base_url, session)).json()
        view = await api.session(activation["session_id"])
        key = asyncssh.import_public_key(view["host_key"])
        assert view["host_key_fingerprint"] == key.get_fingerprint("sha256")
