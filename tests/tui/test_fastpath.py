"""The pane's bulk path for plain lines shows exactly what a full parse by bittty shows.

Each test feeds the same output to two panes, one laying runs of plain lines out in bulk
(tui/widgets/fastpath.py) and one leaving every byte to bittty, and compares what the
technician could ever see: the screen (characters and styles), every line of scrollback, the
cursor, and what later output does (a combining accent joining the last letter, a scroll back
down) — so the hidden state bittty keeps must match too.
"""

from __future__ import annotations

import random
from importlib.metadata import version

from textual.app import App, ComposeResult

from tui.widgets import fastpath
from tui.widgets.terminal import TerminalView


def pane(*, bulk: bool, scrollback: int = 5000, cols: int = 80, rows: int = 24) -> TerminalView:
    """A pane outside any app, parsed by hand with `parse_all`."""
    view = TerminalView(lambda data: None, cols=cols, rows=rows, scrollback=scrollback)
    view.max_pending_bytes = 1 << 30
    if not bulk:
        view._line_runs = None
    return view


def parse_all(view: TerminalView) -> None:
    while view.pending_bytes:
        view._parse_pending()


def seen(view: TerminalView) -> dict:
    """Everything about the emulator that shows, or decides what later output shows."""
    board = view._board
    blitter, cursor = board.blitter, board.cursor
    history = view._chrome.scrollback
    state = {
        "screen": view.screen_lines(),
        "pages": [
            (page.grid, page.wrapped_lines, page.line_attributes)
            for page in (*blitter.pages, blitter.alt_page)
        ],
        "cursor": (cursor.x, cursor.y, cursor.wrap_pending, blitter.in_alt_screen),
        "style": board.style.current,
        "parser": (board.parser.mode, board.parser.buffer, blitter.last_printed_char),
    }
    if history is not None:
        shown = history.width(board.width)
        state["history"] = (history.first, history.end, history.cells, len(shown))
        state["lines"] = [history.line(n) for n in range(history.first, history.end)]
        state["rows"] = [shown[row] for row in range(max(0, len(shown) - 60), len(shown))]
    tail = blitter._clusters._tail
    if tail is not None:
        page = tail.page
        state["cluster"] = (
            tail.x,
            tail.y,
            tail.text,
            tail.style,
            tail.cursor_x,
            tail.cursor_y,
            tail.restore_start,
            tail.restore_cells,
            page is blitter.current_page,
            next((y for y, row in enumerate(page.grid) if row is tail.row), None),
        )
    return state


def assert_same(chunks: list[bytes], **options) -> int:
    """Feed both panes chunk by chunk, comparing after each; returns the bytes laid in bulk."""
    bulk, full = pane(bulk=True, **options), pane(bulk=False, **options)
    laid = 0
    write = bulk._line_runs.write

    def counting_write(data: bytes) -> int:
        nonlocal laid
        used = write(data)
        laid += used
        return used

    bulk._line_runs.write = counting_write
    for number, chunk in enumerate(chunks):
        bulk.feed(chunk)
        full.feed(chunk)
        parse_all(bulk)
        parse_all(full)
        got, want = seen(bulk), seen(full)
        for key in want:
            assert got.get(key) == want[key], f"{key} differs after chunk {number}"
        assert got.keys() == want.keys()
    return laid


def chunked(data: bytes, size: int) -> list[bytes]:
    return [data[at : at + size] for at in range(0, len(data), size)]


# After the flood, output that reads what bittty remembers: a combining accent on the last
# letter, scrolling back down, a cursor report, and more lines.
AFTERWARDS = [
    b"\xcc\x81",
    b"\x1b[T\x1b[24;2H\xcc\x81",
    b"\x1b[S\x1b[b\x1b[6n",
    b"tail\r\n$ ",
]


def test_the_bulk_path_is_on_for_this_bittty() -> None:
    assert fastpath.AVAILABLE, (
        f"bittty {version('bittty')} has not been checked against tui/widgets/fastpath.py: "
        "run these tests with it and add it to VERIFIED_BITTTY if they pass"
    )


def test_yes_lands_as_a_full_parse_would() -> None:
    data = b"y\r\n" * 60_000  # more than the scrollback holds: the oldest go
    chunks = [b"$ yes\r\n", *chunked(data, 16 * 1024), *AFTERWARDS]
    assert assert_same(chunks, scrollback=300) > len(data) * 0.9


def test_blank_lines_are_laid_out_too() -> None:
    # `yes ""`, then a space written at the bottom, a few blank lines, and a scroll back down
    # that brings the space's row back under the cursor: the accent must join it as in bittty.
    blank = b"\r\n" * 50_000
    assert assert_same(chunked(blank, 16 * 1024)) > len(blank) * 0.9
    chunks = [b"\x1b[24;1H \r", b"\r\n" * 5, b"\x1b[5T\x1b[24;2H\xcc\x81", *AFTERWARDS]
    assert assert_same(chunks) == 10


def test_scrollback_is_evicted_alike() -> None:
    lines = b"".join(b"line %06d   \r\n" % n for n in range(30_000))
    assert assert_same(chunked(lines, 20_000) + AFTERWARDS, scrollback=50) > len(lines) * 0.8


def test_coloured_lines_keep_their_styles() -> None:
    lines = b"".join(
        b"\x1b[0m\x1b[01;34mdir%03d\x1b[0m  \x1b[38;5;208mlog%03d\x1b[0m  \x1b[7m%s\x1b[0m\r\n"
        % (n, n, b"x" * (n % 200))
        for n in range(1500)
    )
    assert assert_same([b"\x1b[1m", *chunked(lines, 7000), *AFTERWARDS]) > len(lines) * 0.8


