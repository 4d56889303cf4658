"""Small typed modals: confirm, ask for the session password, show a message."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label

from common.passwords import SESSION_PASSWORD_MAX
from common.secret import Secret
from tui.client import host_key_fingerprint
from tui.sanitize import clean
from tui.widgets.bounded import BoundedInput


class ConfirmModal(ModalScreen[bool]):
    BINDINGS = [
        Binding("escape", "cancel", "Cancel", id="modal.cancel"),
        Binding("y", "confirm", "Yes", id="modal.yes"),
        Binding("n", "cancel", "No", show=False, id="modal.no"),
    ]

    def __init__(self, question: str, yes: str = "Yes") -> None:
        super().__init__()
        self.question = question
        self.yes = yes

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.question, classes="question", markup=False)
            with Horizontal(classes="buttons"):
                yield Button(f"{self.yes} (y)", variant="error", id="yes")
                yield Button("Cancel (esc)", id="no")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_confirm(self) -> None:
        self.dismiss(True)

    def action_cancel(self) -> None:
        self.dismiss(False)


class PasswordModal(ModalScreen[Secret | None]):
    """The session password, asked on first connect to a session and kept in memory only.
    It shows the host key's fingerprint, for the technician to compare with the one on the
    customer's screen (the relay vouches for the key; the customer can confirm it)."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="modal.cancel")]

    def __init__(self, view: dict, error: str | None = None) -> None:
        super().__init__()
        self.view = view
        self.error = error

    def compose(self) -> ComposeResult:
        fingerprint = host_key_fingerprint(self.view.get("host_key"))
        with Vertical(classes="dialog"):
            yield Label(f"Session password for {clean(self.view.get('customer_email'), 120)} "
                        f"(session {clean(self.view.get('id'), 40)})", markup=False)
            if fingerprint:
                yield Label(f"Host key {fingerprint}: ask the customer to read theirs; "
                            "they must match.", id="fingerprint", classes="hint", markup=False)
            if self.error:
                yield Label(clean(self.error, 300), classes="error", markup=False)
            yield BoundedInput(password=True, placeholder="session password", id="password",
                               max_length=SESSION_PASSWORD_MAX, what="the session password")
            yield Label("enter to connect · esc to cancel", classes="hint", markup=False)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.value:
            password = Secret(event.value)
            event.input.value = ""  # the widget keeps no copy
            self.dismiss(password)

    def action_cancel(self) -> None:
        self.dismiss(None)
