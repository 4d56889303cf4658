"""Shells that outlive the technician's connection: reattach by id, repaint, takeover, expiry.

A real relay, a real agent process and real PTYs; the client is plain asyncssh, so these are
the contract any console or `ssh -o SetEnv=ADHOC_SHELL_ID=...` gets.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from tests.hostagent.helpers import inner_connection, pid_alive, read_until
from tests.support import Api, start_session

PID = re.compile(rb"pid-(\d+)-end")


async def open_shell(inner, shell_id: str | None, size: tuple[int, int] = (100, 30)):
    env = {"ADHOC_SHELL_ID": shell_id} if shell_id else {}
    return await inner.create_process(term_type="xterm-256color", term_size=size,
                                      encoding=None, env=env)


async def shell_pid(process) -> int:
    process.stdin.write(b"echo pid-$$-e\"\"nd\r")
    seen = await read_until(process.stdout, b"-end\r\n")
    return int(PID.findall(seen)[-1])


async def test_reattach_repaints_and_keeps_the_same_shell(start_relay, agents,
                                                          tmp_path: Path) -> None:
    relay = start_relay()
    async with Api(relay.base_url) as api:
        view, agent = await start_session(api, agents, tmp_path)
        async with inner_connection(relay, api, view) as inner:
            first = await open_shell(inner, "main")
            pid = await shell_pid(first)
            first.stdin.write(b"cd /tmp && echo screen-$((6*7))-mark\r")
            await read_until(first.stdout, b"screen-42-mark")
        # The technician's connection is gone; the shell is not.
        assert pid_alive(pid)
        await agent.wait_for_line("Technician alice disconnected")

        async with inner_connection(relay, api, view) as inner:
            again = await open_shell(inner, "main", size=(90, 20))
            repaint = await read_until(again.stdout, b"screen-42-mark")
            assert repaint.startswith(b"\x1b[0m\x1b[H\x1b[2J")  # a fresh paint of the screen
            assert await shell_pid(again) == pid
            again.stdin.write(b"pwd; stty size\r")
            seen = await read_until(again.stdout, b"20 90")
            assert b"/tmp" in seen  # the same shell: its working directory survived
            await agent.wait_for_line("Technician alice returned to a shell")

            # Another channel naming the same id takes the shell over.
            other = await open_shell(inner, "main", size=(90, 20))
            await read_until(other.stdout, b"20 90")  # the screen as the last channel left it
            await asyncio.wait_for(again.wait_closed(), 10)
            assert b"taken over" in await again.stderr.read()
            assert await shell_pid(other) == pid

            # No id: a fresh shell of its own, closed with its channel.
            anonymous = await open_shell(inner, None)
            anon_pid = await shell_pid(anonymous)
            assert anon_pid != pid
            anonymous.close()
            await anonymous.wait_closed()
            for _ in range(100):
                if not pid_alive(anon_pid):
                    break
                await asyncio.sleep(0.1)
            assert not pid_alive(anon_pid)

            # A bad id is refused, not silently made anonymous.
            bad = await open_shell(inner, "../etc")
            await bad.wait_closed()
            assert bad.exit_status == 1


async def test_detached_shell_closes_after_the_timeout(start_relay, agents, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADHOC_HOST_SHELL_DETACH_TIMEOUT", "1")
    relay = start_relay()
    async with Api(relay.base_url) as api:
        view, _agent = await start_session(api, agents, tmp_path)
        async with inner_connection(relay, api, view) as inner:
            pid = await shell_pid(await open_shell(inner, "short"))
        for _ in range(100):
            if not pid_alive(pid):
                break
            await asyncio.sleep(0.1)
        assert not pid_alive(pid)
        async with inner_connection(relay, api, view) as inner:
            assert await shell_pid(await open_shell(inner, "short")) != pid


async def test_a_flood_queued_while_the_technician_was_busy_goes_on_whole() -> None:
    """Output queued up while the technician's side was busy goes on together (fewer SSH
    packets on both layers), with nothing lost or reordered, and the end after it."""
    from hostagent.shell import PtyShell

    shell = PtyShell("xterm", 80, 24, command="seq 1 200000")
    await shell.start()
    await asyncio.sleep(0.5)  # a busy technician's side: output queues up meanwhile
    pieces: list[bytes] = []
    while (data := await shell.read()) is not None:
        pieces.append(data)
    out = b"".join(pieces).replace(b"\r\n", b"\n")
    assert out == b"".join(b"%d\n" % n for n in range(1, 200001))
    # What it gains is measured in bench.flood (docs/BENCHMARKS.md): a PTY read's size
    # depends on the kernel's buffering, so no piece size is asserted here.
    assert await shell.read() is None  # and the end stays the end


async def test_a_flood_read_as_it_comes_goes_on_in_pieces_of_many_reads() -> None:
    """A flood read as fast as it comes (the technician keeps up) is still handed on in
    pieces of many PTY reads: a read gives a couple of KiB, and each piece costs a packet on
    both SSH layers (the console paid the most, bench.flood's `find`)."""
    from hostagent.shell import PtyShell

    shell = PtyShell("xterm", 80, 24, command="seq 1 300000")
    await shell.start()
    pieces: list[int] = []
    while (data := await shell.read()) is not None:
        pieces.append(len(data))
    assert sum(pieces) == sum(len(b"%d\r\n" % n) for n in range(1, 300001))
    assert sum(pieces) / len(pieces) >= 8 * 1024, f"{len(pieces)} pieces"


async def test_a_quiet_shell_catches_its_screen_up_a_slice_at_a_time() -> None:
    """The screen kept for reattaching is brought up to date in small slices once the shell
    is quiet, never while a slow technician holds the flood up: fed in one go, the 256 KiB
    tail of a `yes` took pyte ~0.8 s, and a ctrl+c typed then waited as long."""
    from hostagent.shell import PtyShell
    from hostagent.shells import TAIL_LIMIT, Attachment, ManagedShell

    pty = PtyShell("xterm", 80, 24, command=f"yes | head -c {2 * TAIL_LIMIT}; sleep 30")
    await pty.start()
    shell = ManagedShell("flood", pty, lambda _shell: None)
    fed: list[int] = []
    feed = shell._stream.feed
    shell._stream.feed = lambda data: (fed.append(len(data)), feed(data))[1]
    taken = bytearray()
    held = asyncio.Event()
    shown = 2 * TAIL_LIMIT * 3 // 2  # "y\n" leaves the PTY as "y\r\n"

    async def drain() -> None:
        await held.wait()

    shell.attach(Attachment(taken.extend, drain))
    shell.start_pump()
    try:
        await asyncio.sleep(1.0)  # the technician's side holds the flood up: not quiet
        assert fed == []
        held.set()
        for _ in range(200):
            if len(taken) >= shown and sum(fed) >= TAIL_LIMIT:
                break
            await asyncio.sleep(0.05)
        assert len(taken) == shown  # all of it went to the technician
        assert sum(fed) == TAIL_LIMIT  # the screen caught up with the tail...
        assert max(fed) <= 16 * 1024  # ...a slice at a time (pyte: ~0.8 s per 256 KiB)
        assert shell.screen.display[-2].rstrip() == "y"
    finally:
        shell.kill()
        # Reaped here: a killed shell left unawaited warns "still running" when collected,
        # which fails whichever test happens to run then.
        await asyncio.wait_for(pty.wait(), 10)


@pytest.mark.parametrize("odd", [b"\x1b[?4m", b"\x1b[?2A", b"\x1b[?5r", b"\x1b[?1;2H"])
async def test_output_the_screen_copy_cannot_follow_never_breaks_the_repaint(odd: bytes) -> None:
    """vim queries modifyOtherKeys with CSI ? 4 m: pyte handed that to a handler that does
    not take private forms, which raised; the reattach's repaint failed with it, and the
    quiet-time feeding printed a traceback on the customer's screen. Private forms a
    handler does not know are ignored now, as terminals do."""
    from hostagent.shell import PtyShell
    from hostagent.shells import ManagedShell

    text = "before" + odd.decode() + "\x1b[31mafter\x1b[0m"
    pty = PtyShell("xterm", 80, 24, command=f"printf '%s' '{text}'; sleep 30")
    await pty.start()
    shell = ManagedShell("odd", pty, lambda _shell: None)
    failures: list[dict] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: failures.append(context))
    shell.start_pump()
    try:
        for _ in range(100):  # the quiet-time feeding runs, a slice at a time
            if "after" in "".join(shell.screen.display) and shell._feeding is None:
                break
            await asyncio.sleep(0.05)
        painted = shell.repaint()
        assert b"before" in painted and b"after" in painted
        assert shell.screen.display[0].startswith("beforeafter")  # the odd form did nothing
        assert shell.screen.buffer[0][6].fg == "red"  # and what came after it still took
        assert failures == []
    finally:
        loop.set_exception_handler(None)
        shell.kill()
        await asyncio.wait_for(pty.wait(), 10)
