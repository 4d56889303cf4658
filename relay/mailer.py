"""Invitation mail: render the customer's invitation and deliver it by SMTP or to the outbox.

A technician invites a customer by email; this module builds that email
(:func:`render_invitation`) and delivers it (:class:`Mailer`). Every message is
first written to ``<outbox_dir>/<key>.eml`` (mode 0600, atomically) so that an
invitation is never lost, then sent with aiosmtplib when an SMTP URL is
configured, with retries and full-jitter exponential backoff.

There is no database access here: the caller persists the delivery status
through the ``on_status`` callback it passes to :meth:`Mailer.deliver`.
Nothing secret is logged or reported: the SMTP password never appears in a
status reason, a log line or a ``repr``.
"""

from __future__ import annotations

import asyncio
import email.errors
import email.policy
import email.utils
import html
import ipaddress
import logging
import os
import random
import re
import socket
import ssl
import tempfile
import unicodedata
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import aiosmtplib

__all__ = [
    "DeliveryStatus",
    "Invitation",
    "Mailer",
    "SmtpTarget",
    "render_invitation",
]

log = logging.getLogger(__name__)

DeliveryStatus = Literal["outbox", "sent", "retrying", "failed"]
StatusCallback = Callable[[str, str | None], Awaitable[None]]

#: What a valid SMTP URL looks like; every parse error ends with this.
_URL_HELP: Final = (
    "a valid SMTP URL looks like smtp://user:password@mail.example.com:587 "
    "(STARTTLS when offered, default port 25) or smtps://user:password@mail.example.com "
    "(implicit TLS, default port 465), with user and password percent-encoded and an "
    "optional ?cafile=/path/ca.pem to trust a private CA"
)

_KEY_RE: Final = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")
_MAX_REASON: Final = 300


# ---------------------------------------------------------------------------
# The invitation
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Invitation:
    """Everything the customer's invitation email says."""

    to: str  # customer email
    company: str  # company name as the relay knows it
    technician: str  # technician display/login name
    technician_email: str
    join_url: str
    install_command: str  # e.g. "curl -sSL https://relay/join/TOKEN/install.sh | sh"
    invite_expires_at: datetime  # aware UTC; the link must be used before this
    session_hours: int  # session lasts this many hours after activation (24)


# Bidirectional overrides and isolates: they can make a name read differently
# from what it is ("moc.knab" shown as "bank.com"), so they never reach a mail.
_BIDI: Final = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _one_line(value: str) -> str:
    """Collapse control characters (CR, LF, ESC, C1 ...) and bidi controls to single spaces."""
    out = []
    for ch in value:
        if ch in _BIDI or unicodedata.category(ch) in ("Cc", "Zl", "Zp"):
            out.append(" ")
        else:
            out.append(ch)
    return " ".join("".join(out).split())


def _hours(n: int) -> str:
    if n < 1:  # a short lifetime configured for tests or demos
        return "less than an hour"
    return "1 hour" if n == 1 else f"{n} hours"


