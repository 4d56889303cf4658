"""Browsing the pane's history: scroll, search, select and copy, as tmux's copy mode does.

While the technician browses, keys stay in the console: arrows or h/j/k/l move a cursor,
PageUp/PageDown and g/G move by pages and to either end, / and ? search older and newer
(n and N repeat), v or space starts a selection, y or Enter copies it, q or Escape goes back
to the live screen. The text is copied to the technician's own clipboard (OSC 52 through
their terminal); nothing the host sends can put anything there.

Positions are (row, column) over the whole of history then the screen, row 0 the oldest.
The pane supplies the rows (`Rows`); this module keeps the cursor, selection and search.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from bittty.video import CONTINUATION, Cell

MAX_QUERY = 200


@dataclass
class Rows:
    """The rows the pane can show: how many, each one's cells, and whether it wraps on."""

    count: int
    cells: Callable[[int], Sequence[Cell]]
    wraps: Callable[[int], bool]

    def text(self, row: int) -> str:
        return "".join(char for _, char in self.cells(row) if char != CONTINUATION)


def _column_of(cells: Sequence[Cell], index: int) -> int:
    """The column where the index-th character of a row's text begins."""
    seen = 0
    for column, (_, char) in enumerate(cells):
        if char == CONTINUATION:
            continue
        if seen == index:
            return column
        seen += len(char)
        if seen > index:
            return column
    return len(cells)


@dataclass
class CopyMode:
    """The cursor, selection and search of one browse through history."""

    cursor: tuple[int, int]
    anchor: tuple[int, int] | None = None
    query: str = ""
    prompt: str | None = None  # the search being typed, and its direction
    backwards: bool = True
    found: tuple[int, int, int] | None = None  # (row, first column, past the last)
    status: str = ""
    history: list[str] = field(default_factory=list)

    # --- selection --- #

    def selection(self) -> tuple[tuple[int, int], tuple[int, int]] | None:
        """The selected span, first position then last, both included."""
        if self.anchor is None:
            return None
        return min(self.anchor, self.cursor), max(self.anchor, self.cursor)

    def selected(self, row: int, column: int) -> bool:
        span = self.selection()
        return span is not None and span[0] <= (row, column) <= span[1]

    def selected_text(self, rows: Rows) -> str:
        span = self.selection()
        if span is None:
            return ""
        return text_between(rows, *span)

    # --- moving --- #

    def move(self, rows: Rows, down: int = 0, right: int = 0) -> None:
        row, column = self.cursor
        row = min(max(row + down, 0), rows.count - 1)
        width = len(rows.cells(row))
        column = min(max(column + right, 0), max(width - 1, 0))
        self.cursor = (row, column)

    def line_edge(self, rows: Rows, end: bool) -> None:
        row, _ = self.cursor
        if not end:
            self.cursor = (row, 0)
            return
        text = rows.cells(row)
        used = len(text)
        while used and text[used - 1][1] in (" ", CONTINUATION):
            used -= 1
        self.cursor = (row, max(used - 1, 0))

    # --- search --- #

    def search(self, rows: Rows, backwards: bool | None = None) -> bool:
        """Find the query from the cursor on (older rows when backwards); move there."""
        if not self.query:
            return False
        backwards = self.backwards if backwards is None else backwards
        needle = self.query
        fold = needle == needle.lower()  # smart case: all lower-case matches any case
        if fold:
            needle = needle.lower()
        start_row, start_column = self.cursor
        step = -1 if backwards else 1
        row = start_row
        for _ in range(rows.count):
            text = rows.text(row)
            haystack = text.lower() if fold else text
            cells = rows.cells(row)
            hits = []
            index = haystack.find(needle)
            while index >= 0:
                hits.append(index)
                index = haystack.find(needle, index + 1)
            if row == start_row:
                if backwards:
                    hits = [h for h in hits if _column_of(cells, h) < start_column]
                else:
                    hits = [h for h in hits if _column_of(cells, h) > start_column]
            if hits:
                index = hits[-1] if backwards else hits[0]
                first = _column_of(cells, index)
                last = _column_of(cells, index + len(needle))
                self.cursor = (row, first)
                self.found = (row, first, max(last, first + 1))
                self.status = ""
                return True
            row += step
            if not 0 <= row < rows.count:
                break
        self.found = None
        self.status = f"not found: {self.query}"
        return False


def text_between(rows: Rows, first: tuple[int, int], last: tuple[int, int]) -> str:
    """The text from `first` to `last` (both included): wrapped rows joined, each line's
    trailing blanks dropped, lines ended by newlines."""
    lines: list[str] = []
    current = ""
    for row in range(first[0], last[0] + 1):
        cells = rows.cells(row)
        start = first[1] if row == first[0] else 0
        stop = last[1] + 1 if row == last[0] else len(cells)
        current += "".join(char for _, char in cells[start:stop] if char != CONTINUATION)
        if row == last[0] or not rows.wraps(row):
            lines.append(current.rstrip(" "))
            current = ""
    return "\n".join(lines)
