"""A technician's sessions: create (and mail the invitation), list, view, end, re-issue the
code, show the invitation, and read a session's audit."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy as email_policy
from email.parser import BytesParser

from common.passwords import hash_password, session_secret_problem
from common.secret import Secret
from relay import sessions as rules
from relay.sshkeys import read_public_key
from relay.store import SessionRow, Technician
from relay.usecases.base import ServiceBase
from relay.usecases.shared import RECENT_ENDED, ServiceError, iso


def fingerprint(public_key: str | None) -> str | None:
    """A host key's fingerprint as OpenSSH prints it (SHA256:...), for reading on the phone."""
    if not public_key:
        return None
    try:
        data = base64.b64decode(public_key.split()[1], validate=True)
    except (IndexError, ValueError):
        return None
    return "SHA256:" + base64.b64encode(hashlib.sha256(data).digest()).decode().rstrip("=")


@dataclass(frozen=True)
class CreatedSession:
    """A new session and what only its creator is told (the relay keeps hashes of them)."""

    row: SessionRow
    security_code: Secret
    join_token: Secret
    join_url: Secret  # it holds the token


class SessionCases(ServiceBase):
    async def create_session(self, tech: Technician, customer_email: str,
                             password: Secret | None,
                             note: str, *, verifier: str | None = None,
                             technician_key: str | None = None) -> CreatedSession:
        """A pending session with the session password (which the relay checks and hashes) or
        with its argon2id verifier (what the console sends: the relay never sees the password
        and the create costs only the database write); with `technician_key`, an SSH public
        key that may also log in to the host as this technician (for scripts)."""
        problem = session_secret_problem(password and password.reveal(), verifier)
        if problem:
            raise ServiceError(422, "invalid", problem + ".")
        if technician_key is not None:
            try:
                technician_key = read_public_key(technician_key)
            except ValueError as exc:
                raise ServiceError(422, "invalid", f"technician_key: {exc}.") from None
        # One create at a time per technician: the rest then meet the technician limit in the
        # cheap check below instead of each hashing a password first.
        async with self._create_locks.hold(tech.id):
            return await self._create_session(tech, customer_email, password, note, verifier,
                                              technician_key)

    async def _create_session(self, tech: Technician, customer_email: str,
                              password: Secret | None,
                              note: str, verifier: str | None,
                              technician_key: str | None) -> CreatedSession:
        # Refuse early when a limit is already reached, before spending an argon2 hash on it;
        # the store checks again atomically when it inserts.
        try:
            rules.check_can_create(await self.store.occupancy(tech.company_id, tech.id))
        except rules.LimitError as exc:
            await self.store.audit(self.clock(), f"technician:{tech.id}", "session_create",
                                   "refused", company_id=tech.company_id, reason=exc.code)
            raise ServiceError(exc.status, exc.code, exc.detail) from None
        if verifier is None:
            assert password is not None  # session_secret_problem: one of the two
            verifier = await asyncio.to_thread(hash_password, password.reveal())
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
            mail_status="queued", mail_detail=None, technician_key=technician_key)
        try:
            row = await self.store.create_session(row)
        except rules.LimitError as exc:
            raise ServiceError(exc.status, exc.code, exc.detail) from None
        self._changed()
        created = CreatedSession(row, Secret(code), Secret(join_token),
                                 Secret(self.join_url(join_token)))
        if self.mailer is not None:
            self.spawn(self._send_invitation(tech, created))
        return created

    async def _send_invitation(self, tech: Technician, created: CreatedSession) -> None:
        from relay.mailer import Invitation, render_invitation

        company = await self.store.company(tech.company_id)
        invitation = Invitation(
            to=created.row.customer_email, company=company.name, technician=tech.login,
            technician_email=tech.email, join_url=created.join_url.reveal(),
            install_command=self.install_command(created.join_token.reveal()),
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

    async def sessions_for(self, tech: Technician) -> list[SessionRow]:
        await self.expire_due()
        return await self.store.sessions_for_company(tech.company_id,
                                                     self.clock() - RECENT_ENDED)

    async def end_session(self, tech: Technician, session_id: str) -> SessionRow:
        row = await self.session_for(tech, session_id)
        return await self._end(row.id, rules.EndReason.TECHNICIAN, f"technician:{tech.login}")

    async def reissue_code(self, tech: Technician, session_id: str) -> tuple[SessionRow, Secret]:
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
        return row, Secret(code)

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

    def session_view(self, row: SessionRow, technician_login: str | None = None) -> dict:
        link = self.agents.get(row.id)
        # Held here, or by another node of the cluster.
        online = self.agents.is_online(row.id) or (link is None
                                                   and row.id in self.cluster_online)
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
            "code_attempts_left": max(0, rules.MAX_CODE_ATTEMPTS - row.code_attempts),
            "host_key_fingerprint": fingerprint(row.host_key),
            "technician_key_fingerprint": fingerprint(row.technician_key),
            "host_problem": self._host_problem(row.id, online),
        }

    def _host_problem(self, session_id: str, online: bool) -> dict | None:
        """Why the host could not connect, as its agent last said (while it is offline)."""
        problem = None if online else self.host_problems.get(session_id)
        return {"text": problem[0], "at": iso(problem[1])} if problem else None

    async def technician_logins(self, company_id: int) -> dict[int, str]:
        return {t.id: t.login for t in await self.store.technicians(company_id)}

    async def audit_for(self, tech: Technician, session_id: str, *, after: int = 0,
                        limit: int = -1) -> list[dict]:
        """The session's audit rows after row `after`, at most `limit` (-1: all). Rows the
        customer's agent reported are marked `reported_by: agent`; the relay's own `relay`."""
        row = await self.session_for(tech, session_id)
        return [
            {"id": a.id, "at": iso(a.at), "actor": a.actor, "event": a.event,
             "outcome": a.outcome, "detail": json.loads(a.detail),
             "reported_by": "agent" if a.actor == "agent-report" else "relay"}
            for a in await self.store.audit_for_session(row.id, after, limit)
        ]
