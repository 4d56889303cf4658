"""A technician's own use cases: log in, API tokens, SSH authentication, tunnels, limits."""

from __future__ import annotations

import asyncio

from common.passwords import dummy_hash, verify_password
from common.secret import Secret
from relay import sessions as rules
from relay.store import NotFound, SessionRow, Store, Technician
from relay.usecases.base import ServiceBase
from relay.usecases.shared import TOKEN_LIFETIME, ServiceError, rate_limited


async def issue_token(store: Store, tech: Technician, now: float) -> str:
    """A new API token for `tech`; only its hash is stored. Also for a console that shares
    the embedded relay's database (it trusts whoever can read that folder)."""
    token = rules.new_token()
    await store.add_token(rules.token_hash(token), tech.id, now, now + TOKEN_LIFETIME)
    return token


class TechnicianCases(ServiceBase):
    async def login(self, login: str, password: Secret, source: str) -> tuple[str, Technician]:
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
                                     tech.password_hash if tech else dummy_hash(),
                                     password.reveal())
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
        return await issue_token(self.store, tech, now), tech

    async def issue_token(self, tech: Technician) -> str:
        """A token for a technician the caller already trusts (the console's embedded relay)."""
        return await issue_token(self.store, tech, self.clock())

    async def technician_for_token(self, token: Secret) -> Technician:
        tech = await self.store.technician_for_token(rules.token_hash(token.reveal()),
                                                     self.clock())
        if tech is None:
            raise ServiceError(401, "unauthorized",
                               "your login has expired or was revoked: log in again")
        return tech

    async def technician_for_ssh_password(self, login: str, password: Secret,
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

    async def _technician_for_ssh_password(self, login: str,
                                           password: Secret) -> Technician | None:
        try:
            tech = await self.store.technician_by_login(login)
        except NotFound:
            await asyncio.to_thread(verify_password, dummy_hash(), password.reveal())
            return None
        by_token = await self.store.technician_for_token(rules.token_hash(password.reveal()),
                                                         self.clock())
        if by_token is not None and by_token.id == tech.id:
            return tech
        if tech.disabled or not await asyncio.to_thread(verify_password, tech.password_hash,
                                                        password.reveal()):
            return None
        company = await self.store.company(tech.company_id)
        return None if company.disabled else tech

    async def still_allowed(self, tech: Technician) -> Technician | None:
        """The technician as the database has them now, if they and their company are still
        enabled: a connection keeps the technician it logged in as, and that may be stale."""
        try:
            now = await self.store.technician(tech.id)
            company = await self.store.company(now.company_id)
        except NotFound:
            return None
        return None if now.disabled or company.disabled else now

    async def may_tunnel(self, tech: Technician, session_id: str) -> SessionRow | None:
        """The session, in whatever state, if it is one of the technician's company (a channel
        opens to its agent only while it is active), else None; ServiceError "revoked" if they
        or their company were disabled since they logged in (re-read at every channel open)."""
        if await self.still_allowed(tech) is None:
            raise ServiceError(403, "revoked", "your access was revoked: ask your "
                                               "administrator")
        try:
            return await self.session_for(tech, session_id)
        except ServiceError:
            return None

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
