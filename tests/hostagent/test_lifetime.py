"""The agent's own clocks and pacing, with injected time: expiry by wall and boot clock,
checks every 30-60 s, and full-jitter backoff within its cap; and its single-instance lock."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from hostagent.lifetime import (
    CHECK_INTERVAL,
    AlreadyRunning,
    ExpiryClock,
    InstanceLock,
    LockUnsafe,
    own_lock_folder,
    watch_expiry,
)
from hostagent.tunnel import backoff_delay


class FakeTime:
    def __init__(self) -> None:
        self.wall = 1_000_000.0
        self.boot = 50.0
        self.sleeps: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.wall += seconds
        self.boot += seconds


def test_wall_clock_set_back_does_not_extend_the_session() -> None:
    t = FakeTime()
    clock = ExpiryClock(t.wall + 3600, wall=lambda: t.wall, boot=lambda: t.boot)
    t.boot += 3600
    t.wall -= 86400  # someone sets the clock back a day
    assert clock.expired()


def test_suspend_counts_through_the_boot_clock() -> None:
    t = FakeTime()
    clock = ExpiryClock(t.wall + 3600, wall=lambda: t.wall, boot=lambda: t.boot)
    t.boot += 7200  # suspended for two hours; the wall clock has not caught up yet
    assert clock.expired()
    assert clock.remaining() == 0


async def test_expiry_is_noticed_within_one_check_after_a_suspend() -> None:
    t = FakeTime()
    clock = ExpiryClock(t.wall + 600, wall=lambda: t.wall, boot=lambda: t.boot)

    async def sleep(seconds: float) -> None:
        await t.sleep(seconds)
        if len(t.sleeps) == 2:
            t.boot += 3600  # the lid was closed during this sleep
            t.wall += 3600

    await watch_expiry(clock, CHECK_INTERVAL, sleep=sleep, rng=lambda lo, hi: hi)
    assert len(t.sleeps) == 2
    assert all(s <= CHECK_INTERVAL[1] for s in t.sleeps)


async def test_checks_come_every_30_to_60_seconds_and_end_at_expiry() -> None:
    t = FakeTime()
    clock = ExpiryClock(t.wall + 1000, wall=lambda: t.wall, boot=lambda: t.boot)
    draws = iter([30.0, 60.0, 45.0] * 100)
    await watch_expiry(clock, CHECK_INTERVAL, sleep=t.sleep, rng=lambda lo, hi: next(draws))
    assert all(s <= 60.0 for s in t.sleeps)
    assert sum(t.sleeps) >= 1000 - 1e-6
    assert clock.expired()


def test_backoff_is_full_jitter_with_a_cap() -> None:
    assert backoff_delay(0, rng=lambda lo, hi: hi) == 0.5
    assert backoff_delay(3, rng=lambda lo, hi: hi) == 4.0
    assert backoff_delay(50, rng=lambda lo, hi: hi) == 10.0
    assert backoff_delay(5, rng=lambda lo, hi: lo) == 0.0


# --- the single-instance lock: never through a link planted at its name ----------------------


def test_lock_never_follows_a_symlink_nor_truncates_its_target(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    planted = tmp_path / "adhoc-host.lock"
    planted.symlink_to(victim)
    with pytest.raises(LockUnsafe, match="symbolic link"):
        InstanceLock(planted).acquire()
    assert victim.read_text() == "precious\n"
    dangling = tmp_path / "dangling.lock"
    dangling.symlink_to(tmp_path / "would-be-created")
    with pytest.raises(LockUnsafe):
        InstanceLock(dangling).acquire()
    assert not (tmp_path / "would-be-created").exists()


def test_lock_refuses_a_file_someone_else_prepared(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs.lock"
    theirs.write_text("")
    os.chown(theirs, 65534, 65534)
    with pytest.raises(LockUnsafe, match="not a plain file of yours"):
        InstanceLock(theirs).acquire()
    shared = tmp_path / "shared.lock"
    shared.write_text("")
    shared.chmod(0o666)
    with pytest.raises(LockUnsafe):
        InstanceLock(shared).acquire()
    linked = tmp_path / "linked.lock"
    os.link(shared, linked)  # a hard link to another file is not ours to write either
    with pytest.raises(LockUnsafe):
        InstanceLock(linked).acquire()


def test_lock_is_exclusive_and_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "agent.lock"
    first = InstanceLock(path)
    first.acquire()
    with pytest.raises(AlreadyRunning):
        InstanceLock(path).acquire()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first.release()
    assert not path.exists()


def test_own_lock_folder_is_private_or_refused(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    folder = own_lock_folder()
    assert folder.parent == tmp_path
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert own_lock_folder() == folder  # found again, still private
    folder.rmdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    folder.symlink_to(elsewhere)  # someone made the name a link first
    with pytest.raises(LockUnsafe, match="not a private folder of yours"):
        own_lock_folder()
    folder.unlink()
    folder.mkdir(mode=0o700)
    os.chown(folder, 65534, 65534)  # or made it theirs
    with pytest.raises(LockUnsafe):
        own_lock_folder()


def test_the_host_refuses_a_planted_lock_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    planted = tmp_path / "planted.lock"
    planted.symlink_to(victim)
    result = subprocess.run(
        [sys.executable, "-m", "hostagent.cli", "join", "http://127.0.0.1:9/join/x",
         "--allow-unprivileged"], capture_output=True, text=True, timeout=60,
        stdin=subprocess.DEVNULL,
        env=dict(os.environ, ADHOC_HOST_LOCK=str(planted), TMPDIR=str(tmp_path)))
    assert result.returncode == 1
    assert "is a symbolic link" in result.stderr and "Traceback" not in result.stderr
    assert victim.read_text() == "precious\n"
