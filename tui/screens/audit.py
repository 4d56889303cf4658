"""A session's audit trail: who connected, shells, file operations with sizes and hashes; a
row opens to show all it holds."""

from __future__ import annotations

import re

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import DataTable, Label, Static
from textual.widgets.data_table import ColumnKey

from tui.sanitize import clean, plain
from tui.times import local_time
from tui.widgets.texttable import TextTable

# time, actor, event (with its outcome when that is not "ok"); the detail column takes the
# rest of the width, so it is readable at 80 columns; enter shows a row in full.
FIXED = (("time", 14), ("actor", 12), ("event", 20))
NUMBERED_TECHNICIAN = re.compile(r"technician:\d+")


def actor_name(row: dict, view: dict) -> str:
    """Technicians by login everywhere: the relay names the creator of a session by number
    in its session_created row (the creator is the session's technician)."""
    actor = str(row.get("actor") or "")
    if NUMBERED_TECHNICIAN.fullmatch(actor) and str(row.get("event")).startswith(
            "session_create") and view.get("technician"):
        return f"technician:{view['technician']}"
    return actor


def short_actor(actor: str) -> str:
    """The actor as the list shows it: a technician by login alone."""
    return actor.removeprefix("technician:")


def event_text(row: dict) -> str:
    outcome = clean(row.get("outcome"), 20)
    return clean(row.get("event"), 40) + ("" if outcome == "ok" else f" ({outcome})")


def detail_text(detail: object) -> str:
    if not isinstance(detail, dict):
        return clean(detail, 300)
    return ", ".join(f"{clean(k, 40)}={clean(v, 200)}" for k, v in sorted(detail.items())
                     if v is not None)


class AuditModal(ModalScreen[None]):
    BINDINGS = [Binding("escape,q", "close", "Close", id="audit.close"),
                Binding("enter", "open_row", "Open", id="audit.open")]

    def __init__(self, view: dict, rows: list[dict]) -> None:
        super().__init__()
        self.view = view
        self.rows = [r for r in rows if isinstance(r, dict)]

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog full"):
            yield Label(f"Audit of the session with {clean(self.view.get('customer_email'))} "
                        f"({clean(self.view.get('id'), 40)}) · enter opens a row · esc "
                        "closes", markup=False)
            table = TextTable(id="audit", cursor_type="row", zebra_stripes=True)
            for label, width in FIXED:
                table.add_column(label, width=width, key=label)
            table.add_column("detail", key="detail")
            for row in self.rows:
                table.add_row(local_time(row.get("at"))[5:],
                              plain(short_actor(actor_name(row, self.view)), 40),
                              plain(event_text(row), 60),
                              plain(detail_text(row.get("detail")), 300))
            yield table

    def on_mount(self) -> None:
        self.call_after_refresh(self._fit)  # once the table has its size

    def on_resize(self) -> None:
        self.call_after_refresh(self._fit)

    def _fit(self) -> None:
        """The detail column takes what the others leave (it opens in full with enter)."""
        table = self.query_one("#audit", DataTable)
        if not table.size.width:
            return
        used = sum(width + 2 * table.cell_padding for _label, width in FIXED)
        column = table.columns[ColumnKey("detail")]
        column.auto_width = False
        column.width = max(10, table.size.width - used - 2 * table.cell_padding - 1)
        table._require_update_dimensions = True
        table.refresh()

    @on(DataTable.RowSelected, "#audit")
    def _selected(self) -> None:
        self.action_open_row()

    def action_open_row(self) -> None:
        table = self.query_one("#audit", DataTable)
        if 0 <= table.cursor_row < len(self.rows):
            self.app.push_screen(AuditRowModal(self.rows[table.cursor_row], self.view))

    def action_close(self) -> None:
        self.dismiss(None)


class AuditRowModal(ModalScreen[None]):
    """One audit row in full, every detail on its own wrapped line."""

    BINDINGS = [Binding("escape,enter,q", "close", "Close", id="audit_row.close")]

    def __init__(self, row: dict, view: dict) -> None:
        super().__init__()
        self.row = row
        self.view = view

    def compose(self) -> ComposeResult:
        lines = Text()
        for label, value in (("time", local_time(self.row.get("at"))),
                             ("actor", actor_name(self.row, self.view)),
                             ("event", self.row.get("event")),
                             ("outcome", self.row.get("outcome"))):
            lines.append(f"{label}: ", style="bold")
            lines.append(clean(value, 200) + "\n")
        detail = self.row.get("detail")
        for key, value in sorted(detail.items()) if isinstance(detail, dict) else ():
            if value is not None:
                lines.append(f"{clean(key, 60)}: ", style="bold")
                lines.append(clean(value, 4096) + "\n")
        with Vertical(classes="dialog wide"):
            with VerticalScroll(id="audit-row"):
                yield Static(lines, markup=False)
            yield Label("esc or enter closes", classes="hint", markup=False)

    def action_close(self) -> None:
        self.dismiss(None)
