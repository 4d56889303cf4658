"""The console's terminal pane: shows a remote shell through an in-process terminal emulator.

The remote host is untrusted. Its bytes never reach the technician's real terminal: they are
parsed by bittty into a grid of cells, and this widget paints that grid as Textual strips of
plain text and styles. Whatever the host sends (OSC 52 clipboard writes, window titles, C1
controls, bidi overrides) can only ever change which characters and colours appear in the pane.

Output is parsed on a frame tick within a time budget, so a flood (`yes`, `cat` of a huge file)
never starves key handling; unparsed input is capped so memory stays bounded. Runs of plain
lines skip bittty's per-line work (tui/widgets/fastpath.py) and end in the same state.
"""

from __future__ import annotations

import re
from asyncio import Event, sleep, wait_for
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from time import perf_counter

from bittty import XTERM, Board
from bittty.operations import Operation
from bittty.style import Color as CellColor
from bittty.style import Style as CellStyle
from bittty.terminals import Terminal
from bittty.terminals.scrollback import rows_of
from bittty.video import CONTINUATION, Cell, WideHead
from rich.color import Color
from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.filter import ANSIToTruecolor, LineFilter
from textual.geometry import Region
from textual.message import Message
from textual.strip import Strip
from textual.widget import Widget

from tui.rawinput import Kind, RawInputDriver, Token, replay_as_keys
from tui.widgets import fastpath, mouse
from tui.widgets.copymode import CopyMode, Rows
from tui.widgets.emulation import behave_as_tmux
from tui.widgets.fastpath import History, LineRuns
from tui.widgets.reflow import Resizer
from tui.widgets.widths import HOST_WIDTHS, glyph_to_paint, sanitize_text, use_host_widths

LEAVE_KEY = "ctrl+right_square_bracket"
"""The default key that leaves a terminal pane (a screen's priority binding, remappable)."""

MAX_PENDING_BYTES = 4 * 1024 * 1024
"""Hard cap on received-but-unparsed output; past it the oldest pending bytes are dropped."""
# Within that cap the backlog is also held to about this much parsing time, measured as we go,
# so after ctrl+c on a `yes` the screen catches up in a second or two, not half a minute
# (short scrolling lines parse at ~0.2 MB/s, plain long lines at several MB/s).
MAX_BACKLOG_SECONDS = 0.5
MIN_PENDING_BYTES = 128 * 1024
# After the technician interrupts (ctrl+c, ctrl+\, ctrl+z) the output still on its way is
# what the program wrote before it stopped: for a while only its last screenful or so is
# kept, so the prompt shows at once instead of after a backlog nobody will read.
INTERRUPTS = (b"\x03", b"\x1c", b"\x1a")
CATCH_UP_SECONDS = 2.0
CATCH_UP_BYTES = 32 * 1024

# Output is parsed in turns of up to PARSE_BUDGET_SECONDS, each followed by a pause that lets
# the event loop answer keys and paint; a key waits at most about one turn.
PARSE_BUDGET_SECONDS = 0.010
PARSE_PAUSE_SECONDS = 0.001
# While output is still queued after a turn, the screen is painted at this reduced
# rate: nobody reads a flood at 60 frames a second, and painting would take time from parsing.
BUSY_PAINT_INTERVAL = 1 / 20
# Small slices keep one slice's cost well under the budget even for the slowest input
# (short lines that each scroll the page parse at well under 1 MB/s).
PARSE_SLICE_BYTES = 2048
# How far ahead a run of plain lines is looked for and laid out in one step.
LINE_RUN_BYTES = 64 * 1024
# A turn that parses this much is part of a flood (no typing echoes that much at once). Then
# the next turn waits for up to GATHER_SECONDS, or until LINE_RUN_BYTES have come: every turn
# has a fixed cost (the page's rows moved to history, the page rebuilt) that a flood arriving
# in the SSH client's small pieces paid hundreds of times a second; and the screen is painted
# at BUSY_PAINT_INTERVAL, as when behind, not after every turn.
FLOOD_TURN_BYTES = 8 * 1024
GATHER_SECONDS = 0.015
# An escape sequence still open after this much input is hostile or broken: the parser would
# otherwise buffer (and rescan) it without bound, so it is abandoned.
MAX_OPEN_SEQUENCE_CHARS = 128 * 1024
# Answers to device queries are capped per frame so a stream of queries cannot turn the pane
# into an amplifier back toward the host.
REPLY_BUDGET_BYTES = 4096

_TITLE_MAX_CHARS = 200
_SCROLL_KEYS = {b"\x1b[5;2~": -1, b"\x1b[6;2~": 1}  # shift+PageUp, shift+PageDown, as xterm
_SELECTED = Style(reverse=True)
_FOUND = Style(color=Color.parse("black"), bgcolor=Color.parse("yellow"))
_INDICATOR = Style(reverse=True, bold=True)

_ANSI_NAMES = (
    "black",
    "red",
    "green",
    "yellow",
    "blue",
    "magenta",
    "cyan",
    "white",
    "bright_black",
    "bright_red",
    "bright_green",
    "bright_yellow",
    "bright_blue",
    "bright_magenta",
    "bright_cyan",
    "bright_white",
)
_ANSI_COLORS = tuple(Color.parse(name) for name in _ANSI_NAMES)

