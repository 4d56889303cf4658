"""Writes joined per event loop turn (common/transport.py CoalescingWriter).

Every Adhoc SSH connection sends a packet and the IGNORE asyncssh puts before it as one write:
one outer packet, one send(), per packet on every hop, sent at once rather than a turn of the
event loop later. Bulk writes (a download) go joined at the end of the turn, in full packets;
the relay's splice sends a lone keystroke at once."""

from __future__ import annotations

import asyncio

from common.transport import HOLD_LIMIT, CoalescingWriter


class Recorder:
    """Stands in for the channel or socket transport under the connection: what it was given."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.eof = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def write_eof(self) -> None:
        self.eof = True


async def test_a_packet_and_the_ignore_before_it_go_together_at_once() -> None:
    below = Recorder()
    transport = CoalescingWriter(below)
    transport.write(b"ignore")
    assert below.writes == [], "held for the packet that follows"
    transport.write(b"keystroke")
    assert below.writes == [b"ignorekeystroke"], "sent before the event loop turns"
    await asyncio.sleep(0)
    assert below.writes == [b"ignorekeystroke"], "nothing sent twice"


async def test_a_lone_write_goes_at_the_end_of_the_turn_and_before_eof() -> None:
    below = Recorder()
    transport = CoalescingWriter(below)
    transport.write(b"kexinit")  # key exchange packets come with no IGNORE
    await asyncio.sleep(0)
    assert below.writes == [b"kexinit"]
    transport.write(b"last words")
    transport.write_eof()
    assert below.writes == [b"kexinit", b"last words"] and below.eof


async def test_a_turns_bulk_writes_go_joined_at_its_end() -> None:
    """An SFTP reply of 32 KiB crosses as a packet of 32 KiB and one of its 13-byte rest, each
    after an IGNORE: written on one by one, that was a packet per piece on every hop."""
    below = Recorder()
    transport = CoalescingWriter(below)
    pieces = [b"i", b"d" * 32768, b"i", b"rest" * 3, b"i", b"d" * 32768, b"i", b"rest" * 3]
    for piece in pieces:
        transport.write(piece)
    assert below.writes == [], "held until the turn ends"
    await asyncio.sleep(0)
    assert below.writes == [b"".join(pieces)]


async def test_bulk_is_held_no_further_than_a_packet() -> None:
    below = Recorder()
    transport = CoalescingWriter(below)
    for _ in range(HOLD_LIMIT // 32768 + 1):
        transport.write(b"d" * 32768)
    assert [len(write) for write in below.writes] == [HOLD_LIMIT]
    await asyncio.sleep(0)
    assert [len(write) for write in below.writes] == [HOLD_LIMIT, 32768]


async def test_a_splice_sends_a_lone_keystroke_at_once_and_keeps_the_order() -> None:
    below = Recorder()
    splice = CoalescingWriter(below, prompt=True)
    splice.write(b"k")
    assert below.writes == [b"k"], "a keystroke waits for nothing"
    splice.write(b"d" * 32768)
    splice.write(b"k")  # behind held bulk: it waits its turn
    assert below.writes == [b"k"]
    await asyncio.sleep(0)
    assert below.writes == [b"k", b"d" * 32768 + b"k"]
