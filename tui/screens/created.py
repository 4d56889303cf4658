"""The new session: the security code shown large and once, the link and the install
one-liner (each on one line, with a key that copies it whole), and live progress."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Digits, Label, Static

from tui.sanitize import clean

MAX_CODE_ATTEMPTS = 5  # wrong codes a link takes in all (docs/API.md)


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


def tries_text(created: dict) -> str | None:
    """For a code issued again: how many tries the link has left (wrong codes count)."""
    if "attempts_left" in created:
        left = created["attempts_left"]
    elif "code_attempts" in created and "join_url" not in created:
        left = MAX_CODE_ATTEMPTS - int(created["code_attempts"] or 0)
    else:
        return None
    tried = MAX_CODE_ATTEMPTS - int(left)
    return (f"{left} of {MAX_CODE_ATTEMPTS} tries left on this link: {tried} wrong "
            f"code{'s' if tried != 1 else ''} already tried there still count.")


class CreatedModal(ModalScreen[None]):
    BINDINGS = [Binding("escape,enter", "close", "Close", id="created.close"),
                Binding("l", "copy_link", "Copy link", id="created.copy_link"),
                Binding("y", "copy_install", "Copy one-liner", id="created.copy_install")]

    def __init__(self, created: dict) -> None:
        super().__init__()
        self.created = created

    def compose(self) -> ComposeResult:
        code = clean(self.created.get("security_code"), 12)
        with Vertical(classes="dialog wide", id="created"):
            yield Label(f"Session {clean(self.created.get('id'), 40)} for "
                        f"{clean(self.created.get('customer_email'))}", markup=False)
            yield Label("Read this security code to the customer (it is shown only now):",
                        markup=False)
            yield Digits(code, id="code")
            yield Label(f"code {code}", id="code-text", classes="hint", markup=False)
            tries = tries_text(self.created)
            if tries:
                yield Label(tries, id="tries", markup=False)
            yield Label("Join link (l copies it):", classes="hint", markup=False)
            yield Static(clean(self.created.get("join_url"), 2000) or
                         "(unchanged: the link already sent)", id="join-url",
                         classes="oneline", markup=False)
            if self.created.get("install_command"):
                yield Label("Install one-liner for the customer (y copies it):",
                            classes="hint", markup=False)
                yield Static(clean(self.created["install_command"], 2000), id="install",
                             classes="oneline", markup=False)
            yield Label(progress_text(self.created), id="progress", markup=False)
            yield Label("enter or esc closes; the session stays in the list", classes="hint",
                        markup=False)

    def update_from(self, view: dict) -> None:
        if view.get("id") == self.created.get("id"):
            for label in self.query("#progress").results(Label):
                label.update(progress_text(view))

    def _copy(self, key: str, what: str) -> None:
        value = self.created.get(key)
        if not value or not isinstance(value, str):
            self.notify(f"There is no {what} to copy.", severity="warning")
            return
        if clean(value, len(value)) != value:  # nothing that could act on a terminal
            self.notify(f"The {what} holds control characters: not copied.", severity="error")
            return
        self.app.copy_to_clipboard(value)
        self.notify(f"Copied the {what} to your terminal's clipboard (in tmux: "
                    "set -g set-clipboard on).", timeout=4)

    def action_copy_link(self) -> None:
        self._copy("join_url", "join link")

    def action_copy_install(self) -> None:
        self._copy("install_command", "install one-liner")

    def action_close(self) -> None:
        self.dismiss(None)
