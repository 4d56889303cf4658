"""The new session: the security code shown large and once, the link, and live progress."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Digits, Label

from tui.sanitize import clean


def progress_text(view: dict) -> str:
    """mail sent → agent connected → active, as far as the session got."""
    mail = view.get("mail_status") or "queued"
    mail_step = {"sent": "mail sent", "outbox": "mail in outbox (copy the link)",
                 "failed": f"mail failed ({clean(view.get('mail_detail'))})",
                 "retrying": "mail retrying"}.get(mail, f"mail {clean(mail)}")
    steps = [mail_step]
    if view.get("state") == "active":
        steps.append("agent connected" if view.get("online") else "agent offline")
        steps.append("active")
    elif view.get("state") == "ended":
        steps.append(f"ended ({clean(view.get('ended_reason'))})")
    else:
        steps.append("waiting for the customer")
    return " → ".join(steps)


class CreatedModal(ModalScreen[None]):
    BINDINGS = [Binding("escape,enter", "close", "Close", id="modal.close")]

    def __init__(self, created: dict) -> None:
        super().__init__()
        self.created = created

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide", id="created"):
            yield Label(f"Session {self.created['id']} for "
                        f"{clean(self.created['customer_email'])}", markup=False)
            yield Label("Read this security code to the customer (it is shown only now):")
            yield Digits(self.created["security_code"], id="code")
            yield Label(f"code {self.created['security_code']}", id="code-text", classes="hint")
            yield Label("Join link:", classes="hint")
            yield Label(self.created.get("join_url") or "(unchanged: the link already sent)",
                        id="join-url", markup=False, classes="wrap")
            if self.created.get("install_command"):
                yield Label("Install one-liner for the customer:", classes="hint")
                yield Label(self.created["install_command"], id="install", markup=False,
                            classes="wrap")
            yield Label(progress_text(self.created), id="progress", markup=False)
            yield Label("enter or esc closes; the session stays in the list", classes="hint")

    def update_from(self, view: dict) -> None:
        if view.get("id") == self.created["id"]:
            self.query_one("#progress", Label).update(progress_text(view))

    def action_close(self) -> None:
        self.dismiss(None)
