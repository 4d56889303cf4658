"""Resizing the pane's screen as tmux does, so that narrowing then widening loses nothing.

tmux (3.3a, screen.c and grid.c), which the tests hold the pane to:
- Height first. Shrinking deletes rows below the cursor from the bottom, then pushes rows
  from the top into history; growing pulls rows back out of history, then adds blank rows.
- Then width. The main screen's lines, with history, are re-wrapped to the new width (rows
  joined along their wrap flags, long ones split), and the screen shows the last rows of
  the whole, so text cut by a narrow window comes back when it widens. The cursor keeps its
  place in its line (at the line's end if it was past the text). Tab stops are reset.
- The alternate screen is cut and extended without re-wrapping, history untouched; the main
  screen waits at its old size while a full-screen program runs and is resized as above
  when it ends.

A row's used cells (tmux's cellused) are those up to the last one written: cells erased or
never written are the page's shared empty cell.
"""

from __future__ import annotations

import dataclasses

from bittty import Board
from bittty.constants import LINE_SINGLE
from bittty.style import Style
from bittty.terminals.scrollback import ScrollbackLine
from bittty.video import CONTINUATION, Cell, Video

from tui.widgets.fastpath import History

_UNSTYLED_BLANK = (Style(), " ")
Row = tuple[list[Cell], bool]  # the cells, and whether the line goes on in the next row


def _used(row: list[Cell], empty: Cell) -> int:
    """Cells up to the last one written."""
    used = len(row)
    while used and row[used - 1] is empty:
        used -= 1
    return used


def _blank_padded(cells: list[Cell], width: int, empty: Cell) -> list[Cell]:
    cells = cells[:width]
    while cells and cells[-1] == _UNSTYLED_BLANK:
        cells.pop()
    return cells + [empty] * (width - len(cells))


def _to_history(history: History | None, rows: list[Row]) -> None:
    if history is None:
        return
    for cells, wrapped in rows:
        history.append(ScrollbackLine.of(cells, trim=not wrapped), wrapped)


def resize_height(rows: list[Row], cursor_y: int, height: int, width: int, empty: Cell,
                  history: History | None) -> tuple[list[Row], int]:
    """tmux's screen_resize_y: the rows at `height`, and where the cursor's row went."""
    old = len(rows)
    if height < old:
        needed = old - height
        eaten = min(max(0, old - 1 - cursor_y), needed)
        rows = rows[: old - eaten]
        needed -= eaten
        if needed:
            _to_history(history, rows[:needed])
            rows = rows[needed:]
            cursor_y -= needed
    elif height > old:
        needed = height - old
        pulled = [(_blank_padded(cells, width, empty), wrapped)
                  for cells, wrapped in (history.pop_rows(needed, width) if history else [])]
        rows = pulled + rows + [([empty] * width, False)] * (needed - len(pulled))
        cursor_y += len(pulled)
    return rows, max(0, cursor_y)


def _lines(rows: list[Row], empty: Cell, cursor: tuple[int, int]):
    """Logical lines (used cells joined along wrap flags) and the cursor's (line, offset);
    offset None means past the end of its line's text."""
    lines: list[list[Cell]] = []
    current: list[Cell] = []
    cursor_at: tuple[int, int | None] = (0, None)
    cursor_x, cursor_y = cursor
    for y, (cells, wrapped) in enumerate(rows):
        used = _used(cells, empty)
        if y == cursor_y:
            cursor_at = (len(lines), len(current) + cursor_x if cursor_x < used else None)
        current.extend(cells[:used])
        if not wrapped or y == len(rows) - 1:
            lines.append(current)
            current = []
    return lines, cursor_at


def _split(line: list[Cell], width: int, empty: Cell) -> list[tuple[list[Cell], int]]:
    """A logical line cut into rows of `width` (a wide glyph never split): (cells, used)."""
    rows: list[tuple[list[Cell], int]] = []
    row: list[Cell] = []
    for offset, cell in enumerate(line):
        if cell[1] == CONTINUATION and row:
            row.append(cell)
            continue
        size = 2 if offset + 1 < len(line) and line[offset + 1][1] == CONTINUATION else 1
        if len(row) + size > width and row:
            rows.append((row, len(row)))
            row = []
        row.append(cell)
    rows.append((row, len(row)))
    return [(cells + [empty] * (width - len(cells)), used) for cells, used in rows]


def reflow(rows: list[Row], cursor: tuple[int, int], width: int, empty: Cell
           ) -> tuple[list[Row], tuple[int, int]]:
    """tmux's grid_reflow of these rows to `width`, and the cursor's new (x, row)."""
    lines, (cursor_line, offset) = _lines(rows, empty, cursor)
    laid: list[Row] = []
    new_cursor = (0, 0)
    for index, line in enumerate(lines):
        pieces = _split(line, width, empty)
        if index == cursor_line:
            if offset is None:
                new_cursor = (pieces[-1][1], len(laid) + len(pieces) - 1)
            else:
                row = 0
                while row < len(pieces) - 1 and offset >= pieces[row][1]:
                    offset -= pieces[row][1]
                    row += 1
                new_cursor = (offset, len(laid) + row)
        laid += [(cells, n < len(pieces) - 1) for n, (cells, _) in enumerate(pieces)]
    return laid, new_cursor


