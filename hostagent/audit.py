"""Technician actions the agent saw inside the tunnel, sent to the relay's audit log.

The relay cannot see inside the tunnel, so the agent reports: POST /api/v1/agent/audit with
`Authorization: Bearer <session_id>:<agent_secret>`, in batches. While the relay is out of
reach the events wait in memory (bounded: the oldest give way, and the loss itself is reported
once the relay is back), and are sent again with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime

import httpx

log = logging.getLogger("adhoc.host")

QUEUE_LIMIT = 1000
BATCH = 100  # the relay takes at most 100 events per request
RETRY_BASE = 0.5
RETRY_CAP = 15.0
TIMEOUT = httpx.Timeout(10.0, connect=5.0)


class AuditQueue:
    def __init__(self, base_url: str, session_id: str, secret: str, *,
                 client: Callable[..., httpx.AsyncClient] = httpx.AsyncClient) -> None:
        self.url = f"{base_url}/api/v1/agent/audit"
        self._client = client  # makes the HTTP client (the link's: proxy, TLS, pin)
        self._headers = {"Authorization": f"Bearer {session_id}:{secret}"}
        self._pending: deque[dict] = deque(maxlen=QUEUE_LIMIT)
        self._dropped = 0
        self._wakeup = asyncio.Event()
        self._drained = asyncio.Event()  # set while nothing waits to be sent
        self._task: asyncio.Task | None = None
        self.refused = False  # the relay no longer takes reports for this session

    def add(self, event: str, actor: str, detail: dict) -> None:
        if len(self._pending) == self._pending.maxlen:
            self._dropped += 1
        item = {**detail, "event": event, "actor": actor[:64], "seen_at": _now()}
        item["outcome"] = str(detail.get("outcome", "ok"))
        self._pending.append(item)
        self._drained.clear()
        self._wakeup.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        attempt = 0
        async with self._client(timeout=TIMEOUT, headers=self._headers) as client:
            while not self.refused:
                if not self._pending and not self._dropped:
                    self._drained.set()
                    self._wakeup.clear()
                    await self._wakeup.wait()
                if await self._send_batch(client):
                    attempt = 0
                    continue
                attempt += 1
                await asyncio.sleep(random.uniform(0, min(RETRY_CAP, RETRY_BASE * 2 ** attempt)))

    async def _send_batch(self, client: httpx.AsyncClient) -> bool:
        batch = list(self._pending)[:BATCH]
        if self._dropped and len(batch) < BATCH:
            batch.append({"event": "audit_lost", "actor": "agent", "outcome": "lost",
                          "seen_at": _now(), "count": self._dropped})
        try:
            response = await client.post(self.url, json={"events": batch})
        except httpx.HTTPError as exc:
            log.info("audit: relay unreachable (%s); %d events wait", exc, len(self._pending))
            return False
        if response.status_code == 401:
            self.refused = True
            self._drained.set()  # nobody will take them: stop waiting
            return False
        if response.status_code >= 500:
            return False
        if response.status_code != 200:
            # Malformed for the relay: retrying would not help, and would block the rest.
            log.warning("audit: relay refused a batch: %s", response.text[:200])
        sent = sum(1 for item in batch if item["event"] != "audit_lost")
        for _ in range(sent):
            self._pending.popleft()
        if len(batch) > sent:
            self._dropped = 0
        return True

    async def flush(self, within: float) -> None:
        """Send what is waiting, for at most `within` seconds."""
        if self._task is None or self._task.done():
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await self._drained.wait()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