# Replies the emulator may send back to the host. Anything else it would write (a window title
# report, an OSC 52 clipboard read, the font name, an answerback string) echoes text the host
# chose, which a file `cat`-ed on the remote could use to type commands into its own shell.
_SAFE_REPLY = re.compile(
    r"\x1b\[[\x30-\x3f]*[\x20-\x2f]*[\x40-\x7e]"  # CSI reports: DA, DSR/CPR, DECRPM, sizes, focus
    r"|\x1b\](?:4;\d{1,3}|5;\d{1,3}|1[0-9]);rgb:[0-9a-fA-F/]{1,20}(?:\x07|\x1b\\)"  # colours
    r"|\x1bP[\x20-\x7e]{0,512}\x1b\\"  # DCS reports (DECRQSS, XTVERSION): printable only
)

# xterm's key encodings. Cursor keys honour DECCKM; the rest are fixed.
_CURSOR_FINALS = {"up": "A", "down": "B", "right": "C", "left": "D", "home": "H", "end": "F"}
_TILDE_CODES = {
    "insert": 2,
    "delete": 3,
    "pageup": 5,
    "pagedown": 6,
    "f5": 15,
    "f6": 17,
    "f7": 18,
    "f8": 19,
    "f9": 20,
    "f10": 21,
    "f11": 23,
    "f12": 24,
}
_SS3_FUNCTION = {"f1": "P", "f2": "Q", "f3": "R", "f4": "S"}
_PLAIN_KEYS = {
    "enter": "\r",
    "tab": "\t",
    "escape": "\x1b",
    "backspace": "\x7f",
    "space": " ",
}
_CTRL_SYMBOLS = {
    "@": "\x00",
    "space": "\x00",
    "left_square_bracket": "\x1b",
    "backslash": "\x1c",
    "right_square_bracket": "\x1d",
    "circumflex_accent": "\x1e",
    "underscore": "\x1f",
    "minus": "\x1f",
    "backspace": "\x08",
    "2": "\x00",
    "3": "\x1b",
    "4": "\x1c",
    "5": "\x1d",
    "6": "\x1e",
    "7": "\x1f",
    "8": "\x7f",
}
_MODIFIER_BITS = {"shift": 1, "alt": 2, "meta": 2, "ctrl": 4}


def encode_key(key: str, character: str | None, *, application_cursor: bool = False) -> str | None:
    """The characters xterm sends for a Textual key, or None for a key it sends nothing for."""
    *modifiers, base = key.split("+")
    if any(modifier not in _MODIFIER_BITS for modifier in modifiers):
        return None  # super/hyper chords: xterm sends nothing the shell would understand
    bits = 0
    for modifier in modifiers:
        bits |= _MODIFIER_BITS[modifier]
    if base.startswith("f") and base[1:].isdigit() and 13 <= int(base[1:]) <= 24:
        base, bits = f"f{int(base[1:]) - 12}", bits | 1  # F13-F24 are shifted F1-F12
    alt = bool(bits & 2)
    param = 1 + bits  # xterm's modifier parameter: 2 shift, 3 alt, 5 ctrl, ...
    if base in _CURSOR_FINALS:
        final = _CURSOR_FINALS[base]
        if param == 1:
            return ("\x1bO" if application_cursor else "\x1b[") + final
        return f"\x1b[1;{param}{final}"
    if base in _TILDE_CODES:
        code = _TILDE_CODES[base]
        return f"\x1b[{code}~" if param == 1 else f"\x1b[{code};{param}~"
    if base in _SS3_FUNCTION:
        final = _SS3_FUNCTION[base]
        return f"\x1bO{final}" if param == 1 else f"\x1b[1;{param}{final}"

    prefix = "\x1b" if alt else ""
    if base == "tab" and bits & 1:
        return prefix + "\x1b[Z"
    if bits & 4:  # ctrl
        if len(base) == 1 and base.isascii() and base.isalpha():
            return prefix + chr(ord(base.lower()) & 0x1F)
        if base in _CTRL_SYMBOLS:
            return prefix + _CTRL_SYMBOLS[base]
        if base in _PLAIN_KEYS:
            return prefix + _PLAIN_KEYS[base]
        return None
    if base in _PLAIN_KEYS:
        return prefix + _PLAIN_KEYS[base]
    if character:
        return prefix + character
    if len(base) == 1:
        return prefix + (base.upper() if bits & 1 else base)
    return None


def _row_text(cells: Sequence[Cell]) -> str:
    return "".join(
        glyph_to_paint(char, 2 if isinstance(char, WideHead) else 1)
        for _, char in cells
        if char != CONTINUATION
    )


def sanitize_label(text: str) -> str:
    """Host-supplied text (a window title) reduced to printable characters on one line."""
    return sanitize_text(text)[:_TITLE_MAX_CHARS]


def _rich_color(color: CellColor | None) -> Color | None:
    if color is None or color.mode == "default":
        return None
    if color.mode == "indexed":
        index = color.value
        if 0 <= index < 16:
            return _ANSI_COLORS[index]
        return Color.from_ansi(index) if 0 <= index < 256 else None
    if color.mode == "rgb":
        return Color.from_rgb(*color.value)
    return None


