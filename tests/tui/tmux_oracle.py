"""tmux as the reference emulator: what it shows for a byte stream, cell by cell, and the same
for the terminal pane, in one comparable form.

A screen is a list of rows; a row is a list of cells, one per column, each a (text, style)
pair, the second column of a wide character being ("", style). A style is a tuple of the
foreground, the background and the set attributes, colours given as "default", ("index", n)
or ("rgb", r, g, b).
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import time
from pathlib import Path

from tui.widgets.emulation import DEC_SPECIAL_GRAPHICS
from tui.widgets.widths import char_width

FIXTURES = Path(__file__).parent / "fixtures"
DEFAULT = ("default", "default", frozenset())

# capture-pane gives DEC special graphics as the ASCII letter between SO and SI; tmux draws
# them with tty-acs.c's glyphs, the table the pane uses (its glyphs are checked on their own
# in test_terminal_widget.py).
DEC_GRAPHICS = DEC_SPECIAL_GRAPHICS
# tmux's capture writes attributes past 9 as tens:units (grid.c), so overline is "5:3".
_ATTRIBUTES = {
    "1": "bold", "2": "dim", "3": "italic", "4": "underline", "5": "blink", "7": "reverse",
    "8": "hidden", "9": "strike", "4:2": "double-underline", "4:3": "curly-underline",
    "4:4": "dotted-underline", "4:5": "dashed-underline", "5:3": "overline",
}
_SGR = re.compile(r"\x1b\[([0-9;:]*)m")


def _colour(params: list[str], base: int) -> tuple[object, list[str]]:
    """A colour from SGR parameters starting at 38/48 style `base`; the rest left over."""
    code = int(params[0])
    if code == base:
        if params[1] == "5":
            return ("index", int(params[2])), params[3:]
        return ("rgb", *map(int, params[2:5])), params[5:]
    if code == base + 1:
        return "default", params[1:]
    offset = base - 8  # 30 for foreground, 40 for background
    if offset <= code <= offset + 7:
        return ("index", code - offset), params[1:]
    return ("index", code - offset - 60 + 8), params[1:]  # 90-97 / 100-107: bright


def _apply(style: tuple, parameters: str) -> tuple:
    fg, bg, attrs = style
    attrs = set(attrs)
    params = parameters.split(";") if parameters else ["0"]
    while params:
        param = params[0]
        code = int(param.split(":")[0]) if param.split(":")[0] else 0
        if param in _ATTRIBUTES and ":" in param:
            attrs.add(_ATTRIBUTES[param])
            params = params[1:]
        elif code == 0:
            fg, bg, attrs = "default", "default", set()
            params = params[1:]
        elif param in _ATTRIBUTES:
            attrs.add(_ATTRIBUTES[param])
            params = params[1:]
        elif 30 <= code <= 39 or 90 <= code <= 97:
            fg, params = _colour(params, 38)
        elif 40 <= code <= 49 or 100 <= code <= 107:
            bg, params = _colour(params, 48)
        else:
            raise ValueError(f"tmux wrote an SGR this parser does not know: {parameters!r}")
    return fg, bg, frozenset(attrs)


def parse_capture(lines: list[str], cols: int, rows: int) -> list[list[tuple]]:
    """`capture-pane -p -e -N` output as rows of cells."""
    screen = []
    style, graphics = DEFAULT, False  # both carry on from one line to the next
    for line in (lines + [""] * rows)[:rows]:
        row: list[tuple] = []
        index = 0
        while index < len(line):
            match = _SGR.match(line, index)
            if match:
                style = _apply(style, match.group(1))
                index = match.end()
                continue
            char = line[index]
            index += 1
            if char in "\x0e\x0f":
                graphics = char == "\x0e"
                continue
            if graphics:
                char = DEC_GRAPHICS.get(char, char)
            if char == "\u200d" and index < len(line):  # a joiner, and what it joined
                char += line[index]
                index += 1
            width = char_width(char[0])
            if (width == 0 or len(char) > 1) and row:
                head = next(n for n in range(len(row) - 1, -1, -1) if row[n][0] != "")
                row[head] = (row[head][0] + char, row[head][1])
                continue
            row.append((char, style))
            if width == 2:
                row.append(("", style))
        # Past the last cell written tmux captures nothing, not even a background colour
        # an erase left there: those cells are blank, in a style the capture cannot tell.
        row += [(" ", None)] * (cols - len(row))
        screen.append(row)
    return screen


def load(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def events(fixture: dict) -> list[tuple[str, object]]:
    return [(kind, base64.b64decode(value) if kind == "out" else tuple(value))
            for kind, value in fixture["events"]]


def tmux_screen(fixture_path: Path, work: Path) -> tuple[list[list[tuple]], tuple[int, int]]:
    """What tmux shows after the fixture's bytes (and resizes): rows of cells, and the cursor."""
    fixture = json.loads(fixture_path.read_text())
    cols, rows = fixture["cols"], fixture["rows"]
    state = work / f"state-{fixture_path.stem}"
    state.mkdir(parents=True, exist_ok=True)
    base = ["tmux", "-f", "/dev/null", "-S", str(work / f"{fixture_path.stem}.sock")]
    command = f"{sys.executable} {FIXTURES / 'replay.py'} {fixture_path} {state}"
    subprocess.run([*base, "new-session", "-d", "-s", "oracle", "-x", str(cols), "-y", str(rows),
                    command], check=True)
    try:
        handled = 0
        deadline = time.monotonic() + 60
        while not (state / "done").exists():
            if time.monotonic() > deadline:
                raise AssertionError("tmux never finished the fixture")
            pending = state / f"resize-{handled + 1}"
            if pending.exists():
                cols, rows = map(int, pending.read_text().split())
                subprocess.run([*base, "resize-window", "-t", "oracle", "-x", str(cols),
                                "-y", str(rows)], check=True)
                handled += 1
            time.sleep(0.02)
        captured = subprocess.run([*base, "capture-pane", "-p", "-e", "-N", "-t", "oracle"],
                                  capture_output=True, text=True, check=True).stdout
        where = subprocess.run([*base, "display", "-p", "-t", "oracle",
                                "#{cursor_x} #{cursor_y}"],
                               capture_output=True, text=True, check=True).stdout.split()
    finally:
        subprocess.run([*base, "kill-server"], capture_output=True)
    lines = captured.split("\n")
    return parse_capture(lines, cols, rows), (int(where[0]), int(where[1]))


