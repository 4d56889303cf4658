"""Agents coming and going, written to the audit and event log in batches.

Each change is one audit row and one event, as before; what changes is that the changes queued
while a write is in flight go together in the next transaction. After a relay restart 10,000
agents come back within seconds, and one FULL-sync transaction each, one after another, kept
the database busy for most of a minute (docs/BENCHMARKS.md, fan-in).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from relay.store import Presence, Store

log = logging.getLogger("adhoc.relay.presence")

MAX_BATCH = 500
DRAIN_TIMEOUT = 5.0


class PresenceLog:
    def __init__(self, store: Store, written: Callable[[], None]) -> None:
        self._store = store
        self._written = written
        self._queue: list[Presence] = []
        self._writer: asyncio.Task | None = None
        self.node: str | None = None  # the cluster node this relay is: it holds the agents

    def record(self, change: Presence) -> None:
        """Queue a change; it is written (in order) as soon as the database is free."""
        self._queue.append(change)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_all())

    async def _write_all(self) -> None:
        while self._queue:
            batch = self._queue[:MAX_BATCH]
            del self._queue[:MAX_BATCH]
            try:
                await self._store.record_presence(batch, self.node)
            except Exception:
                log.exception("could not record %d agent presence changes", len(batch))
            self._written()

    async def drain(self) -> None:
        """Write what is queued (at shutdown, so the last agents' "offline" rows are kept)."""
        if self._writer is not None and not self._writer.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._writer), DRAIN_TIMEOUT)
            except TimeoutError:
                log.warning("relay stopping with %d presence changes unwritten", len(self._queue))
