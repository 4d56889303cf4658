"""The customer's side before activation: who is asking (the join page and the agent show
it), and activation with the security code."""

from __future__ import annotations

import hashlib

from common.secret import Secret
from relay import sessions as rules
from relay.config import format_duration
from relay.store import Conflict, NotFound, SessionRow
from relay.usecases.base import ServiceBase
from relay.usecases.shared import LINK_USED, KeyedLocks, ServiceError, iso, rate_limited


class CustomerCases(ServiceBase):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._link_locks = KeyedLocks()  # by join token hash

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

    async def activate(self, join_token: str, code: Secret, *, host_key: str, hostname: str,
                       os: str, user: str, machine_id: str | None, source: str) -> dict:
        wait, first_refusal = self.activate_limiter.take(source)
        if wait:
            if first_refusal:
                await self.store.audit(self.clock(), f"agent@{source}", "activate",
                                       "rate_limited")
            raise rate_limited(wait, "activation")
        # One attempt at a time per link: each is judged on the count the one before left,
        # so 60 wrong codes at once are 5 judged and 55 refused, not 60 judged.
        async with self._link_locks.hold(rules.token_hash(join_token)):
            return await self._activate(join_token, code, host_key=host_key, hostname=hostname,
                                        os=os, user=user, machine_id=machine_id, source=source)

    async def _activate(self, join_token: str, code: Secret, *, host_key: str, hostname: str,
                        os: str, user: str, machine_id: str | None, source: str) -> dict:
        row = await self._session_for_link(join_token)
        now = self.clock()
        if row.state != rules.State.PENDING:
            await self.store.record_refused_code(row.id, now, source, f"session is {row.state}")
            raise ServiceError(410, "link_used", LINK_USED)
        if not rules.code_matches(self.secret_key, row.join_token_hash, code.reveal(),
                                  row.code_hmac):
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
            "relays": self.relay_addresses(),
            "relay_host_key": self.relay_host_key, "expires_at": iso(row.expires_at),
            "features": features, "password_verifier": row.password_verifier,
            "technician_key": row.technician_key,
            "company": company.name, "technician": tech.login,
        }
