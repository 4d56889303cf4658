"""SSH over WebSocket on the HTTP listener (`/api/v1/ssh`), so one public port carries all.

Each WebSocket becomes one end of a socket pair that the SSH server takes exactly as it takes a
connection on its own port (relay/sshd.py SSHEntrance.adopt): the same handshake gate, the
same per-source shares, with the WebSocket client's address (as uvicorn reports it, which
honours X-Forwarded-For only from the proxies named by --trusted-proxy) for rate limits and
the audit. Binary messages carry the SSH byte stream (common/wsbridge.py).
"""

from __future__ import annotations

import contextlib
import socket

from fastapi import FastAPI, WebSocket
from fastapi.responses import JSONResponse
from starlette.websockets import WebSocketDisconnect

from common.wsbridge import WEBSOCKET_PATH, bridge
from relay.sshd import SSHEntrance

# WebSocket close code for "try again later" (RFC 6455 registry, 1013).
TRY_AGAIN_LATER = 1013


def add_route(app: FastAPI, entrance: SSHEntrance) -> None:
    @app.get(WEBSOCKET_PATH, include_in_schema=False)
    async def not_a_websocket() -> JSONResponse:
        return JSONResponse(
            {"error": "upgrade_required",
             "detail": "this address carries SSH over WebSocket for Adhoc's programs: with "
                       "OpenSSH use `adhoc-console tunnel` as a ProxyCommand (docs/ADMIN.md)"},
            status_code=426, headers={"Upgrade": "websocket"})

    @app.websocket(WEBSOCKET_PATH)
    async def ssh_over_websocket(websocket: WebSocket) -> None:
        client = websocket.client
        peer = (client.host, client.port) if client else ("unknown", 0)
        await websocket.accept()
        try:
            mine, theirs = socket.socketpair()
        except OSError:  # out of open files: the SSH entrance turns it away (relay/openfiles.py)
            await websocket.close(TRY_AGAIN_LATER, "the relay is busy: try again shortly")
            return
        if not entrance.adopt(theirs, peer):
            theirs.close()
            mine.close()
            await websocket.close(TRY_AGAIN_LATER, "the relay is busy: try again shortly")
            return

        async def receive() -> bytes | None:
            try:
                message = await websocket.receive()
            except (WebSocketDisconnect, RuntimeError):
                return None
            if message["type"] == "websocket.disconnect":
                return None
            return message.get("bytes") or b""

        await bridge(mine, receive, websocket.send_bytes)
        with contextlib.suppress(RuntimeError, WebSocketDisconnect, OSError):
            await websocket.close()
