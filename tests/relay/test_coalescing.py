"""Writes joined per event loop turn (common/transport.py CoalescingWriter).

A small write (a keystroke) goes at once rather than a turn of the event loop later; bulk
writes (a download, a flood) go joined at the end of the turn, in full packets."""

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
