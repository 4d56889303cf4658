"""Functional tests of the terminal pane: what the remote sends is shown, never passed through."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator

from rich.color import Color
from textual.app import App, ComposeResult
from textual.events import Paste
from textual.pilot import Pilot
from textual.widget import Widget

from tui.widgets.terminal import LEAVE_KEY, TerminalView, encode_key

# C0 (but not the spaces we pad with), DEL and C1: none may reach a rendered segment.
RAW_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class Elsewhere(Widget, can_focus=True):
    """Somewhere for focus to go, were the pane to let it; takes no room from the pane."""

    DEFAULT_CSS = "Elsewhere { overlay: screen; width: 1; height: 1; }"


class TerminalApp(App, inherit_bindings=False):
    """A bare app around one pane: no bindings of its own, so every key is the pane's to take."""

    ENABLE_COMMAND_PALETTE = False

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[bytes] = []
        self.backlog_when_sent: list[int] = []
        self.resizes: list[tuple[int, int]] = []
        self.browsing: list[str | None] = []

    def compose(self) -> ComposeResult:
        yield TerminalView(self.send, id="term")
        yield Elsewhere()

    def on_mount(self) -> None:
        self.query_one(TerminalView).focus()

    def send(self, data: bytes) -> None:
        self.sent.append(data)
        self.backlog_when_sent.append(self.query_one(TerminalView).pending_bytes)

    def on_terminal_view_resized(self, message: TerminalView.Resized) -> None:
        self.resizes.append((message.cols, message.rows))

    def on_terminal_view_browsing(self, message: TerminalView.Browsing) -> None:
        self.browsing.append(message.text)


@contextlib.asynccontextmanager
async def pane() -> AsyncIterator[tuple[TerminalApp, Pilot, TerminalView]]:
    """A TerminalApp at 80x24, running: the app, its pilot and its pane."""
    app = TerminalApp()
    async with app.run_test(size=(80, 24)) as pilot:
        yield app, pilot, app.query_one(TerminalView)


async def drain(pilot, view: TerminalView) -> None:
    """Let the pane's frame tick parse everything queued, then paint."""
    async with asyncio.timeout(60):
        while view.pending_bytes:
            await pilot.pause(0.02)
    await pilot.pause(0.05)


def rendered_segments(view: TerminalView):
    for y in range(view.size_in_cells[1]):
        yield from view.render_line(y)


async def test_lines_are_shown() -> None:
    async with pane() as (_app, pilot, view):
        view.feed(b"hello\r\nworld")
        await drain(pilot, view)
        lines = view.screen_lines()
        assert lines[:3] == ["hello", "world", ""]
        assert len(lines) == 24
        assert view.size_in_cells == (80, 24)


async def test_colour_is_a_style_not_an_escape() -> None:
    async with pane() as (_app, pilot, view):
        view.feed(b"\x1b[31mred\x1b[0m \x1b[38;5;202mx\x1b[0m \x1b[1;4;38;2;1;2;3mbold\x1b[0m")
        await drain(pilot, view)
        segments = list(view.render_line(0))
        red = next(segment for segment in segments if segment.text.startswith("red"))
        assert red.text == "red"
        assert red.style.color == Color.parse("red")
        indexed = next(segment for segment in segments if segment.text == "x")
        assert indexed.style.color == Color.from_ansi(202)
        truecolour = next(segment for segment in segments if segment.text == "bold")
        assert truecolour.style.color.triplet == (1, 2, 3)
        assert truecolour.style.bold and truecolour.style.underline
        assert all(not RAW_CONTROL.search(segment.text) for segment in segments)


async def test_alternate_screen_restores_the_primary() -> None:
    async with pane() as (_app, pilot, view):
        view.feed(b"$ prompt\r\n$ ")
        await drain(pilot, view)
        before = view.screen_lines()
        view.feed(b"\x1b[?1049h\x1b[H\x1b[2Jvim lives here\x1b[10;5Hmore")
        await drain(pilot, view)
        assert view.screen_lines()[0] == "vim lives here"
        assert "$ prompt" not in view.screen_lines()
        view.feed(b"\x1b[?1049l")
        await drain(pilot, view)
        assert view.screen_lines() == before
        assert "vim lives here" not in "".join(segment.text for segment in rendered_segments(view))

        view.feed(b"\x1b[?1049h\x1b[Hless")  # the next program starts on a blank page
        await drain(pilot, view)
        assert [line for line in view.screen_lines() if line] == ["less"]


