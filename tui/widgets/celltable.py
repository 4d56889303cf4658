"""A DataTable that re-renders only the cells that changed.

Textual's DataTable keys every render cache on one table-wide update counter, so changing
one cell (a countdown, once a second) re-renders every cell on screen through Rich: with
eight columns and forty rows that is most of a core's 5 % at one tick a second. This table
keeps its own cache of rendered cells keyed on the cell, its place and its look, and drops
an entry only when that cell is updated, the table is cleared, or styles change; the rows
are still recomposed, which is cheap. Built on DataTable._render_cell and _clear_caches
(textual 8.2); tests/tui/test_session_list.py fails if a textual release changes them.
"""

from __future__ import annotations

from typing import Any

from textual.widgets.data_table import CellType, ColumnKey, RowKey

from tui.widgets.texttable import TextTable


class CellCachedTable(TextTable):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # (row key, column key) -> {look of the cell -> rendered lines}; set first, as
        # DataTable's constructor already clears caches.
        self._cells: dict[tuple[RowKey, ColumnKey], dict[tuple, Any]] = {}
        super().__init__(*args, **kwargs)

    def update_cell(self, row_key: RowKey | str, column_key: ColumnKey | str,
                    value: CellType, *, update_width: bool = False) -> None:
        super().update_cell(row_key, column_key, value, update_width=update_width)
        self._cells.pop((RowKey(row_key) if isinstance(row_key, str) else row_key,
                         ColumnKey(column_key) if isinstance(column_key, str) else column_key),
                        None)

    def remove_row(self, row_key: RowKey | str) -> None:
        super().remove_row(row_key)
        self._cells.clear()  # rows below move up: their places in the cache are stale

    def _clear_caches(self) -> None:
        super()._clear_caches()
        self._cells.clear()

    def notify_style_update(self) -> None:
        self._cells.clear()
        super().notify_style_update()

    def clear(self, columns: bool = False) -> CellCachedTable:
        self._cells.clear()
        return super().clear(columns)

    def _render_cell(self, row_index: int, column_index: int, base_style: Any, width: int,
                     cursor: bool = False, hover: bool = False) -> Any:
        if column_index < 0:  # row labels: Adhoc's tables have none
            return super()._render_cell(row_index, column_index, base_style, width,
                                        cursor, hover)
        row = self._header_row_key if row_index < 0 else self._row_locations.get_key(row_index)
        cell = (row, self._column_locations.get_key(column_index))
        look = (row_index, column_index, base_style, width, cursor, hover,
                self._show_hover_cursor, self.show_cursor, self.cell_padding,
                self._pseudo_class_state)
        looks = self._cells.setdefault(cell, {})
        lines = looks.get(look)
        if lines is None:
            lines = looks[look] = super()._render_cell(row_index, column_index, base_style,
                                                       width, cursor, hover)
        return lines
