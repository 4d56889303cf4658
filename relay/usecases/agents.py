"""An activated agent's use cases: its credential (HTTP and SSH), the technician actions it
reports for the audit, its presence, and the customer ending the session from its window."""

from __future__ import annotations

import hmac
import json
import math
import os
import re
from datetime import timedelta

from common.protocol import (
    AGENT_EVENTS,
    AGENT_FIELD_CHARS_MAX,
    AGENT_FIELDS_MAX,
    AGENT_OUTCOMES,
)
from common.secret import Secret
from relay import sessions as rules
from relay.config import Rate
from relay.store import NotFound, Presence, SessionRow
from relay.usecases.base import ServiceBase
from relay.usecases.shared import LOGIN_RE, RateLimiter, ServiceError

AGENT_REPORT_ACTOR = "agent-report"
# Per session: a burst of 500 events, then 50 a second; and 20,000 in all.
AGENT_REPORT_RATE = Rate(int(os.environ.get("ADHOC_RELAY_AGENT_REPORT_BURST", "500")),
                         timedelta(seconds=10))
AGENT_REPORTS_PER_SESSION = int(os.environ.get("ADHOC_RELAY_AGENT_REPORTS_PER_SESSION",
                                               "20000"))
AGENT_ACTORS = ("customer", "agent")  # the other actors an agent event may name
FIELD_NAME = re.compile(r"^[A-Za-z0-9_]{1,64}$")
# An agent's connection problem: this much text, and a change at most every few seconds.
PROBLEM_CHARS = 500
PROBLEM_RATE = Rate(5, timedelta(minutes=1))
# How long after its session ended an agent's last reports are still recorded: what it saw
# while the session ended (a digest cut short, a transfer closed in the last second).
REPORT_GRACE = float(os.environ.get("ADHOC_RELAY_AGENT_REPORT_GRACE", "300"))


def _credential(bearer: Secret) -> tuple[str, Secret | None]:
    """(session id, agent secret) of the agent's HTTP credential "<session-id>:<secret>"."""
    session_id, _, secret = bearer.reveal().partition(":")
    return session_id.lower(), Secret(secret) if secret else None


def _no_longer_active() -> ServiceError:
    return ServiceError(401, "unauthorized",
                        "this session is no longer active: the agent can remove itself")


def _secret_matches(secret_hash: str | None, secret: Secret) -> bool:
    return secret_hash is not None and \
        hmac.compare_digest(secret_hash, rules.token_hash(secret.reveal()))


def agent_event(item: dict) -> tuple[str | None, tuple[str, str, dict] | None]:
    """(why it is refused, None) or (None, (event, outcome, detail)) for one reported event.
    The agent's fields, the technician it names among them, go under the one key "agent"."""
    event, outcome = item.get("event"), item.get("outcome", "ok")
    if not isinstance(event, str) or event not in AGENT_EVENTS:
        return (f"{str(event)[:64]!r} is not an event an agent reports: see docs/PROTOCOL.md",
                None)
    if outcome not in AGENT_OUTCOMES:
        return f"outcome {str(outcome)[:32]!r} is not one of {', '.join(AGENT_OUTCOMES)}", None
    fields = {k: v for k, v in item.items() if k not in ("event", "outcome", "actor")}
    if len(fields) > AGENT_FIELDS_MAX:
        return f"an event may carry at most {AGENT_FIELDS_MAX} fields", None
    agent: dict = {}
    for name, value in fields.items():
        if not FIELD_NAME.match(name):
            return f"field name {name[:64]!r} is not 1-64 of A-Z, a-z, 0-9 and _", None
        if not isinstance(value, str | int | float | bool) and value is not None:
            value = json.dumps(value)[:AGENT_FIELD_CHARS_MAX + 1]
        if isinstance(value, str) and len(value) > AGENT_FIELD_CHARS_MAX:
            value = (f"{value[:AGENT_FIELD_CHARS_MAX]}… [+{len(value) - AGENT_FIELD_CHARS_MAX}"
                     " chars]")
        agent[name] = value
    # Who the agent says acted: a technician's login, or the customer or the agent itself.
    actor = item.get("actor")
    if actor in AGENT_ACTORS:
        agent["by"] = actor
    else:
        agent["technician"] = actor if isinstance(actor, str) and LOGIN_RE.match(actor) else "?"
    return None, (event, str(outcome), {"agent": agent})


