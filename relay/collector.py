"""Full garbage collections wait while the relay takes a storm of new connections.

A relay holding 10,000 agents has millions of long-lived objects, and CPython's collector
scans all of them in a full collection each time the objects that survived younger
collections grow by a quarter. While 10,000 agents of a dead worker or relay came back, a
worker ran eight full collections of 0.3–2.2 s (all but two found nothing to free): seconds in
which no handshake moved. Young collections go on as usual (they free the short-lived
cycles of packet handling); only the full ones wait until the entrance is quiet again, or
at most MAX_DEFERRAL seconds. `adhoc-relay serve` also moves what its start-up made (modules,
the app, keys: they live as long as the process) out of the collector's way (freeze_startup).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Callable

log = logging.getLogger("adhoc.relay")

# Connections waiting for or in their handshake at which the entrance counts as busy.
BUSY_STARTUPS = 64
# The longest a full collection is put off.
MAX_DEFERRAL = 120.0
CHECK_EVERY = 0.5
NEVER = 1 << 30  # a full-collection threshold no count reaches


class Collector:
    """Puts full collections off while `pending()` (connections not yet authenticated) is at
    least BUSY_STARTUPS."""

    def __init__(self, pending: Callable[[], int]) -> None:
        self._pending = pending
        self._thresholds = gc.get_threshold()
        self._deferred_since: float | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch())

    @property
    def deferring(self) -> bool:
        return self._deferred_since is not None

    def check(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        busy = self._pending() >= BUSY_STARTUPS
        if busy and self._deferred_since is None:
            self._deferred_since = now
            young, middle, _ = self._thresholds
            gc.set_threshold(young, middle, NEVER)
        elif self._deferred_since is not None and not busy:
            self._deferred_since = None
            gc.set_threshold(*self._thresholds)  # the next full one comes when it is due
        elif self._deferred_since is not None and now - self._deferred_since >= MAX_DEFERRAL:
            self._deferred_since = now  # busy for that long: one now, then wait again
            gc.collect()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(CHECK_EVERY)
            self.check()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._deferred_since is not None:
            self._deferred_since = None
            gc.set_threshold(*self._thresholds)


def freeze_startup() -> None:
    """Once a relay process has started: what exists now is never scanned again."""
    gc.collect()
    gc.freeze()
