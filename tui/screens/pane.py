"""What every per-session pane (remote control, dashboard, chat) shares: its session, the
connector, the in-memory session password, a status line and the key that leaves it."""

from __future__ import annotations

from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Static

from tui.client import HostConnector
from tui.sanitize import clean
from tui.widgets.terminal import LEAVE_KEY


class PaneScreen(Screen):
    BINDINGS = [
        Binding(LEAVE_KEY, "leave", "Back (ctrl+])", priority=True, id="pane.leave"),
    ]
    kind = "pane"

    def __init__(self, session: dict, connector: HostConnector, password: str) -> None:
        super().__init__(name=f"{self.kind}-{session['id']}")
        self.session = session
        self.connector = connector
        self.password = password
        self.state = "connecting"

    def status_text(self) -> str:
        host = self.session.get("host") or {}
        who = f"{clean(host.get('user'), 32)}@{clean(host.get('hostname'), 64)}"
        return f" {self.kind} · {who} · session {self.session['id']} · {self.state} · ctrl+] back"

    def status_bar(self) -> Static:
        return Static(self.status_text(), id="pane-status", markup=False)

    def set_state(self, state: str) -> None:
        self.state = state
        for bar in self.query("#pane-status").results(Static):  # none once the pane is gone
            bar.update(self.status_text())

    def action_leave(self) -> None:
        self.app.pop_screen()
