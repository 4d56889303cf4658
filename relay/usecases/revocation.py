"""Revocation cuts live access: a technician disabled or given a new password, or a company
disabled, loses every relay SSH connection (and so every spliced channel) at once.

An administrator acts through the API (this process: cut at once) or through `adhoc-relay`
on the command line (another process). The serving relay notices the latter from the audit
rows every such change writes, read every REVOCATION_POLL seconds.
"""

from __future__ import annotations

import asyncio
import json
import logging

from relay.usecases.base import ServiceBase

log = logging.getLogger("adhoc.relay")

REVOCATION_POLL = 0.5
DISC_NO_MORE_AUTH_METHODS_AVAILABLE = 14  # RFC 4253 11.1: the client should not just retry


class RevocationCases(ServiceBase):
    def cut_technician(self, technician_id: int, why: str) -> int:
        """Close the technician's relay connections; returns how many."""
        return self._cut(self.connections.of_technician(technician_id), why)

    def cut_company(self, company_id: int, why: str) -> int:
        """Close every relay connection of the company's technicians; returns how many."""
        return self._cut(self.connections.of_company(company_id), why)

    @staticmethod
    def _cut(conns: list, why: str) -> int:
        for conn in conns:
            conn.disconnect(DISC_NO_MORE_AUTH_METHODS_AVAILABLE,
                            f"access revoked: {why}; ask your administrator")
        return len(conns)

    async def cut_for_access_changes(self, after_id: int) -> int:
        """Cut the access that audit rows after `after_id` revoked; returns the last row seen."""
        for row_id, event, company_id, detail in await self.store.access_changes_after(after_id):
            after_id = row_id
            changes = json.loads(detail)
            if event == "company_changed" and changes.get("disabled") and company_id:
                self.cut_company(company_id, "your company was disabled")
            elif event == "technician_changed" and "technician_id" in changes:
                if changes.get("disabled"):
                    self.cut_technician(changes["technician_id"], "your account was disabled")
                elif "password" in changes:
                    self.cut_technician(changes["technician_id"], "your password was reset")
        return after_id

    async def run_revocation_watch(self) -> None:
        """Follow access changes made by other processes (the admin CLI) while serving."""
        after_id = await self.store.last_audit_id()
        while True:
            try:
                after_id = await self.cut_for_access_changes(after_id)
            except Exception:
                log.exception("revocation watch failed; trying again shortly")
            await asyncio.sleep(REVOCATION_POLL)
