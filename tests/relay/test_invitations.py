"""Invitation mail through a real relay: a real SMTP server (aiosmtpd on loopback) receives it,
a failing one shows on the session, and without SMTP the outbox keeps it for the technician."""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Iterator

import httpx
import pytest
from aiosmtpd.controller import Controller

from tests.ports import free_port
from tests.relay.conftest import activate, create
from tests.support import Api


class Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 Message accepted for delivery"


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


async def test_invitation_arrives_by_smtp_and_its_link_works(start_relay, smtp) -> None:
    inbox, port = smtp
    relay = start_relay("--smtp", f"smtp://127.0.0.1:{port}", "--mail-from",
                        "Acme support <support@relay.example>")
    async with Api(relay.base_url) as api:
        session = (await create(api, "customer@example.org")).json()
        view = await api.wait_for(session["id"], lambda v: v["mail_status"] != "queued")
        assert view["mail_status"] == "sent" and view["mail_detail"] is None
        assert len(inbox.messages) == 1
        sender, recipients, raw = inbox.messages[0]
        assert sender == "support@relay.example" and recipients == ["customer@example.org"]
        message = email.message_from_bytes(raw, policy=email.policy.default)
        text = message.get_body(preferencelist=("plain",)).get_content()
        html = message.get_body(preferencelist=("html",)).get_content()
        assert "alice of Acme" in text and "Acme" in html and "alice" in html
        assert "6-digit security code" in text
        assert session["security_code"] not in raw.decode("ascii", "replace")
        link = re.search(r"(http://\S+/join/[A-Za-z0-9_-]+)", text).group(1)
        assert link == session["join_url"]
        async with httpx.AsyncClient() as client:
            page = await client.get(link, headers={"user-agent": "curl/8.0"})
            assert page.status_code == 200 and "alice of Acme" in page.text
        assert (await activate(relay.base_url, session)).status_code == 200
        events = [(a["event"], a["outcome"]) for a in (await api.client.get(
            f"/api/v1/sessions/{session['id']}/audit")).json()["audit"]]
        assert ("mail", "sent") in events


async def test_failing_smtp_shows_on_the_session_and_never_loses_it(start_relay) -> None:
    closed = free_port()  # nothing listens here: every attempt is refused
    relay = start_relay("--smtp", f"smtp://127.0.0.1:{closed}", "--mail-attempts", "3",
                        "--mail-retry-delay", "0.05s")
    async with Api(relay.base_url) as api:
        session = (await create(api)).json()
        assert session["state"] == "pending"
        view = await api.wait_for(session["id"], lambda v: v["mail_status"] == "failed")
        assert "connection refused" in view["mail_detail"]
        assert "3 attempts" in view["mail_detail"]
        statuses = [a["outcome"] for a in (await api.client.get(
            f"/api/v1/sessions/{session['id']}/audit")).json()["audit"] if a["event"] == "mail"]
        assert statuses == ["retrying", "retrying", "failed"]
        # The session is intact, and the technician can still hand over the link.
        invitation = (await api.client.get(f"/api/v1/sessions/{session['id']}/invitation")).json()
        assert invitation["join_url"] == session["join_url"]
        assert invitation["mail_status"] == "failed"
        assert (await activate(relay.base_url, session)).status_code == 200


async def test_without_smtp_the_invitation_waits_in_the_outbox(relay) -> None:
    async with Api(relay.base_url) as api:
        session = (await create(api, "someone@example.net")).json()
        view = await api.wait_for(session["id"], lambda v: v["mail_status"] != "queued")
        assert view["mail_status"] == "outbox"
        eml = relay.data_dir / "outbox" / f"{session['id']}.eml"
        assert eml.stat().st_mode & 0o777 == 0o600
        invitation = (await api.client.get(f"/api/v1/sessions/{session['id']}/invitation")).json()
        assert invitation["to"] == "someone@example.net"
        assert invitation["join_url"] == session["join_url"]
        assert "alice of Acme" in invitation["text"]
        await api.client.post(f"/api/v1/sessions/{session['id']}/end")
        gone = await api.client.get(f"/api/v1/sessions/{session['id']}/invitation")
        assert gone.status_code == 409 and gone.json()["error"] == "not_pending"


async def test_an_address_the_mailer_cannot_write_marks_mail_failed_not_queued(relay) -> None:
    from tests.support import Api

    async with Api(relay.base_url) as api:
        session = await api.create_session("jörg@example.com")
        view = await api.wait_for(session["id"], lambda v: v["mail_status"] != "queued")
        assert view["mail_status"] == "failed"
        assert "cannot write this invitation" in view["mail_detail"]
        assert view["state"] == "pending"  # the session stands; the link can be passed on
