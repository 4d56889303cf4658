"""The bundled relay's first run: the local admin's password, shown once, until a key says it
was noted (a toast would vanish before anyone could copy it)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label

from common.secret import Secret
from tui.sanitize import clean


class FirstRunModal(ModalScreen[None]):
    BINDINGS = [Binding("enter,escape", "close", "Noted", id="first_run.close"),
                Binding("y", "copy", "Copy", id="first_run.copy")]

    def __init__(self, login: str, password: Secret, data_dir: str) -> None:
        super().__init__()
        self.login = login
        self.password = password
        self.data_dir = data_dir

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide", id="first-run"):
            yield Label("First run of the bundled relay", classes="title", markup=False)
            yield Label(f"Created the company Local and its admin {clean(self.login, 40)}, "
                        "and logged this console in. The admin's password, for "
                        "adhoc-console login from elsewhere or ssh -J:", markup=False)
            yield Label(self.password.reveal(), id="first-run-password", markup=False)
            yield Label("Note it now: it is shown only this once. Forgot it? Set a new one "
                        f"with adhoc-relay --data-dir {clean(self.data_dir, 200)} technician "
                        f"reset-password {clean(self.login, 40)}", markup=False)
            yield Label("y copies it (to your terminal's clipboard) · enter when noted",
                        classes="hint", markup=False)

    def action_copy(self) -> None:
        self.app.copy_to_clipboard(self.password.reveal())
        self.notify("Copied the password to your terminal's clipboard (where it allows it).")

    def action_close(self) -> None:
        self.dismiss(None)
