"""Full garbage collections wait while the relay takes a storm of new connections
(relay/collector.py): they once stopped a worker for up to 2 s at a time while 10,000 agents
came back."""

from __future__ import annotations

import gc

from relay.collector import BUSY_STARTUPS, MAX_DEFERRAL, NEVER, Collector


def test_full_collections_wait_while_the_entrance_is_busy_and_for_no_longer_than_the_cap(
        monkeypatch) -> None:
    before = gc.get_threshold()
    collected: list[int] = []
    monkeypatch.setattr(gc, "collect", lambda generation=2: collected.append(generation) or 0)
    pending = [0]
    collector = Collector(lambda: pending[0])
    try:
        collector.check(now=0.0)
        assert gc.get_threshold() == before and not collector.deferring
        pending[0] = BUSY_STARTUPS  # a storm of handshakes
        collector.check(now=1.0)
        assert gc.get_threshold() == (before[0], before[1], NEVER) and collector.deferring
        collector.check(now=1.0 + MAX_DEFERRAL / 2)
        assert collected == []
        collector.check(now=1.0 + MAX_DEFERRAL)  # busy that long: one full collection now
        assert collected == [2] and collector.deferring
        pending[0] = 3  # quiet again
        collector.check(now=2.0 + MAX_DEFERRAL)
        assert gc.get_threshold() == before and not collector.deferring
    finally:
        gc.set_threshold(*before)
