"""An activated agent's use cases: its credential (HTTP and SSH), the technician actions it
reports for the audit, its presence, and the customer ending the session from its window."""

from __future__ import annotations

import hmac

from relay import sessions as rules
from relay.store import Presence, SessionRow
from relay.usecases.base import ServiceBase
from relay.usecases.shared import ServiceError


class AgentCases(ServiceBase):
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

    async def agent_session_active(self, session_id: str) -> bool:
        """Whether the session is active and not run out (an agent may hold its forward)."""
        credential = await self.store.agent_credential(session_id)
        return credential is not None and credential[1] > self.clock()

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
        """The customer ended the session from the agent's window."""
        row = await self.agent_for_bearer(bearer)
        return await self._end(row.id, rules.EndReason.CUSTOMER, "customer")

    def agent_presence(self, session_id: str, online: bool, ip: str | None) -> None:
        self.presence.record(Presence(session_id, online, self.clock(), ip))

    async def audit_event(self, session_id: str, actor: str, event: str, outcome: str,
                          **detail) -> None:
        row = await self.store.session(session_id)
        await self.store.audit(self.clock(), actor, event, outcome, company_id=row.company_id,
                               session_id=session_id, **detail)
