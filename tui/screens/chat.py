"""Chat with the customer: their lines come from the agent's window, ours go there."""

from __future__ import annotations

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.widgets import Input, RichLog

from tui.client import JsonLines, RelayError
from tui.sanitize import clean
from tui.screens.pane import PaneScreen


class ChatLine(Message):
    def __init__(self, line: dict) -> None:
        super().__init__()
        self.line = line


class ChatScreen(PaneScreen):
    kind = "chat"
    BINDINGS = [*PaneScreen.BINDINGS, Binding("escape", "leave", "Back", id="chat.back")]

    def __init__(self, session, connector, password) -> None:
        super().__init__(session, connector, password)
        self.channel: JsonLines | None = None
        self.lines: list[dict] = []

    def compose(self) -> ComposeResult:
        yield self.status_bar()
        yield RichLog(id="chat-log", wrap=True, markup=False)
        yield Input(placeholder="message to the customer (enter sends)", id="chat-input",
                    max_length=2000)

    def on_mount(self) -> None:
        self.query_one("#chat-input", Input).focus()
        self.follow()

    @work(exclusive=True, group="chat")
    async def follow(self) -> None:
        try:
            self.channel = await self.connector.open_lines(self.session, self.password, "chat")
        except RelayError as exc:
            self.set_state(clean(exc.detail, 120))
            return
        self.set_state("connected")
        while (line := await self.channel.read()) is not None:
            self.post_message(ChatLine(line))
        refusal = await self.channel.refusal()
        self.set_state(clean(refusal, 120) or "chat closed by the host")
        self.channel = None

    def on_chat_line(self, message: ChatLine) -> None:
        line = message.line
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
            self.notify("Chat is not connected.", severity="warning")
            return
        self.channel.send({"text": event.value})
        event.input.value = ""

    def on_unmount(self) -> None:
        if self.channel is not None:
            self.channel.close()
