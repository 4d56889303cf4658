"""Tests for relay.mailer against a real aiosmtpd server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import datetime as dt
import email
import email.policy
import ipaddress
import re
import ssl
import stat
from email.message import EmailMessage
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from relay import mailer as mailer_mod
from relay.mailer import Invitation, Mailer, SmtpTarget, render_invitation
from tests.ports import free_port

SENDER = "Adhoc Relay <noreply@relay.example>"
JOIN_URL = "https://relay.example/join/TOKENabcDEF_xyz-ghiJKLmno"
INSTALL = f"curl -sSL {JOIN_URL}/install.sh | sh"
SMTP_USER = "user"
SMTP_PASSWORD = "p@ss"


# ---------------------------------------------------------------------------
# fixtures and helpers
# ---------------------------------------------------------------------------


class Collector:
    """aiosmtpd handler: keeps every accepted envelope; rejects recipients in `reject`."""

    def __init__(self, reject: set[str] | None = None) -> None:
        self.reject = reject or set()
        self.envelopes: list[tuple[str, list[str], bytes]] = []
        self.rcpt_attempts = 0
        self.logins: list[tuple[bytes, bytes]] = []

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        self.rcpt_attempts += 1
        if address in self.reject:
            return "550 5.1.1 No such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 Message accepted for delivery"

    def authenticate(self, server, session, envelope, mechanism, auth_data):
        if isinstance(auth_data, LoginPassword):
            self.logins.append((auth_data.login, auth_data.password))
            ok = auth_data.login == SMTP_USER.encode() and auth_data.password == (
                SMTP_PASSWORD.encode()
            )
            return AuthResult(success=ok)
        return AuthResult(success=False)


@pytest.fixture
def smtp_server():
    """Factory: start an aiosmtpd Controller on 127.0.0.1; all are stopped at teardown."""
    controllers: list[Controller] = []

    def start(handler: Collector, **kwargs) -> int:
        port = free_port()
        controller = Controller(handler, hostname="127.0.0.1", port=port, **kwargs)
        controller.start()
        controllers.append(controller)
        return port

    yield start
    for controller in controllers:
        # Let the server finish closing its connections before its loop stops; otherwise a
        # transport closed a moment too late leaks and a ResourceWarning fails a later test.
        asyncio.run_coroutine_threadsafe(_server_idle(), controller.loop).result(timeout=10)
        controller.stop()


async def _server_idle(limit: float = 5.0) -> None:
    """Run inside a Controller's loop: wait until only this task is left (bounded)."""
    me = asyncio.current_task()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while loop.time() < deadline:
        if all(task is me or task.done() for task in asyncio.all_tasks()):
            break
        await asyncio.sleep(0.002)
    await asyncio.sleep(0)  # one more turn: run the close callbacks those tasks scheduled


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 and localhost: (certfile, keyfile)."""
    directory = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    certfile = directory / "cert.pem"
    keyfile = directory / "key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(certfile), str(keyfile)


def server_tls_context(tls_files: tuple[str, str]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(*tls_files)
    return ctx


class Statuses:
    """The on_status callback, recording what the caller would persist."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None]] = []

    async def __call__(self, status: str, reason: str | None) -> None:
        self.calls.append((status, reason))

    @property
    def names(self) -> list[str]:
        return [status for status, _ in self.calls]


def invitation(**overrides) -> Invitation:
    values = {
        "to": "customer@example.org",
        "company": "<b>&Co",
        "technician": "Alice Tech",
        "technician_email": "alice@company.example",
        "join_url": JOIN_URL,
        "install_command": INSTALL,
        "invite_expires_at": dt.datetime.now(dt.UTC) + dt.timedelta(minutes=30),
        "session_hours": 24,
    }
    values.update(overrides)
    return Invitation(**values)


def parse(raw: bytes) -> EmailMessage:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def flat(text: str) -> str:
    """Whitespace-normalised text, so that assertions don't depend on line wrapping."""
    return " ".join(text.split())


