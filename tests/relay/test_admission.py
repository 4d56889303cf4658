"""The relay's gate on unauthenticated SSH connections (relay/sshd.py Startups), like OpenSSH's
MaxStartups: a reconnect storm or a slowloris cannot pile up handshakes without bound, and one
address cannot take every place."""

from __future__ import annotations

import asyncio
import resource

import psutil
import pytest

from relay.sshd import Startups


def test_handshakes_start_in_arrival_order_within_the_limits() -> None:
    gate = Startups(limit=3, per_source=2, queue=5, queue_per_source=3)
    for n, source in enumerate(["10.0.0.1", "10.0.0.1", "10.0.0.1", "10.0.0.2", "10.0.0.3"]):
        assert gate.offer(source, n)
    assert not gate.offer("10.0.0.4", 5), "no more than the queue may wait in all"
    assert gate.dropped == 1
    started = [gate.take(), gate.take(), gate.take()]
    # The third from 10.0.0.1 is passed over: one address may hold only its share.
    assert started == [("10.0.0.1", 0), ("10.0.0.1", 1), ("10.0.0.2", 3)]
    assert gate.take() is None, "no more than the limit in their handshake"
    assert (gate.in_flight, gate.waiting) == (3, 2)

    gate.done("10.0.0.2")  # authenticated, or gone
    assert gate.take() == ("10.0.0.3", 4)
    assert gate.take() is None, "10.0.0.1 still holds its share"
    gate.done("10.0.0.1")
    assert gate.take() == ("10.0.0.1", 2)
    assert (gate.in_flight, gate.waiting) == (3, 0)


def test_one_address_may_keep_only_so_many_waiting() -> None:
    gate = Startups(limit=1, per_source=1, queue=100, queue_per_source=2)
    assert gate.offer("10.0.0.1", 0) and gate.offer("10.0.0.1", 1)
    assert not gate.offer("10.0.0.1", 2), "past its share of the queue an address is refused"
    assert gate.offer("10.0.0.2", 3), "while others still get in line"
    assert gate.take() == ("10.0.0.1", 0)
    assert gate.offer("10.0.0.1", 4), "taken from the queue, its place is free again"
    assert [item for _, item in gate.drain()] == [1, 3, 4]
    assert gate.waiting == 0


def test_a_handshake_ending_says_there_is_room() -> None:
    gate = Startups(limit=1, per_source=1, queue=10, queue_per_source=10)
    rooms: list[int] = []
    gate.on_room = lambda: rooms.append(gate.in_flight)
    gate.offer("10.0.0.1", 0)
    gate.take()
    gate.done("10.0.0.1")
    assert rooms == [0]


async def test_past_the_limit_the_relay_leaves_connections_queued_until_room(
        start_relay, monkeypatch) -> None:
    monkeypatch.setenv("ADHOC_RELAY_MAX_STARTUPS", "2")
    relay = start_relay()
    first, second = [await asyncio.open_connection(relay.ssh_host, relay.ssh_port)
                     for _ in range(2)]
    for reader, _ in (first, second):
        assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"SSH-2.0-")
    # The third is accepted but waits: no banner, and not hung up on.
    reader, writer = await asyncio.open_connection(relay.ssh_host, relay.ssh_port)
    waiting = asyncio.ensure_future(reader.readline())
    done, _ = await asyncio.wait({waiting}, timeout=1)
    assert not done, "the relay took a connection past its handshake limit"
    first[1].close()  # a handshake ends: there is room again
    assert (await asyncio.wait_for(waiting, 10)).startswith(b"SSH-2.0-")
    for _, w in (second, (reader, writer)):
        w.close()


async def test_the_relay_lifts_a_low_open_file_limit_to_hold_many_agents(
        start_relay, monkeypatch) -> None:
    """One open file per agent: started under a soft limit of 256 (systemd gives services
    1,024), the relay lifts it to its hard limit and takes 400 connections at once."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1024:
        pytest.skip(f"the hard open-file limit here is {hard}")
    monkeypatch.setenv("ADHOC_RELAY_MAX_STARTUPS", "500")
    monkeypatch.setenv("ADHOC_RELAY_MAX_STARTUPS_PER_SOURCE", "500")
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        relay = start_relay()  # inherits the low limit
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert psutil.Process(relay.proc.pid).rlimit(resource.RLIMIT_NOFILE)[0] > 256
    connections = [await asyncio.open_connection(relay.ssh_host, relay.ssh_port)
                   for _ in range(400)]
    try:
        lines = await asyncio.wait_for(
            asyncio.gather(*(reader.readline() for reader, _ in connections)), 30)
        assert all(line.startswith(b"SSH-2.0-") for line in lines)
    finally:
        for _, writer in connections:
            writer.close()
