"""Shells that outlive their SSH channel: named by the client, reattached with a repaint.

A shell with an id (the client's `ADHOC_SHELL_ID`) belongs to the agent, not to the channel that
opened it: when the technician's connection drops, the shell keeps running detached, and the
next channel that names the same id takes it over and first receives a repaint of the current
screen. A shell left detached for `detached_timeout` seconds is closed.

The screen is kept by a server-side emulator (pyte). Feeding it every byte would cap the
shell's throughput at the emulator's speed, so output is only appended to a bounded tail and
fed to the emulator when the shell goes quiet or a repaint is needed: the cost is bounded by
the tail, not by how much the shell prints. A quiet shell's tail is fed a slice at a time, so
the agent keeps answering keys meanwhile: 256 KiB of `yes` costs pyte ~0.8 s, and fed at once
it held a ctrl+c typed just after a flood for that long. Full-screen programs also get a
SIGWINCH on reattach, so they redraw themselves whatever the emulator missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import os
import re
import signal
from collections.abc import Callable

import asyncssh
import pyte

from hostagent.reaper import Reaper
from hostagent.shell import PtyShell

log = logging.getLogger("adhoc.host")

SHELL_ID_ENV = "ADHOC_SHELL_ID"
SHELL_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
DETACHED_TIMEOUT = 15 * 60.0
TAIL_LIMIT = 256 * 1024  # output kept for the emulator between syncs
QUIET_SYNC_DELAY = 0.25  # feed the emulator once the shell has been quiet this long
SYNC_SLICE = 4096  # bytes fed to the emulator per turn of the event loop (~10 ms at worst)
MAX_SHELLS = 32

# pyte keeps private modes shifted by 5 bits.
_DECCKM = 1 << 5
_DECTCEM = 25 << 5

_COLOURS = {"black": 0, "red": 1, "green": 2, "brown": 3, "yellow": 3, "blue": 4,
            "magenta": 5, "cyan": 6, "white": 7}
_BRIGHT = {f"bright{name}": code for name, code in _COLOURS.items()}


def _colour_sgr(value: str, background: bool) -> str:
    if value == "default":
        return ""
    base = 40 if background else 30
    if value in _COLOURS:
        return str(base + _COLOURS[value])
    if value in _BRIGHT:
        return str(base + 60 + _BRIGHT[value])
    if len(value) == 6:
        try:
            r, g, b = (int(value[i:i + 2], 16) for i in (0, 2, 4))
        except ValueError:
            return ""
        return f"{base + 8};2;{r};{g};{b}"
    return ""


def _style_sgr(char: pyte.screens.Char) -> str:
    parts = ["0"]
    for flag, code in (("bold", "1"), ("italics", "3"), ("underscore", "4"), ("blink", "5"),
                       ("reverse", "7"), ("strikethrough", "9")):
        if getattr(char, flag):
            parts.append(code)
    for colour, background in ((char.fg, False), (char.bg, True)):
        code = _colour_sgr(colour, background)
        if code:
            parts.append(code)
    return "\x1b[" + ";".join(parts) + "m"


def render_screen(screen: pyte.Screen) -> bytes:
    """Bytes that paint `screen` on a blank terminal of the same size, cursor included."""
    out = ["\x1b[0m\x1b[H\x1b[2J"]
    blank_style = _style_sgr(screen.default_char)
    for y in range(screen.lines):
        row = screen.buffer[y]
        last = screen.columns - 1
        while last >= 0 and row[last].data in (" ", "") and \
                _style_sgr(row[last]) == blank_style:
            last -= 1
        if last < 0:
            continue
        out.append(f"\x1b[{y + 1};1H")
        style = blank_style
        out.append(style)
        for x in range(last + 1):
            char = row[x]
            if char.data == "":
                continue  # the right half of a wide character
            wanted = _style_sgr(char)
            if wanted != style:
                out.append(wanted)
                style = wanted
            out.append(char.data)
        out.append("\x1b[0m")
    out.append(f"\x1b[{screen.cursor.y + 1};{screen.cursor.x + 1}H")
    if _DECCKM in screen.mode:
        out.append("\x1b[?1h")
    if _DECTCEM not in screen.mode or screen.cursor.hidden:
        out.append("\x1b[?25l")
    return "".join(out).encode("utf-8", "replace")


class Attachment:
    """The channel a shell currently writes to; `taken` is set when another channel takes it."""

    def __init__(self, write: Callable[[bytes], None], drain) -> None:
        self.write = write
        self.drain = drain
        self.taken = asyncio.Event()


def _ignoring_private(method: Callable) -> Callable:
    """`method` (a pyte Screen's CSI handler) for a CSI that may come as a private `CSI ?`
    form it does not take: that form is ignored, as terminals ignore what they do not
    know. pyte passed it on and the handler raised (vim's `CSI ? 4 m`, its query of
    modifyOtherKeys, failed the emulator's feeding, with a traceback on the customer's
    screen and the rest of that output lost from the repaint)."""
    @functools.wraps(method)
    def handler(self, *params, private: bool = False):
        if private:
            return None
        return method(self, *params)
    return handler


def _takes_private(method: Callable) -> bool:
    parameters = inspect.signature(method).parameters.values()
    return any(p.name == "private" or p.kind is p.VAR_KEYWORD for p in parameters)


class _Screen(pyte.Screen):
    """pyte's screen, with every CSI handler safe from private forms it does not know."""


for _name in set(pyte.Stream.csi.values()):
    _method = getattr(pyte.Screen, _name)
    if not _takes_private(_method):
        setattr(_Screen, _name, _ignoring_private(_method))


class ManagedShell:
    def __init__(self, shell_id: str | None, pty: PtyShell,
                 on_gone: Callable[[ManagedShell], None]) -> None:
        self.id = shell_id
        self.pty = pty
        self._on_gone = on_gone
        self.screen = _Screen(pty.cols, pty.rows)
        self._stream = pyte.ByteStream(self.screen)
        self._tail = bytearray()
        self._sync_handle: asyncio.TimerHandle | None = None
        self._feeding: asyncio.Task | None = None  # feeding the tail in slices while quiet
        self._draining = False  # waiting for the technician's side to take output
        self._expiry: asyncio.TimerHandle | None = None
        self.attachment: Attachment | None = None
        self.exited = asyncio.Event()
        self.status: int | None = None
        self._pump: asyncio.Task | None = None

    def start_pump(self) -> None:
        self._pump = asyncio.get_running_loop().create_task(self._run_pump())

    async def _run_pump(self) -> None:
        try:
            while (data := await self.pty.read()) is not None:
                self._remember(data)
                sink = self.attachment
                if sink is None:
                    continue
                try:
                    sink.write(data)
                    self._draining = True
                    await sink.drain()  # back-pressure: a slow technician slows the shell
                except (OSError, asyncssh.Error):
                    if self.attachment is sink:
                        self.attachment = None
                finally:
                    self._draining = False
        finally:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                self.status = await asyncio.wait_for(self.pty.wait(), 5)
            self.pty.kill()
            self.exited.set()
            self._cancel_timers()
            self._on_gone(self)

    def _remember(self, data: bytes) -> None:
        self._stop_feeding()  # output again: the emulator waits for the next quiet
        self._tail += data
        if len(self._tail) > TAIL_LIMIT:
            del self._tail[:len(self._tail) - TAIL_LIMIT]
        self._arm_sync()

    def _arm_sync(self) -> None:
        if self._sync_handle is not None:
            self._sync_handle.cancel()
        self._sync_handle = asyncio.get_running_loop().call_later(QUIET_SYNC_DELAY, self._quiet)

    def _quiet(self) -> None:
        self._sync_handle = None
        if self._draining:  # held up by a slow reader, not quiet: the flood goes on
            self._arm_sync()
        elif self._tail and self._feeding is None:
            self._feeding = asyncio.get_running_loop().create_task(self._feed_slices())

    async def _feed_slices(self) -> None:
        try:
            while self._tail:
                data = bytes(self._tail[:SYNC_SLICE])
                del self._tail[:SYNC_SLICE]
                self._feed(data)
                await asyncio.sleep(0)
        finally:
            if self._feeding is asyncio.current_task():
                self._feeding = None

    def _stop_feeding(self) -> None:
        if self._feeding is not None:
            self._feeding.cancel()
            self._feeding = None

    def sync(self) -> None:
        """Feed the emulator what the shell printed since the last sync, all of it now."""
        self._stop_feeding()
        if self._tail:
            data = bytes(self._tail)
            self._tail.clear()
            self._feed(data)

    def _feed(self, data: bytes) -> None:
        """Feed the emulator. Whatever output pyte fails on only makes the repaint less
        exact (a full-screen program redraws itself on reattach, nudged); it never fails
        the shell, its reattach or the customer's screen."""
        try:
            self._stream.feed(data)
        except Exception as exc:  # pyte's own failure on odd output
            log.info("shell %s: the screen copy for reattaching skipped output it could "
                     "not follow (%s)", self.id, type(exc).__name__)

    def repaint(self) -> bytes:
        self.sync()
        return render_screen(self.screen)

    def resize(self, cols: int, rows: int) -> None:
        self.sync()
        self.screen.resize(rows, cols)
        self.pty.resize(cols, rows)

    def nudge(self) -> None:
        """SIGWINCH to the foreground program so full-screen programs redraw themselves."""
        with contextlib.suppress(OSError):
            group = os.tcgetpgrp(self.pty.master_fd)
            os.killpg(group, signal.SIGWINCH)

    def attach(self, attachment: Attachment) -> Attachment | None:
        """Make `attachment` the shell's output; returns the one it took the shell from."""
        previous = self.attachment
        self.attachment = attachment
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if previous is not None:
            previous.taken.set()
        return previous

    def detach(self, attachment: Attachment, timeout: float) -> None:
        if self.attachment is not attachment:
            return
        self.attachment = None
        if self.exited.is_set():
            return
        if self.id is None:
            self.close()  # anonymous shells live as long as their channel
            return
        self._expiry = asyncio.get_running_loop().call_later(timeout, self._expire)

    def _expire(self) -> None:
        log.info("closing shell %s: detached for too long", self.id)
        self.close()

    def _cancel_timers(self) -> None:
        self._stop_feeding()
        for handle in (self._sync_handle, self._expiry):
            if handle is not None:
                handle.cancel()
        self._sync_handle = self._expiry = None

    def close(self) -> None:
        """Hang up: SIGHUP now, SIGKILL a moment later if the shell ignores it."""
        self.pty.close()
        asyncio.get_running_loop().call_later(2.0, self.pty.kill)

    def kill(self) -> None:
        self._cancel_timers()
        self.pty.kill()


class ShellLimit(Exception):
    pass


class ShellRegistry:
    """Every shell the agent runs, by id; anonymous shells are kept here too so `kill_all`
    reaches them."""

    def __init__(self, detached_timeout: float = DETACHED_TIMEOUT,
                 reaper: Reaper | None = None) -> None:
        self.detached_timeout = detached_timeout
        self.reaper = reaper
        self.named: dict[str, ManagedShell] = {}
        self.all: set[ManagedShell] = set()

    def live(self, shell_id: str) -> ManagedShell | None:
        shell = self.named.get(shell_id)
        if shell is None or shell.exited.is_set():
            return None
        return shell

    async def start(self, shell_id: str | None, term: str, cols: int, rows: int,
                    command: str | None, env: dict[str, str] | None = None) -> ManagedShell:
        if len(self.all) >= MAX_SHELLS:
            raise ShellLimit(f"too many shells open ({MAX_SHELLS}): close one first")
        pty = PtyShell(term, cols, rows, command, env)
        await pty.start()
        if self.reaper is not None and pty.process is not None:
            self.reaper.started(pty.process.pid)
        shell = ManagedShell(shell_id, pty, self._gone)
        self.all.add(shell)
        if shell_id is not None:
            self.named[shell_id] = shell
        shell.start_pump()
        return shell

    def _gone(self, shell: ManagedShell) -> None:
        self.all.discard(shell)
        if self.reaper is not None and shell.pty.process is not None:
            self.reaper.exited(shell.pty.process.pid)
        if shell.id is not None and self.named.get(shell.id) is shell:
            del self.named[shell.id]

    def kill_all(self) -> None:
        for shell in list(self.all):
            shell.kill()
