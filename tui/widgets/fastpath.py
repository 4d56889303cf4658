"""Runs of plain output lines laid out in bulk, ending exactly as bittty's own parse would.

Most floods a technician meets (`yes`, `cat` of a log, `ls -l`, `ls --color`, a build) are lines
of printable text, perhaps coloured with SGR, each ended by CR LF, scrolling a full-width
primary screen. bittty spends a dozen calls on every line (write, wrap, scroll, history); here a
whole run of them is laid out at once: the rows that scroll off go to history, the last ones to
the page.

It is exact, not an approximation. It runs only from a state in which those bytes can do
nothing else: the parser between sequences, the cursor at the left of a fresh bottom row, no
margins, modes, charsets or printer that change where text lands. SGR sequences go through
bittty's own handler. The last line that carries text is always left to bittty, so what it
remembers per glyph (grapheme clusters, REP) ends as a full parse leaves it.
tests/tui/test_fastpath.py compares every part of the end state with a full parse. Because it
reaches into bittty's pages and history, it only runs on a bittty release it was checked
against (VERIFIED_BITTTY); on any other it stays off and bittty parses everything.
"""

from __future__ import annotations

import gc
import re
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from itertools import accumulate, chain, groupby, islice, repeat, starmap
from operator import add, attrgetter, floordiv

from bittty import Board
from bittty.constants import LINE_SINGLE
from bittty.operations import Operation
from bittty.parser.csi import parse_csi_operation
from bittty.style import Style
from bittty.terminals.scrollback import MemoryScrollback, ScrollbackLine, rows_of
from bittty.video import Line

VERIFIED_BITTTY = ("0.3.0",)
"""bittty releases whose internals this module was checked against (tests/tui/test_fastpath.py)."""


def _installed_bittty() -> str | None:
    try:
        return version("bittty")
    except PackageNotFoundError:
        return None


AVAILABLE = _installed_bittty() in VERIFIED_BITTTY

# Complete lines of printable ASCII and SGR sequences, each ended by CR LF. Possessive, so an
# unfinished last line is scanned once rather than backtracked over.
_LINE = rb"(?:[\x20-\x7e]++|\x1b\[[0-9;]*+m)*+\r\n"
LINES = re.compile(rb"(?:" + _LINE + rb")++")
ONE_LINE = re.compile(_LINE)
_SGR = re.compile(rb"(\x1b\[[0-9;]*m)")
_UNSTYLED = Style()
_STYLES = attrgetter("styles")

# A row laid out: its characters, their style (one Style for the whole row, or one per
# character), and whether its line goes on in the next row (an automatic wrap).
Row = tuple[str, Style | tuple[Style, ...], bool]
# A run of one line laid out whole, before it is cut into rows: its characters, their style
# (one Style, or one per character), and how many times in a row it came (`yes`, blank
# lines). Only the lines that end on the page are cut into rows; the rest go to history as
# lines, which is what history keeps of them anyway.
Laid = tuple[str, Style | tuple[Style, ...], int]


def _to_evict(held: deque, over: int, guess: int) -> tuple[int, int]:
    """How many lines from the front of `held` pay at least `over` (each costs its cells plus
    one), and what they pay; counted with C iterators in widening slices, since a flood
    evicts about as many lines as it adds."""
    evicted = paid = 0
    step = max(guess, 64)
    while evicted < len(held):
        costs = list(accumulate(map(add, map(len, map(_STYLES, islice(held, evicted,
                                                                        evicted + step))),
                                    repeat(1)), initial=paid))
        enough = bisect_left(costs, over)
        if enough < len(costs):
            return evicted + enough, costs[enough]
        evicted, paid = evicted + len(costs) - 1, costs[-1]
        step *= 2
    return evicted, paid


