"""The SHA-256 of each file a technician transferred, for the audit, taken after the reply.

SFTP clients read and write at many offsets in parallel, so a transfer's digest is taken from
the file on disk when the technician's handle closes. The file is opened at that moment (so a
rename or removal right after the transfer does not change what is hashed) and hashed in a
thread while the technician's client already has its reply: waiting for the digest held every
`sftp get`, `scp` and console copy for the time of a second read of the whole file (a quarter
of a 256 MiB download here, docs/BENCHMARKS.md).

A download that took only part of a file (an interrupted copy, a few bytes of a disk image)
gets no digest: it would not describe what was taken, and would cost the customer's computer
a read of the whole file. At most PENDING digests wait or run per session; a close past that
waits for a place, so a client closing handles faster than files can be read is slowed, not
queued without bound. When the session ends, digests still running stop at their next chunk
and are reported as not taken; `settle` waits for those reports so the audit has them before
it is flushed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import stat
from collections.abc import Callable

CHUNK = 1024 * 1024
PENDING = 8


class DigestStopped(Exception):
    pass


Outcome = dict  # {"size": int, "sha256": str} or {"error": str}


def file_digest(file: io.RawIOBase,
                keep_going: Callable[[], bool] = lambda: True) -> tuple[int, str]:
    """(size, SHA-256 hex) of what `file` holds from its start; closes it."""
    digest = hashlib.sha256()
    size = 0
    with file:
        while chunk := file.read(CHUNK):
            if not keep_going():
                raise DigestStopped  # the session ended: nobody waits for this any more
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _failure(exc: OSError) -> Outcome:
    return {"error": exc.strerror or str(exc)}


def _why_not(status: os.stat_result, read: int | None) -> Outcome | None:
    """Why a file gets no digest, or None when it gets one."""
    if not stat.S_ISREG(status.st_mode):  # a device or pipe may never end (/dev/zero)
        return {"error": "not a regular file: no digest"}
    if read is not None and read < status.st_size:
        return {"size": status.st_size,
                "error": f"part of the file was read ({read} of {status.st_size} bytes): "
                         "no digest"}
    return None


class Digests:
    """One session's digests: taken in threads, reported through a callback each."""

    def __init__(self, keep_going: Callable[[], bool], *, pending: int = PENDING) -> None:
        self._keep_going = keep_going
        self._places = asyncio.Semaphore(pending)
        self._tasks: set[asyncio.Task] = set()

    async def take(self, path: bytes, report: Callable[[Outcome], None], *,
                   read: int | None = None) -> None:
        """Open `path` now and hash it in the background; `report` gets the outcome. `read`:
        for a download, how many bytes the technician read. Returns once the digest has a
        place (at once unless PENDING are in progress)."""
        try:
            # O_NONBLOCK: a FIFO put where the file was must not stop the agent at open.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            report(_failure(exc))
            return
        file = io.FileIO(fd, "rb")
        try:
            refused = _why_not(os.fstat(fd), read)
        except OSError as exc:
            refused = _failure(exc)
        if refused is not None:
            file.close()
            report(refused)
            return
        await self._places.acquire()
        task = asyncio.get_running_loop().create_task(self._run(file, report))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, file: io.FileIO, report: Callable[[Outcome], None]) -> None:
        try:
            # The thread closes the file: closing it here while the thread still reads could
            # let the descriptor's number be reused under it.
            size, sha256 = await asyncio.to_thread(file_digest, file, self._keep_going)
            outcome: Outcome = {"size": size, "sha256": sha256}
        except OSError as exc:
            outcome = _failure(exc)
        except DigestStopped:
            outcome = {"error": "the session ended before the digest was taken"}
        finally:
            self._places.release()
        report(outcome)

    async def settle(self, within: float) -> None:
        """Wait, at most `within` seconds, until every digest taken so far is reported."""
        if not self._tasks:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await asyncio.gather(*self._tasks, return_exceptions=True)