def _when(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _validity(dt: datetime, now: datetime) -> str:
    """A human "valid for ..." phrase, or "" once the link has (nearly) expired."""
    minutes = round((dt - now).total_seconds() / 60)
    if minutes < 1:
        return ""
    if minutes < 120:
        return f"{minutes} minute" + ("" if minutes == 1 else "s")
    hours = minutes // 60
    return _hours(hours)


def _address(value: str) -> Address:
    """An ASCII header address: the domain in IDNA (punycode); a non-ASCII local part is refused."""
    value = _one_line(value)
    local, at, domain = value.rpartition("@")
    if at and not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise ValueError(f"{value!r} has an invalid domain") from exc
        value = f"{local}@{domain}"
    if not value.isascii():
        raise ValueError(f"{value!r} is not an ASCII address")
    return Address(addr_spec=value)


def _msgid_domain(sender: str) -> str:
    addr = email.utils.parseaddr(sender)[1]
    domain = addr.rpartition("@")[2]
    if domain and re.fullmatch(r"[A-Za-z0-9.-]+", domain):
        return domain
    return "adhoc.invalid"


def _text_part(
    *,
    company: str,
    technician: str,
    join_url: str,
    install_command: str,
    expires: str,
    valid_for: str,
    session: str,
) -> str:
    valid = f"{expires} (in about {valid_for})" if valid_for else expires
    return f"""\
Hello,

{technician} of {company} invites you to a remote support session, so that
they can look at your computer and help you with it.

Only continue if you asked {company} for help. If you did not, ignore this
email: nothing happens unless you run the software yourself.

1. On the computer that needs help, open this link:

   {join_url}

   Or run this command in a terminal on that computer (it needs administrator
   rights):

   {install_command}

   The link and the command work until {valid}.

2. The software shows who is asking and asks for a 6-digit security code.
   {technician} will read the code to you. Only enter a code that
   {technician} gave you, and only if you asked {company} for help.

3. What to expect:
   - The session lasts {session} after you enter the code. Then it ends by
     itself and the software removes itself from your computer.
   - You can end the session at any time from the window the software opens:
     press the key shown there.
   - The window shows you when someone is connected.

This email contains no security code and no password. If you have questions,
reply to this email to reach {technician}.

--
Sent by the Adhoc remote support relay on behalf of {company}.
"""


def _html_part(
    *,
    company: str,
    technician: str,
    join_url: str,
    install_command: str,
    expires: str,
    valid_for: str,
    session: str,
) -> str:
    e = html.escape  # quote=True: safe in text and in attribute values
    c, t, url = e(company), e(technician), e(join_url)
    valid = f"{e(expires)} (in about {e(valid_for)})" if valid_for else e(expires)
    return f"""\
<!DOCTYPE html>
<html>
<head><meta charset="utf-8"><title>Remote support invitation</title></head>
<body style="font-family: sans-serif; line-height: 1.4; max-width: 40em;">
<p>Hello,</p>
<p><strong>{t}</strong> of <strong>{c}</strong> invites you to a remote support session,
so that they can look at your computer and help you with it.</p>
<p style="border-left: 4px solid #c60; padding-left: 0.6em;"><strong>Only continue if you
asked {c} for help.</strong> If you did not, ignore this email: nothing happens unless you
run the software yourself.</p>
<ol>
<li><p>On the computer that needs help, open this link:</p>
<p><a href="{url}">{url}</a></p>
<p>Or run this command in a terminal on that computer (it needs administrator rights):</p>
<pre style="background: #f2f2f2; padding: 0.5em; white-space: pre-wrap;"><code>\
{e(install_command)}</code></pre>
<p>The link and the command work until {valid}.</p></li>
<li><p>The software shows who is asking and asks for a <strong>6-digit security code</strong>.
{t} will read the code to you. Only enter a code that {t} gave you, and only if you
asked {c} for help.</p></li>
<li><p>What to expect:</p>
<ul>
<li>The session lasts {e(session)} after you enter the code. Then it ends by itself and the
software removes itself from your computer.</li>
<li>You can end the session at any time from the window the software opens: press the key
shown there.</li>
<li>The window shows you when someone is connected.</li>
</ul></li>
</ol>
<p>This email contains no security code and no password. If you have questions, reply to
this email to reach {t}.</p>
<p style="color: #666; font-size: smaller;">Sent by the Adhoc remote support relay on behalf
of {c}.</p>
</body>
</html>
"""


def _set_text(msg: EmailMessage, body: str, subtype: str) -> None:
    # ASCII stays 7bit; anything else is quoted-printable so that the message
    # survives servers without 8BITMIME and reads the same from the outbox.
    cte = None if body.isascii() else "quoted-printable"
    if subtype == "plain":
        msg.set_content(body, subtype=subtype, charset="utf-8", cte=cte)
    else:
        msg.add_alternative(body, subtype=subtype, charset="utf-8", cte=cte)


def render_invitation(inv: Invitation, sender: str) -> EmailMessage:
    """Build the invitation email (multipart/alternative: text/plain and text/html).

    Every interpolated value is stripped of control and bidi characters and
    HTML-escaped in the HTML part. Replies go to the technician. The message
    never contains a security code or password.

    :raises ValueError: ``invite_expires_at`` is naive, ``join_url`` is not an
        http(s) URL, or an address cannot be put in a header.
    """
    if inv.invite_expires_at.tzinfo is None or inv.invite_expires_at.utcoffset() is None:
        raise ValueError("invite_expires_at must be a timezone-aware datetime")
    link = urlsplit(inv.join_url)
    if link.scheme.lower() not in ("http", "https") or not link.netloc:
        raise ValueError("join_url must be an absolute http:// or https:// URL")

    company = _one_line(inv.company) or "your support provider"
    technician = _one_line(inv.technician) or "A technician"
    join_url = _one_line(inv.join_url)
    install_command = _one_line(inv.install_command)
    now = datetime.now(UTC)
    parts = {
        "company": company,
        "technician": technician,
        "join_url": join_url,
        "install_command": install_command,
        "expires": _when(inv.invite_expires_at),
        "valid_for": _validity(inv.invite_expires_at, now),
        "session": _hours(inv.session_hours),
    }

    msg = EmailMessage(policy=email.policy.SMTP)
    msg["Subject"] = f"{technician} of {company} invites you to a remote support session"
    msg["From"] = _one_line(sender)
    try:
        msg["To"] = _address(inv.to)
    except (ValueError, IndexError, email.errors.HeaderParseError) as exc:
        raise ValueError(f"customer email {inv.to!r} is not a valid address") from exc
    if inv.technician_email.strip():
        try:
            tech = _address(inv.technician_email)
            msg["Reply-To"] = Address(display_name=technician, addr_spec=tech.addr_spec)
        except (ValueError, IndexError, email.errors.HeaderParseError):
            log.warning("technician email is not a valid address; invitation has no Reply-To")
    msg["Date"] = email.utils.format_datetime(now)
    msg["Message-ID"] = email.utils.make_msgid(domain=_msgid_domain(sender))
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies to us
    _set_text(msg, _text_part(**parts), "plain")
    _set_text(msg, _html_part(**parts), "html")
    return msg


# ---------------------------------------------------------------------------
# Where to send it
# ---------------------------------------------------------------------------


def _bad_url(problem: str) -> ValueError:
    return ValueError(f"Invalid SMTP URL ({problem}): {_URL_HELP}.")


@dataclass(frozen=True)
class SmtpTarget:
    """A parsed ``smtp://`` or ``smtps://`` URL. ``repr`` never shows the password."""

    host: str
    port: int
    username: str | None
    password: str | None = field(repr=False)
    implicit_tls: bool
    cafile: str | None

    @classmethod
    def parse(cls, url: str) -> SmtpTarget:
        """Parse ``smtp[s]://[user[:password]@]host[:port][?cafile=/path/ca.pem]``.

        The error messages never repeat the URL, as it may hold a password.
        """
        if not isinstance(url, str) or not url.strip():
            raise _bad_url("it is empty")
        try:
            parts = urlsplit(url.strip())
        except ValueError as exc:  # e.g. an unbalanced "[" in the host
            raise _bad_url("it cannot be parsed") from exc
        scheme = parts.scheme.lower()
        if scheme not in ("smtp", "smtps"):
            shown = repr(scheme) if scheme else "none"
            raise _bad_url(f"the scheme is {shown}, not smtp or smtps")
        host = parts.hostname
        if not host:
            raise _bad_url("the host name is missing")
        try:
            port = parts.port
        except ValueError as exc:
            raise _bad_url("the port is not a number between 1 and 65535") from exc
        if port is None:
            port = 465 if scheme == "smtps" else 25
        elif port == 0:
            raise _bad_url("the port is not a number between 1 and 65535")
        if parts.path not in ("", "/"):
            raise _bad_url("it has a path; only ?cafile= may follow the host")
        if parts.fragment:
            raise _bad_url("it has a #fragment")
        username = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password is not None else None
        if password is not None and not username:
            raise _bad_url("a password is given without a user name")
        cafile: str | None = None
        try:
            query = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=True)
        except ValueError as exc:
            if parts.query:
                raise _bad_url("the query string cannot be parsed") from exc
            query = []
        for name, value in query:
            if name != "cafile":
                raise _bad_url(f"unknown query parameter {name!r}; only cafile is allowed")
            if cafile is not None:
                raise _bad_url("cafile is given twice")
            if not value:
                raise _bad_url("cafile is empty")
            if not os.path.isfile(value):
                raise _bad_url(f"cafile {value!r} is not a readable file")
            cafile = value
        return cls(
            host=host,
            port=port,
            username=username,
            password=password,
            implicit_tls=scheme == "smtps",
            cafile=cafile,
        )

    @property
    def address(self) -> str:
        """``host:port`` as people write it (IPv6 in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def redacted(self) -> str:
        """The URL with the password replaced by ``***``, for logs and status pages."""
        scheme = "smtps" if self.implicit_tls else "smtp"
        userinfo = ""
        if self.username:
            userinfo = quote(self.username, safe="")
            if self.password is not None:
                userinfo += ":***"
            userinfo += "@"
        query = f"?cafile={quote(self.cafile, safe='/')}" if self.cafile else ""
        return f"{scheme}://{userinfo}{self.address}{query}"


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ---------------------------------------------------------------------------
# Delivery
# ---------------------------------------------------------------------------


class _Failure(Exception):
    """One failed delivery attempt: a human reason and whether retrying can help."""

    def __init__(self, reason: str, *, permanent: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent


def _causes(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in seen and len(seen) < 10:
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    return seen


async def _wait_closed(sock: Any, grace: float) -> None:
    """Give a closing connection a moment to finish closing (bounded by ``grace``).

    aiosmtplib's close() does not wait for the TLS close_notify exchange, so the
    socket is only released a few loop turns after the session ends. Waiting here
    means an attempt never leaves a half-closed connection behind, for instance
    when the event loop stops right after a delivery.
    """
    step = 0.005
    for _ in range(max(1, int(grace / step))):
        if sock.fileno() == -1:
            return
        await asyncio.sleep(step)


def _server_text(code: int, message: str) -> str:
    return f"{code} {message}".strip()


class Mailer:
    """Writes every invitation to the outbox and, when SMTP is configured, sends it."""

    def __init__(
        self,
        smtp_url: str | None,
        outbox_dir: Path,
        sender: str,
        *,
        attempts: int = 5,
        base_delay: float = 2.0,
        max_delay: float = 60.0,
        timeout: float = 30.0,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        if base_delay < 0 or max_delay < 0 or timeout <= 0:
            raise ValueError("delays must be >= 0 and timeout > 0")
        envelope_from = email.utils.parseaddr(sender)[1]
        if "@" not in envelope_from:
            raise ValueError(f"sender {sender!r} has no email address")
        self.target: SmtpTarget | None = SmtpTarget.parse(smtp_url) if smtp_url else None
        self.outbox_dir = Path(outbox_dir)
        self.sender = sender
        self.envelope_from = envelope_from
        self.attempts = attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.timeout = timeout
        self.sending = 0  # invitations between the outbox and a final answer (metrics)

    def smtp_description(self) -> str:
        """Where mail goes, safe to show or log."""
        if self.target is None:
            return "outbox (no SMTP configured)"
        return self.target.redacted()

    def outbox_path(self, key: str) -> Path:
        """The ``.eml`` file for ``key`` (1-128 of ``[A-Za-z0-9._-]``, no leading dot)."""
        if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
            raise ValueError(
                f"invalid mail key {key!r}: use 1-128 of [A-Za-z0-9._-], no leading dot"
            )
        return self.outbox_dir / f"{key}.eml"

    async def deliver(self, key: str, msg: EmailMessage, on_status: StatusCallback) -> str:
        """Write ``msg`` to the outbox, then send it if SMTP is configured.

        Returns (and reports through ``on_status``) "outbox", "sent" or
        "failed"; "retrying" is reported before each retry. Never raises for
        delivery errors; cancellation propagates.
        """
        self.sending += 1
        try:
            return await self._deliver(key, msg, on_status)
        finally:
            self.sending -= 1

    async def _deliver(self, key: str, msg: EmailMessage, on_status: StatusCallback) -> str:
        path = self.outbox_path(key)
        data = msg.as_bytes(policy=email.policy.SMTP)
        outbox_error: str | None = None
        try:
            await asyncio.to_thread(self._write_outbox, path, data)
        except OSError as exc:
            outbox_error = self._clean(f"could not write {path}: {exc.strerror or exc}")
            log.error("mail %s: %s", key, outbox_error)

        if self.target is None:
            if outbox_error is not None:
                await on_status("failed", outbox_error)
                return "failed"
            log.info("mail %s written to %s (no SMTP configured)", key, path)
            await on_status("outbox", None)
            return "outbox"

        reason = ""
        for attempt in range(1, self.attempts + 1):
            try:
                await self._send_once(msg)
            except _Failure as failure:
                reason = failure.reason
                if failure.permanent:
                    break
            else:
                log.info("mail %s sent via %s", key, self.target.address)
                await on_status("sent", None)
                return "sent"
            if attempt == self.attempts:
                if self.attempts > 1:
                    reason = self._clean(f"{reason} (gave up after {self.attempts} attempts)")
                break
            log.warning("mail %s: attempt %d failed: %s", key, attempt, reason)
            await on_status("retrying", reason)
            cap = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
            await asyncio.sleep(random.uniform(0, cap))

        log.warning("mail %s not sent: %s; it stays in %s", key, reason, path)
        await on_status("failed", reason)
        return "failed"

    # -- internals -----------------------------------------------------------

    def _write_outbox(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), 0o600)  # mkstemp's default, made explicit
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        try:  # make the rename itself durable
            dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return
        try:
            os.fsync(dir_fd)
        except OSError:
            pass
        finally:
            os.close(dir_fd)

    async def _send_once(self, msg: EmailMessage) -> None:
        """One connection, one message. Raises :class:`_Failure` on any delivery error."""
        t = self.target
        assert t is not None
        client = aiosmtplib.SMTP(
            hostname=t.host,
            port=t.port,
            use_tls=t.implicit_tls,
            start_tls=False if t.implicit_tls else None,  # None: STARTTLS when offered
            validate_certs=True,
            cert_bundle=t.cafile,
            timeout=self.timeout,
        )
        sockets: list[Any] = []  # the connection's socket, once connected
        failure: _Failure | None = None
        try:
            # A stalled server cannot hold an attempt longer than a few timeouts.
            async with asyncio.timeout(self.timeout * 4):
                async with client:
                    sockets.append(client.get_transport_info("socket"))
                    if t.username is not None:
                        await self._login(client)
                    await client.send_message(msg, sender=self.envelope_from)
        except _Failure as exc:
            failure = exc
        except aiosmtplib.SMTPRecipientsRefused as exc:
            refused = exc.recipients
            detail = "; ".join(_server_text(r.code, r.message) for r in refused) or "no detail"
            permanent = bool(refused) and all(r.code >= 500 for r in refused)
            failure = _Failure(self._clean(f"recipient rejected: {detail}"), permanent=permanent)
            failure.__cause__ = exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError, ValueError) as exc:
            failure = self._classify(exc)
            failure.__cause__ = exc
        # Not reached on cancellation, which propagates at once.
        if sockets and sockets[0] is not None:
            await _wait_closed(sockets[0], min(self.timeout, 2.0))
        if failure is not None:
            raise failure

    async def _login(self, client: aiosmtplib.SMTP) -> None:
        t = self.target
        assert t is not None
        encrypted = client.get_transport_info("sslcontext") is not None
        if not encrypted and not _is_loopback(t.host):
            raise _Failure(
                f"{t.address} does not offer STARTTLS, so the SMTP password was not sent "
                "unencrypted; use smtps:// or a server that offers STARTTLS",
                permanent=True,
            )
        try:
            await client.login(t.username or "", t.password or "")
        except aiosmtplib.SMTPAuthenticationError as exc:
            raise _Failure(
                self._clean(
                    f"SMTP login as {t.username!r} refused by {t.address}: "
                    f"{_server_text(exc.code, exc.message)}"
                ),
                permanent=exc.code >= 500,
            ) from exc

    def _classify(self, exc: BaseException) -> _Failure:
        """Turn an exception from one attempt into a short human reason."""
        t = self.target
        assert t is not None
        where = t.address
        chain = _causes(exc)

        def reason(text: str, permanent: bool = False) -> _Failure:
            return _Failure(self._clean(text), permanent=permanent)

        for e in chain:
            if isinstance(e, ssl.SSLCertVerificationError):
                hint = "" if t.cafile else " (add ?cafile=/path/ca.pem to trust a private CA)"
                return reason(
                    f"TLS certificate of {where} not trusted: "
                    f"{e.verify_message or e.reason or e}{hint}"
                )
        for e in chain:
            if isinstance(e, ssl.SSLError):
                return reason(f"TLS with {where} failed: {e.reason or e}")
        if isinstance(exc, aiosmtplib.SMTPSenderRefused):
            return reason(
                f"sender {exc.sender} rejected: {_server_text(exc.code, exc.message)}",
                exc.code >= 500,
            )
        if isinstance(exc, aiosmtplib.SMTPRecipientRefused):
            return reason(
                f"recipient rejected: {_server_text(exc.code, exc.message)}", exc.code >= 500
            )
        if isinstance(exc, aiosmtplib.SMTPDataError):
            return reason(
                f"message rejected by {where}: {_server_text(exc.code, exc.message)}",
                exc.code >= 500,
            )
        if isinstance(exc, aiosmtplib.SMTPResponseException):
            return reason(
                f"{where} answered {_server_text(exc.code, exc.message)}", exc.code >= 500
            )
        for e in chain:
            if isinstance(e, ConnectionRefusedError):
                return reason(f"connection refused by {where}")
        for e in chain:
            if isinstance(e, socket.gaierror):
                return reason(f"cannot resolve the SMTP host name {t.host}: {e.strerror or e}")
        if isinstance(exc, TimeoutError):  # includes aiosmtplib's timeout errors
            if isinstance(exc, aiosmtplib.SMTPConnectError):
                return reason(f"timed out connecting to {where}")
            return reason(f"timed out waiting for {where}")
        if isinstance(exc, aiosmtplib.SMTPServerDisconnected):
            return reason(f"{where} closed the connection unexpectedly")
        if isinstance(exc, aiosmtplib.SMTPConnectError):
            for e in chain:
                if isinstance(e, OSError) and not isinstance(e, aiosmtplib.SMTPException):
                    return reason(f"cannot connect to {where}: {e.strerror or e}")
            return reason(f"cannot connect to {where}")
        if isinstance(exc, aiosmtplib.SMTPNotSupported):
            return reason(f"{where} cannot take this message: {exc.message}", True)
        if isinstance(exc, aiosmtplib.SMTPException):
            # Configuration problems such as "AUTH not supported": retrying won't help.
            return reason(f"SMTP error with {where}: {exc.message}", True)
        if isinstance(exc, ValueError):
            return reason(f"message cannot be sent: {exc}", True)
        if isinstance(exc, OSError):
            return reason(f"cannot talk to {where}: {exc.strerror or exc}")
        return reason(f"delivery via {where} failed: {exc}")

    def _clean(self, text: str) -> str:
        """One line, bounded length, and never the SMTP password."""
        pw = self.target.password if self.target else None
        secrets = sorted({pw, _one_line(pw), quote(pw, safe=""), quote(pw)}, key=len) if pw else []
        for secret in reversed(secrets):  # longest first
            if secret:
                text = text.replace(secret, "***")
        text = _one_line(text)
        if len(text) > _MAX_REASON:
            text = text[: _MAX_REASON - 1] + "…"
        return text
