"""The relay's gate on unauthenticated SSH connections (relay/sshd.py Startups), like OpenSSH's
MaxStartups: a reconnect storm or a slowloris cannot pile up handshakes without bound, and one
address cannot take every place."""

from __future__ import annotations

import asyncio
import errno
import resource

import asyncssh
import psutil
import pytest
from websockets.asyncio.client import connect as websocket_connect
from websockets.exceptions import ConnectionClosed

from common.reach import websocket_route
from common.transport import pinned
from relay.openfiles import quiet_accept_failures
from relay.sshd import Startups, source_of
from tests.support import Api, first_lines, raw_connections


def test_handshakes_start_by_turns_within_the_limits() -> None:
    gate = Startups(limit=3, per_source=2, queue=5, queue_per_source=3, early_drop=(5, 0, 5))
    for n, source in enumerate(["10.0.0.1", "10.0.0.1", "10.0.0.1", "10.0.0.2", "10.0.0.3"]):
        assert gate.offer(source, n)
    assert not gate.offer("10.0.0.4", 5), "no more than the queue may wait in all"
    assert gate.dropped == 1
    started = [gate.take(), gate.take(), gate.take()]
    # Sources take turns, each in its own arrival order: 10.0.0.1's queue does not hold
    # up the others.
    assert started == [("10.0.0.1", 0), ("10.0.0.2", 3), ("10.0.0.3", 4)]
    assert gate.take() is None, "no more than the limit in their handshake"
    assert (gate.in_flight, gate.waiting) == (3, 2)

    gate.done("10.0.0.2")  # authenticated, or gone
    assert gate.take() == ("10.0.0.1", 1)
    assert gate.take() is None, "no more than the limit in their handshake"
    gate.done("10.0.0.3")
    assert gate.take() is None, "10.0.0.1 holds its share: its third waits"
    gate.done("10.0.0.1")
    assert gate.take() == ("10.0.0.1", 2)
    assert (gate.in_flight, gate.waiting) == (2, 0)


def test_an_ipv6_host_counts_as_its_slash_64() -> None:
    assert source_of("2001:db8:1:2:aaaa::1") == source_of("2001:db8:1:2:ffff::9") \
        == "2001:db8:1:2::/64"
    assert source_of("2001:db8:1:3::1") != source_of("2001:db8:1:2::1")
    assert source_of("::ffff:192.0.2.7") == "192.0.2.7"
    gate = Startups(limit=10, per_source=2, queue=100, queue_per_source=100,
                    early_drop=(100, 0, 100))
    for n in range(4):
        gate.offer(f"2001:db8::{n + 1}", n)
    assert [gate.take(), gate.take(), gate.take()] == [
        ("2001:db8::/64", 0), ("2001:db8::/64", 1), None]
    gate.done("2001:db8::2")
    assert gate.take() == ("2001:db8::/64", 2)


def test_past_start_new_connections_are_dropped_at_random_more_as_it_fills() -> None:
    draw = [0.5]
    gate = Startups(limit=100, per_source=100, queue=100, queue_per_source=100,
                    early_drop=(2, 30, 6), chance=lambda: draw[0])
    assert gate.offer("10.0.0.1", 0) and gate.offer("10.0.0.2", 1)  # below start: all kept
    assert gate.offer("10.0.0.3", 2), "2 pending: dropped at 30 %, a 0.5 draw keeps it"
    assert gate.offer("10.0.0.4", 3), "3 pending: 47.5 %, kept"
    assert not gate.offer("10.0.0.5", 4), "4 pending: 65 %, dropped"
    draw[0] = 0.9
    assert gate.offer("10.0.0.5", 4), "4 pending: 65 %, a 0.9 draw keeps it"
    assert gate.offer("10.0.0.6", 5), "5 pending: 82.5 %, kept"
    draw[0] = 0.999
    assert not gate.offer("10.0.0.7", 6), "6 pending, full: every one dropped"
    assert (gate.waiting, gate.dropped) == (6, 2)


def test_one_source_holds_well_below_half_of_the_handshakes() -> None:
    gate = Startups()
    assert gate.per_source * 4 <= gate.limit


def test_one_address_may_keep_only_so_many_waiting() -> None:
    gate = Startups(limit=1, per_source=1, queue=100, queue_per_source=2)
    assert gate.offer("10.0.0.1", 0) and gate.offer("10.0.0.1", 1)
    assert not gate.offer("10.0.0.1", 2), "past its share of the queue an address is refused"
    assert gate.offer("10.0.0.2", 3), "while others still get in line"
    assert gate.take() == ("10.0.0.1", 0)
    assert gate.offer("10.0.0.1", 4), "taken from the queue, its place is free again"
    assert sorted(item for _, item in gate.drain()) == [1, 3, 4]
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
    monkeypatch.setenv("ADHOC_RELAY_MAX_STARTUPS_PER_SOURCE", "2")
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
    connections = await raw_connections(relay.ssh_host, relay.ssh_port, 400)
    try:
        lines = await first_lines(connections, 30)
        assert all(line.startswith(b"SSH-2.0-") for line in lines)
    finally:
        for _, writer in connections:
            writer.close()


