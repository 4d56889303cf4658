"""Every Adhoc SSH connection sends a packet and the IGNORE asyncssh puts before it as one
write (common/transport.py _CoalescingTransport): one outer packet, one send(), per packet on
every hop, and sent at once rather than a turn of the event loop later."""

from __future__ import annotations

import asyncio

from common.transport import _CoalescingTransport


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
    transport = _CoalescingTransport(below)
    transport.write(b"ignore")
    assert below.writes == [], "held for the packet that follows"
    transport.write(b"keystroke")
    assert below.writes == [b"ignorekeystroke"], "sent before the event loop turns"
    await asyncio.sleep(0)
    assert below.writes == [b"ignorekeystroke"], "nothing sent twice"


async def test_a_lone_write_goes_at_the_end_of_the_turn_and_before_eof() -> None:
    below = Recorder()
    transport = _CoalescingTransport(below)
    transport.write(b"kexinit")  # key exchange packets come with no IGNORE
    await asyncio.sleep(0)
    assert below.writes == [b"kexinit"]
    transport.write(b"last words")
    transport.write_eof()
    assert below.writes == [b"kexinit", b"last words"] and below.eof
