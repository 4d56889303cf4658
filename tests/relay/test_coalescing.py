"""Writes joined per event loop turn (common/transport.py CoalescingWriter).

A small write (a keystroke) goes at once rather than a turn of the event loop later; bulk
writes (a download, a flood) go joined at the end of the turn, in full packets."""

from __future__ import annotations

import asyncio
from asyncio import selector_events

import asyncssh

from common.transport import (
    HOLD_LIMIT,
    KEX_ALGS,
    CoalescingTcp,
    CoalescingWriter,
    _CoalescedSession,
    coalescing_protocol,
)
from tests.sshserver import PasswordServer


class Recorder:
    """Stands in for the channel or socket transport under the connection: what it was given."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.eof = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def write_eof(self) -> None:
        self.eof = True


async def test_a_small_write_goes_at_once_and_bulk_at_the_end_of_the_turn() -> None:
    below = Recorder()
    writer = CoalescingWriter(below)
    writer.write(b"keystroke")
    assert below.writes == [b"keystroke"], "sent before the event loop turns"
    writer.write(b"d" * 32768)
    writer.write(b"k")  # behind held bulk: it waits its turn, in order
    assert below.writes == [b"keystroke"]
    await asyncio.sleep(0)
    assert below.writes == [b"keystroke", b"d" * 32768 + b"k"], "nothing sent twice"


async def test_what_is_held_goes_before_eof() -> None:
    below = Recorder()
    writer = CoalescingWriter(below)
    writer.write(b"last words" * 1000)
    writer.write_eof()
    assert below.writes == [b"last words" * 1000] and below.eof


async def test_a_turns_bulk_writes_go_joined_at_its_end() -> None:
    """An SFTP reply of 32 KiB crosses as a packet of 32 KiB and one of its 13-byte rest:
    written on one by one, that was a packet per piece on every hop."""
    below = Recorder()
    writer = CoalescingWriter(below)
    pieces = [b"d" * 32768, b"rest" * 3, b"d" * 32768, b"rest" * 3]
    for piece in pieces:
        writer.write(piece)
    assert below.writes == [], "held until the turn ends"
    await asyncio.sleep(0)
    assert below.writes == [b"".join(pieces)]


async def test_bulk_is_held_no_further_than_a_packet() -> None:
    below = Recorder()
    writer = CoalescingWriter(below)
    for _ in range(HOLD_LIMIT // 32768 + 1):
        writer.write(b"d" * 32768)
    assert [len(write) for write in below.writes] == [HOLD_LIMIT]
    await asyncio.sleep(0)
    assert [len(write) for write in below.writes] == [HOLD_LIMIT, 32768]


async def test_during_the_handshake_small_writes_go_joined_and_at_once_after_it() -> None:
    below = Recorder()
    handshaking = [True]
    writer = CoalescingWriter(below, lambda: handshaking[0])
    for packet in (b"kex reply", b"newkeys", b"ext info"):
        writer.write(packet)
    assert below.writes == [], "held until the turn ends"
    await asyncio.sleep(0)
    assert below.writes == [b"kex replynewkeysext info"]
    handshaking[0] = False
    writer.write(b"keystroke")
    assert below.writes[-1] == b"keystroke", "after the handshake a keystroke goes at once"


async def test_a_real_handshake_crosses_in_fewer_writes(monkeypatch) -> None:
    """An asyncssh login over the coalescing transport, the socket writes counted on both
    ends: with the handshake's packets of a turn joined, fewer than one write per packet."""
    writes = [0]
    original = selector_events._SelectorSocketTransport.write

    def counted(self, data) -> None:
        writes[0] += 1
        original(self, data)

    monkeypatch.setattr(selector_events._SelectorSocketTransport, "write", counted)
    key = asyncssh.generate_private_key("ssh-ed25519")

    class Listen:  # as the relay listens (relay/sshd.py): a coalescing protocol per connection
        async def create_server(self, session_factory, host: str, port: int):
            return await asyncio.get_running_loop().create_server(
                coalescing_protocol(lambda: session_factory("", 0)), host, port)

    async def login() -> int:
        server = await asyncssh.create_server(lambda: PasswordServer("right"), "127.0.0.1", 0,
                                              tunnel=Listen(), server_host_keys=[key],
                                              kex_algs=KEX_ALGS)
        port = server.sockets[0].getsockname()[1]
        writes[0] = 0
        try:
            async with asyncssh.connect("127.0.0.1", port, tunnel=CoalescingTcp(),
                                        known_hosts=None, username="support",
                                        password="right", client_keys=None):
                pass
        finally:
            server.close()
            await server.wait_closed()
        return writes[0]

    joined = await login()
    monkeypatch.setattr(_CoalescedSession, "_handshaking", lambda self: False)
    one_by_one = await login()
    assert joined < one_by_one, (joined, one_by_one)