def resize_main(page: Video, cursor: tuple[int, int], width: int, height: int,
                history: History | None) -> tuple[int, int]:
    """Resize the main screen's page as tmux does; returns the cursor's new (x, y)."""
    empty = page._empty_cell
    rows = [(list(page.grid[y]), page.wrapped_lines[y]) for y in range(page.height)]
    cursor_x, cursor_y = cursor
    rows, cursor_y = resize_height(rows, cursor_y, height, page.width, empty, history)
    if width != page.width:
        # The line still arriving in history continues on the screen: it re-wraps as one.
        head = []
        if history is not None:
            head = [(_blank_padded(row.cells(0, len(row)), page.width, empty), True)
                    for row in history.take_open()]
        laid, (cursor_x, cursor_y) = reflow(head + rows, (cursor_x, cursor_y + len(head)),
                                            width, empty)
        if len(laid) > height:
            cut = len(laid) - height
            _to_history(history, laid[:cut])
            laid, cursor_y = laid[cut:], cursor_y - cut
        elif len(laid) < height:
            pulled = [(_blank_padded(cells, width, empty), wrapped) for cells, wrapped in
                      (history.pop_rows(height - len(laid), width) if history else [])]
            laid = pulled + laid + [([empty] * width, False)] * (height - len(laid) - len(pulled))
            cursor_y += len(pulled)
        rows = laid
    page.grid = [cells for cells, _ in rows]
    page.wrapped_lines = [wrapped for _, wrapped in rows]
    page.line_attributes = [LINE_SINGLE] * height
    page.width, page.height = width, height
    page.row_gen = [0] * height
    page._touch_page()
    return min(cursor_x, width), min(max(cursor_y, 0), height - 1)


def resize_alternate(page: Video, cursor: tuple[int, int], width: int, height: int
                     ) -> tuple[int, int]:
    """Resize the alternate screen as tmux does (no history, no re-wrapping)."""
    empty = page._empty_cell
    rows = [(list(page.grid[y]), page.wrapped_lines[y]) for y in range(page.height)]
    cursor_x, cursor_y = cursor
    if height < len(rows):
        eaten = min(max(0, len(rows) - 1 - cursor_y), len(rows) - height)
        rows = rows[: len(rows) - eaten]
        cut = len(rows) - height
        rows, cursor_y = rows[cut:], cursor_y - cut
    rows += [([empty] * page.width, False)] * (height - len(rows))
    page.grid = [_blank_padded(cells, width, empty) if width > len(cells) else cells[:width]
                 for cells, _ in rows]
    page.wrapped_lines = [wrapped for _, wrapped in rows]
    page.line_attributes = [LINE_SINGLE] * height
    page.width, page.height = width, height
    page.row_gen = [0] * height
    page._touch_page()
    return min(cursor_x, width - 1), min(max(cursor_y, 0), height - 1)


class Resizer:
    """Resizes one board as tmux resizes a pane, history included."""

    def __init__(self, board: Board, history: History | None) -> None:
        self.board = board
        self.history = history
        # The main screen's page as it was when a resize came during a full-screen program:
        # it is resized when the program leaves the alternate screen.
        self._waiting: tuple | None = None
        blitter = board.blitter
        switch = blitter.switch_screen

        def switch_screen(alt: bool) -> None:
            leaving = not alt and blitter.in_alt_screen
            switch(alt)
            if leaving and self._waiting is not None:
                self._resize_waiting_main()

        blitter.switch_screen = switch_screen

    def resize(self, width: int, height: int) -> None:
        board = self.board
        blitter, cursor = board.blitter, board.cursor
        main = blitter.primary_page
        if blitter.in_alt_screen:
            if self._waiting is None:
                self._waiting = ([list(row) for row in main.grid], list(main.wrapped_lines),
                                 list(main.line_attributes), main.width, main.height)
            position = resize_alternate(blitter.alt_page, (cursor.x, cursor.y), width, height)
        else:
            position = resize_main(main, (cursor.x, cursor.y), width, height, self.history)
        # bittty's own bookkeeping (sizes, margins, regions; it cuts the pages not done here),
        # without its own re-wrapping, which a host could ask for with mode 2028.
        modes = board.modes
        reflowing, modes.text_reflow = modes.text_reflow, False
        try:
            blitter.resize(width, height)
        finally:
            modes.text_reflow = reflowing
        cursor.x, cursor.y = position
        cursor.reset_tab_stops()

    def _resize_waiting_main(self) -> None:
        """Back on the main screen: resize it from its size before the program ran, following
        the cursor the program saved there (DECSC, mode 1049), as tmux follows its own."""
        board, waiting = self.board, self._waiting
        self._waiting = None
        blitter, cursor = board.blitter, board.cursor
        main = blitter.primary_page
        main.grid, main.wrapped_lines, main.line_attributes, main.width, main.height = waiting
        width, height = blitter.width, blitter.height
        saved = cursor.saved.get(False)
        follow = (saved.x, saved.y) if saved is not None else (cursor.x, cursor.y)
        position = resize_main(main, follow, width, height, self.history)
        if saved is not None:
            cursor.saved[False] = dataclasses.replace(saved, x=min(position[0], width - 1),
                                                      y=position[1], wrap_pending=False)
        cursor.x, cursor.y = min(position[0], width - 1), position[1]