async def test_silent_connections_from_two_addresses_do_not_delay_a_login(relay) -> None:
    """128 connections that never speak, 64 from each of 127.0.0.2 and 127.0.0.3, then a
    technician logs in from 127.0.0.1: in seconds, not after the silent ones time out."""
    silent = []
    try:
        for n in range(128):
            local = ("127.0.0.2" if n % 2 else "127.0.0.3", 0)
            silent.append(await asyncio.open_connection(relay.ssh_host, relay.ssh_port,
                                                        local_addr=local))
        async with Api(relay.base_url, "alice") as alice:
            info = await alice.relay_info()

            async def login() -> None:
                async with asyncssh.connect(
                        relay.ssh_host, relay.ssh_port, username="alice", password=alice.token,
                        known_hosts=pinned(info["host_key"]), client_keys=None,
                        agent_path=None, config=None, preferred_auth="password"):
                    pass

            await asyncio.wait_for(login(), 8)
    finally:
        for _, writer in silent:
            writer.close()


async def test_a_connection_that_never_finishes_its_key_exchange_is_dropped(
        start_relay, monkeypatch) -> None:
    monkeypatch.setenv("ADHOC_RELAY_KEX_TIMEOUT", "1")
    relay = start_relay()
    reader, writer = await asyncio.open_connection(relay.ssh_host, relay.ssh_port)
    try:
        assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"SSH-2.0-")
        writer.write(b"SSH-2.0-slow\r\n")  # then nothing: no key exchange
        await asyncio.wait_for(reader.read(), 15)  # whatever it sent, up to its hanging up
        assert reader.at_eof()
    finally:
        writer.close()


async def test_at_its_open_file_limit_the_relay_turns_connections_away_at_once(
        start_relay, monkeypatch) -> None:
    """Past its open-file limit a relay once left new connections in the kernel's queue (their
    clients waited for a banner that could not come) and logged a traceback for each failed
    accept, thousands a second. Now it keeps a reserve: what comes past it is closed at once
    (the client tries again, on another worker or relay), and the HTTP API still answers."""
    monkeypatch.setenv("ADHOC_RELAY_MAX_STARTUPS", "1000")
    monkeypatch.setenv("ADHOC_RELAY_MAX_STARTUPS_PER_SOURCE", "1000")
    relay = start_relay()
    limit = 300
    psutil.Process(relay.proc.pid).rlimit(resource.RLIMIT_NOFILE, (limit, limit))
    connections = await raw_connections(relay.ssh_host, relay.ssh_port, limit + 60)
    try:
        answers = await asyncio.gather(
            *(asyncio.wait_for(reader.readline(), 5) for reader, _ in connections),
            return_exceptions=True)
        hanging = sum(isinstance(a, TimeoutError) for a in answers)
        banners = sum(isinstance(a, bytes) and a.startswith(b"SSH-2.0-") for a in answers)
        closed = sum(a == b"" or isinstance(a, ConnectionError) for a in answers)
        assert hanging == 0, f"{hanging} connections left waiting for nothing"
        assert banners > 100 and closed > 100
        async with Api(relay.base_url) as api:
            assert (await api.client.get("/healthz")).status_code == 200
        # SSH over WebSocket comes through the same entrance: "try again later" (1013).
        async with websocket_connect(websocket_route(relay.base_url).url, proxy=None) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 10)
        assert closed.value.rcvd.code == 1013
    finally:
        for _, writer in connections:
            writer.close()
    assert relay.log_path.read_text().count("Traceback") == 0
    assert "new connections are turned away" in relay.log_path.read_text()


async def test_failed_accepts_at_the_limit_are_said_in_one_line_not_a_traceback_each(
        caplog) -> None:
    loop = asyncio.get_running_loop()
    before = loop.get_exception_handler()
    others: list[dict] = []
    loop.set_exception_handler(lambda _loop, context: others.append(context))
    try:
        quiet_accept_failures(loop)
        for _ in range(2048):  # asyncio says it up to the listener's backlog each second
            loop.call_exception_handler({
                "message": "socket.accept() out of system resource",
                "exception": OSError(errno.EMFILE, "Too many open files")})
        loop.call_exception_handler({"message": "something else"})
    finally:
        loop.set_exception_handler(before)
    said = [r for r in caplog.records if "could not accept" in r.getMessage()]
    assert len(said) == 1 and said[0].exc_info is None
    assert [c["message"] for c in others] == ["something else"]
