"""A DataTable whose cells are text: a str cell is shown as it is, never read as markup.

Textual's DataTable reads a str cell as console markup, so a host's file name such as
`[a=:]x` would crash it and `[@click=app.quit]` would become a link. Every table the console
draws is this one (tests/tui/test_foreign_text.py checks), so no cell can be read as markup
wherever its text came from.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.binding import Binding
from textual.widgets import DataTable
from textual.widgets.data_table import CellType, ColumnKey, RowKey

from tui.sanitize import clean


def as_text(value: Any) -> Any:
    """A str cell as plain Text (control characters escaped); anything else as it is."""
    return Text(clean(value, 4096), end="") if isinstance(value, str) else value


class TextTable(DataTable):
    # Home and End go to the first and last row, as in mc and every list; DataTable gives
    # them to scrolling sideways, which these tables of rows never need.
    BINDINGS = [
        Binding("home", "scroll_top", "First row", show=False, id="table.first"),
        Binding("end", "scroll_bottom", "Last row", show=False, id="table.last"),
    ]

    def add_column(self, label: Any, *, width: int | None = None, key: str | None = None,
                   default: CellType | None = None) -> ColumnKey:
        return super().add_column(as_text(label), width=width, key=key,
                                  default=as_text(default))

    def add_row(self, *cells: CellType, height: int | None = 1, key: str | None = None,
                label: Any = None) -> RowKey:
        return super().add_row(*(as_text(cell) for cell in cells), height=height, key=key,
                               label=as_text(label))

    def update_cell(self, row_key: RowKey | str, column_key: ColumnKey | str,
                    value: CellType, *, update_width: bool = False) -> None:
        super().update_cell(row_key, column_key, as_text(value), update_width=update_width)
