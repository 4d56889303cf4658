"""The relay's listening sockets (HTTP, SSH, metrics), made one way everywhere."""
from __future__ import annotations

import socket

from common.transport import LISTEN_BACKLOG


def listening_socket(host: str, port: int, *, reuse_port: bool = False,
                     backlog: int = LISTEN_BACKLOG) -> socket.socket:
    """A non-blocking TCP socket listening on (host, port). `reuse_port`: shared with the
    other workers of `serve --workers` (the kernel spreads connections over them)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted connections only when the
    # socket says it is TCP; without it every response waited ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock
