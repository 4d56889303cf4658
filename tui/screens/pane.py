"""What every per-session pane (remote control, dashboard, chat) shares: its session, the
connector, the in-memory session password, a status line and the key that leaves it."""

from __future__ import annotations

from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Static

from tui.client import HostConnector
from tui.sanitize import clean
from tui.widgets.terminal import LEAVE_KEY

LEAVE = Binding(LEAVE_KEY, "leave", "Back to the list", priority=True, id="pane.leave")


class PaneScreen(Screen):
    BINDINGS = [LEAVE]
    kind = "pane"

    def __init__(self, session: dict, connector: HostConnector, password: str) -> None:
        super().__init__(name=f"{self.kind}-{session['id']}")
        self.session = session
        self.connector = connector
        self.password = password
        self.state = "connecting"

    def leave_key(self) -> str:
        """The key that leaves this pane, as the console shows keys (remapped or not)."""
        for active in self.active_bindings.values():
            if active.binding.action == "leave" and active.binding.priority:
                return self.app.get_key_display(active.binding)
        return self.app.get_key_display(LEAVE)

    def status_text(self) -> str:
        host = self.session.get("host") or {}
        who = f"{clean(host.get('user'), 32)}@{clean(host.get('hostname'), 64)}"
        return (f" {self.kind} · {who} · session {self.session['id']} · {self.state} · "
                f"{self.leave_key()} back")

    def status_bar(self) -> Static:
        return Static(self.status_text(), id="pane-status", markup=False)

    def set_state(self, state: str) -> None:
        self.state = state
        for bar in self.query("#pane-status").results(Static):  # none once the pane is gone
            bar.update(self.status_text())

    def action_leave(self) -> None:
        self.app.pop_screen()