async def test_hostile_output_only_becomes_text() -> None:
    async with pane() as (app, pilot, view):
        title = app.title
        view.feed(b"before\r\n")
        view.feed(b"\x1b]52;c;aGVsbG8=\x07")  # clipboard write
        view.feed(b"\x1b]52;c;?\x07")  # clipboard read
        view.feed(b"\x1b]0;pwned\x07")  # window title
        view.feed(b"\x1b[21t")  # title report: would type the title into the remote shell
        view.feed(b"\xc2\x9b31m\xc2\x81\xc2\x9d0;c1title\xc2\x9c")  # C1 as UTF-8
        view.feed(b"\x9b\x9d\x90\x85raw-c1")  # C1 as raw bytes (invalid UTF-8)
        view.feed(b"\x1b[2J\x1b[Hafter \xe2\x80\xaeevil\x1b[8;200;300t")  # clear, RLO, resize
        await drain(pilot, view)

        assert "after" in view.screen_lines()[0]
        for segment in rendered_segments(view):
            assert not RAW_CONTROL.search(segment.text), segment
            assert "\u202e" not in segment.text
            assert segment.control is None
        assert app.title == title
        assert app.clipboard == ""
        assert not any(RAW_CONTROL.search(line) for line in view.screen_lines())
        assert view.remote_title in ("pwned", "c1title")
        assert app.sent == []  # no reply echoes host-chosen text back
        assert view.size_in_cells == (80, 24)  # the host cannot resize the pane


async def test_device_queries_are_answered() -> None:
    async with pane() as (app, pilot, view):
        view.feed(b"abc\x1b[6n\x1b[c")
        await drain(pilot, view)
        assert app.sent[0] == b"\x1b[1;4R"
        # A VT220 with colour: no 132 columns (1), printer (2) or user-defined keys (8) that
        # would lead programs down paths the pane cannot follow.
        assert app.sent[1] == b"\x1b[?62;22c"


async def test_line_drawing_and_tab_stops_as_xterm_and_tmux() -> None:
    async with pane() as (_app, pilot, view):
        # DEC special graphics: control pictures and the solid block, not a full block.
        view.feed(b"\x1b(00bcdehiqx\x1b(B\r\n")
        # CSI 1 g and CSI 2 g clear no tab stop (xterm and tmux ignore them); CSI 0 g does.
        view.feed(b"\x1b[9G\x1b[1g\x1b[2g\r\ta|\x1b[17G\x1b[0g\r\t\tb|")
        await drain(pilot, view)
        assert view.screen_lines()[:2] == ["▮␉␌␍␊␤␋─│", "        a|" + " " * 14 + "b|"]


async def test_an_accent_joins_its_letter_even_right_after_a_reset() -> None:
    # A decomposed é takes one column, as in xterm, so the cursor is where the remote shell
    # thinks it is; a reset (RIS) in the same burst of output must not change that.
    async with pane() as (app, pilot, view):
        view.feed(b"\x1bcabc e\xcc\x81x\x1b[6n")
        await drain(pilot, view)
        assert view.screen_lines()[0] == "abc e\u0301x"
        assert app.sent == [b"\x1b[1;7R"]


async def test_keys_reach_the_remote_as_xterm_sends_them() -> None:
    async with pane() as (app, pilot, view):
        await pilot.press("a", "enter", "ctrl+c", "ctrl+p", "ctrl+q", "tab", "up", "ctrl+d")
        await pilot.press("ctrl+b", "ctrl+a", "backspace", "escape", "alt+x", "f1", "f12")
        await pilot.press("home", "pagedown", "delete", "ctrl+left", "shift+tab")
        assert app.sent == [
            b"a",
            b"\r",
            b"\x03",
            b"\x10",
            b"\x11",
            b"\t",
            b"\x1b[A",
            b"\x04",
            b"\x02",
            b"\x01",
            b"\x7f",
            b"\x1b",
            b"\x1bx",
            b"\x1bOP",
            b"\x1b[24~",
            b"\x1b[H",
            b"\x1b[6~",
            b"\x1b[3~",
            b"\x1b[1;5D",
            b"\x1b[Z",
        ]
        assert app.focused is view

        app.sent.clear()
        view.feed(b"\x1b[?1h")  # DECCKM: application cursor keys
        await drain(pilot, view)
        await pilot.press("up", "end")
        assert app.sent == [b"\x1bOA", b"\x1bOF"]

        # The pane's own leave key is the screen's binding (none here): the widget sends it.
        app.sent.clear()
        await pilot.press(LEAVE_KEY, "ctrl+h", "backspace")
        assert app.sent == [b"\x1d", b"\x08", b"\x7f"]