class AgentCases(ServiceBase):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.agent_report_limiter = RateLimiter(AGENT_REPORT_RATE)
        self._agent_report_counts: dict[str, int] = {}  # session id -> rows recorded
        self.problem_limiter = RateLimiter(PROBLEM_RATE)

    async def agent_may_connect(self, session_id: str, secret: Secret) -> bool:
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
        return _secret_matches(secret_hash, secret)

    async def agent_session_active(self, session_id: str) -> bool:
        """Whether the session is active and not run out (an agent may hold its forward)."""
        credential = await self.store.agent_credential(session_id)
        return credential is not None and credential[1] > self.clock()

    async def agent_for_secret(self, session_id: str, secret: Secret) -> SessionRow | None:
        """The active session an agent may connect for, or None (ended, expired, wrong)."""
        if not await self.agent_may_connect(session_id, secret):
            return None
        row = await self.store.session(session_id)
        return row if row.state == rules.State.ACTIVE else None

    async def agent_for_bearer(self, bearer: Secret) -> SessionRow:
        """The active session of an agent's HTTP credential (401 otherwise)."""
        session_id, secret = _credential(bearer)
        row = await self.agent_for_secret(session_id, secret) if secret else None
        if row is None:
            raise _no_longer_active()
        return row

    async def agent_reporting(self, bearer: Secret) -> SessionRow:
        """The session an agent may report for: active, or ended within REPORT_GRACE."""
        try:
            return await self.agent_for_bearer(bearer)
        except ServiceError:
            session_id, secret = _credential(bearer)
            try:
                row = await self.store.session(session_id)
            except NotFound:
                raise _no_longer_active() from None
            if secret is None or row.ended_at is None \
                    or self.clock() - row.ended_at > REPORT_GRACE \
                    or not _secret_matches(row.agent_secret_hash, secret):
                raise
            return row

    async def agent_reports(self, bearer: Secret, events: list[dict]) -> dict:
        """Technician actions the agent saw inside the tunnel, for the audit log.

        Only AGENT_EVENTS are recorded, as rows of the actor "agent-report" with every field
        the agent sent under the one key "agent"; others are refused one by one. A session's
        agent may report AGENT_REPORT_RATE events and AGENT_REPORTS_PER_SESSION in all, until
        REPORT_GRACE after its session ended."""
        row = await self.agent_reporting(bearer)
        wait, _ = self.agent_report_limiter.take(row.id, cost=max(1, len(events)))
        if wait:
            raise ServiceError(429, "rate_limited",
                               f"this session's agent reports too many events: wait "
                               f"{max(1, math.ceil(wait))} s and send them again",
                               retry_after=max(1, math.ceil(wait)))
        rows, refused = [], []
        for index, item in enumerate(events):
            problem, event = agent_event(item)
            if problem:
                refused.append({"index": index, "reason": problem})
            else:
                rows.append(event)
        if rows:
            await self._record_agent_rows(row, rows)
        return {"recorded": len(rows), "refused": refused}

    async def _record_agent_rows(self, row: SessionRow, rows: list) -> None:
        count = self._agent_report_counts.get(row.id)
        if count is None:
            count = await self.store.audit_count(row.id, AGENT_REPORT_ACTOR)
        if count + len(rows) > AGENT_REPORTS_PER_SESSION:
            if count < AGENT_REPORTS_PER_SESSION + 1:  # say so once, in the audit too
                await self.store.audit(self.clock(), "relay", "audit_capped",
                                       "refused", company_id=row.company_id, session_id=row.id,
                                       limit=AGENT_REPORTS_PER_SESSION)
                self._agent_report_counts[row.id] = AGENT_REPORTS_PER_SESSION + 1
            raise ServiceError(429, "audit_full",
                               f"this session's agent has reported "
                               f"{AGENT_REPORTS_PER_SESSION} events, the most one session "
                               "may: the relay records no more for it")
        await self.store.audit_many(self.clock(), AGENT_REPORT_ACTOR, row.company_id, row.id,
                                    rows)
        self._agent_report_counts[row.id] = count + len(rows)
        while len(self._agent_report_counts) > 10_000:
            self._agent_report_counts.pop(next(iter(self._agent_report_counts)))

    async def agent_ends(self, bearer: Secret) -> SessionRow:
        """The customer ended the session from the agent's window."""
        row = await self.agent_for_bearer(bearer)
        return await self._end(row.id, rules.EndReason.CUSTOMER, "customer")

    def agent_presence(self, session_id: str, online: bool, ip: str | None) -> None:
        if online:
            self.host_problems.pop(session_id, None)
        self.presence.record(Presence(session_id, online, self.clock(), ip))

    async def agent_problem(self, bearer: Secret, problem: str | None) -> dict:
        """The agent cannot connect over SSH (or can again: None) and says why over HTTP; the
        technician's console shows it on the session's row. One audit row and event per
        change, at most PROBLEM_RATE."""
        row = await self.agent_for_bearer(bearer)
        text = " ".join(problem.split())[:PROBLEM_CHARS] if problem else None
        current = self.host_problems.get(row.id)
        if (current[0] if current else None) == text:
            return {"recorded": False}
        wait, _ = self.problem_limiter.take(row.id)
        if wait:
            raise ServiceError(429, "rate_limited",
                               f"this session's agent reports problems too often: wait "
                               f"{max(1, math.ceil(wait))} s", retry_after=max(1, math.ceil(wait)))
        now = self.clock()
        if text is None:
            self.host_problems.pop(row.id, None)
        else:
            self.host_problems[row.id] = (text, now)
        await self.store.record_host_problem(now, row.company_id, row.id, text)
        self.bus.notify()
        return {"recorded": True}

    async def audit_event(self, session_id: str, actor: str, event: str, outcome: str,
                          **detail) -> None:
        row = await self.store.session(session_id)
        await self.store.audit(self.clock(), actor, event, outcome, company_id=row.company_id,
                               session_id=session_id, **detail)
