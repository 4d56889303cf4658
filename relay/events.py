"""In-process wake-ups for the live event stream: the store keeps the events, this says when.

Events are rows in the database (so a reconnecting console resumes from its last id, even
across a relay restart); the bus only wakes the SSE streams waiting for new rows.
"""

from __future__ import annotations

import asyncio


class EventBus:
    def __init__(self) -> None:
        self._changed = asyncio.Event()
        self.closed = False  # the relay is stopping: streams end rather than read on

    def close(self) -> None:
        """The relay is stopping: wake every stream, to end before the database closes."""
        self.closed = True
        self.notify()

    def notify(self) -> None:
        """New event rows were committed."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait(self, patience: float) -> bool:
        """Wait for the next notify; False when `patience` seconds passed first."""
        changed = self._changed
        try:
            await asyncio.wait_for(changed.wait(), patience)
        except TimeoutError:
            return False
        return True