class History(MemoryScrollback):
    """bittty's in-memory scrollback, able to take many complete lines at once, and to give
    its newest rows back to the screen (when the window grows or widens, as in tmux)."""

    def take_open(self) -> list[ScrollbackLine]:
        """The rows held of the line still arriving (its tail is on the screen), taken out."""
        rows = list(self._open)
        self.cells -= sum(len(row.styles) for row in rows)
        self._open.clear()
        self._open_width = 0
        self._joined = None
        return rows

    def pop_rows(self, count: int, columns: int) -> list[tuple[list, bool]]:
        """Up to `count` of the newest rows laid out at `columns`, oldest first, each with
        whether its line goes on in the next; taken out. A line cut keeps its head here,
        open, as if its tail were still on the screen."""
        taken: list[tuple[list, bool]] = []
        while count > 0 and self._open:
            row = self._open.pop()
            self.cells -= len(row.styles)
            self._open_width -= row.width
            self._joined = None
            taken.append((row.cells(0, len(row)), True))
            count -= 1
        while count > 0 and self._lines:
            line = self._lines.pop()
            self.cells -= len(line.styles) + 1
            for rows in self._rows.values():
                rows.pop()
            scale = line.scale
            laid = []
            for within in range(rows_of(line.width, columns)):
                start, stop = -(-within * columns // scale), (within + 1) * columns // scale
                cells = line.cells(start, stop)
                laid.append(cells + [(_UNSTYLED, " ")] * (stop - start - len(cells)))
            head, tail = laid[: max(0, len(laid) - count)], laid[max(0, len(laid) - count) :]
            for cells in head:
                self.append(ScrollbackLine.of(cells, attribute=line.attribute), True)
            flags = [True] * len(tail)
            flags[-1] = False
            taken.extend(reversed(list(zip(tail, flags, strict=True))))
            count -= len(tail)
        taken.reverse()
        return taken

    def extend(self, lines: Sequence[ScrollbackLine], cells: int,
               runs: list[tuple[ScrollbackLine, int]]) -> None:
        """Append complete lines, with the same end state as `append(line)` for each in turn;
        `cells` is their cost, each line's cells plus one (see MemoryScrollback); `runs` is
        `lines` as (line, times in a row)."""
        if not lines:
            return
        if self._open:  # the rows of a line still arriving: the first line completes it
            self.append(lines[0])
            cells -= len(lines[0].styles) + 1
            lines = lines[1:]
            runs = [(runs[0][0], runs[0][1] - 1), *runs[1:]] if runs[0][1] > 1 else runs[1:]
        # Evicting from the front once at the end keeps the same newest lines as evicting
        # after every append: the longest run of newest lines that fits the budget.
        held = self._lines
        held.extend(lines)
        self.cells += cells
        self._joined = None
        if self._rows:
            self._count_rows(lines, runs)
        evicted, over = 0, self.cells - self.max_cells
        if over > 0:
            evicted, paid = _to_evict(held, over, len(lines))
            over -= paid
            deque(starmap(held.popleft, repeat((), evicted)), maxlen=0)  # in C, no loop here
        self.cells, self.first = (
            self.max_cells + over if evicted else self.cells,
            self.first + evicted,
        )
        self._evict()  # drops the row counts of evicted lines


    def _count_rows(self, lines: Sequence[ScrollbackLine],
                    runs: list[tuple[ScrollbackLine, int]]) -> None:
        """Row counts per width kept, for lines just appended."""
        if len(runs) == len(lines):
            # Every line different (`find`, a log): counted in C. A line of single-width
            # cells (all the bulk path makes) is as wide as its cells, and rows_of(width,
            # columns) is max(1, (width + columns - 1) // columns).
            widths = list(map(len, map(_STYLES, lines)))
            for columns, rows in self._rows.items():
                steps = map(max, map(floordiv, map(add, widths, repeat(columns - 1)),
                                     repeat(columns)), repeat(1))
                rows.extend(islice(accumulate(steps, initial=rows[-1]), 1, None))
            return
        # Runs of one line (`yes`, blank lines): one range per run rather than a step per line.
        for columns, rows in self._rows.items():
            total = rows[-1]
            for line, count in runs:
                step = rows_of(line.width, columns)
                rows.extend(range(total + step, total + step * count + 1, step))
                total += step * count


# One styles tuple per (style, length) for rows in one style, shared by the history lines
# that have them: a scrollback of `ls -l` then costs one new object per line, not two, and the
# garbage collector's full passes (tens of ms on the console's heap) come half as often.
_uniform_styles: dict[tuple[int, int], tuple[Style, tuple[Style, ...]]] = {}


def _styles_of(style: Style, cells: int) -> tuple[Style, ...]:
    key = (id(style), cells)
    held = _uniform_styles.get(key)
    if held is None or held[0] is not style:
        if len(_uniform_styles) >= 1024:
            _uniform_styles.clear()
        held = _uniform_styles[key] = (
            style,
            (style,) * cells,
        )  # the style kept alive: ids stay true
    return held[1]


def _unstyled(style: Style) -> bool:
    """style == Style(), remembered for the last style asked about (a flood has one)."""
    global _last_style
    if style is not _last_style[0]:
        _last_style = (style, style == _UNSTYLED)
    return _last_style[1]


_last_style: tuple[Style | None, bool] = (None, False)


def _history_line(text: str, styles: Style | tuple[Style, ...], width: int) -> ScrollbackLine:
    """The history line bittty makes of a whole line that wraps at `width`: its rows joined,
    the last row's trailing blanks in the default style dropped (and nothing else)."""
    if len(text) > width:
        floor = max(len(text.rstrip(" ")), (rows_of(len(text), width) - 1) * width)
    else:
        floor = len(text.rstrip(" ")) if text[-1:] == " " else len(text)
    if type(styles) is Style:
        if floor < len(text) and _unstyled(styles):
            text = text[:floor]
        return ScrollbackLine(text, _styles_of(styles, len(text)))
    cut = len(text)
    while cut > floor and styles[cut - 1] == _UNSTYLED:
        cut -= 1
    return ScrollbackLine(text[:cut], styles[:cut])


def _history_lines(
    laid: Sequence[Laid], width: int
) -> tuple[list[ScrollbackLine], int, list[tuple[ScrollbackLine, int]]]:
    """History lines for runs of whole lines, their cost (each line's cells plus one), and
    their runs (line, times in a row). A run's lines are one shared object."""
    lines: list[ScrollbackLine] = []
    append = lines.append
    runs: list[tuple[ScrollbackLine, int]] = []
    run = runs.append
    cells = 0
    last_styles: object = None
    one_style = trim = False
    by_length: dict[int, tuple[Style, ...]] = {}
    for text, styles, repeats in laid:
        if styles is not last_styles:
            last_styles = styles
            one_style = type(styles) is Style
            trim = one_style and _unstyled(styles)
            by_length = {}
        if one_style and len(text) <= width:  # most lines: one row in one style, inline
            if trim and text[-1:] == " ":
                text = text.rstrip(" ")
            length = len(text)
            shared = by_length.get(length)
            if shared is None:
                shared = by_length[length] = _styles_of(styles, length)
            line = ScrollbackLine(text, shared)
        else:
            line = _history_line(text, styles, width)
            length = len(line.styles)
        run((line, repeats))
        if repeats == 1:
            append(line)
            cells += length + 1
        else:
            lines.extend([line] * repeats)
            cells += (length + 1) * repeats
    return lines, cells, runs


_EMPTY_LINE = ScrollbackLine("", ())


def _wrapped_history_line(text: str, styles: Style | tuple[Style, ...]) -> ScrollbackLine:
    """ScrollbackLine.of for a full row whose line goes on: nothing is trimmed."""
    return ScrollbackLine(text, _styles_of(styles, len(text)) if type(styles) is Style else styles)


def _rows(text: str, styles: Style | tuple[Style, ...], width: int) -> list[Row]:
    """A whole line cut into the rows it takes at `width`."""
    if len(text) <= width:
        return [(text, styles, False)]
    last = rows_of(len(text), width) - 1
    if type(styles) is Style:
        return [(text[n * width : (n + 1) * width], styles, n < last) for n in range(last + 1)]
    return [
        (text[n * width : (n + 1) * width], styles[n * width : (n + 1) * width], n < last)
        for n in range(last + 1)
    ]


def _carries_text(line: bytes) -> bool:
    return bool(_SGR.sub(b"", line)) if b"\x1b" in line else bool(line)


def _bulk_end(lines: list[bytes], limit: int) -> int:
    """How many of lines[:limit] to lay out: those before the last line that writes a
    character, which is left to bittty (it sets bittty's memory of the last glyph), or all of
    them when none writes one (then that memory is the same either way)."""
    at = min(limit, len(lines) - 1)
    while at >= 0 and not _carries_text(lines[at]):
        at -= 1
    return limit if at < 0 else at


class LineRuns:
    """Lays out runs of plain lines on one board, as bittty would, many lines at a time.

    `scrolled_off` is what bittty would tell the terminal when rows scroll off the top (the
    terminal's on_rows_scrolled_off); with a History it is bypassed for the new rows.
    """

    def __init__(
        self,
        board: Board,
        history: MemoryScrollback | None,
        scrolled_off: Callable[[tuple[Line, ...]], None],
    ) -> None:
        self._board = board
        self._history = history
        self._scrolled_off = scrolled_off
        self._sgr: dict[bytes, tuple[Callable[[Operation], None], Operation]] = {}

    # --- when it may run --- #

    def settled(self) -> bool:
        """Whether plain lines would only write text and scroll: no modes, margins or
        charsets in the way. The cursor may still be anywhere."""
        board = self._board
        blitter, modes, charset, printer = board.blitter, board.modes, board.charset, board.printer
        parser = board.parser
        page = blitter.current_page
        return (
            parser.mode is None
            and not parser.buffer
            and not parser.vt52
            and not printer.controller_mode
            and not printer.auto_print
            and not printer._byte_pending
            and printer._decoder.getstate()[0] == b""
            and not blitter.grapheme_clustering
            and not blitter.right_to_left
            and not blitter.status_active
            and not blitter.in_alt_screen
            and page is blitter.main_page
            and page is blitter.primary_page
            and page.width == blitter.width == board.width
            and page.height == blitter.rows == board.height
            and blitter.scroll_top == 0
            and blitter.scroll_bottom == page.height - 1
            and blitter.left_margin == 0
            and blitter.right_margin == page.width - 1
            and modes.auto_wrap
            and not modes.insert_mode
            and charset.single_shift is None
            and charset.charset_array[charset.current_charset] == "B"
            and blitter._clusters._prefix is None
            and board.style.current.bg is None
            and (self._history is None) != board.display.keeps_scrollback
        )

    def ready(self) -> bool:
        """Whether a run can start here: settled, and the cursor at the left of a fresh
        bottom row (as the CR LF that scrolled it leaves it)."""
        if not self.settled():
            return False
        board = self._board
        cursor, page = board.cursor, board.blitter.current_page
        bottom = page.height - 1
        if cursor.x != 0 or cursor.y != bottom or cursor.wrap_pending:
            return False
        row = page.grid[bottom]
        return (
            row.count(page._empty_cell) == page.width
            and not page.wrapped_lines[bottom]
            and page.line_attributes[bottom] == LINE_SINGLE
        )

    # --- laying out --- #

    def write(self, data: bytes) -> int:
        """Lay out the complete plain lines at the start of `data`, up to the last that carries
        text, which is left to bittty with everything after it. Returns the bytes used."""
        match = LINES.match(data)
        if match is None or not self.ready():
            return 0
        # The rows laid out here are garbage the moment they are committed; collecting while
        # they live would only promote them (and make full collections come sooner).
        collecting = gc.isenabled()
        gc.disable()
        try:
            return self._write(data[: match.end()])
        finally:
            if collecting:
                gc.enable()

    def _write(self, data: bytes) -> int:
        lines = data.split(b"\r\n")
        lines.pop()  # after the last CR LF
        style = self._board.style
        before = style.current
        end = _bulk_end(lines, len(lines))
        while end > 0:
            used = sum(map(len, lines[:end])) + 2 * end
            laid, done = self._layout(lines, end, data[:used])
            if done == end:
                break
            style.current = before  # a line it cannot lay out: stop short of it
            end = _bulk_end(lines, done)
        if end <= 0:
            style.current = before
            return 0
        self._commit(laid)
        return used

    def _layout(self, lines: list[bytes], end: int, data: bytes) -> tuple[list[Laid], int]:
        """The whole lines lines[:end] make, and how many of them that is, applying their
        SGRs (`data` is the bytes they are).

        Stops before a line that would scroll with a background colour set: bittty then
        fills the new row with that colour, which is left to it.
        """
        board = self._board
        if b"\x1b" not in data:
            # No SGR at all (`find`, `yes`, a log): one style, decoded and split in C.
            texts = data.decode("ascii").split("\r\n")
            texts.pop()
            style = board.style.current
            return [(text, style, len(list(run))) for text, run in groupby(texts)], end
        width = board.width
        laid: list[Laid] = []
        done = 0
        for line, run in groupby(lines[:end]):
            repeats = len(list(run))
            if b"\x1b" in line:
                for _ in range(repeats):
                    styled = self._layout_styled(line, width)
                    if styled is None:
                        return laid, done
                    laid.append(styled)
                    done += 1
                continue
            done += repeats
            # No background: a styled line would have stopped.
            laid.append((line.decode("ascii"), board.style.current, repeats))
        return laid, done

    def _layout_styled(self, line: bytes, width: int) -> Laid | None:
        style_of = self._board.style
        chars: list[str] = []
        styles: list[Style] = []
        for index, part in enumerate(_SGR.split(line)):
            if index % 2:
                self._apply_sgr(part)
            elif part:
                chars.extend(part.decode("ascii"))
                styles.extend([style_of.current] * len(part))
        # Each wrap and the closing CR LF scroll a new row in, blank only without a background.
        if style_of.current.bg is not None or any(
            styles[x].bg is not None for x in range(width, len(styles), width)
        ):
            return None
        return "".join(chars), tuple(styles), 1

    def _apply_sgr(self, raw: bytes) -> None:
        entry = self._sgr.get(raw)
        if entry is None:
            operation = parse_csi_operation(raw.decode("ascii"))
            entry = (self._board.registry[operation.name], operation)
            if len(self._sgr) < 4096:
                self._sgr[raw] = entry
        entry[0](entry[1])

    def _commit(self, laid: list[Laid]) -> None:
        """Scroll the rows of `laid` through the bottom of the page, as CR LF and wraps would
        one by one."""
        board = self._board
        page, cursor = board.blitter.current_page, board.cursor
        keep = page.height - 1  # rows above the cursor's, which stays a fresh blank row
        width = page.width
        # Only the newest lines end on the page: cut those into rows, from the newest back.
        laid = list(laid)
        first_shown, count = len(laid), 0
        while first_shown and count < keep:
            first_shown -= 1
            text, styles, repeats = laid[first_shown]
            each = rows_of(len(text), width)
            needed = -(-(keep - count) // each)
            if needed < repeats:  # the run's older lines go to history: split it
                laid[first_shown : first_shown + 1] = [
                    (text, styles, repeats - needed), (text, styles, needed)]
                first_shown += 1
                repeats = needed
            count += each * repeats
        rows = list(chain.from_iterable(
            _rows(text, styles, width) * repeats
            for text, styles, repeats in islice(laid, first_shown, None)))
        spill = max(0, count - keep)  # rows of the oldest of those that scroll off at once
        old_out = min(count, keep)
        if self._history is not None:
            if old_out:
                self._scrolled_off(tuple(page.line(y) for y in range(old_out)))
            self._to_history(laid[:first_shown], rows[:spill], width)
        empty = page._empty_cell
        shown = rows[spill:]
        if first_shown:  # and more rows than those went to history
            count += 1
        grid: list[list] = page.grid[old_out:keep]
        for index, (text, styles, _) in enumerate(shown):
            if type(styles) is Style:
                cells = [(styles, char) for char in text]
            else:
                cells = list(zip(styles, text, strict=True))
            cells.extend([empty] * (width - len(cells)))
            if index == 0 and count <= keep:
                # The first row is written into the bottom row itself, as bittty writes it:
                # the row keeps its identity, which bittty's memory of the last glyph holds.
                bottom = page.grid[keep]
                bottom[:] = cells
                cells = bottom
            grid.append(cells)
        grid.append([empty] * width)
        page.grid[:] = grid
        page.wrapped_lines[:] = [
            *page.wrapped_lines[old_out:keep],
            *(wrapped for _, _, wrapped in shown),
            False,
        ]
        page.line_attributes[:] = [
            *page.line_attributes[old_out:keep],
            *[LINE_SINGLE] * (len(shown) + 1),
        ]
        page._touch_page()
        cursor._wrap_pending = False  # as the last CR left it
        board.blitter.last_printed_char = None  # as the parser leaves it after CR LF

    def _to_history(self, laid: list[Laid], open_rows: list[Row], width: int) -> None:
        """Lines that scroll off whole, as the lines bittty's history would make of them row by
        row; then the first rows of a line going on on the screen, held open."""
        batch, cells, runs = _history_lines(laid, width)
        history = self._history
        if isinstance(history, History):
            history.extend(batch, cells, runs)
        else:
            for line in batch:
                history.append(line)
        for text, styles, _ in open_rows:
            self._history.append(_wrapped_history_line(text, styles), True)