def test_key_encoding_table() -> None:
    assert encode_key("ctrl+right_square_bracket", None) == "\x1d"
    assert encode_key("ctrl+@", None) == "\x00"
    assert encode_key("shift+up", None) == "\x1b[1;2A"
    assert encode_key("ctrl+alt+f5", None) == "\x1b[15;7~"
    assert encode_key("f13", None) == "\x1b[1;2P"
    assert encode_key("alt+enter", None) == "\x1b\r"
    assert encode_key("alt+shift+a", "A") == "\x1bA"
    assert encode_key("ü", "ü") == "ü"
    assert encode_key("super+c", None) is None


async def test_paste_is_bracketed_when_asked() -> None:
    async with pane() as (app, pilot, view):
        view.post_message(Paste("ls\nrm x"))
        await pilot.pause()
        assert app.sent == [b"ls\rrm x"]

        app.sent.clear()
        view.feed(b"\x1b[?2004h")
        await drain(pilot, view)
        view.post_message(Paste("a\n\x1b[201~b"))
        await pilot.pause()
        assert app.sent == [b"\x1b[200~a\rb\x1b[201~"]


async def test_a_flood_neither_blocks_keys_nor_grows_memory() -> None:
    async with pane() as (app, pilot, view):
        line = b"%08d the quick brown fox jumps over the lazy dog, again and again\r\n"
        chunk_size = 64 * 1024
        total = 20 * 1024 * 1024
        block = b"".join(line % n for n in range(chunk_size // len(line) + 1))[:chunk_size]
        fed = 0
        pressed_during_flood = False
        while fed < total:
            view.feed(block)
            fed += len(block)
            assert view.pending_bytes <= view.max_pending_bytes
            if fed >= total // 2 and not pressed_during_flood:
                assert view.pending_bytes > 0
                await pilot.press("x")
                assert app.sent == [b"x"]
                assert app.backlog_when_sent[0] > 0  # sent ahead of output still to be parsed
                pressed_during_flood = True
            await asyncio.sleep(0)
        view.feed(b"\r\n\x1b[0mTHE END\r\n$ ")
        assert view.pending_bytes <= view.max_pending_bytes
        assert view.dropped_bytes > 0

        await drain(pilot, view)
        lines = [line for line in view.screen_lines() if line]
        assert lines[-2:] == ["THE END", "$"]
        # What is painted caught up too (a flood is painted less often while it lasts).
        painted = ["".join(s.text for s in view.render_line(y)).rstrip() for y in range(24)]
        assert [line for line in painted if line][-2:] == ["THE END", "$"]
        assert app.focused is view


async def test_a_flood_in_small_pieces_is_parsed_in_big_turns_and_its_end_shown() -> None:
    # The SSH client hands a flood (`find /`) over some 16 KiB at a time. Parsed, and painted,
    # a piece at a time, every turn paid its fixed cost (the page's rows moved to history, the
    # page rebuilt, a repaint) hundreds of times a second; a flood's turns now gather pieces.
    async with pane() as (_app, pilot, view):
        turns = 0
        parse = view._parse_pending

        def counted() -> int:
            nonlocal turns
            turns += 1
            return parse()

        view._parse_pending = counted
        piece = b"".join(b"/usr/share/doc/package-%05d/changelog.Debian.gz\r\n" % n
                         for n in range(320))  # 16 KiB
        for _ in range(64):  # a piece a millisecond or so, as a flood arrives
            view.feed(piece)
            await asyncio.sleep(0.001)
        view.feed(b"$ ")
        await drain(pilot, view)
        assert turns <= 40, f"{turns} turns for 64 pieces"
        painted = ["".join(s.text for s in view.render_line(y)).rstrip() for y in range(24)]
        assert painted[-2:] == ["/usr/share/doc/package-00319/changelog.Debian.gz", "$"]


async def test_ctrl_c_stops_a_yes_flood() -> None:
    # `yes` at full speed: ctrl+c goes out at once, memory stays bounded, and once the remote
    # stops, the screen shows the end of the output and the prompt.
    async with pane() as (app, pilot, view):
        view.feed(b"$ yes\r\n")
        block = b"y\r\n" * 20_000
        for _ in range(150):  # 9 MB
            view.feed(block)
            assert view.pending_bytes <= view.max_pending_bytes
            await asyncio.sleep(0)
        await pilot.press("ctrl+c")
        assert app.sent == [b"\x03"]
        view.feed(b"y\r\ny^C\r\n$ ")
        await drain(pilot, view)
        assert view.screen_lines()[-3:] == ["y", "y^C", "$"]
        assert view.screen_lines()[:21] == ["y"] * 21


async def test_resize_posts_the_new_size() -> None:
    async with pane() as (app, pilot, view):
        await pilot.pause()
        assert app.resizes == [(80, 24)]
        await pilot.resize_terminal(100, 30)
        await pilot.pause()
        assert app.resizes[-1] == (100, 30)
        assert view.size_in_cells == (100, 30)
        view.feed(b"x" * 99 + b"yz")
        await drain(pilot, view)
        assert view.screen_lines()[:2] == ["x" * 99 + "y", "z"]

        view.feed(b"".join(b"\r\nline %d" % n for n in range(40)) + b"\r\n$ ")
        await drain(pilot, view)
        await pilot.resize_terminal(100, 10)  # the prompt at the bottom must survive
        await pilot.pause()
        assert app.resizes[-1] == (100, 10)
        assert view.screen_lines()[-2:] == ["line 39", "$"]


async def test_scrollback_can_be_viewed() -> None:
    async with pane() as (app, pilot, view):
        view.feed(b"".join(b"line %d\r\n" % n for n in range(100)))
        await drain(pilot, view)
        assert view.screen_lines()[0] == "line 77"
        await pilot.press("shift+pageup")
        await pilot.pause()
        assert view.screen_lines()[0] == "line 54"
        assert view.browsing
        assert "".join(s.text for s in view.render_line(0)).endswith("[23/77]")
        await pilot.press("q")  # back to the live screen; the key stays in the console
        await pilot.pause()
        assert view.screen_lines()[0] == "line 77"
        assert not view.browsing
        assert not "".join(s.text for s in view.render_line(0)).endswith("]")
        await pilot.press("x")
        assert app.sent == [b"x"]


async def test_cursor_is_drawn_only_with_focus() -> None:
    async with pane() as (app, pilot, view):
        view.feed(b"ab")
        await drain(pilot, view)
        reversed_cells = [s.text for s in view.render_line(0) if s.style and s.style.reverse]
        assert reversed_cells == [" "]
        app.query_one(Elsewhere).focus()
        await pilot.pause()
        assert not [s for s in view.render_line(0) if s.style and s.style.reverse]


def mouse(kind, view: TerminalView, x: int, y: int, button: int = 1, **modifiers):
    """A Textual mouse event at a cell of the pane, as the driver would post it."""
    flags = {name: modifiers.get(name, False) for name in ("shift", "meta", "ctrl")}
    return kind(view, x, y, 0, 0, button, flags["shift"], flags["meta"], flags["ctrl"],
                screen_x=x, screen_y=y)


async def mouse_reports(pilot, view: TerminalView, app: TerminalApp, modes: bytes,
                        *events_) -> list[bytes]:
    view.feed(modes)
    await drain(pilot, view)
    app.sent.clear()
    for event in events_:
        view.post_message(event)
        await pilot.pause()
    return list(app.sent)


async def test_the_mouse_goes_to_the_remote_in_the_mode_it_asked_for() -> None:
    from textual.events import MouseDown, MouseMove, MouseScrollDown, MouseScrollUp, MouseUp

    async with pane() as (app, pilot, view):
        def click(**modifiers):
            return [mouse(MouseDown, view, 5, 3, **modifiers),
                    mouse(MouseUp, view, 5, 3, **modifiers)]

        # Not asked for: nothing goes to the remote.
        assert await mouse_reports(pilot, view, app, b"", *click()) == []
        # X10 (mode 9): presses only, no modifiers, three bytes of 32 + value.
        assert await mouse_reports(pilot, view, app, b"\x1b[?9h", *click(meta=True)) == [
            b"\x1b[M\x20\x26\x24"]
        # Normal tracking (1000), legacy encoding: the release names no button.
        assert await mouse_reports(pilot, view, app, b"\x1b[?9l\x1b[?1000h", *click()) == [
            b"\x1b[M\x20\x26\x24", b"\x1b[M\x23\x26\x24"]
        # SGR encoding (1006): press M, release m, modifiers in the button value.
        assert await mouse_reports(pilot, view, app, b"\x1b[?1006h", *click(ctrl=True)) == [
            b"\x1b[<16;6;4M", b"\x1b[<16;6;4m"]
        # Normal tracking reports no motion; button-event (1002) reports drags only.
        move = mouse(MouseMove, view, 7, 4, button=0)
        drag = mouse(MouseMove, view, 8, 4, button=1)
        assert await mouse_reports(pilot, view, app, b"", move) == []
        assert await mouse_reports(pilot, view, app, b"\x1b[?1002h", move,
                                   mouse(MouseDown, view, 7, 4), drag,
                                   mouse(MouseUp, view, 8, 4)) == [
            b"\x1b[<0;8;5M", b"\x1b[<32;9;5M", b"\x1b[<0;9;5m"]
        # Any-event (1003): every motion, "no button" being 3.
        assert await mouse_reports(pilot, view, app, b"\x1b[?1003h", move) == [
            b"\x1b[<35;8;5M"]
        # The wheel is buttons 64 and 65; urxvt encoding (1015) without SGR.
        assert await mouse_reports(pilot, view, app, b"", mouse(MouseScrollUp, view, 1, 1, 0),
                                   mouse(MouseScrollDown, view, 1, 1, 0)) == [
            b"\x1b[<64;2;2M", b"\x1b[<65;2;2M"]
        assert await mouse_reports(pilot, view, app, b"\x1b[?1006l\x1b[?1015h",
                                   *click()) == [b"\x1b[32;6;4M", b"\x1b[35;6;4M"]
        # Shift keeps the mouse the technician's own (to select and copy), as in xterm.
        assert await mouse_reports(pilot, view, app, b"", *click(shift=True)) == []


async def test_the_wheel_scrolls_history_when_the_remote_does_not_want_it() -> None:
    from textual.events import MouseScrollDown, MouseScrollUp

    async with pane() as (app, pilot, view):
        view.feed(b"".join(b"line %d\r\n" % n for n in range(100)))
        await drain(pilot, view)
        view.post_message(mouse(MouseScrollUp, view, 1, 1, 0))
        await pilot.pause()
        assert view.screen_lines()[0] == "line 74"
        view.post_message(mouse(MouseScrollDown, view, 1, 1, 0))
        await pilot.pause()
        assert view.screen_lines()[0] == "line 77"
        assert app.sent == []
        # Wheel-as-arrows (1007) on the alternate screen (less, man): cursor keys.
        view.feed(b"\x1b[?1049h\x1b[?1007h")
        await drain(pilot, view)
        view.post_message(mouse(MouseScrollUp, view, 1, 1, 0))
        await pilot.pause()
        assert app.sent == [b"\x1b[A"]


async def test_history_can_be_searched_and_copied_to_the_technicians_clipboard() -> None:
    from textual.events import MouseDown, MouseMove, MouseUp

    async with pane() as (app, pilot, view):
        browsing = app.browsing
        lines = [b"line %d" % n + (b" needle" if n in (12, 42) else b"") for n in range(100)]
        view.feed(b"\r\n".join(lines) + b"\r\n" + b"w" * 100 + b"\r\n$ ")
        await drain(pilot, view)
        await pilot.press("shift+pageup", "slash", *"needle", "enter")
        await pilot.pause()
        assert any(line == "line 42 needle" for line in view.screen_lines())
        row = view.screen_lines().index("line 42 needle")
        found = [s for s in view.render_line(row) if s.style and s.style.bgcolor
                 and s.style.bgcolor.name == "yellow"]
        assert "".join(s.text for s in found) == "needle"
        await pilot.press("n")  # the one before
        await pilot.pause()
        assert "line 12 needle" in view.screen_lines()
        await pilot.press("v", "dollar_sign", "y")
        await pilot.pause()
        assert app.clipboard == "needle"
        assert not view.browsing and app.sent == []
        assert browsing[-1] is None and any(text and "search older" in text
                                            for text in browsing)
        await pilot.press("shift+pageup", "slash", *"haystack", "enter")
        await pilot.pause()
        assert "not found: haystack" in browsing[-1]
        await pilot.press("escape")

        # With the mouse, on the live screen: a wrapped line is copied as one line.
        bottom = view.screen_lines().index("w" * 80)
        for event in (mouse(MouseDown, view, 0, bottom), mouse(MouseMove, view, 19, bottom + 1),
                      mouse(MouseUp, view, 19, bottom + 1)):
            view.post_message(event)
            await pilot.pause()
        assert app.clipboard == "w" * 100
        assert app.sent == []
