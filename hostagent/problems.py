"""Why the host cannot hold its connection to the relay, told to the relay over HTTP when SSH
does not get through (a blocked port, a proxy that refuses WebSockets), so the technician's
console shows it on the session's row. At most one report in flight; the newest problem wins;
best effort (if HTTP fails too, nobody can be told)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import httpx

from common.secret import Secret

log = logging.getLogger("adhoc.host")

TIMEOUT = httpx.Timeout(10.0, connect=5.0)
# The relay keeps this much of a problem's text.
MAX_CHARS = 500


class ProblemReporter:
    def __init__(self, base_url: str, session_id: str, secret: Secret, *,
                 client: Callable[..., httpx.AsyncClient] = httpx.AsyncClient) -> None:
        self.url = f"{base_url}/api/v1/agent/problem"
        self._headers = {"Authorization": f"Bearer {session_id}:{secret.reveal()}"}
        self._client = client
        self._sent: str | None = None
        self._latest: str | None = None
        self._task: asyncio.Task | None = None

    def report(self, problem: str | None) -> None:
        """The current problem (None: connected again). Sent unless the relay has it."""
        self._latest = problem[:MAX_CHARS] if problem else None
        if self._latest != self._sent and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._send())

    async def _send(self) -> None:
        while self._latest != self._sent:
            problem = self._latest
            try:
                async with self._client(timeout=TIMEOUT, headers=self._headers) as client:
                    response = await client.post(self.url, json={"problem": problem})
            except (httpx.HTTPError, OSError) as exc:
                log.info("could not tell the relay about the connection problem: %s", exc)
                return  # the next problem (or the same one, after a retry) tries again
            if response.status_code != 200:
                log.info("the relay did not take the problem report: HTTP %s",
                         response.status_code)
                return
            self._sent = problem

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
