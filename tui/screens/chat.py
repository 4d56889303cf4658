"""Chat with the customer: their lines come from the agent's window, ours go there."""

from __future__ import annotations

from collections import deque

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Input, RichLog

from tui.sanitize import clean
from tui.screens.pane import PaneScreen
from tui.widgets.bounded import BoundedInput

KEPT_LINES = 1000


class ChatScreen(PaneScreen):
    kind = "chat"
    subsystem = "chat"
    BINDINGS = [*PaneScreen.BINDINGS, Binding("escape", "leave", "Back", id="chat.back")]

    def __init__(self, session, connector, password) -> None:
        super().__init__(session, connector, password)
        self.lines: deque[dict] = deque(maxlen=KEPT_LINES)  # a flooding host costs little

    def compose(self) -> ComposeResult:
        yield self.status_bar()
        yield RichLog(id="chat-log", wrap=True, markup=False, max_lines=KEPT_LINES)
        yield BoundedInput(placeholder="message to the customer (enter sends)",
                           id="chat-input", max_length=2000, what="a chat message")

    def on_mount(self) -> None:
        self.query_one("#chat-input", Input).focus()
        self.follow()

    def received(self, line: dict) -> None:
        self.lines.append(line)
        text = Text()
        text.append(f"{clean(line.get('at'), 25)[11:19]} ", style="dim")
        sender = clean(line.get("from"), 40)
        text.append(f"{sender}: ", style="bold green" if sender == "customer" else "bold")
        text.append(clean(line.get("text"), 2000))
        for log in self.query("#chat-log").results(RichLog):
            log.write(text)

    @on(Input.Submitted, "#chat-input")
    def _send(self, event: Input.Submitted) -> None:
        if not event.value.strip():
            return
        if self.channel is None:
            self.notify(f"Chat is not connected ({self.state}): your message is still in the "
                        "box; send it again once the line above says connected.",
                        severity="warning")
            return
        self.channel.send({"text": event.value})
        event.input.value = ""