def _colour_of(color) -> object:
    if color is None or color.mode == "default":
        return "default"
    if color.mode == "indexed":
        return ("index", color.value)
    return ("rgb", *color.value)


def pane_style(style) -> tuple:
    attrs = set()
    for name in ("bold", "dim", "italic", "blink", "reverse", "strike", "overline"):
        if getattr(style, name):
            attrs.add(name)
    if style.conceal:
        attrs.add("hidden")
    if style.underline:
        kind = style.underline_style or "single"
        attrs.add("underline" if kind == "single" else f"{kind}-underline")
    return _colour_of(style.fg), _colour_of(style.bg), frozenset(attrs)


def pane_cells(view) -> list[list[tuple]]:
    """The pane's screen in the same form as `parse_capture`."""
    page = view._chrome.port.page
    return [[(str(text), pane_style(style)) for style, text in page.grid[y]]
            for y in range(page.height)]


def differences(expected: list[list[tuple]], actual: list[list[tuple]], limit: int = 8) -> str:
    """A readable account of the rows that differ (text first, then styles)."""
    report = []
    for y, (want, got) in enumerate(zip(expected, actual, strict=False)):
        got = [(text, None) if style is None else cell
               for (_, style), cell in zip(want, got, strict=False) for text in [cell[0]]]
        if want == got:
            continue
        want_text = "".join(text for text, _ in want)
        got_text = "".join(text for text, _ in got)
        if want_text != got_text:
            report.append(f"row {y} text:\n  tmux {want_text!r}\n  pane {got_text!r}")
        else:
            x = next(x for x, (a, b) in enumerate(zip(want, got, strict=False)) if a != b)
            report.append(f"row {y} col {x} style ({want[x][0]!r}): tmux {want[x][1]} "
                          f"pane {got[x][1]}")
        if len(report) >= limit:
            break
    if len(expected) != len(actual):
        report.append(f"rows: tmux {len(expected)} pane {len(actual)}")
    return "\n".join(report)
