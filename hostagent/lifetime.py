"""How long the agent lives: one instance per computer, its own expiry clock, self-removal."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

CHECK_INTERVAL = 30.0


class AlreadyRunning(Exception):
    pass


def lock_path() -> Path:
    override = os.environ.get("ADHOC_HOST_LOCK")
    if override:
        return Path(override)
    if os.geteuid() == 0:
        return Path("/run/adhoc-host.lock") if Path("/run").is_dir() else \
            Path(tempfile.gettempdir()) / "adhoc-host.lock"
    return Path(tempfile.gettempdir()) / f"adhoc-host-{os.getuid()}.lock"


class InstanceLock:
    """An exclusive lock held for the agent's life: a second agent on the computer refuses."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or lock_path()
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AlreadyRunning(
                "an Adhoc host already runs on this computer: end that session first "
                "(press the end key in its window)") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
            os.close(self._fd)
            self._fd = None


def boot_clock() -> float:
    """Seconds since boot including time suspended (CLOCK_BOOTTIME where the OS has it)."""
    clock = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)
    return time.clock_gettime(clock)


class ExpiryClock:
    """The session's end by two clocks: wall time (may be set back) and time since boot
    (cannot be, and counts a suspend). Whichever says "expired" first wins."""

    def __init__(self, expires_at: str | float, *, wall: Callable[[], float] = time.time,
                 boot: Callable[[], float] = boot_clock) -> None:
        if isinstance(expires_at, str):
            expires_at = datetime.fromisoformat(expires_at.replace("Z", "+00:00")).timestamp()
        self.expires_at = float(expires_at)
        self._wall, self._boot = wall, boot
        self._boot_deadline = boot() + (self.expires_at - wall())

    def remaining(self) -> float:
        return max(0.0, min(self.expires_at - self._wall(), self._boot_deadline - self._boot()))

    def expired(self) -> bool:
        return self.remaining() <= 0


class WorkDir:
    """The agent's private folder (host key, state); removed when the session ends."""

    def __init__(self, base: Path | None = None) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="adhoc-host-", dir=base))
        self.path.chmod(0o700)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