def _rich_style(style: CellStyle, inverse: bool) -> tuple[Style, bool]:
    """A cell style as a Rich style (without the widget's base), and whether text is concealed."""
    reverse = bool(style.reverse) != inverse
    rich = Style(
        color=_rich_color(style.fg),
        bgcolor=_rich_color(style.bg),
        bold=True if style.bold else None,
        dim=True if style.dim else None,
        italic=True if style.italic else None,
        underline=True if style.underline and style.underline_style != "double" else None,
        underline2=True if style.underline and style.underline_style == "double" else None,
        blink=True if style.blink else None,
        reverse=True if reverse else None,
        strike=True if style.strike else None,
        overline=True if style.overline else None,
    )
    return rich, bool(style.conceal)


class _ReplyLine:
    """The emulator's host cable: carries its answers to device queries back to the remote.

    bittty writes replies here; only the shapes in _SAFE_REPLY go on to `send`, within a
    per-frame budget. Host output never comes through here (the widget feeds the board).
    """

    closed = False

    def __init__(self, send: Callable[[bytes], None]) -> None:
        self._send = send
        self.budget = REPLY_BUDGET_BYTES
        self._input = False  # what bittty writes now is the technician's input (mouse, keys)

    @contextmanager
    def technician_input(self):
        """While this lasts, the emulator writes the technician's input: pass it unfiltered."""
        self._input = True
        try:
            yield
        finally:
            self._input = False

    def write(self, data: str) -> int:
        if self._input:
            self._send(data.encode("utf-8", "surrogateescape"))
        elif _SAFE_REPLY.fullmatch(data) and len(data) <= self.budget:
            self.budget -= len(data)
            self._send(data.encode("ascii", "replace"))
        return len(data)

    def write_bytes(self, data: bytes) -> int:
        if self._input:
            self._send(bytes(data))
            return len(data)
        return self.write(data.decode("latin-1"))

    def flush(self) -> None:
        pass

    async def read_bytes_async(self, size: int) -> bytes:
        return b""  # never pumped: the widget feeds the board itself

    def configure_line(self, line: object) -> None:
        pass

    def resize(self, rows: int, cols: int) -> None:
        pass  # the remote PTY learns its size from TerminalView.Resized, via the lead's code

    def close(self) -> None:
        self.closed = True


class _Chrome(Terminal):
    """bittty's view of this pane: keeps scrollback and hears about titles and screen flips."""

    def __init__(self, board: Board, scrollback: History | None, view: TerminalView):
        super().__init__(board, scrollback)
        self._view = view

    def on_title(self, title: str, icon_title: str) -> None:
        self._view.remote_title = sanitize_label(title)

    def on_clipboard(self, selection: str, text: str) -> None:
        pass  # never reaches the technician's clipboard (OSC 52 is also unwired on the board)

    def on_reverse_screen(self, enabled: bool) -> None:
        self._view._invalidate_all()

    def on_scrollback_cleared(self) -> None:
        super().on_scrollback_cleared()
        self._view._invalidate_all()


def _ignore(operation: Operation) -> None:
    pass


