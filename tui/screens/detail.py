"""One session in full: who, what state and why, the host and its key's fingerprint (for the
technician to compare with the customer's screen), times, and the `ssh -J` line."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static

from tui.client import host_key_fingerprint
from tui.sanitize import clean
from tui.times import local_time


def detail_lines(view: dict, login: str, relay_ssh: str | None) -> list[tuple[str, str]]:
    host = view.get("host") if isinstance(view.get("host"), dict) else {}
    state = clean(view.get("state"), 20)
    if view.get("ended_reason"):
        state += f" ({clean(view.get('ended_reason'), 40).replace('_', ' ')})"
    elif view.get("state") == "active":
        state += ", online" if view.get("online") else ", offline"
    lines = [
        ("customer", clean(view.get("customer_email"), 254)),
        ("session", clean(view.get("id"), 40)),
        ("state", state),
        ("technician", clean(view.get("technician"), 64)),
        ("created", local_time(view.get("created_at"))),
    ]
    if view.get("state") == "pending":
        lines.append(("invitation until", local_time(view.get("invite_expires_at"))))
        tried, left = (_count(view.get(key)) for key in ("code_attempts", "code_attempts_left"))
        lines.append(("wrong codes", f"{tried} tried, {left} left before the link stops "
                                     "working"))
    for label, key in (("activated", "activated_at"), ("ends at", "expires_at"),
                       ("ended", "ended_at"), ("online since", "online_since")):
        if view.get(key):
            lines.append((label, local_time(view.get(key))))
    if host:
        address = f", address {clean(host.get('ip'), 64)}" if host.get("ip") else ""
        lines.append(("host", f"{clean(host.get('hostname'), 64)} ({clean(host.get('os'), 60)})"
                              f", user {clean(host.get('user'), 32)}{address}"))
    fingerprint = host_key_fingerprint(view.get("host_key"))
    if fingerprint:
        lines.append(("host key", f"{fingerprint} (the customer's window must show the same)"))
    mail = clean(view.get("mail_status"), 20)
    if view.get("mail_detail"):
        mail += f": {clean(view.get('mail_detail'), 300)}"
    lines.append(("mail", mail))
    if view.get("note"):
        lines.append(("note", clean(view.get("note"), 500)))
    if view.get("state") == "active" and relay_ssh:
        lines.append(("OpenSSH", f"ssh -J {clean(login, 64)}@{clean(relay_ssh, 100)} "
                                 f"support@{clean(view.get('id'), 40)}"))
    return lines


def _count(value: object) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


class DetailModal(ModalScreen[None]):
    BINDINGS = [Binding("escape,enter,q,i", "close", "Close", id="detail.close")]

    def __init__(self, view: dict, login: str, relay_ssh: str | None) -> None:
        super().__init__()
        self.view = view
        self.login = login
        self.relay_ssh = relay_ssh

    def compose(self) -> ComposeResult:
        text = Text()
        lines = detail_lines(self.view, self.login, self.relay_ssh)
        width = max(len(label) for label, _ in lines)
        for index, (label, value) in enumerate(lines):
            text.append(f"{label:>{width}}  ", style="bold")
            text.append(value + ("\n" if index < len(lines) - 1 else ""))
        with Vertical(classes="dialog wide", id="detail"):
            with VerticalScroll():
                yield Static(text, id="detail-text", markup=False)
            yield Label("esc closes", classes="hint", markup=False)

    def action_close(self) -> None:
        self.dismiss(None)
