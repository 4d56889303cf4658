"""A company administrator's use cases: the company's overview and its technicians (add,
disable, enable, reset a password)."""

from __future__ import annotations

import asyncio

from common.passwords import hash_password
from common.secret import Secret
from relay.store import Conflict, NotFound, Technician
from relay.usecases.revocation import RevocationCases
from relay.usecases.shared import ServiceError, forbidden, iso, not_found


class AdminCases(RevocationCases):
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

    async def add_technician(self, admin: Technician, login: str, email: str, password: Secret,
                             is_admin: bool, ssh_keys: list[str]) -> dict:
        self.require_admin(admin)
        verifier = await asyncio.to_thread(hash_password, password.reveal())
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
        if disabled:
            self.cut_technician(other.id, "your account was disabled")
        return self.technician_view(await self.store.technician(other.id))

    async def reset_technician_password(self, admin: Technician, login: str,
                                        password: Secret) -> dict:
        other = await self._colleague(admin, login)
        verifier = await asyncio.to_thread(hash_password, password.reveal())
        await self.store.update_technician(other.id, self.clock(), f"technician:{admin.login}",
                                           password_hash=verifier)
        self.cut_technician(other.id, "your password was reset")
        return self.technician_view(await self.store.technician(other.id))
