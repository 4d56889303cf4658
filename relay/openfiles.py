"""The relay's open files: each agent holds one, so the process limit on them is the number of
agents one relay process can hold.

- raise_open_file_limit: lift the soft limit as far as the hard limit allows, at start.
- OpenFiles: the relay's SSH entrance turns new connections away a little before the limit
  (the ceiling), so the files left over keep the database, the HTTP API and the cluster's
  peer links working, and a client turned away is told at once (its connection closed)
  instead of waiting in the kernel's accept queue for a banner that cannot come. At the limit
  itself, a spare file kept open for the purpose is let go for a moment to accept the next
  connection and close it (the same trick nginx and libevent use).
- quiet_accept_failures: asyncio logs a full traceback for every failed accept() at the limit,
  up to its backlog's length each second (CPython 3.11): thousands a second on the HTTP
  listener, which by themselves kept a relay at 100 % CPU. One line every few seconds says it.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import time

log = logging.getLogger("adhoc.relay")

# Each agent holds one connection, so one open file. Many systems start processes with a soft
# limit of 1,024 (systemd's default for services) under a far higher hard limit: lift it.
OPEN_FILES_WANTED = 1 << 20
OPEN_FILES_ENOUGH = 16384
# Files kept back from new SSH connections: a share of the limit, at least RESERVE_MIN.
RESERVE_SHARE = 50  # 1/50 = 2 %: 400 of a limit of 20,000
RESERVE_MIN = 128
# Seconds between two log lines about connections turned away at the limit.
LOG_EVERY = 5.0
OUT_OF_FILES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def open_file_limit() -> int | None:
    """This process's soft limit on open files (None where there is none)."""
    try:
        import resource
    except ImportError:  # not a POSIX system
        return None
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return None if soft == resource.RLIM_INFINITY else soft


def raise_open_file_limit(wanted: int = OPEN_FILES_WANTED) -> int | None:
    """Lift this process's soft limit on open files as far as its hard limit allows, up to
    `wanted`; returns the limit now in force (None where there is no such limit)."""
    try:
        import resource
    except ImportError:  # not a POSIX system
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("relay: could not raise the open-file limit from %d: %s", soft, exc)
    if soft != resource.RLIM_INFINITY and soft < OPEN_FILES_ENOUGH:
        log.warning("relay: open-file limit %d holds fewer than %d agents; raise it "
                    "(LimitNOFILE= under systemd, ulimit -n otherwise)", soft,
                    ceiling_for(soft))
    return soft


def ceiling_for(limit: int | None) -> int | None:
    """The highest file number a new SSH connection may have under `limit`."""
    if limit is None:
        return None
    return max(1, limit - max(RESERVE_MIN, limit // RESERVE_SHARE))


class OpenFiles:
    """What the SSH entrance checks each new connection against (see the module's text)."""

    def __init__(self) -> None:
        self.turned_away = 0
        self._spare: int | None = self._open_spare()
        self._last_logged = 0.0

    @staticmethod
    def _open_spare() -> int | None:
        try:
            return os.open(os.devnull, os.O_RDONLY)
        except OSError:
            return None

    @property
    def ceiling(self) -> int | None:
        """Read each time (a cheap system call): an administrator may change a running
        relay's limit (prlimit)."""
        return ceiling_for(open_file_limit())

    def too_many(self, conn: socket.socket) -> bool:
        """True if `conn` (just accepted) must be closed at once. The kernel gives the lowest
        free file number, so a number past the ceiling means at least that many are open."""
        ceiling = self.ceiling
        if ceiling is None or conn.fileno() < ceiling:
            return False
        self._turned_away()
        return True

    def shed_one(self, sock: socket.socket) -> bool:
        """At the limit (accept failed with EMFILE): let the spare file go, accept the next
        waiting connection and close it, take the spare again. False if none was waiting."""
        if self._spare is not None:
            os.close(self._spare)
            self._spare = None
        try:
            conn, _addr = sock.accept()
        except OSError:  # none waiting (BlockingIOError), or it went before we took it
            return False
        else:
            conn.close()
            self._turned_away()
            return True
        finally:
            self._spare = self._open_spare()

    def _turned_away(self) -> None:
        self.turned_away += 1
        now = time.monotonic()
        if now - self._last_logged >= LOG_EVERY:
            self._last_logged = now
            log.warning("ssh: near this process's open-file limit (%s): new connections are "
                        "turned away (%d so far); raise the limit (LimitNOFILE= under systemd) "
                        "or add workers or relays", open_file_limit(), self.turned_away)

    def close(self) -> None:
        if self._spare is not None:
            os.close(self._spare)
            self._spare = None


def quiet_accept_failures(loop: asyncio.AbstractEventLoop) -> None:
    """Make `loop` say failed accepts at the open-file limit in one line every LOG_EVERY
    seconds, not a traceback each; everything else goes to the handler it had."""
    previous = loop.get_exception_handler()
    state = {"last": 0.0, "count": 0}

    def handler(loop: asyncio.AbstractEventLoop, context: dict) -> None:
        exc = context.get("exception")
        if context.get("message") == "socket.accept() out of system resource" and \
                isinstance(exc, OSError) and exc.errno in OUT_OF_FILES:
            state["count"] += 1
            now = time.monotonic()
            if now - state["last"] >= LOG_EVERY:
                state["last"] = now
                log.warning("relay: a listener could not accept (%s), %d times so far; it "
                            "tries again each second", exc.strerror, state["count"])
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