def bodies(msg: EmailMessage) -> tuple[str, str]:
    text = msg.get_body(preferencelist=("plain",))
    html = msg.get_body(preferencelist=("html",))
    assert text is not None and html is not None
    return text.get_content(), html.get_content()


def no_sleep_longer_than(monkeypatch, limit: float) -> list[float]:
    """Record backoff delays; never actually wait more than `limit` seconds."""
    delays: list[float] = []
    real_sleep = asyncio.sleep

    async def fake_sleep(delay, *args, **kwargs):
        delays.append(delay)
        await real_sleep(min(delay, limit))

    monkeypatch.setattr(mailer_mod.asyncio, "sleep", fake_sleep)
    return delays


# ---------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------


def test_render_invitation_says_what_the_customer_needs() -> None:
    msg = render_invitation(invitation(), SENDER)
    assert msg.get_content_type() == "multipart/alternative"
    assert msg["Subject"] == "Alice Tech of <b>&Co invites you to a remote support session"
    assert msg["To"] == "customer@example.org"
    assert msg["From"] == SENDER
    assert "alice@company.example" in msg["Reply-To"]
    assert re.fullmatch(r"<[^<>@\s]+@relay\.example>", msg["Message-ID"])
    assert msg["Date"]
    text, html = bodies(msg)
    for body in (flat(text), flat(html)):
        assert JOIN_URL in body
        assert "Alice Tech" in body
        assert "6-digit security code" in body
        assert "24 hours" in body
        assert "removes itself" in body
        assert "end the session at any time" in body
        assert "press the key shown there" in body
    assert "<b>&Co" in text
    assert INSTALL in text
    # The HTML part escapes the company name and the shell pipe's neighbours.
    assert "&lt;b&gt;&amp;Co" in html
    assert "<b>&Co" not in html
    assert INSTALL.replace("&", "&amp;") in html
    assert "Only continue if you asked <b>&Co for help" in flat(text)
    # Never a code or a password: no 6-digit number anywhere in the bodies.
    assert not re.search(r"(?<!\d)\d{6}(?!\d)", text + html)


def test_render_invitation_keeps_headers_single_line_and_names_readable() -> None:
    msg = render_invitation(
        invitation(
            technician="Mallory\r\nBcc: victim@example.org",
            company="M\u00fcller \u202eGmbH",
            session_hours=1,
        ),
        SENDER,
    )
    raw = msg.as_bytes()
    parsed = parse(raw)
    assert parsed["Bcc"] is None
    assert parsed["Subject"] == (
        "Mallory Bcc: victim@example.org of M\u00fcller GmbH invites you to a remote support "
        "session"
    )
    text, html = bodies(parsed)
    assert "M\u00fcller GmbH" in text and "M\u00fcller GmbH" in html
    assert "\u202e" not in text + html
    assert "1 hour after" in text
    # Non-ASCII bodies are encoded so that 7-bit servers can carry them.
    assert all(b < 128 for b in raw)


def test_render_invitation_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        render_invitation(invitation(invite_expires_at=dt.datetime(2030, 1, 1)), SENDER)
    with pytest.raises(ValueError, match="http"):
        render_invitation(invitation(join_url="javascript:alert(1)"), SENDER)
    with pytest.raises(ValueError, match="not a valid address"):
        render_invitation(invitation(to="not an address"), SENDER)


def test_render_invitation_addresses() -> None:
    msg = render_invitation(
        invitation(to="kunde@b\u00fccher.example", technician_email="not-an-address"), SENDER
    )
    assert msg["To"] == "kunde@xn--bcher-kva.example"  # IDNA, not an encoded-word
    assert msg["Reply-To"] is None  # a bad technician address costs the Reply-To, not the mail


def test_render_invitation_short_session_lifetime() -> None:
    """A relay run with a lifetime under an hour (tests, demos) still renders its invitations."""
    text, html = bodies(render_invitation(invitation(session_hours=0), SENDER))
    assert "lasts less than an hour after" in flat(text)
    assert "lasts less than an hour after" in flat(html)


