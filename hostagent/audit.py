"""Technician actions the agent saw inside the tunnel, sent to the relay's audit log.

The relay cannot see inside the tunnel, so the agent reports: POST /api/v1/agent/audit with
`Authorization: Bearer <session_id>:<agent_secret>`, in batches that fit the relay's body
limit. While the relay is out of reach (or asks the agent to slow down) the events wait in
memory (bounded: the oldest give way, and the loss itself is reported once the relay is back),
and are sent again with backoff.

`Event` (common/protocol.py AgentEvent) is the whole vocabulary the agent sends, the same list
the relay accepts: every report goes through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime

import httpx

from common.protocol import AgentEvent as Event
from common.secret import Secret

log = logging.getLogger("adhoc.host")

QUEUE_LIMIT = 1000
BATCH = 100  # the relay takes at most 100 events per request
# The relay refuses bodies over 64 KiB; leave room for the envelope.
BATCH_BYTES = 60 * 1024
# No one field may crowd a batch out: a path or command longer than this is cut (and says so).
FIELD_LIMIT = 8192
RETRY_BASE = 0.5
RETRY_CAP = 15.0
TIMEOUT = httpx.Timeout(10.0, connect=5.0)


def _bounded(value: object) -> object:
    if isinstance(value, str) and len(value) > FIELD_LIMIT:
        return value[:FIELD_LIMIT] + f"… [+{len(value) - FIELD_LIMIT} chars]"
    return value


def _size(item: dict) -> int:
    return len(json.dumps(item, ensure_ascii=False).encode()) + 1


class AuditQueue:
    def __init__(self, base_url: str, session_id: str, secret: Secret, *,
                 client: Callable[..., httpx.AsyncClient] = httpx.AsyncClient) -> None:
        self.url = f"{base_url}/api/v1/agent/audit"
        self._client = client  # makes the HTTP client (the link's: proxy, TLS, pin)
        self._headers = {"Authorization": f"Bearer {session_id}:{secret.reveal()}",
                         "Content-Type": "application/json"}
        self._pending: deque[dict] = deque(maxlen=QUEUE_LIMIT)
        self._dropped = 0
        self._wakeup = asyncio.Event()
        self._drained = asyncio.Event()  # set while nothing waits to be sent
        self._task: asyncio.Task | None = None
        self.refused = False  # the relay no longer takes reports for this session

    def add(self, event: Event, actor: str, detail: dict) -> None:
        if len(self._pending) == self._pending.maxlen:
            self._dropped += 1
        item = {key: _bounded(value) for key, value in detail.items()}
        # `seen_at` in the detail: when it happened, for an event reported later (a digest).
        item.update(event=str(event), actor=actor[:64],
                    seen_at=detail.get("seen_at") or timestamp(),
                    outcome=str(detail.get("outcome", "ok")))
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

    def _next_batch(self) -> list[dict]:
        """The oldest events that fit one request (at least one)."""
        batch: list[dict] = []
        used = 64
        for item in self._pending:
            size = _size(item)
            if batch and (len(batch) >= BATCH or used + size > BATCH_BYTES):
                break
            batch.append(item)
            used += size
        if self._dropped and len(batch) < BATCH:
            batch.append({"event": str(Event.AUDIT_LOST), "actor": "agent", "outcome": "lost",
                          "seen_at": timestamp(), "count": self._dropped})
        return batch

    async def _send_batch(self, client: httpx.AsyncClient) -> bool:
        batch = self._next_batch()
        body = json.dumps({"events": batch}, ensure_ascii=False).encode()
        try:
            response = await client.post(self.url, content=body)
        except httpx.HTTPError as exc:
            log.info("audit: relay unreachable (%s); %d events wait", exc, len(self._pending))
            return False
        if response.status_code == 401:
            self.refused = True
            self._drained.set()  # nobody will take them: stop waiting
            return False
        if response.status_code == 429 or response.status_code >= 500:
            return False  # busy or asked to slow down: the same batch again, later
        if response.status_code != 200:
            # Malformed for the relay: retrying would not help, and would block the rest.
            log.warning("audit: relay refused a batch: %s", response.text[:200])
        sent = sum(1 for item in batch if item["event"] != Event.AUDIT_LOST)
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


def timestamp() -> str:
    """Now, as the audit writes times (UTC, milliseconds)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
