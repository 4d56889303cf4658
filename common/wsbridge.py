"""SSH over WebSocket: the bytes of an SSH connection copied between a local socket and a
WebSocket, both ways, each side waiting for the other (flow control) and either end closing
both.

Both ends use it: the relay hands each WebSocket on its HTTP listener to its SSH server as one
end of a socket pair, and the agent, the console and `adhoc-console tunnel` give asyncssh (or
OpenSSH's ProxyCommand pipes) one end of a pair whose other end is the WebSocket. Every binary
message is a stretch of the SSH byte stream; message boundaries mean nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable

# The path of the route on the relay's HTTP listener.
WEBSOCKET_PATH = "/api/v1/ssh"
CHUNK = 256 * 1024


async def bridge(sock: socket.socket, receive: Callable[[], Awaitable[bytes | None]],
                 send: Callable[[bytes], Awaitable[None]]) -> None:
    """Copy until either side ends; `receive` returns None at the WebSocket's end. The socket
    is closed on return; the caller closes the WebSocket."""
    loop = asyncio.get_running_loop()
    sock.setblocking(False)

    async def inbound() -> None:
        while (data := await receive()) is not None:
            if data:
                await loop.sock_sendall(sock, data)

    async def outbound() -> None:
        while data := await loop.sock_recv(sock, CHUNK):
            await send(data)

    tasks = [asyncio.ensure_future(inbound()), asyncio.ensure_future(outbound())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        sock.close()
