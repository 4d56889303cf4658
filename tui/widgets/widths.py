"""Character widths in the terminal pane as the remote host and tmux see them.

A remote shell places the cursor by the C library's wcwidth() of each code point, one at a
time; so does tmux (3.3a, the reference). bittty instead measures whole grapheme clusters
(or gives every combining mark a column), and line editing drifts away from where the shell
thinks the cursor is. Here each code point takes its wcwidth (-1, unknown, counts as 1, as in
tmux); a zero-width one (a combining mark, a variation selector, a zero-width space) joins
the cell before the cursor, and a character after a zero-width joiner joins that cell too,
so a ZWJ emoji sequence is one glyph. A cell holds at most 21 bytes of combined text, as in
tmux, so a flood of combining marks cannot grow one cell without bound.

`glyph_to_paint` turns a cell's text into something the technician's terminal and Textual
both measure at the cell's width.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import unicodedata
from functools import lru_cache

import wcwidth as wcwidth_package
from bittty import Board
from bittty.devices.blitter import Blitter
from bittty.video import CONTINUATION, WideHead
from bittty.width import WidthPolicy
from rich.cells import cell_len

ZWJ = "\u200d"
MAX_CELL_BYTES = 21  # tmux's UTF8_SIZE: what one cell can hold, combined characters included


def _libc_wcwidth():
    """The C library's wcwidth, if it knows Unicode in this process's locale."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        function = libc.wcwidth
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_wchar]
    function.restype = ctypes.c_int
    # A C library in a non-UTF-8 locale answers -1 for everything past ASCII.
    probes = {"é": 1, "日": 2, "\u0301": 0}
    if any(function(char) != width for char, width in probes.items()):
        return None
    return function


_WCWIDTH = _libc_wcwidth() or wcwidth_package.wcwidth


@lru_cache(maxsize=65536)
def char_width(char: str) -> int:
    """Columns one code point takes: 0, 1 or 2 (unknown ones take 1, as in tmux)."""
    if " " <= char < "\x7f":
        return 1
    width = _WCWIDTH(char)
    return 1 if width < 0 else min(width, 2)


class HostWidths(WidthPolicy):
    """bittty's width policy, by the C library's wcwidth (for characters of width 1 or 2)."""

    def width(self, char: str) -> int:
        return max(1, char_width(char))

    def grapheme_width(self, text: str) -> int:
        return min(2, sum(char_width(char) for char in text))


HOST_WIDTHS = HostWidths()


def use_host_widths(board: Board) -> None:
    """Make `board` place text by code-point widths with tmux's combining rules.

    Grapheme clustering (mode 2027, which tmux 3.3a does not have) stays off.
    """
    blitter = board.blitter
    write_plain = Blitter.write_text.__get__(blitter)
    joining = False  # a zero-width joiner was the last character written

    def combine(char: str) -> None:
        """Add a zero-width character to the cell left of the cursor, as tmux does."""
        cursor, page = board.cursor, blitter.current_page
        x, y = cursor.x - 1, cursor.y
        if x < 0 or not 0 <= y < page.height:
            return  # nothing to join at the left edge: dropped
        x = min(x, page.width - 1)
        row = page.grid[y]
        if row[x][1] == CONTINUATION and x > 0:
            x -= 1
        style, text = row[x]
        joined = text + char
        if len(joined.encode("utf-8", "surrogatepass")) > MAX_CELL_BYTES:
            return
        row[x] = (style, WideHead(joined) if isinstance(text, WideHead) else joined)
        page._touch_row(y)

    def write_text(text: str, ansi_code="") -> None:
        nonlocal joining
        if text.isascii():
            joining = False
            write_plain(text, ansi_code)
            return
        start = 0
        for index, char in enumerate(text):
            if char.isascii():
                joining = False
                continue
            if start < index:
                write_plain(text[start:index], ansi_code)
            start = index + 1
            if char == ZWJ:
                joining = True
            elif joining or char_width(char) == 0:
                if joining:
                    combine(ZWJ)
                joining = False
                combine(char)
            else:
                write_plain(char, ansi_code)
        if start < len(text):
            write_plain(text[start:], ansi_code)

    select_writer = blitter._select_writer
    set_clustering = blitter.set_grapheme_clustering

    def select() -> None:
        select_writer()
        if not blitter.right_to_left:
            blitter.write_text = write_text

    blitter._select_writer = select
    blitter.set_grapheme_clustering = lambda enabled: set_clustering(False)
    set_clustering(False)


_ALLOWED_FORMAT = frozenset("\u200b\u200c\u200d\u00ad")  # zero-width space, (non-)joiner, SHY
_VARIATION = {chr(cp) for cp in range(0xFE00, 0xFE10)}


def _is_unsafe_char(char: str) -> bool:
    # Controls, bidi and other format characters, lone surrogates: none belong on the
    # technician's screen (a bidi override could reorder what they read).
    category = unicodedata.category(char)
    return category in ("Cc", "Cs") or (category == "Cf" and char not in _ALLOWED_FORMAT)


@lru_cache(maxsize=8192)
def glyph_to_paint(text: str, width: int) -> str:
    """A cell's text made safe to print and exactly `width` columns as Textual measures it.

    The whole cluster when Textual agrees on its width; else without variation selectors
    (a text-style ✌ where tmux gives ✌️ one column); else its first character; else `?`s.
    """
    if text.isascii() and text.isprintable() and len(text) == width:
        return text
    cleaned = "".join(char for char in text if not _is_unsafe_char(char))
    for candidate in (cleaned, "".join(c for c in cleaned if c not in _VARIATION), cleaned[:1]):
        if candidate and cell_len(candidate) == width:
            return candidate
    return "?" * width


def sanitize_text(text: str) -> str:
    """Host-supplied text with controls and format characters removed."""
    return "".join(char for char in text if not _is_unsafe_char(char))