# ---------------------------------------------------------------------------
# SmtpTarget
# ---------------------------------------------------------------------------


def test_smtp_target_parse_good_urls(tmp_path: Path) -> None:
    t = SmtpTarget.parse("smtp://mail.example.com")
    assert (t.host, t.port, t.username, t.password, t.implicit_tls, t.cafile) == (
        "mail.example.com",
        25,
        None,
        None,
        False,
        None,
    )
    t = SmtpTarget.parse("smtps://mail.example.com")
    assert (t.port, t.implicit_tls) == (465, True)
    t = SmtpTarget.parse("smtp://us%40er:p%40ss%3Aw0rd@mail.example.com:587")
    assert (t.username, t.password, t.port) == ("us@er", "p@ss:w0rd", 587)
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    t = SmtpTarget.parse(f"SMTPS://me:secret@[::1]:2465/?cafile={ca}")
    assert (t.host, t.port, t.implicit_tls, t.cafile) == ("::1", 2465, True, str(ca))
    assert t.redacted() == f"smtps://me:***@[::1]:2465?cafile={ca}"
    assert "secret" not in t.redacted()
    assert "secret" not in repr(t)
    assert SmtpTarget.parse("smtp://me@mail.example.com").redacted() == (
        "smtp://me@mail.example.com:25"
    )


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://mail.example.com", "scheme"),
        ("mail.example.com:25", "scheme"),
        ("smtp://", "host"),
        ("smtp://user:hunter2@:25", "host"),
        ("smtp://mail.example.com:99999", "port"),
        ("smtp://mail.example.com:port", "port"),
        ("smtp://mail.example.com/inbox", "path"),
        ("smtp://mail.example.com?cafle=/x", "cafle"),
        ("smtp://mail.example.com?cafile=/does/not/exist.pem", "cafile"),
        ("smtp://:hunter2@mail.example.com", "user name"),
        ("", "empty"),
    ],
)
def test_smtp_target_parse_rejects_bad_urls(url: str, problem: str) -> None:
    with pytest.raises(ValueError) as info:
        SmtpTarget.parse(url)
    message = str(info.value)
    assert problem in message
    assert "smtp://user:password@mail.example.com" in message
    assert "hunter2" not in message
    assert "\n" not in message


def test_mailer_describes_where_mail_goes(tmp_path: Path) -> None:
    assert Mailer(None, tmp_path, SENDER).smtp_description() == "outbox (no SMTP configured)"
    m = Mailer("smtp://user:s3cr3t@mail.example.com:587", tmp_path, SENDER)
    assert m.smtp_description() == "smtp://user:***@mail.example.com:587"
    with pytest.raises(ValueError):
        Mailer("ftp://mail.example.com", tmp_path, SENDER)


# ---------------------------------------------------------------------------
# delivery
# ---------------------------------------------------------------------------


