"""OpenSSH and port forwards for the selected session: the ssh command to copy, and a local port
forwarded to something the customer's computer can reach (`ssh -L`, from the console)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label

from tui.sanitize import clean
from tui.widgets.bounded import BoundedInput

DESTINATION = re.compile(r"^\[?([A-Za-z0-9._:-]{1,253}?)\]?:(\d{1,5})$")


@dataclass(frozen=True)
class ForwardRequest:
    """Listen on 127.0.0.1:local_port (0: any free port) and carry each connection to
    host:port as the customer's computer reaches it."""

    local_port: int
    host: str
    port: int


def parse_forward(local: str, destination: str) -> ForwardRequest | str:
    """The request the two fields describe, or what is wrong with them, in one sentence."""
    match = DESTINATION.match(destination.strip())
    if not match or not 0 < int(match.group(2)) < 65536:
        return "Give the destination as host:port, as the customer's computer reaches it " \
               "(for example 192.168.1.1:80)."
    local = local.strip()
    if local and (not local.isdigit() or not 0 < int(local) < 65536):
        return "The local port is a number from 1 to 65535, or empty for any free port."
    return ForwardRequest(int(local or 0), match.group(1), int(match.group(2)))


class OpenSSHModal(ModalScreen[ForwardRequest | None]):
    DEFAULT_CSS = """
    OpenSSHModal .fields { height: auto; }
    OpenSSHModal .port { width: 16; }
    OpenSSHModal #destination { width: 1fr; }
    """
    BINDINGS = [
        Binding("escape", "cancel", "Close", id="openssh.close"),
        Binding("ctrl+y", "copy", "Copy ssh command", id="openssh.copy"),
    ]

    def __init__(self, label: str, commands: list[tuple[str, str]],
                 forwards: list[str], can_forward: bool) -> None:
        super().__init__()
        self.label = label
        self.commands = commands  # (what it is, the command)
        self.forwards = forwards  # "127.0.0.1:8080 → 192.168.1.1:80", already open
        self.can_forward = can_forward

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide", id="openssh"):
            yield Label(f"OpenSSH for {self.label}", markup=False)
            for what, command in self.commands:
                yield Label(what, classes="hint", markup=False)
                yield Label(command, classes="wrap command", markup=False)
            yield Button("Copy the ssh command (ctrl+y)", id="copy")
            if self.can_forward:
                yield Label("Forward a local port to the customer's network (the customer "
                            "is asked on their screen first):", classes="hint", markup=False)
                with Horizontal(classes="fields"):
                    yield BoundedInput(placeholder="local port (empty: any)", id="local",
                                       classes="port", max_length=5, what="a port")
                    yield BoundedInput(placeholder="host:port, e.g. 192.168.1.1:80",
                                       id="destination", max_length=300, what="a destination")
                yield Label("", id="error", classes="error", markup=False)
                for forward in self.forwards:
                    yield Label(f"open: {forward}", classes="hint", markup=False)
                yield Label("enter forwards · esc closes", classes="hint", markup=False)
            else:
                yield Label("Port forwarding is not included in this session's plan.",
                            classes="hint", markup=False)
                yield Label("esc closes", classes="hint", markup=False)

    def on_mount(self) -> None:
        if self.can_forward:
            self.query_one("#destination", Input).focus()

    def action_copy(self) -> None:
        command = self.commands[0][1]
        self.app.copy_to_clipboard(command)
        self.notify(f"Copied: {clean(command, 200)}", markup=False, timeout=4)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "copy":
            self.action_copy()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        request = parse_forward(self.query_one("#local", Input).value,
                                self.query_one("#destination", Input).value)
        if isinstance(request, str):
            self.query_one("#error", Label).update(request)
            return
        self.dismiss(request)

    def action_cancel(self) -> None:
        self.dismiss(None)
