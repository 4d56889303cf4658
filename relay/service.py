"""What the relay does for each request: the use cases behind the HTTP API and the SSH endpoint.

Knows the rules, the store, the mailer and the agent registry; knows nothing of HTTP or SSH
wire formats. Every refusal is a `ServiceError` with an API error code and a sentence that says
what to do next.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy as email_policy
from email.parser import BytesParser

from common.passwords import dummy_hash, hash_password, session_secret_problem, verify_password
from relay import sessions as rules
from relay.config import Rate, RelaySettings, format_duration
from relay.events import EventBus
from relay.presence import PresenceLog
from relay.registry import AgentRegistry
from relay.store import Conflict, NotFound, Presence, SessionRow, Store, Technician

log = logging.getLogger("adhoc.relay")

DISC_SERVICE_NOT_AVAILABLE = 7  # RFC 4253 11.1; the same number as asyncssh's constant

TOKEN_LIFETIME = 30 * 86400
RECENT_ENDED = 7 * 86400
LOGIN_RE = re.compile(r"^[a-z0-9._-]{1,64}$")
EMAIL_RE = re.compile(r"^[^@\s<>\"',;]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?"
                      r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?)+$")

class ServiceError(Exception):
    def __init__(self, status: int, code: str, detail: str, *,
                 retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.retry_after = retry_after


class RateLimiter:
    """A token bucket per source address, in memory and bounded in size.

    `count` requests may come at once; after that one more each `per / count` seconds.
    """

    MAX_SOURCES = 10_000

    def __init__(self, rate: Rate, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(rate.count)
        self.refill_per_second = rate.count / rate.per.total_seconds()
        self.clock = clock
        # source -> (tokens, last update, refused since the last allowed request)
        self._buckets: OrderedDict[str, tuple[float, float, bool]] = OrderedDict()

    def take(self, source: str) -> tuple[float, bool]:
        """(0, False) when allowed; else (seconds to wait, whether this is the first refusal
        since the source was last allowed, which is the one worth auditing)."""
        now = self.clock()
        tokens, last, refused = self._buckets.pop(source, (self.capacity, now, False))
        tokens = min(self.capacity, tokens + (now - last) * self.refill_per_second)
        if tokens >= 1:
            self._buckets[source] = (tokens - 1, now, False)
            wait, first = 0.0, False
        else:
            self._buckets[source] = (tokens, now, True)
            wait, first = (1 - tokens) / self.refill_per_second, not refused
        while len(self._buckets) > self.MAX_SOURCES:
            self._buckets.popitem(last=False)
        return wait, first

    def refund(self, source: str) -> None:
        """Give back the request a successful login took: only failures use up the limit."""
        entry = self._buckets.get(source)
        if entry is not None:
            tokens, last, refused = entry
            self._buckets[source] = (min(self.capacity, tokens + 1), last, refused)


def rate_limited(wait: float, what: str) -> ServiceError:
    seconds = max(1, math.ceil(wait))
    return ServiceError(429, "rate_limited",
                        f"too many {what} attempts from your address: wait {seconds} s and try "
                        "again", retry_after=seconds)


def forbidden() -> ServiceError:
    return ServiceError(403, "forbidden", "only a company administrator can do this: ask one "
                                          "of your administrators")


def not_found(what: str = "session") -> ServiceError:
    return ServiceError(404, "not_found", f"no such {what}: check the id, or list the sessions "
                                          "you can see")


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def check_login_name(login: str) -> str:
    if not LOGIN_RE.match(login):
        raise ValueError(f"login {login!r} is not valid: use 1-64 of a-z, 0-9, '.', '_' and '-'")
    return login


def check_email(email: str) -> str:
    email = email.strip()
    if len(email) > 254 or not EMAIL_RE.match(email):
        raise ValueError(f"{email!r} is not an email address: use the form name@example.com")
    return email


@dataclass(frozen=True)
class CreatedSession:
    row: SessionRow
    security_code: str
    join_token: str
    join_url: str


class RelayService:
    def __init__(self, settings: RelaySettings, store: Store, secret_key: bytes,
                 relay_host_key: str, *, clock: Callable[[], float] = time.time,
                 mailer=None) -> None:
        self.settings = settings
        self.store = store
        self.secret_key = secret_key
        self.relay_host_key = relay_host_key
        self.clock = clock
        self.mailer = mailer
        self.bus = EventBus()
        self.agents = AgentRegistry()
        self.presence = PresenceLog(store, self.bus.notify)
        self.http_port: int | None = None
        self.ssh_port: int | None = None
        self._background: set[asyncio.Task] = set()
        self._expiry_wakeup = asyncio.Event()
        self._create_locks: dict[int, list] = {}  # technician id -> [lock, users]
        self.login_limiter = RateLimiter(settings.login_rate)
        self.activate_limiter = RateLimiter(settings.activate_rate)

    async def prepare(self) -> None:
        """Work done once before serving, so that no request pays for it (or times it)."""
        await asyncio.to_thread(dummy_hash)

    # --- addresses -------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return self.settings.base_url(self.http_port)

    @property
    def ssh_address(self) -> str:
        return self.settings.ssh_address(self.ssh_port)

    def join_url(self, token: str) -> str:
        return f"{self.base_url}/join/{token}"

    def install_command(self, token: str) -> str:
        return f"curl -fsSL {self.join_url(token)}/install.sh | sudo sh"

    # --- background work -------------------------------------------------------------------

    def spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def close(self) -> None:
        await self.presence.drain()
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    def _changed(self) -> None:
        self.bus.notify()
        self._expiry_wakeup.set()

    # --- technicians -----------------------------------------------------------------------

    async def login(self, login: str, password: str, source: str) -> tuple[str, Technician]:
        now = self.clock()
        wait, first_refusal = self.login_limiter.take(source)
        if wait:
            if first_refusal:
                await self.store.audit(now, f"login:{login[:64]}@{source}", "login",
                                       "rate_limited")
            raise rate_limited(wait, "login")
        try:
            tech = await self.store.technician_by_login(login)
        except NotFound:
            tech = None
        ok = await asyncio.to_thread(verify_password,
                                     tech.password_hash if tech else dummy_hash(), password)
        if tech is not None and ok and not tech.disabled:
            company = await self.store.company(tech.company_id)
            ok = not company.disabled
        else:
            ok = False
        await self.store.audit(now, f"login:{login[:64]}@{source}", "login",
                               "ok" if ok else "refused",
                               company_id=tech.company_id if tech else None)
        if not ok:
            raise ServiceError(401, "unauthorized",
                               "wrong login or password, or the account is disabled")
        self.login_limiter.refund(source)
        token = rules.new_token()
        await self.store.add_token(rules.token_hash(token), tech.id, now, now + TOKEN_LIFETIME)
        return token, tech

    async def issue_token(self, tech: Technician) -> str:
        """A token for a technician the caller already trusts (the console's embedded relay)."""
        now = self.clock()
        token = rules.new_token()
        await self.store.add_token(rules.token_hash(token), tech.id, now, now + TOKEN_LIFETIME)
        return token

    async def technician_for_token(self, token: str) -> Technician:
        tech = await self.store.technician_for_token(rules.token_hash(token), self.clock())
        if tech is None:
            raise ServiceError(401, "unauthorized",
                               "your login has expired or was revoked: log in again")
        return tech

    async def technician_for_ssh_password(self, login: str, password: str,
                                          source: str = "unknown") -> Technician | None:
        """SSH to the relay accepts an API token (the console) or the account password.

        Password guesses over SSH count against the same per-address limit as HTTP logins."""
        wait, first_refusal = self.login_limiter.take(source)
        if wait:
            if first_refusal:
                await self.store.audit(self.clock(), f"ssh:{login[:64]}@{source}", "login",
                                       "rate_limited")
            return None
        tech = await self._technician_for_ssh_password(login, password)
        if tech is not None:
            self.login_limiter.refund(source)
        return tech

    async def _technician_for_ssh_password(self, login: str, password: str) -> Technician | None:
        try:
            tech = await self.store.technician_by_login(login)
        except NotFound:
            await asyncio.to_thread(verify_password, dummy_hash(), password)
            return None
        by_token = await self.store.technician_for_token(rules.token_hash(password), self.clock())
        if by_token is not None and by_token.id == tech.id:
            return tech
        if tech.disabled or not await asyncio.to_thread(verify_password, tech.password_hash,
                                                        password):
            return None
        company = await self.store.company(tech.company_id)
        return None if company.disabled else tech

    # --- sessions --------------------------------------------------------------------------

    async def create_session(self, tech: Technician, customer_email: str, password: str | None,
                             note: str, *, verifier: str | None = None) -> CreatedSession:
        """A pending session with the session password (which the relay checks and hashes) or
        with its argon2id verifier (what the console sends: the relay never sees the password
        and the create costs only the database write)."""
        problem = session_secret_problem(password, verifier)
        if problem:
            raise ServiceError(422, "invalid", problem + ".")
        # One create at a time per technician: the rest then meet the technician limit in the
        # cheap check below instead of each hashing a password first.
        entry = self._create_locks.setdefault(tech.id, [asyncio.Lock(), 0])
        entry[1] += 1
        try:
            async with entry[0]:
                return await self._create_session(tech, customer_email, password, note,
                                                  verifier)
        finally:
            entry[1] -= 1
            if not entry[1]:
                del self._create_locks[tech.id]

    async def _create_session(self, tech: Technician, customer_email: str, password: str | None,
                              note: str, verifier: str | None) -> CreatedSession:
        # Refuse early when a limit is already reached, before spending an argon2 hash on it;
        # the store checks again atomically when it inserts.
        try:
            rules.check_can_create(await self.store.occupancy(tech.company_id, tech.id))
        except rules.LimitError as exc:
            await self.store.audit(self.clock(), f"technician:{tech.id}", "session_create",
                                   "refused", company_id=tech.company_id, reason=exc.code)
            raise ServiceError(exc.status, exc.code, exc.detail) from None
        if verifier is None:
            verifier = await asyncio.to_thread(hash_password, password)
        now = self.clock()
        code = rules.new_security_code()
        join_token = rules.new_token()
        join_hash = rules.token_hash(join_token)
        row = SessionRow(
            id=rules.new_session_id(), company_id=tech.company_id, technician_id=tech.id,
            customer_email=customer_email, note=note, password_verifier=verifier,
            join_token_hash=join_hash, code_hmac=rules.code_hmac(self.secret_key, join_hash, code),
            code_attempts=0, state=rules.State.PENDING, ended_reason=None, created_at=now,
            invite_expires_at=now + self.settings.invite_ttl.total_seconds(), activated_at=None,
            expires_at=None, ended_at=None, agent_secret_hash=None, host_key=None, hostname=None,
            os=None, os_user=None, ip=None, machine_fp=None, features="[]",
            mail_status="queued", mail_detail=None)
        try:
            row = await self.store.create_session(row)
        except rules.LimitError as exc:
            raise ServiceError(exc.status, exc.code, exc.detail) from None
        self._changed()
        created = CreatedSession(row, code, join_token, self.join_url(join_token))
        if self.mailer is not None:
            self.spawn(self._send_invitation(tech, created))
        return created

    async def _send_invitation(self, tech: Technician, created: CreatedSession) -> None:
        from relay.mailer import Invitation, render_invitation

        company = await self.store.company(tech.company_id)
        invitation = Invitation(
            to=created.row.customer_email, company=company.name, technician=tech.login,
            technician_email=tech.email, join_url=created.join_url,
            install_command=self.install_command(created.join_token),
            invite_expires_at=datetime.fromtimestamp(created.row.invite_expires_at, UTC),
            session_hours=round(self.settings.session_lifetime.total_seconds() / 3600))
        async def on_status(status: str, detail: str | None) -> None:
            await self.store.set_mail_status(created.row.id, status, detail, self.clock())
            self.bus.notify()

        try:
            message = render_invitation(invitation, self.settings.mail_from)
        except ValueError as exc:
            # The session stands; the technician sees why and can pass the link on by hand.
            await on_status("failed", f"cannot write this invitation: {exc}")
            return
        await self.mailer.deliver(created.row.id, message, on_status)

    async def session_for(self, tech: Technician, session_id: str) -> SessionRow:
        """The session if it belongs to the technician's company; 404 otherwise."""
        await self.expire_due()
        try:
            row = await self.store.session(session_id.lower())
        except NotFound:
            raise not_found() from None
        if row.company_id != tech.company_id:
            raise not_found()
        return row

    async def sessions_for(self, tech: Technician) -> list[SessionRow]:
        await self.expire_due()
        return await self.store.sessions_for_company(tech.company_id,
                                                     self.clock() - RECENT_ENDED)

    async def end_session(self, tech: Technician, session_id: str) -> SessionRow:
        row = await self.session_for(tech, session_id)
        return await self._end(row.id, rules.EndReason.TECHNICIAN, f"technician:{tech.login}")

    async def end_by_customer(self, session_id: str) -> SessionRow:
        return await self._end(session_id, rules.EndReason.CUSTOMER, "customer")

    async def _end(self, session_id: str, reason: str, actor: str) -> SessionRow:
        row, changed = await self.store.end_session(session_id, reason, self.clock(), actor)
        if changed:
            self._changed()
            self.disconnect_agent(session_id, reason)
        return row

    async def reissue_code(self, tech: Technician, session_id: str) -> tuple[SessionRow, str]:
        """A new security code for a pending session (the old one stops working); the count
        of wrong codes on the link is kept, so re-issuing never buys more guesses."""
        row = await self.session_for(tech, session_id)
        code = rules.new_security_code()
        try:
            row = await self.store.reissue_code(
                row.id, rules.code_hmac(self.secret_key, row.join_token_hash, code), self.clock(),
                f"technician:{tech.login}")
        except rules.InvalidTransition:
            raise ServiceError(409, "not_pending",
                               "this session is no longer waiting for its code (it is active or "
                               "ended): create a new session to invite the customer again") \
                from None
        self._changed()
        return row, code

    async def invitation(self, tech: Technician, session_id: str) -> dict:
        """The invitation as it was written to the outbox, so the technician can copy the link
        (the relay keeps only a hash of the join token; the outbox file is the one copy)."""
        row = await self.session_for(tech, session_id)
        if row.state != rules.State.PENDING:
            raise ServiceError(409, "not_pending",
                               "the invitation link only works while the session is pending: "
                               "create a new session to invite the customer again")
        path = self.settings.outbox_dir / f"{row.id}.eml"
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except OSError:
            raise ServiceError(404, "not_found",
                               "the invitation is not in the outbox (it may still be being "
                               "written): try again in a moment") from None
        message = BytesParser(policy=email_policy.default).parsebytes(data)
        body = message.get_body(preferencelist=("plain",))
        text = body.get_content() if body is not None else ""
        match = re.search(r"(\S+/join/[A-Za-z0-9_-]+)", text)
        return {"id": row.id, "to": str(message["To"] or ""),
                "subject": str(message["Subject"] or ""), "text": text,
                "join_url": match.group(1) if match else None,
                "mail_status": row.mail_status, "mail_detail": row.mail_detail}

    def disconnect_agent(self, session_id: str, reason: str) -> None:
        link = self.agents.get(session_id)
        if link is not None:
            # Not 11 ("by application"): asyncssh hides the reason of that code from the
            # client, and the agent needs "session ended" to stop rather than reconnect.
            link.conn.disconnect(DISC_SERVICE_NOT_AVAILABLE, f"session ended: {reason}")

    def session_view(self, row: SessionRow, technician_login: str | None = None) -> dict:
        link = self.agents.get(row.id)
        online = self.agents.is_online(row.id)
        host = None
        if row.hostname is not None:
            host = {"hostname": row.hostname, "os": row.os, "user": row.os_user, "ip": row.ip}
        return {
            "id": row.id, "state": row.state, "ended_reason": row.ended_reason,
            "customer_email": row.customer_email, "note": row.note,
            "technician": technician_login, "created_at": iso(row.created_at),
            "invite_expires_at": iso(row.invite_expires_at),
            "activated_at": iso(row.activated_at), "expires_at": iso(row.expires_at),
            "ended_at": iso(row.ended_at), "online": online,
            "online_since": iso(link.since) if online and link else None,
            "host": host, "host_key": row.host_key, "features": row.feature_list,
            "mail_status": row.mail_status, "mail_detail": row.mail_detail,
            "code_attempts": row.code_attempts,
        }

    async def technician_logins(self, company_id: int) -> dict[int, str]:
        return {t.id: t.login for t in await self.store.technicians(company_id)}

    async def limits_for(self, tech: Technician) -> dict:
        company = await self.store.company(tech.company_id)
        live = [r for r in await self.store.sessions_for_company(tech.company_id, self.clock())
                if r.is_live]
        return {
            "company": company.name, "plan": company.plan, "seats": company.seats,
            "live_for_company": len(live),
            "live_for_technician": sum(r.technician_id == tech.id for r in live),
            "max_live_per_company": rules.MAX_LIVE_PER_COMPANY,
            "max_live_per_technician": rules.MAX_LIVE_PER_TECHNICIAN,
            "features": list(rules.PLAN_FEATURES[rules.Plan(company.plan)]),
        }

    # --- company administration ------------------------------------------------------------

    @staticmethod
    def require_admin(tech: Technician) -> None:
        if not tech.is_admin:
            raise forbidden()

    async def company_overview(self, tech: Technician) -> dict:
        self.require_admin(tech)
        limits = await self.limits_for(tech)
        technicians = await self.store.technicians(tech.company_id)
        limits.update(technicians=len(technicians),
                      active_technicians=sum(not t.disabled for t in technicians))
        return limits

    async def technician_views(self, tech: Technician) -> list[dict]:
        self.require_admin(tech)
        live = {r.technician_id: r.id
                for r in await self.store.sessions_for_company(tech.company_id, self.clock())
                if r.is_live}
        views = []
        for t in await self.store.technicians(tech.company_id):
            views.append(self.technician_view(t, live.get(t.id),
                                              len(await self.store.ssh_keys(t.id))))
        return views

    @staticmethod
    def technician_view(t: Technician, live_session: str | None = None,
                        ssh_keys: int = 0) -> dict:
        return {"login": t.login, "email": t.email, "admin": bool(t.is_admin),
                "disabled": bool(t.disabled), "created_at": iso(t.created_at),
                "live_session": live_session, "ssh_keys": ssh_keys}

    async def _colleague(self, admin: Technician, login: str) -> Technician:
        """A technician of the admin's own company; others (and unknown logins) are 404."""
        self.require_admin(admin)
        try:
            other = await self.store.technician_by_login(login)
        except NotFound:
            other = None
        if other is None or other.company_id != admin.company_id:
            raise not_found("technician")
        return other

    async def add_technician(self, admin: Technician, login: str, email: str, password: str,
                             is_admin: bool, ssh_keys: list[str]) -> dict:
        self.require_admin(admin)
        verifier = await asyncio.to_thread(hash_password, password)
        now = self.clock()
        try:
            tech = await self.store.add_technician(admin.company_id, login, email, verifier,
                                                   is_admin, now, f"technician:{admin.login}")
        except Conflict:
            raise ServiceError(409, "exists", f"the login name {login!r} is taken: choose "
                                              "another") from None
        for key in ssh_keys:
            await self.store.add_ssh_key(tech.id, key, now)
        return self.technician_view(tech, None, len(ssh_keys))

    async def set_technician_disabled(self, admin: Technician, login: str,
                                      disabled: bool) -> dict:
        other = await self._colleague(admin, login)
        if other.id == admin.id and disabled:
            raise ServiceError(409, "self", "you cannot disable your own account: ask another "
                                            "administrator")
        await self.store.update_technician(other.id, self.clock(), f"technician:{admin.login}",
                                           disabled=int(disabled))
        return self.technician_view(await self.store.technician(other.id))

    async def reset_technician_password(self, admin: Technician, login: str,
                                        password: str) -> dict:
        other = await self._colleague(admin, login)
        verifier = await asyncio.to_thread(hash_password, password)
        await self.store.update_technician(other.id, self.clock(), f"technician:{admin.login}",
                                           password_hash=verifier)
        return self.technician_view(await self.store.technician(other.id))

    # --- the customer's side ---------------------------------------------------------------

    async def _session_for_link(self, join_token: str) -> SessionRow:
        await self.expire_due()
        try:
            return await self.store.session_by_join_hash(rules.token_hash(join_token))
        except NotFound:
            raise ServiceError(404, "not_found",
                               "this link is not valid: ask your technician for a new "
                               "invitation") from None

    async def join_info(self, join_token: str) -> dict:
        row = await self._session_for_link(join_token)
        company = await self.store.company(row.company_id)
        tech = await self.store.technician(row.technician_id)
        return {
            "company": company.name, "technician": tech.login, "technician_email": tech.email,
            "state": row.state, "invite_expires_at": iso(row.invite_expires_at),
            "session_hours": round(self.settings.session_lifetime.total_seconds() / 3600),
            "session_lifetime": format_duration(self.settings.session_lifetime),
        }

    async def activate(self, join_token: str, code: str, *, host_key: str, hostname: str,
                       os: str, user: str, machine_id: str | None, source: str) -> dict:
        wait, first_refusal = self.activate_limiter.take(source)
        if wait:
            if first_refusal:
                await self.store.audit(self.clock(), f"agent@{source}", "activate",
                                       "rate_limited")
            raise rate_limited(wait, "activation")
        row = await self._session_for_link(join_token)
        now = self.clock()
        if row.state != rules.State.PENDING:
            await self.store.record_refused_code(row.id, now, source, f"session is {row.state}")
            raise ServiceError(410, "link_used",
                               "this link was already used, has expired or was ended: ask your "
                               "technician for a new invitation")
        if not rules.code_matches(self.secret_key, row.join_token_hash, code, row.code_hmac):
            row = await self.store.record_wrong_code(row.id, now, source)
            self._changed()
            left = max(0, rules.MAX_CODE_ATTEMPTS - row.code_attempts)
            if left == 0:
                self.disconnect_agent(row.id, rules.EndReason.CODE_ATTEMPTS)
                raise ServiceError(410, "link_burnt",
                                   "too many wrong codes: this link no longer works; ask your "
                                   "technician for a new invitation")
            raise ServiceError(403, "wrong_code",
                               f"that is not the code: check it with your technician "
                               f"({left} {'try' if left == 1 else 'tries'} left)")
        company = await self.store.company(row.company_id)
        features = [str(f) for f in rules.PLAN_FEATURES[rules.Plan(company.plan)]]
        agent_secret = rules.new_token()
        machine_fp = (hashlib.sha256(f"adhoc-machine:{machine_id}".encode()).hexdigest()
                      if machine_id else None)
        try:
            row = await self.store.activate(
                row.id, now, now + self.settings.session_lifetime.total_seconds(),
                agent_secret_hash=rules.token_hash(agent_secret), host_key=host_key,
                hostname=hostname, os=os, os_user=user, ip=source, machine_fp=machine_fp,
                features=features, source=source)
        except Conflict:
            await self.store.record_refused_code(row.id, now, source, "machine_in_session")
            raise ServiceError(409, "machine_in_session",
                               "this computer already takes part in an Adhoc session: end that "
                               "session first") from None
        except rules.InvalidTransition:
            raise ServiceError(410, "link_used",
                               "this link was already used: ask your technician for a new "
                               "invitation") from None
        self._changed()
        tech = await self.store.technician(row.technician_id)
        return {
            "session_id": row.id, "agent_secret": agent_secret, "ssh": self.ssh_address,
            "relay_host_key": self.relay_host_key, "expires_at": iso(row.expires_at),
            "features": features, "password_verifier": row.password_verifier,
            "company": company.name, "technician": tech.login,
        }

    async def agent_may_connect(self, session_id: str, secret: str) -> bool:
        """Whether an agent's credential opens an active session that has not run out."""
        credential = await self.store.agent_credential(session_id)
        if credential is None:
            return False
        secret_hash, expires_at = credential
        if expires_at <= self.clock():
            # Run out but not yet ended: refuse now and let the expiry timer end it (it ends
            # it with the audit row and the agent told why). No write on the agent's path: a
            # reconnect storm would queue one transaction per agent.
            self._expiry_wakeup.set()
            return False
        return hmac.compare_digest(secret_hash, rules.token_hash(secret))

    async def agent_for_secret(self, session_id: str, secret: str) -> SessionRow | None:
        """The active session an agent may connect for, or None (ended, expired, wrong)."""
        if not await self.agent_may_connect(session_id, secret):
            return None
        row = await self.store.session(session_id)
        return row if row.state == rules.State.ACTIVE else None

    async def agent_for_bearer(self, bearer: str) -> SessionRow:
        """The agent's HTTP credential is "<session-id>:<agent-secret>"."""
        session_id, _, secret = bearer.partition(":")
        row = await self.agent_for_secret(session_id.lower(), secret) if secret else None
        if row is None:
            raise ServiceError(401, "unauthorized",
                               "this session is no longer active: the agent can remove itself")
        return row

    async def agent_reports(self, bearer: str, events: list[dict]) -> int:
        """Technician actions the agent saw inside the tunnel, for the audit log."""
        row = await self.agent_for_bearer(bearer)
        for item in events:
            # The audit row's own columns cannot be overridden by what the agent sends.
            reserved = ("event", "actor", "outcome", "at", "company_id", "session_id")
            detail = {(f"agent_{k}" if k in reserved[3:] else k): v
                      for k, v in item.items() if k not in reserved[:3]}
            await self.store.audit(self.clock(), f"technician:{str(item.get('actor', '?'))[:64]}",
                                   str(item.get("event", "unknown"))[:64],
                                   str(item.get("outcome", "ok"))[:32],
                                   company_id=row.company_id, session_id=row.id, **detail)
        return len(events)

    async def agent_ends(self, bearer: str) -> SessionRow:
        row = await self.agent_for_bearer(bearer)
        return await self.end_by_customer(row.id)

    def agent_presence(self, session_id: str, online: bool, ip: str | None) -> None:
        self.presence.record(Presence(session_id, online, self.clock(), ip))

    async def audit_event(self, session_id: str, actor: str, event: str, outcome: str,
                          **detail) -> None:
        row = await self.store.session(session_id)
        await self.store.audit(self.clock(), actor, event, outcome, company_id=row.company_id,
                               session_id=session_id, **detail)

    async def audit_for(self, tech: Technician, session_id: str) -> list[dict]:
        row = await self.session_for(tech, session_id)
        return [
            {"id": a.id, "at": iso(a.at), "actor": a.actor, "event": a.event,
             "outcome": a.outcome, "detail": json.loads(a.detail)}
            for a in await self.store.audit_for_session(row.id)
        ]

    async def may_tunnel(self, tech: Technician, session_id: str) -> SessionRow | None:
        """Whether the technician may open a channel to this session's agent now."""
        try:
            row = await self.session_for(tech, session_id)
        except ServiceError:
            return None
        return row if row.state == rules.State.ACTIVE else None

    # --- expiry ----------------------------------------------------------------------------

    async def expire_due(self) -> list[SessionRow]:
        ended = await self.store.end_expired(self.clock())
        for row in ended:
            self.disconnect_agent(row.id, row.ended_reason or rules.EndReason.EXPIRED)
        if ended:
            self.bus.notify()
        return ended

    async def run_expiry_timer(self) -> None:
        """End sessions as they expire: sleep until the next expiry or a change, then sweep."""
        while True:
            try:
                await self.expire_due()
                next_at = await self.store.next_expiry()
            except Exception:
                # A failing sweep (disk full, say) must not stop the timer for good.
                log.exception("expiry sweep failed; trying again shortly")
                next_at = self.clock() + 5
            delay = 60.0 if next_at is None else min(60.0, max(0.05, next_at - self.clock()))
            self._expiry_wakeup.clear()
            try:
                await asyncio.wait_for(self._expiry_wakeup.wait(), delay)
            except TimeoutError:
                pass

