"""How long the agent lives: one instance per computer, its own expiry clock, self-removal."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import random
import shutil
import stat
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path

CHECK_INTERVAL = (30.0, 60.0)  # seconds between expiry checks, drawn anew each time
INSTALL_MARKER = ".adhoc-host-install"


class AlreadyRunning(Exception):
    pass


class LockUnsafe(Exception):
    """The lock file's place is not private: someone else could have prepared it."""


def _private(path: Path) -> bool:
    """Whether `path` is a real folder of this user that nobody else may write to."""
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return (stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid()
            and not info.st_mode & 0o022)


def own_lock_folder() -> Path:
    """A 0700 folder of this user's own in the temporary folder, made if needed."""
    folder = Path(tempfile.gettempdir()) / f"adhoc-host-{os.geteuid()}"
    with contextlib.suppress(FileExistsError):
        os.mkdir(folder, 0o700)
    if not _private(folder):
        raise LockUnsafe(f"{folder} is not a private folder of yours (someone else made it, "
                         "or it is a link): remove it and start the host again")
    return folder


def lock_path() -> Path:
    """Where the single-instance lock lives: /run for root; the user's runtime folder
    ($XDG_RUNTIME_DIR, private by design) or a private folder of our own for anyone else."""
    override = os.environ.get("ADHOC_HOST_LOCK")
    if override:
        return Path(override)
    if os.geteuid() == 0 and _private(Path("/run")):
        return Path("/run/adhoc-host.lock")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and Path(runtime).is_absolute() and _private(Path(runtime)):
        return Path(runtime) / "adhoc-host.lock"
    return own_lock_folder() / "adhoc-host.lock"


class InstanceLock:
    """An exclusive lock held for the agent's life: a second agent on the computer refuses.

    The file is opened without following a symbolic link and checked to be this user's own
    plain file before anything is written to it, so a link planted at its name cannot make the
    agent truncate or write another file."""

    def __init__(self, path: Path | None = None) -> None:
        self._path = path
        self._fd: int | None = None

    @property
    def path(self) -> Path:
        if self._path is None:
            self._path = lock_path()
        return self._path

    def acquire(self) -> None:
        path = self.path
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise LockUnsafe(f"the lock file {path} is a symbolic link: someone may be "
                                 "trying to trick the host; remove it and start the host again"
                                 ) from None
            raise LockUnsafe(f"cannot open the lock file {path} ({exc.strerror}): check that "
                             "folder and start the host again") from None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() \
                or info.st_nlink != 1 or info.st_mode & 0o022:
            os.close(fd)
            raise LockUnsafe(f"the lock file {path} is not a plain file of yours: remove it "
                             "and start the host again")
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
                ours, there = os.fstat(self._fd), os.lstat(self.path)
                if (ours.st_dev, ours.st_ino) == (there.st_dev, there.st_ino):
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


def check_interval() -> tuple[float, float]:
    """How often the expiry clock is read: 30-60 s, or ADHOC_HOST_CHECK_INTERVAL (tests)."""
    override = os.environ.get("ADHOC_HOST_CHECK_INTERVAL")
    if override:
        value = max(0.05, float(override))
        return value, value
    return CHECK_INTERVAL


async def watch_expiry(clock: ExpiryClock, interval: tuple[float, float] = CHECK_INTERVAL, *,
                       sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
                       rng: Callable[[float, float], float] = random.uniform) -> None:
    """Return once the session is over by either clock.

    Sleeps at most one interval at a time: a sleep does not count a suspend, so after one the
    next check comes within an interval of waking up, and then both clocks say so.
    """
    while not clock.expired():
        await sleep(min(rng(*interval), max(clock.remaining(), 0.05)))


def remove_install_dir(path: str | None) -> bool:
    """Remove the folder the install script put the host in (it carries our marker)."""
    if not path:
        return False
    folder = Path(path)
    if not (folder / INSTALL_MARKER).is_file():
        return False
    shutil.rmtree(folder, ignore_errors=True)
    return not folder.exists()