async def test_outbox_only_without_smtp(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    m = Mailer(None, outbox, SENDER)
    statuses = Statuses()
    msg = render_invitation(invitation(), SENDER)
    assert await m.deliver("inv-1", msg, statuses) == "outbox"
    assert statuses.calls == [("outbox", None)]
    eml = outbox / "inv-1.eml"
    assert stat.S_IMODE(eml.stat().st_mode) == 0o600
    saved = parse(eml.read_bytes())
    assert saved["Subject"] == msg["Subject"]
    assert JOIN_URL in bodies(saved)[0]
    assert listing(outbox) == ["inv-1.eml"]  # no temp files left


async def test_sent_message_arrives_and_matches_outbox(tmp_path: Path, smtp_server) -> None:
    handler = Collector()
    port = smtp_server(handler)
    m = Mailer(f"smtp://127.0.0.1:{port}", tmp_path, SENDER, attempts=2, base_delay=0.01)
    statuses = Statuses()
    msg = render_invitation(invitation(), SENDER)

    assert await m.deliver("inv-2", msg, statuses) == "sent"
    assert statuses.calls == [("sent", None)]
    assert len(handler.envelopes) == 1
    mail_from, rcpt_tos, content = handler.envelopes[0]
    assert mail_from == "noreply@relay.example"
    assert rcpt_tos == ["customer@example.org"]

    received = parse(content)
    text, html = bodies(received)
    for body in (text, html):
        assert JOIN_URL in body
        assert "Alice Tech" in body
    assert "<b>&Co" in text
    assert "&lt;b&gt;&amp;Co" in html and "<b>&Co" not in html

    eml = tmp_path / "inv-2.eml"
    assert stat.S_IMODE(eml.stat().st_mode) == 0o600
    saved = parse(eml.read_bytes())
    assert saved["Subject"] == received["Subject"]
    assert saved["Message-ID"] == received["Message-ID"]
    assert bodies(saved) == (text, html)


async def test_starttls_with_auth_and_private_ca(
    tmp_path: Path, smtp_server, tls_files: tuple[str, str]
) -> None:
    handler = Collector()
    port = smtp_server(
        handler,
        tls_context=server_tls_context(tls_files),
        require_starttls=True,
        authenticator=handler.authenticate,
        auth_required=True,
    )
    url = f"smtp://{SMTP_USER}:p%40ss@127.0.0.1:{port}?cafile={tls_files[0]}"
    m = Mailer(url, tmp_path, SENDER, attempts=2, base_delay=0.01)
    assert SMTP_PASSWORD not in m.smtp_description()
    statuses = Statuses()

    assert await m.deliver("inv-3", render_invitation(invitation(), SENDER), statuses) == "sent"
    assert statuses.calls == [("sent", None)]
    assert handler.logins == [(b"user", b"p@ss")]
    assert len(handler.envelopes) == 1
    assert JOIN_URL in bodies(parse(handler.envelopes[0][2]))[0]


async def test_starttls_certificate_is_verified(
    tmp_path: Path, smtp_server, tls_files: tuple[str, str]
) -> None:
    """Without the private CA the self-signed server is not trusted, and no password is sent."""
    handler = Collector()
    port = smtp_server(
        handler,
        tls_context=server_tls_context(tls_files),
        require_starttls=True,
        authenticator=handler.authenticate,
        auth_required=True,
    )
    m = Mailer(f"smtp://user:p%40ss@127.0.0.1:{port}", tmp_path, SENDER, attempts=1)
    statuses = Statuses()

    assert await m.deliver("inv-4", render_invitation(invitation(), SENDER), statuses) == "failed"
    assert statuses.names == ["failed"]
    reason = statuses.calls[0][1] or ""
    assert "certificate" in reason and f"127.0.0.1:{port}" in reason
    assert "p@ss" not in reason and "p%40ss" not in reason
    assert handler.logins == [] and handler.envelopes == []
    assert (tmp_path / "inv-4.eml").exists()


async def test_implicit_tls(tmp_path: Path, smtp_server, tls_files: tuple[str, str]) -> None:
    handler = Collector()
    port = smtp_server(
        handler,
        ssl_context=server_tls_context(tls_files),
        authenticator=handler.authenticate,
        # aiosmtpd only counts STARTTLS as TLS; this connection is TLS from the first byte.
        auth_require_tls=False,
    )
    url = f"smtps://{SMTP_USER}:p%40ss@localhost:{port}?cafile={tls_files[0]}"
    m = Mailer(url, tmp_path, SENDER, attempts=1)
    statuses = Statuses()
    assert await m.deliver("inv-5", render_invitation(invitation(), SENDER), statuses) == "sent"
    assert handler.logins == [(b"user", b"p@ss")]
    assert len(handler.envelopes) == 1


async def test_password_never_sent_without_tls_to_a_remote_server(
    tmp_path: Path, smtp_server, monkeypatch
) -> None:
    """A server (or a man in the middle) that offers no STARTTLS does not get the password."""
    monkeypatch.setattr(mailer_mod, "_is_loopback", lambda host: False)
    handler = Collector()
    port = smtp_server(handler)  # plain SMTP, no STARTTLS
    m = Mailer(f"smtp://user:p%40ss@127.0.0.1:{port}", tmp_path, SENDER, attempts=3)
    statuses = Statuses()

    assert await m.deliver("inv-6", render_invitation(invitation(), SENDER), statuses) == "failed"
    assert statuses.names == ["failed"]  # a configuration problem: not retried
    reason = statuses.calls[0][1] or ""
    assert "STARTTLS" in reason and "p@ss" not in reason
    assert handler.envelopes == []


async def test_unreachable_server_is_retried_then_fails(tmp_path: Path, monkeypatch) -> None:
    delays = no_sleep_longer_than(monkeypatch, 0.05)
    port = free_port()  # nothing listens here
    m = Mailer(
        f"smtp://user:hunter2@127.0.0.1:{port}",
        tmp_path,
        SENDER,
        attempts=3,
        base_delay=0.01,
        max_delay=0.015,
        timeout=5,
    )
    statuses = Statuses()

    assert await m.deliver("inv-7", render_invitation(invitation(), SENDER), statuses) == "failed"
    assert statuses.names == ["retrying", "retrying", "failed"]
    for _, reason in statuses.calls:
        assert reason is not None
        assert f"connection refused by 127.0.0.1:{port}" in reason
        assert "hunter2" not in reason
    assert "3 attempts" in (statuses.calls[-1][1] or "")
    # Full jitter, exponential, capped: first in [0, 0.01], second in [0, min(0.02, cap)].
    assert len(delays) == 2
    assert 0 <= delays[0] <= 0.01 and 0 <= delays[1] <= 0.015
    assert (tmp_path / "inv-7.eml").exists()


async def test_rejected_recipient_is_not_retried(tmp_path: Path, smtp_server) -> None:
    handler = Collector(reject={"nobody@example.org"})
    port = smtp_server(handler)
    m = Mailer(f"smtp://127.0.0.1:{port}", tmp_path, SENDER, attempts=5, base_delay=0.01)
    statuses = Statuses()
    msg = render_invitation(invitation(to="nobody@example.org"), SENDER)

    assert await m.deliver("inv-8", msg, statuses) == "failed"
    assert statuses.names == ["failed"]
    reason = statuses.calls[0][1] or ""
    assert reason.startswith("recipient rejected: 550")
    assert "No such user" in reason
    assert handler.rcpt_attempts == 1
    assert handler.envelopes == []
    assert (tmp_path / "inv-8.eml").exists()


async def test_cancellation_propagates_and_keeps_the_outbox_copy(tmp_path: Path) -> None:
    m = Mailer(f"smtp://127.0.0.1:{free_port()}", tmp_path, SENDER, attempts=5, base_delay=30)
    statuses = Statuses()
    task = asyncio.create_task(
        m.deliver("inv-9", render_invitation(invitation(), SENDER), statuses)
    )
    for _ in range(200):  # wait for the first failure; then it sleeps in backoff
        if statuses.calls:
            break
        await asyncio.sleep(0.01)
    assert statuses.names == ["retrying"]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (tmp_path / "inv-9.eml").exists()


async def test_redelivery_replaces_the_outbox_file(tmp_path: Path) -> None:
    m = Mailer(None, tmp_path, SENDER)
    statuses = Statuses()
    first = render_invitation(invitation(technician="First"), SENDER)
    second = render_invitation(invitation(technician="Second"), SENDER)
    await m.deliver("same", first, statuses)
    await m.deliver("same", second, statuses)
    assert parse((tmp_path / "same.eml").read_bytes())["Subject"].startswith("Second of")
    assert listing(tmp_path) == ["same.eml"]


async def test_bad_key_is_a_programming_error(tmp_path: Path) -> None:
    m = Mailer(None, tmp_path, SENDER)
    msg = render_invitation(invitation(), SENDER)
    for key in ("../escape", ".hidden", "a/b", ""):
        with pytest.raises(ValueError):
            await m.deliver(key, msg, Statuses())
    assert listing(tmp_path) == []
