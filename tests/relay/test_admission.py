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


async def test_past_the_limit_the_relay_leaves_connections_queued_until_room(
        start_relay, monkeypatch) -> None:
    monkeypatch.setenv("ADHOC_RELAY_MAX_STARTUPS", "2")
    relay = start_relay()
    first, second = [await asyncio.open_connection(relay.ssh_host, relay.ssh_port)
                     for _ in range(2)]
    for reader, _ in (first, second):
        assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"SSH-2.0-")
    # The third is connected by the kernel but not taken: no banner, and not hung up on.
    reader, writer = await asyncio.open_connection(relay.ssh_host, relay.ssh_port)
    waiting = asyncio.ensure_future(reader.readline())
    done, _ = await asyncio.wait({waiting}, timeout=1)
    assert not done, "the relay took a connection past its handshake limit"
    first[1].close()  # a handshake ends: there is room again
    assert (await asyncio.wait_for(waiting, 10)).startswith(b"SSH-2.0-")
    for _, w in (second, (reader, writer)):
        w.close()
