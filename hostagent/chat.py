"""Chat between the customer (in the agent's window) and technicians (the `chat` subsystem).

Both ways one JSON object per line: {"text": ..., "from": ..., "at": ISO-8601}. The agent sets
"from" and "at" itself: a technician cannot speak as the customer or as someone else.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime

import asyncssh

MAX_TEXT = 2000
MAX_LINE = 16 * 1024
HISTORY = 50
QUEUE_LIMIT = 200
CUSTOMER = "customer"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class ChatHub:
    """Fans each message out to every open chat channel and to the customer's window."""

    def __init__(self, show_customer: Callable[[dict], None]) -> None:
        self._show_customer = show_customer
        self.history: deque[dict] = deque(maxlen=HISTORY)
        self._listeners: set[asyncio.Queue[dict]] = set()

    def post(self, sender: str, text: str) -> dict | None:
        """Every open channel gets the message, the sender's own too (as the agent stamped it)."""
        text = text.strip()[:MAX_TEXT]
        if not text:
            return None
        message = {"text": text, "from": sender, "at": now_iso()}
        self.history.append(message)
        for queue in self._listeners:
            if queue.qsize() < QUEUE_LIMIT:
                queue.put_nowait(message)
        if sender != CUSTOMER:
            self._show_customer(message)
        return message

    @contextlib.contextmanager
    def listen(self):
        queue: asyncio.Queue[dict] = asyncio.Queue()
        self._listeners.add(queue)
        try:
            yield queue
        finally:
            self._listeners.discard(queue)


def _encode(message: dict) -> bytes:
    return (json.dumps(message, ensure_ascii=False) + "\n").encode()


async def serve_chat(process: asyncssh.SSHServerProcess, hub: ChatHub, who: str) -> None:
    """One technician's chat channel: the recent history first, then live both ways."""
    with hub.listen() as queue:
        for message in list(hub.history):
            process.stdout.write(_encode(message))

        async def send() -> None:
            while True:
                message = await queue.get()
                process.stdout.write(_encode(message))
                await process.stdout.drain()

        async def receive() -> None:
            buffer = b""
            while data := await process.stdin.read(4096):
                buffer += data
                *lines, buffer = buffer.split(b"\n")
                if len(buffer) > MAX_LINE:
                    buffer = b""  # an endless line is dropped, not buffered
                for line in lines:
                    text = _text_of(line)
                    if text is not None:
                        hub.post(who, text)

        sender = asyncio.create_task(send())
        try:
            await receive()
        except (asyncssh.Error, ConnectionError, BrokenPipeError):
            pass
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender
    process.exit(0)


def _text_of(line: bytes) -> str | None:
    line = line.strip()
    if not line or len(line) > MAX_LINE:
        return None
    try:
        body = json.loads(line)
    except ValueError:
        return None
    if isinstance(body, dict) and isinstance(body.get("text"), str):
        return body["text"]
    return None
