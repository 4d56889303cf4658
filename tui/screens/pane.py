"""What every per-session pane (remote control, dashboard, chat) shares: its session, the
connector, the in-memory session password, a status line, the key that leaves it, and for
panes fed by a JSON-lines channel the reader that reopens it after a lost connection."""

from __future__ import annotations

import asyncio

from textual import on, work
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Static

from common.secret import Secret
from tui.client import HostConnector, JsonLines, RelayError, retry_delay
from tui.failures import explain
from tui.sanitize import clean
from tui.widgets.terminal import LEAVE_KEY

# Errors after which reopening the channel cannot help.
FINAL_CODES = {"wrong_password", "unauthorized", "not_active"}
LEAVE = Binding(LEAVE_KEY, "leave", "Back to the list", priority=True, id="pane.leave")


class PaneScreen(Screen):
    BINDINGS = [LEAVE]
    kind = "pane"
    subsystem = ""  # the host's JSON-lines subsystem behind this pane, if any

    class Received(Message):
        """One object the host sent on the pane's channel."""

        def __init__(self, value: dict) -> None:
            super().__init__()
            self.value = value

    def __init__(self, session: dict, connector: HostConnector, password: Secret) -> None:
        super().__init__(name=f"{self.kind}-{session['id']}")
        self.session = session
        self.connector = connector
        self.password = password
        self.state = "connecting"
        self.channel: JsonLines | None = None
        self.ended: str | None = None  # why the session ended, once it has

    def leave_key(self) -> str:
        """The key that leaves this pane, as the console shows keys (remapped or not)."""
        for active in self.active_bindings.values():
            if active.binding.action == "leave" and active.binding.priority:
                return self.app.get_key_display(active.binding)
        return self.app.get_key_display(LEAVE)

    def status_text(self) -> str:
        host = self.session.get("host") or {}
        who = f"{clean(host.get('user'), 32)}@{clean(host.get('hostname'), 64)}"
        return (f" {self.kind} · {who} · session {clean(self.session['id'], 40)} · {self.state} · "
                f"{self.leave_key()} back")

    def status_bar(self) -> Static:
        return Static(self.status_text(), id="pane-status", markup=False)

    def set_state(self, state: str) -> None:
        self.state = state
        for bar in self.query("#pane-status").results(Static):  # none once the pane is gone
            bar.update(self.status_text())

    def action_leave(self) -> None:
        self.app.pop_screen()

    def end(self, why: str) -> None:
        """The session ended: stop reading and reconnecting, and say so."""
        self.ended = why
        self.workers.cancel_node(self)
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        self.set_state(f"the session ended ({why}); nothing more can be done here")

    # --- a JSON-lines channel that is reopened after a lost connection ----------------------

    @work(exclusive=True, group="follow")
    async def follow(self) -> None:
        """Keep the pane's channel open: reopen it (with backoff) after the connection under
        it was lost, until the host refuses it, the session ends or the pane closes."""
        attempt = 0
        while self.ended is None:
            if attempt:
                await asyncio.sleep(retry_delay(attempt - 1))
            try:
                channel = await self.connector.open_lines(self.session, self.password,
                                                          self.subsystem)
            except RelayError as exc:
                if exc.code in FINAL_CODES:
                    self.set_state(explain(exc).text)
                    return
                attempt += 1
                self.set_state(f"{clean(exc.detail, 100)}; reconnecting…")
                continue
            self.channel = channel
            self.connected()
            while (value := await channel.read()) is not None:
                attempt = 0
                self.post_message(self.Received(value))
            self.channel = None
            if channel.lost is None:  # the host closed it, and says why if it refused
                refusal = await channel.refusal()
                self.set_state(clean(refusal, 120) or f"the host closed the {self.kind}")
                return
            self.set_state(f"lost the host ({clean(channel.lost, 80)}); reconnecting…")
            self.connector.forget(self.session["id"])
            attempt += 1

    def connected(self) -> None:
        self.set_state("connected")

    @on(Received)
    def _received(self, message: Received) -> None:
        self.received(message.value)

    def received(self, value: dict) -> None:
        """Show one object from the host (the panes with a channel say how)."""

    def on_unmount(self) -> None:
        if self.channel is not None:
            self.channel.close()
