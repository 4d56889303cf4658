"""The agent's own clocks and pacing, with injected time: expiry by wall and boot clock,
checks every 30-60 s, and full-jitter backoff within its cap."""

from __future__ import annotations

from hostagent.lifetime import CHECK_INTERVAL, ExpiryClock, watch_expiry
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