def test_long_lines_wrap_alike() -> None:
    lines = b"".join(b"%s\r\n" % (b"ab c " * (n % 70)) for n in range(1500))
    assert assert_same([*chunked(lines, 5000), *AFTERWARDS], cols=37, rows=9) > len(lines) * 0.8


def test_background_colours_are_left_to_bittty() -> None:
    lines = b"".join(
        b"\x1b[41m%s\x1b[0m\r\n" % (b"r" * (n % 90)) if n % 3 else b"\x1b[44mblue %d\r\n" % n
        for n in range(3000)
    )
    assert_same([*chunked(lines, 4000), b"\x1b[0m", *AFTERWARDS])


def test_scrolled_back_view_stays_put() -> None:
    bulk, full = pane(bulk=True), pane(bulk=False)
    for view in (bulk, full):
        view.feed(b"".join(b"first %d\r\n" % n for n in range(200)))
        parse_all(view)
        view._chrome.scroll_view(-50)
        view.feed(b"".join(b"then %d\r\n" % n for n in range(20_000)))
        parse_all(view)
    assert bulk._chrome.view_rows() == full._chrome.view_rows()
    assert bulk._chrome.view_offset() == full._chrome.view_offset()


# Tokens for random output: plain text and CR LF most of all, so that runs form, and now and
# then anything that moves the cursor, changes a mode or arrives cut in half.
_SGR = [b"\x1b[0m", b"\x1b[m", b"\x1b[1m", b"\x1b[31m", b"\x1b[41m", b"\x1b[49m", b"\x1b[7m"]
_SGR += [b"\x1b[38;5;208m", b"\x1b[48;5;17m", b"\x1b[0;1;32m", b"\x1b[38;2;1;2;3m", b"\x1b[4m"]
_OTHER = [b"\r", b"\n", b"\t", b"\x1b[K", b"\x1b[2J", b"\x1b[H", b"\x1b[5;10H", b"\x1b[24;1H"]
_OTHER += [b"\x1b[T", b"\x1b[S", b"\x1bM", b"\x1b[L", b"\x1b[M", b"\x1b[@", b"\x1b[P", b"\x1b[5b"]
_OTHER += [b"\x1b[3;20r", b"\x1b[r", b"\x1b[?1049h", b"\x1b[?1049l", b"\x1b[?7l", b"\x1b[?7h"]
_OTHER += [b"\x1b[4h", b"\x1b[4l", b"\x1b[?6h", b"\x1b[?6l", b"\x1b[20h", b"\x1b[20l", b"\x1bc"]
_OTHER += [b"\x1b(0", b"\x1b(B", b"\x0e", b"\x0f", b"\x1b[3J", b"\x1b#8", b"\x1b#6", b"\x1b["]
_OTHER += ["\u0301 é 中 \u0600".encode(), b"#\xef\xb8\x8f", b"\xe2\x83\xa3", b"\xc3"]


def _text(rng: random.Random) -> bytes:
    size = rng.choice([0, 1, 1, 3, 10, 40, 79, 80, 81, 120, 160, 161, 250])
    text = "".join(rng.choice("abcdefghij     XYZ#0123456789-._") for _ in range(size))
    return (text + "   " * (rng.random() < 0.2)).encode()


def _output(rng: random.Random, size: int) -> bytes:
    parts, total = [], 0
    odd = 0.05 + 0.1 * rng.random()
    while total < size:
        draw = rng.random()
        if draw < odd:
            part = rng.choice(_OTHER)
        elif draw < 0.25:
            part = rng.choice(_SGR)
        elif draw < 0.35:
            part = (_text(rng) + b"\r\n") * rng.choice([1, 5, 50, 300])
        elif draw < 0.6:
            part = _text(rng)
        else:
            part = b"\r\n"
        parts.append(part)
        total += len(part)
    return b"".join(parts)


def test_random_output_lands_as_a_full_parse_would() -> None:
    laid = 0
    for seed in range(40):
        rng = random.Random(seed)
        data = _output(rng, 20_000)
        chunks, at = [], 0
        while at < len(data):
            size = rng.choice([1, 7, 100, 2048, 5000, 30_000])
            chunks.append(data[at : at + size])
            at += size
        laid += assert_same(chunks + AFTERWARDS, scrollback=rng.choice([5, 50, 500]))
    assert laid > 100_000  # the bulk path did run


class PaneApp(App):
    def __init__(self, bulk: bool) -> None:
        super().__init__()
        self.bulk = bulk

    def compose(self) -> ComposeResult:
        view = TerminalView(lambda data: None, id="term")
        if not self.bulk:
            view._line_runs = None
        yield view


async def test_the_pane_shows_a_flood_as_a_full_parse_does() -> None:
    # In a running app, at the pace the pane takes it (well within its backlog, so nothing
    # is dropped): the screen and the scrollback a technician pages through are the same.
    flood = b"".join(b"%06d \x1b[32mok\x1b[0m build step\r\n" % n for n in range(20_000))
    flood = b"$ make\r\n" + b"y\r\n" * 30_000 + flood + b"$ "
    screens = []
    for bulk in (True, False):
        app = PaneApp(bulk)
        async with app.run_test(size=(80, 24)) as pilot:
            view = app.query_one(TerminalView)
            for chunk in chunked(flood, 32 * 1024):
                view.feed(chunk)
                while view.pending_bytes:
                    await pilot.pause(0.01)
            assert view.dropped_bytes == 0
            await pilot.press("shift+pageup", "shift+pageup")
            await pilot.pause(0.05)
            screens.append(view.screen_lines())
    assert screens[0] == screens[1]
    assert screens[0][0].endswith("ok build step")
