"""A TCP proxy for fault tests whose link can go silently dead: nothing forwarded, nothing closed.

`cut()` models a link that drops every packet: connections that were open stop forwarding in
both directions and are never closed (their ends must find out by keepalive), and connections
opened while the link is cut are accepted but held, as a SYN would go unanswered. `mend()`
brings the link back: held connections go through, as TCP's retransmission would carry them;
the connections that were open when the link died stay dead.
"""

from __future__ import annotations

import asyncio
import contextlib


class DeadLinkProxy:
    def __init__(self) -> None:
        self.upstream: tuple[str, int] | None = None
        self.port = 0
        self.accepted = 0
        self.forwarded = 0  # connections that reached the upstream
        self._server: asyncio.Server | None = None
        self._up = asyncio.Event()
        self._up.set()
        self._epoch = 0  # bumped by cut(): pumps of an older epoch stop forwarding for good
        self._tasks: set[asyncio.Task] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> DeadLinkProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def cut(self) -> None:
        self._epoch += 1
        self._up.clear()

    def mend(self) -> None:
        self._up.set()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for writer in self._writers:
            writer.close()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.append(writer)
        self._spawn(self._connect(reader, writer))

    async def _connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._up.wait()
        assert self.upstream is not None
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        self._writers.append(up_writer)
        self.forwarded += 1
        epoch = self._epoch
        self._spawn(self._pump(reader, up_writer, epoch))
        self._spawn(self._pump(up_reader, writer, epoch))

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter,
                    epoch: int) -> None:
        dead = asyncio.Event()  # never set: a cut link neither forwards nor closes
        try:
            while True:
                data = await source.read(65536)
                if epoch != self._epoch:
                    await dead.wait()
                if not data:
                    with contextlib.suppress(OSError):
                        sink.write_eof()
                    return
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError):
            sink.close()


class StaleKeepAliveProxy:
    """An HTTP/1.1 front of a real relay that answers one request per connection, then closes
    the connection the moment the next request arrives on it, without a response: what a
    server does when its keep-alive timer fires just as a client reuses the connection
    ("Server disconnected without sending a response")."""

    def __init__(self, upstream_url: str) -> None:
        host, _, port = upstream_url.split("://", 1)[1].rstrip("/").rpartition(":")
        self.upstream = (host, int(port))
        self.port = 0
        self.dropped = 0  # requests met with a closed connection
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> StaleKeepAliveProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(self._serve(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        answered = asyncio.Event()

        async def back() -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await up_reader.read(65536):
                    answered.set()
                    writer.write(data)
                    await writer.drain()

        answers = asyncio.create_task(back())
        try:
            while data := await reader.read(65536):
                if answered.is_set():  # a second request on this connection: hang up
                    self.dropped += 1
                    break
                up_writer.write(data)
                await up_writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            answers.cancel()
            for end in (writer, up_writer):
                end.close()
