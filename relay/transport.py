"""SSH transport settings every leg shares (relay, agent, console): a small contract module.

Measured in bench/ (docs/BENCHMARKS.md): the client's cipher order decides, and asyncssh's
default puts chacha20-poly1305 first, which costs ~0.3 ms per hop per direction; aes128-gcm
halves the relayed keystroke round trip. Larger windows and packets on the outer legs keep
more bytes in flight across the extra hop.
"""

from __future__ import annotations

import ctypes
import sys

import asyncssh

ENCRYPTION = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com",
              "chacha20-poly1305@openssh.com", "aes128-ctr", "aes256-ctr")
OUTER_WINDOW = 8 * 1024 * 1024
OUTER_PACKET = 256 * 1024


def client_options() -> dict:
    """Options for an asyncssh client connection on any Adhoc leg."""
    return {"encryption_algs": ENCRYPTION, "compression_algs": None,
            "window": OUTER_WINDOW, "max_pktsize": OUTER_PACKET}


# glibc's mallopt parameters. By default buffers of 128 KiB and up are mmap'd and unmapped
# one by one, and the top of the heap is trimmed eagerly; an SSH leg moving 256 KiB packets
# then pays a page fault for every 4 KiB it copies: the relay took ~2,700 faults and 11 ms of
# CPU per relayed MB, against 7 faults and under 3 ms with these (docs/BENCHMARKS.md).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 8 * 1024 * 1024  # above the 4 MiB SFTP blocks, below glibc's 32 MiB limit
TRIM_THRESHOLD = 16 * 1024 * 1024  # at most this much freed heap kept for reuse


def tune_allocator() -> bool:
    """Let this process reuse heap memory for packet buffers (glibc only; elsewhere a no-op).

    Called once at start by every Adhoc program that moves bulk data (relay, agent, console).
    Returns whether the settings took.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and \
        bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


class WideTunnel:
    """An outer connection to pass as asyncssh's `tunnel=`, with the outer window and packet.

    Given a connection itself, asyncssh opens the tunnelled channel with its fixed defaults
    (2 MiB window, 32 KiB packets) whatever the connection was made with; the inner SSH
    connection then crosses the relay in 32 KiB pieces. asyncssh accepts any object with these
    two methods as a tunnel.
    """

    def __init__(self, conn: asyncssh.SSHClientConnection) -> None:
        self.conn = conn

    async def create_connection(self, session_factory, remote_host: str, remote_port: int):
        return await self.conn.create_connection(session_factory, remote_host, remote_port,
                                                 window=OUTER_WINDOW, max_pktsize=OUTER_PACKET)

    async def create_server(self, session_factory, listen_host: str, listen_port: int):
        return await self.conn.create_server(session_factory, listen_host, listen_port,
                                             window=OUTER_WINDOW, max_pktsize=OUTER_PACKET)

    def close(self) -> None:
        self.conn.close()

    async def wait_closed(self) -> None:
        await self.conn.wait_closed()
