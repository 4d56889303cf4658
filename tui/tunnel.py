"""`adhoc-console tunnel URL`: an OpenSSH ProxyCommand that carries stock `ssh`, `sftp` and
`scp` to the relay the way the console goes (its SSH port, else SSH over WebSocket on its
HTTP(S) address, through the environment's proxy), copying standard input and output.

    Host adhoc-relay
        User alice
        ProxyCommand adhoc-console tunnel https://relay.example

then `ssh -J adhoc-relay support@<session-id>`. OpenSSH still does all the SSH (keys, host
key checks); this only moves its bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys

from common.proxy import ProxySettingError
from common.reach import SEPARATOR, Route, failure, open_route, relay_routes
from tui.client import ROUTE_TIMEOUT, RelayClient, RelayError
from tui.sanitize import clean

CHUNK = 256 * 1024


async def open_tunnel(relay_url: str, *, websocket_only: bool = False) -> tuple[object, Route]:
    """A socket carrying the relay's SSH, and the route it takes."""
    client = RelayClient(relay_url)
    try:
        info = await client.relay_info()
    finally:
        await client.aclose()
    try:
        routes = relay_routes(None if websocket_only else info.get("ssh"), client.base_url)
    except ProxySettingError as exc:
        raise RelayError(0, "proxy", str(exc)) from None
    failures = []
    for route in routes:
        try:
            return await asyncio.wait_for(open_route(route), ROUTE_TIMEOUT), route
        except (OSError, TimeoutError) as exc:
            failures.append(failure(exc, route))
    raise RelayError(0, "unreachable",
                     "cannot reach the relay's SSH: " + SEPARATOR.join(failures))


async def run(relay_url: str, *, websocket_only: bool = False, verbose: bool = False) -> int:
    try:
        sock, route = await open_tunnel(relay_url, websocket_only=websocket_only)
    except RelayError as exc:
        print(f"adhoc-console tunnel: {clean(exc.detail, 400)}", file=sys.stderr)
        return 1
    if verbose:
        print(f"adhoc-console tunnel: {route}", file=sys.stderr)
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection(sock=sock)
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin),
                                 os.fdopen(sys.stdin.fileno(), "rb", 0, closefd=False))
    transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, os.fdopen(sys.stdout.fileno(), "wb", 0,
                                                    closefd=False))
    stdout = asyncio.StreamWriter(transport, protocol, None, loop)

    async def copy(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        while data := await source.read(CHUNK):
            sink.write(data)
            await sink.drain()

    tasks = [asyncio.ensure_future(copy(stdin, writer)),
             asyncio.ensure_future(copy(reader, stdout))]
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    writer.close()
    transport.close()
    return 0