class TerminalView(Widget, can_focus=True):
    """A remote shell's screen: feed it the remote's bytes, and it sends back the keys typed."""

    DEFAULT_CSS = """
    TerminalView {
        width: 1fr;
        height: 1fr;
        background: ansi_default;
        color: ansi_default;
        overflow: hidden hidden;
    }
    """

    class Resized(Message):
        """The pane's size in cells changed (and once after mount): resize the remote PTY."""

        def __init__(self, cols: int, rows: int, terminal: TerminalView | None = None) -> None:
            super().__init__()
            self.cols = cols
            self.rows = rows
            self.terminal = terminal

        @property
        def control(self) -> TerminalView | None:
            return self.terminal

    class Browsing(Message):
        """The technician browses history (`text` says where and what keys do), or stopped
        (`text` is None)."""

        def __init__(self, terminal: TerminalView, text: str | None) -> None:
            super().__init__()
            self.terminal = terminal
            self.text = text

        @property
        def control(self) -> TerminalView:
            return self.terminal

    max_pending_bytes: int = MAX_PENDING_BYTES

    def __init__(
        self,
        send: Callable[[bytes], None],
        *,
        cols: int = 80,
        rows: int = 24,
        scrollback: int = 5000,
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self._send = send
        self._cols = max(1, cols)
        self._rows = max(1, rows)
        self.remote_title = ""
        """The window title the remote asked for, sanitised; never applied to a real window."""
        self.dropped_bytes = 0
        """Output discarded because the pane could not parse it as fast as it arrived."""

        self._board = Board(
            width=self._cols, height=self._rows, model=XTERM, width_policy=HOST_WIDTHS
        )
        # Text lands where the remote shell thinks it does: each code point at its wcwidth,
        # zero-width ones (an accent in a decomposed macOS file name) joining the cell before.
        use_host_widths(self._board)
        behave_as_tmux(self._board)
        # The host may not touch the technician's clipboard, not even the board's copy of it.
        self._board.registry["OSC_CLIPBOARD"] = _ignore
        self._replies = _ReplyLine(send)
        self._board.host.attach(self._replies)
        history = History(scrollback * max(self._cols, 80)) if scrollback > 0 else None
        self._chrome = _Chrome(self._board, history, self)
        self._chrome.attach()
        self._resizer = Resizer(self._board, history)
        self._line_runs = (
            LineRuns(self._board, history, self._chrome.on_rows_scrolled_off)
            if fastpath.AVAILABLE
            else None
        )

        self._pending = bytearray()
        self._pending_start = 0  # bytes at the front of _pending already parsed
        self._discontinuity = False
        self._parse_rate = 1e6  # bytes per second of parsing, a moving average

        self._strips: dict[int, Strip] = {}
        self._style_cache: dict[tuple[CellStyle, bool], tuple[Style, bool]] = {}
        self._view_snapshot: list[Sequence[Cell]] | None = None
        self._drawn_cursor: tuple[int, int] | None = None
        self._posted_size: tuple[int, int] | None = None
        self._focused = False
        self._output_queued: Event | None = None  # set while output waits for the parser
        self._gathered: Event | None = None  # set once a flood's next turn has enough to parse
        self._painted_at = 0.0
        self._key_modes: tuple[bool, bool, int] | None = None  # mirrored on the real terminal
        self._copy: CopyMode | None = None  # browsing history: keys stay in the console
        self._drained: tuple[int, Callable[[], None]] | None = None
        self._catching_up = 0.0  # until when output is cut to its tail (after ctrl+c)
        self._drag: CopyMode | None = None  # a mouse selection on the live screen

    # --- the interface the session code uses --- #

    def feed(self, data: bytes) -> None:
        """Queue output from the remote; it is parsed on the next frames, within a budget."""
        if not data:
            return
        self._pending += data
        pending = len(self._pending) - self._pending_start
        if pending > CATCH_UP_BYTES and pending > self._backlog_cap():  # the least cap first
            self._shed_backlog()
        if self._output_queued is not None:
            self._output_queued.set()
        if self._gathered is not None and pending >= LINE_RUN_BYTES:
            self._gathered.set()

    def screen_lines(self) -> list[str]:
        """The rows on view as plain text (sanitised as painted), trailing spaces stripped."""
        return [_row_text(row).rstrip(" ") for row in self._visible_rows()]

    @property
    def size_in_cells(self) -> tuple[int, int]:
        """(cols, rows) of the emulator grid."""
        return self._cols, self._rows

    def when_drained(self, below: int, callback: Callable[[], None]) -> None:
        """Call `callback` once, as soon as fewer than `below` bytes wait to be parsed."""
        self._drained = (below, callback)
        self._check_drained()

    def _check_drained(self) -> None:
        if self._drained is not None and self.pending_bytes < self._drained[0]:
            callback = self._drained[1]
            self._drained = None
            callback()

    @property
    def pending_bytes(self) -> int:
        """Bytes received but not parsed yet (never more than `max_pending_bytes`)."""
        return len(self._pending) - self._pending_start

    # --- input queue --- #

    def _shed_backlog(self) -> None:
        # The remote produces faster than we can parse (a `yes` or a huge `cat`). What is on
        # screen at the end is what matters, so drop the oldest pending output and keep the
        # tail; the parser restarts clean at the cut rather than mid-sequence.
        keep = self._backlog_cap()
        cut = len(self._pending) - keep
        self.dropped_bytes += cut - self._pending_start
        del self._pending[:cut]
        self._pending_start = 0
        self._discontinuity = True

    def _backlog_cap(self) -> int:
        if self._catching_up and perf_counter() < self._catching_up:
            return CATCH_UP_BYTES
        by_time = int(self._parse_rate * MAX_BACKLOG_SECONDS)
        return min(self.max_pending_bytes, max(MIN_PENDING_BYTES, by_time))

    def _peek(self, size: int) -> bytes:
        start = self._pending_start
        return bytes(self._pending[start : start + size])

    def _consume(self, size: int) -> None:
        self._pending_start += size
        if self._pending_start == len(self._pending):
            self._pending.clear()
            self._pending_start = 0
        elif self._pending_start > LINE_RUN_BYTES and self._pending_start * 2 > len(self._pending):
            del self._pending[: self._pending_start]  # amortised: at most one copy per byte
            self._pending_start = 0

    def _parse_step(self) -> int:
        """Parse some of the pending output; returns the bytes used."""
        runs = self._line_runs
        if runs is not None and runs.ready():
            used = runs.write(self._peek(LINE_RUN_BYTES))
            if used:
                return used
        piece = self._peek(PARSE_SLICE_BYTES)
        if runs is not None and runs.settled():
            # Plain lines follow the next CR LF: give bittty up to it, so that a run can start
            # there once the cursor has reached a fresh bottom row.
            cut = piece.find(b"\r\n") + 2
            if cut > 1 and fastpath.ONE_LINE.match(piece, cut):
                piece = piece[:cut]
        self._board.feed_host_data(piece)
        return len(piece)

    def _parse_pending(self) -> int:
        """Parse for up to PARSE_BUDGET_SECONDS; returns the bytes used."""
        board = self._board
        parser = board.parser
        self._replies.budget = REPLY_BUDGET_BYTES
        started = perf_counter()
        deadline = started + PARSE_BUDGET_SECONDS
        parsed = 0
        while self.pending_bytes and perf_counter() < deadline:
            if self._discontinuity:
                parser.reset()
                self._discontinuity = False
            used = self._parse_step()
            self._consume(used)
            parsed += used
            if len(parser.buffer) > MAX_OPEN_SEQUENCE_CHARS:
                parser.reset()
            if board.width != self._cols or board.height != self._rows:
                # The host asked to resize the grid (DECCOLM, XTWINOPS 8, DECSLPP); the pane's
                # size is the technician's window, so put it back.
                self._resize_grid(self._cols, self._rows)
        self._mirror_key_modes()
        elapsed = perf_counter() - started
        if elapsed > PARSE_BUDGET_SECONDS / 2:  # a short frame says little about the rate
            self._parse_rate = 0.7 * self._parse_rate + 0.3 * parsed / elapsed
        return parsed

    def _resize_grid(self, cols: int, rows: int) -> None:
        self._resizer.resize(cols, rows)

    async def _parse_output(self) -> None:
        """Parse output as it comes, a turn at a time, painting as it goes."""
        queued = self._output_queued
        while True:
            await queued.wait()
            queued.clear()
            while self.pending_bytes:
                flooding = self._parse_pending() >= FLOOD_TURN_BYTES
                self._check_drained()
                now = perf_counter()
                if now - self._painted_at >= BUSY_PAINT_INTERVAL or not (
                    flooding or self.pending_bytes
                ):
                    self._painted_at = now
                    self._repaint()
                await sleep(PARSE_PAUSE_SECONDS)
                if flooding and self.pending_bytes < LINE_RUN_BYTES:
                    await self._gather()
                    if not self.pending_bytes:  # the flood is over: show its end now
                        self._painted_at = perf_counter()
                        self._repaint()

    async def _gather(self) -> None:
        """Wait up to GATHER_SECONDS for LINE_RUN_BYTES of output to be pending."""
        self._gathered = gathered = Event()
        try:
            await wait_for(gathered.wait(), GATHER_SECONDS)
        except TimeoutError:
            pass
        finally:
            self._gathered = None

    # --- painting --- #

    def _invalidate_all(self) -> None:
        self._strips.clear()
        self.refresh()

    def _cursor_cell(self) -> tuple[int, int] | None:
        if self._copy is not None:
            row, column = self._copy.cursor
            y = row - self._view_top()
            return (column, y) if 0 <= y < self._rows else None
        if not self._focused or self._chrome.view_offset():
            return None
        cursor = self._chrome.port.cursor
        if cursor is None:
            return None
        x, y = cursor
        page = self._chrome.port.page
        if 0 <= y < page.height:
            x = page.owner_x(min(x, page.width - 1), y)
        return x, y

    def _repaint(self) -> None:
        """Drop the cached strips of rows that changed and ask Textual to repaint them."""
        chrome = self._chrome
        dirty = set(chrome.damaged_rows())
        if not chrome.view_offset():
            self._view_snapshot = None
        elif dirty or self._view_snapshot is None:
            # Scrolled back, the rows on view shift as history grows: repaint them all.
            self._view_snapshot = chrome.view_rows()
            dirty = set(range(self._rows))
        cursor = self._cursor_cell()
        if cursor != self._drawn_cursor:
            for position in (self._drawn_cursor, cursor):
                if position is not None:
                    dirty.add(position[1])
            self._drawn_cursor = cursor
        if not dirty:
            return
        for y in dirty:
            self._strips.pop(y, None)
        if len(dirty) >= self._rows:
            self.refresh()
            return
        width = self.size.width or self._cols
        self.refresh(*(Region(0, y, width, 1) for y in sorted(dirty)))

    def _visible_rows(self) -> list[Sequence[Cell]]:
        if self._chrome.view_offset():
            return self._chrome.view_rows()
        page = self._chrome.port.page
        return [page.grid[y] for y in range(page.height)]

    def _row_cells(self, y: int) -> Sequence[Cell] | None:
        if self._view_snapshot is not None:
            return self._view_snapshot[y] if y < len(self._view_snapshot) else None
        page = self._chrome.port.page
        return page.grid[y] if 0 <= y < page.height else None

    def _cell_style(self, style: CellStyle, inverse: bool) -> tuple[Style, bool]:
        key = (style, inverse)
        cached = self._style_cache.get(key)
        if cached is None:
            rich, concealed = _rich_style(style, inverse)
            cached = (self.rich_style + rich, concealed)
            if len(self._style_cache) > 4096:  # a host cycling truecolours must not grow it forever
                self._style_cache.clear()
            self._style_cache[key] = cached
        return cached

    def render_line(self, y: int) -> Strip:
        strip = self._strips.get(y)
        if strip is None:
            strip = self._render_row(y)
            self._strips[y] = strip
        return strip

    def _render_row(self, y: int) -> Strip:
        cells = self._row_cells(y)
        if cells is None:
            return Strip.blank(self.size.width, self.rich_style)
        indicator = self._indicator() if y == 0 else ""
        if indicator:
            cells = cells[: max(0, len(cells) - len(indicator))]
            if cells and isinstance(cells[-1][1], WideHead):  # its second column was cut
                cells = [*cells[:-1], (cells[-1][0], " ")]
        marks = self._marks(y, len(cells))
        inverse_screen = bool(self._board.modes.reverse_screen)
        cursor = self._drawn_cursor
        cursor_x = cursor[0] if cursor is not None and cursor[1] == y else -1
        segments: list[Segment] = []
        total = 0
        x, count = 0, len(cells)
        while x < count:
            # A run of cells sharing one style object (the blitter reuses the current style),
            # with the cursor's cell, and any marked cell, a run of its own.
            cell_style = cells[x][0]
            end = x + 1
            if x != cursor_x and marks is None:
                while end < count and end != cursor_x and cells[end][0] is cell_style:
                    end += 1
            mark = marks[x] if marks is not None else None
            style, concealed = self._cell_style(cell_style, inverse_screen != (x == cursor_x))
            if mark is not None:
                style += mark
            text = "".join([cell[1] for cell in cells[x:end]])
            if not (len(text) == end - x and text.isascii() and text.isprintable()):
                text = _row_text(cells[x:end])  # wide glyphs, clusters, or characters to mask
            width = end - x  # every glyph is painted at exactly its cells' width
            if concealed:
                text = " " * width
            segments.append(Segment(text, style))
            total += width
            x = end
        if indicator:
            segments.append(Segment(indicator, self.rich_style + _INDICATOR))
            total += len(indicator)
        return Strip(segments, total)

    def _indicator(self) -> str:
        """tmux's copy-mode corner: [rows back/rows of history], while browsing."""
        if self._copy is None and not self._chrome.view_offset():
            return ""
        history = self._history_rows()
        return f"[{self._chrome.view_offset()}/{history}]"[: self._cols]

    def _marks(self, y: int, count: int) -> list[Style | None] | None:
        """Extra styles for the cells of row y: the selection, the search match."""
        selection = self._copy if self._copy is not None else self._drag
        if selection is None:
            return None
        row = self._view_top() + y
        found = selection.found
        span = selection.selection()
        if (span is None or not span[0][0] <= row <= span[1][0]) and (
            found is None or found[0] != row
        ):
            return None
        marks: list[Style | None] = [None] * count
        for x in range(count):
            if selection.selected(row, x):
                marks[x] = _SELECTED
            elif found is not None and found[0] == row and found[1] <= x < found[2]:
                marks[x] = _FOUND
        return marks

    def get_line_filters(self) -> Sequence[LineFilter]:
        # The remote's 16 ANSI colours (and its default colours) reach the technician's
        # terminal as ANSI indexes, drawn in their own palette, not Textual's fixed one.
        return [
            line_filter
            for line_filter in super().get_line_filters()
            if not isinstance(line_filter, ANSIToTruecolor)
        ]

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._style_cache.clear()
        self._strips.clear()

    # --- lifecycle, size and focus --- #

    def on_mount(self) -> None:
        self._output_queued = Event()
        if self.pending_bytes:
            self._output_queued.set()
        self.run_worker(self._parse_output(), name="parse output", group="terminal", exclusive=True)

    def on_resize(self, event: events.Resize) -> None:
        cols, rows = self.size.width, self.size.height
        if cols < 1 or rows < 1:
            return
        if (cols, rows) != (self._cols, self._rows):
            self._cols, self._rows = cols, rows
            self._resize_grid(cols, rows)
            self._invalidate_all()
            self._repaint()
        if self._posted_size != (cols, rows):
            self._posted_size = (cols, rows)
            self.post_message(self.Resized(cols, rows, self))

    # These run before Widget's own focus handlers update has_focus, hence _focused.
    def on_focus(self, event: events.Focus) -> None:
        self._focused = True
        self._board.set_focus(True)  # reported to the host only if it enabled mode 1004
        self._repaint()
        self.take_keys()

    def on_blur(self, event: events.Blur) -> None:
        self._focused = False
        self._board.set_focus(False)
        self._repaint()
        driver = self._raw_driver()
        if driver is not None:
            driver.stop_raw()

    def on_unmount(self) -> None:
        if self._focused and (driver := self._raw_driver()) is not None:
            driver.stop_raw()

    # --- input --- #

    def _raw_driver(self) -> RawInputDriver | None:
        driver = getattr(self.app, "_driver", None)
        return driver if isinstance(driver, RawInputDriver) else None

    def take_keys(self) -> None:
        """Have the technician's keys come as their terminal sent them, while focused.

        Only keys that a priority binding takes from the pane (its leave key) go to Textual;
        after one of those the screen calls this again if the pane is to keep the keys.
        """
        driver = self._raw_driver()
        if driver is None or not self._focused or self._copy is not None:
            return  # Textual's key events: encoded by name (tests), or kept (browsing)
        taken = frozenset(
            key
            for key, active in self.screen.active_bindings.items()
            if active.binding.priority and active.enabled
        )
        driver.start_raw(self._raw_input, taken)
        self._key_modes = None
        self._mirror_key_modes()

    def _mirror_key_modes(self) -> None:
        """The remote program's key modes, on the technician's terminal while it types raw."""
        modes = self._board.modes
        wanted = (
            bool(modes.cursor_application_mode),
            bool(modes.application_keypad),
            min(max(int(self._board.keyboard.modify_other_keys or 0), 0), 2),
        )
        if wanted != self._key_modes and self._focused:
            driver = self._raw_driver()
            if driver is not None and driver.raw:
                driver.set_key_modes(*wanted)
                self._key_modes = wanted

    def _raw_input(self, tokens: list[Token]) -> None:
        """Keys and pastes from the raw driver, in the order they were typed."""
        if not self._focused:
            # Typed as the focus moved away: they belong to whatever has it now.
            replay_as_keys(self.app, b"".join(token.data for token in tokens))
            return
        if self._drag is not None:
            self._drag = None
            self._invalidate_all()
        keys = bytearray()
        for index, token in enumerate(tokens):
            if token.data in _SCROLL_KEYS and not self._board.blitter.in_alt_screen:
                # shift+PageUp/PageDown scroll history; browsing, the keys after it are local.
                if keys:
                    self._send_bytes(bytes(keys))
                    keys.clear()
                page = max(1, self._rows - 1)
                self._scroll_history(page * _SCROLL_KEYS[token.data])
                if self._copy is not None:
                    replay_as_keys(self.app, b"".join(t.data for t in tokens[index + 1 :]))
                    return
                continue
            if token.kind is Kind.PASTE:
                if keys:
                    self._send_bytes(bytes(keys))
                    keys.clear()
                self._paste(token.text.decode("utf-8", "replace"))
            else:
                keys += token.data
        if keys:
            self._send_bytes(bytes(keys))

    # --- history: browsing, search, selection --- #

    def _history_view(self):
        history = self._chrome.scrollback
        if history is None or self._board.blitter.in_alt_screen:
            return None
        return history.width(self._cols)

    def _history_rows(self) -> int:
        view = self._history_view()
        return len(view) if view is not None else 0

    def _view_top(self) -> int:
        """The row (counted over history then the screen) at the top of the view."""
        return self._history_rows() - self._chrome.view_offset()

    def _rows_to_browse(self) -> Rows:
        view = self._history_view()
        above = len(view) if view is not None else 0
        page = self._chrome.port.page
        history = self._chrome.scrollback

        def cells(row: int) -> Sequence[Cell]:
            return view[row] if row < above else page.grid[row - above]

        def wraps(row: int) -> bool:
            if row >= above:
                return page.wrapped_lines[row - above]
            number, within = view.line_at(row)
            if within + 1 < rows_of(history.line(number).width, self._cols):
                return True
            return row == above - 1 and bool(history._open)  # it goes on on the screen

        return Rows(above + page.height, cells, wraps)

    def _scroll_history(self, rows: int) -> None:
        if self._history_view() is None:
            return
        self._chrome.scroll_view(rows)
        if self._chrome.view_offset() and self._copy is None:
            self.browse()
        elif not self._chrome.view_offset() and self._copy is not None and (
            self._copy.anchor is None and self._copy.prompt is None
        ):
            self.stop_browsing()
        self._invalidate_all()
        self._repaint()

    def browse(self, search: bool = False) -> None:
        """Keep the keys in the console to move through history, search, select and copy."""
        if self._copy is None:
            top = self._view_top()
            cursor = self._board.cursor
            if self._chrome.view_offset():
                start = (top + self._rows - 1, 0)
            else:
                start = (top + cursor.y, min(cursor.x, self._cols - 1))
            self._copy = CopyMode(cursor=start)
            self._drag = None
            driver = self._raw_driver()
            if driver is not None:
                driver.stop_raw()
        if search:
            self._copy.prompt = ""
            self._copy.backwards = True
        self._browsing_changed()

    def stop_browsing(self) -> None:
        """Back to the live screen; keys go to the remote again."""
        if self._copy is None:
            return
        self._copy = None
        self._chrome.scroll_to_bottom()
        self._invalidate_all()
        self._repaint()
        self.post_message(self.Browsing(self, None))
        self.take_keys()

    @property
    def browsing(self) -> bool:
        return self._copy is not None

    def _browsing_changed(self) -> None:
        copy = self._copy
        if copy is None:
            return
        self._keep_in_view(copy.cursor[0])
        self._invalidate_all()
        self._repaint()
        if copy.prompt is not None:
            way = "older" if copy.backwards else "newer"
            text = f" search {way}: {copy.prompt}▏ · enter: find · esc: cancel"
        else:
            where = f"[{self._chrome.view_offset()}/{self._history_rows()}]"
            note = f"{copy.status} · " if copy.status else ""
            keys = "y: copy" if copy.anchor is not None else "v: select"
            text = f" history {where} · {note}q: live · /: search · {keys}"
        self.post_message(self.Browsing(self, text))

    def _keep_in_view(self, row: int) -> None:
        top = self._view_top()
        if row < top:
            self._chrome.scroll_view(row - top)
        elif row >= top + self._rows:
            self._chrome.scroll_view(row - (top + self._rows - 1))

    def _copy_out(self, selection: CopyMode) -> None:
        text = selection.selected_text(self._rows_to_browse())
        if text:
            self.app.copy_to_clipboard(text)  # OSC 52 to the technician's own terminal

    def _browse_key(self, event: events.Key) -> None:
        copy = self._copy
        rows = self._rows_to_browse()
        key, character = event.key, event.character
        copy.status = ""
        if copy.prompt is not None:
            if key == "enter":
                copy.query, copy.prompt = copy.prompt, None
                copy.search(rows)
            elif key == "escape":
                copy.prompt = None
            elif key == "backspace":
                copy.prompt = copy.prompt[:-1]
            elif character and character.isprintable() and len(copy.prompt) < 200:
                copy.prompt += character
            self._browsing_changed()
            return
        page = max(1, self._rows - 1)
        moves = {"up": (-1, 0), "k": (-1, 0), "down": (1, 0), "j": (1, 0), "left": (0, -1),
                 "h": (0, -1), "right": (0, 1), "l": (0, 1), "pageup": (-page, 0),
                 "shift+pageup": (-page, 0), "pagedown": (page, 0),
                 "shift+pagedown": (page, 0), "ctrl+b": (-page, 0), "ctrl+f": (page, 0)}
        name = character if character in ("g", "G", "n", "N", "v", "y", "q", "0", "$", "/",
                                          "?", "k", "j", "h", "l") else key
        if name in ("q", "escape"):
            self.stop_browsing()
            return
        if name in moves:
            down, right = moves[name]
            copy.move(rows, down, right)
        elif name in ("g", "home"):
            copy.cursor = (0, 0)
        elif name in ("G", "end"):
            copy.cursor = (rows.count - 1, 0)
        elif name == "0":
            copy.line_edge(rows, end=False)
        elif name == "$":
            copy.line_edge(rows, end=True)
        elif name in ("/", "?"):
            copy.prompt, copy.backwards = "", name == "/"
        elif name in ("n", "N"):
            copy.search(rows, copy.backwards if name == "n" else not copy.backwards)
        elif name in ("v", "space"):
            copy.anchor = None if copy.anchor is not None else copy.cursor
        elif name in ("y", "enter"):
            if copy.anchor is not None:
                self._copy_out(copy)
            self.stop_browsing()
            return
        self._browsing_changed()

    def _send_text(self, text: str) -> None:
        self._send_bytes(text.encode("utf-8", "surrogateescape"))

    def _send_bytes(self, data: bytes) -> None:
        if self._chrome.view_offset():
            self._chrome.scroll_to_bottom()
            self._invalidate_all()
            self._repaint()
        self._send(data)
        if data in INTERRUPTS:
            self._catching_up = perf_counter() + CATCH_UP_SECONDS
            if self.pending_bytes > self._backlog_cap():
                self._shed_backlog()
            self._check_drained()

    def on_key(self, event: events.Key) -> None:
        # Keys by name: where the raw driver is not in use (tests, other platforms), or
        # keys it handed to Textual. A priority binding (the leave key) never gets here.
        in_alt_screen = self._board.blitter.in_alt_screen
        if self._drag is not None:
            self._drag = None
            self._invalidate_all()
        if self._copy is not None:
            self._browse_key(event)
        elif event.key in ("shift+pageup", "shift+pagedown") and not in_alt_screen:
            page = max(1, self._rows - 1)
            self._scroll_history(-page if event.key == "shift+pageup" else page)
        else:
            text = encode_key(
                event.key,
                event.character,
                application_cursor=bool(self._board.modes.cursor_application_mode),
            )
            if text:
                self._send_text(text)
        event.stop()
        event.prevent_default()

    def on_paste(self, event: events.Paste) -> None:
        self._paste(event.text)
        event.stop()
        event.prevent_default()

    def _paste(self, text: str) -> None:
        # As xterm does, line feeds become carriage returns (what Enter sends). A pasted
        # end-of-paste marker is removed so pasted text cannot escape the bracket.
        text = text.replace("\r\n", "\r").replace("\n", "\r")
        if self._board.modes.bracketed_paste:
            text = "\x1b[200~" + text.replace("\x1b[201~", "") + "\x1b[201~"
        if text:
            self._send_text(text)

    # --- mouse --- #

    def _report_mouse(self, event: events.MouseEvent) -> None:
        with self._replies.technician_input():
            mouse.report(self._board, event, self._cols, self._rows)

    def on_mouse_down(self, event: events.MouseDown) -> None:
        if mouse.remote_wants_mouse(self._board, event) and self._copy is None:
            self.capture_mouse()  # the release and drags reach the remote even off the pane
            self._report_mouse(event)
        elif event.button == 1:
            self.capture_mouse()
            at = self._cell_at(event)
            selection = self._copy
            if selection is None:
                selection = self._drag = CopyMode(cursor=at)
            selection.cursor, selection.anchor = at, at
            self._invalidate_all()
        event.stop()

    def on_mouse_up(self, event: events.MouseUp) -> None:
        if mouse.remote_wants_mouse(self._board, event) and self._copy is None:
            self.release_mouse()
            self._report_mouse(event)
        elif event.button == 1:
            self.release_mouse()
            selection = self._copy if self._copy is not None else self._drag
            if selection is not None and selection.anchor is not None:
                selection.cursor = self._cell_at(event)
                if selection.cursor == selection.anchor:
                    selection.anchor = None  # a click, not a drag: nothing selected
                    self._drag = None if selection is self._drag else self._drag
                else:
                    self._copy_out(selection)
                self._invalidate_all()
                if self._copy is not None:
                    self._browsing_changed()
        event.stop()

    def on_mouse_move(self, event: events.MouseMove) -> None:
        if mouse.remote_wants_mouse(self._board, event) and self._copy is None:
            self._report_mouse(event)
        elif event.button == 1:
            selection = self._copy if self._copy is not None else self._drag
            if selection is not None and selection.anchor is not None:
                selection.cursor = self._cell_at(event)
                self._invalidate_all()
        event.stop()

    def _cell_at(self, event: events.MouseEvent) -> tuple[int, int]:
        """The (row over history and screen, column) under the mouse, within the view."""
        x = min(max(int(event.x), 0), self._cols - 1)
        y = min(max(int(event.y), 0), self._rows - 1)
        return self._view_top() + y, x

    def on_mouse_scroll_up(self, event: events.MouseScrollUp) -> None:
        if mouse.remote_wants_wheel(self._board, event):
            self._report_mouse(event)
        else:
            self._scroll_history(-3)
        event.stop()

    def on_mouse_scroll_down(self, event: events.MouseScrollDown) -> None:
        if mouse.remote_wants_wheel(self._board, event):
            self._report_mouse(event)
        else:
            self._scroll_history(3)
        event.stop()
