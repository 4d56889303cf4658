"""A session's audit trail: who connected, shells, file operations with sizes and hashes."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Label

from tui.sanitize import clean, plain


def _detail(detail: dict) -> str:
    return ", ".join(f"{k}={clean(v, 80)}" for k, v in sorted(detail.items()) if v is not None)


class AuditModal(ModalScreen[None]):
    BINDINGS = [Binding("escape,q", "close", "Close", id="modal.close")]

    def __init__(self, session_id: str, rows: list[dict]) -> None:
        super().__init__()
        self.session_id = session_id
        self.rows = rows

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog full"):
            yield Label(f"Audit of session {self.session_id} (esc to close)", markup=False)
            table = DataTable(id="audit", cursor_type="row", zebra_stripes=True)
            table.add_columns("time", "actor", "event", "outcome", "detail")
            for row in self.rows:
                table.add_row(plain(row["at"][:19]), plain(row["actor"], 40),
                              plain(row["event"]), plain(row["outcome"]),
                              plain(_detail(row["detail"]), 300))
            yield table

    def action_close(self) -> None:
        self.dismiss(None)
