"""The relay's gate on unauthenticated SSH connections (relay/sshd.py Startups), like OpenSSH's
MaxStartups: a reconnect storm or a slowloris cannot pile up handshakes without bound, and one
address cannot take every place."""

from __future__ import annotations

import asyncio

from relay.sshd import Startups


def test_handshakes_beyond_the_limits_are_dropped_until_places_free_up() -> None:
    gate = Startups(limit=3, per_source=2)
    assert gate.admit("10.0.0.1") and gate.admit("10.0.0.1")
    assert not gate.admit("10.0.0.1"), "one address may hold only its share"
    assert gate.admit("10.0.0.2")
    assert not gate.admit("10.0.0.3"), "no more than the limit in all"
    assert (gate.in_flight, gate.dropped) == (3, 2)

    gate.done("10.0.0.1")  # authenticated, or gone
    assert gate.admit("10.0.0.3")
    assert not gate.admit("10.0.0.1")
    gate.done("10.0.0.2")
    assert gate.admit("10.0.0.1")
    assert gate.in_flight == 3


async def test_the_listener_waits_for_room_instead_of_accepting() -> None:
    gate = Startups(limit=2, per_source=2)
    assert gate.admit("10.0.0.1") and gate.admit("10.0.0.2")
    waiting = asyncio.ensure_future(gate.wait_for_room())
    await asyncio.sleep(0.05)
    assert not waiting.done(), "at the limit, nothing more is accepted"
    gate.done("10.0.0.2")
    await asyncio.wait_for(waiting, 1)
