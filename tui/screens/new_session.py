"""Create a session: customer email, session password twice with a strength hint, a note."""

from __future__ import annotations

from textual import on, work
from textual.actions import SkipAction
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label

from common.passwords import SESSION_PASSWORD_MAX
from common.secret import Secret
from relay.sessions import MAX_EMAIL_CHARS, MAX_NOTE_CHARS
from tui.client import RelayClient, RelayError
from tui.failures import explain
from tui.widgets.bounded import BoundedInput


def strength_hint(password: str) -> str:
    """A quick hint while typing; the relay's rule (`session_password_problem`, which the
    console applies before it hashes the password) has the final word and says why it refuses."""
    if not password:
        return "The technician types this password each time they connect."
    kinds = sum(any(test(c) for c in password)
                for test in (str.islower, str.isupper, str.isdigit,
                             lambda c: not c.isalnum()))
    if len(password) < 8:
        return f"Too short: {len(password)} of at least 8 characters."
    if len(password) >= 16 or (len(password) >= 12 and kinds >= 2):
        return "Strong."
    if kinds >= 2:
        return "Fair: longer is better (12+ characters)."
    return "Weak: use 12+ characters or mix letters with digits or symbols."


class NewSessionModal(ModalScreen[dict | None]):
    # Keys that move between fields are priority bindings: the app runs them before it hands
    # on the next key, so text typed (or pasted, or sent by a script) right after tab or
    # enter lands in the next field. As plain bindings they ran only once the key had
    # bubbled up from the field, after the field had already taken the keys that followed.
    BINDINGS = [Binding("escape", "cancel", "Cancel", id="modal.cancel"),
                Binding("tab", "app.focus_next", show=False, priority=True),
                Binding("shift+tab", "app.focus_previous", show=False, priority=True),
                Binding("enter", "next_field", show=False, priority=True)]
    FIELDS = ("email", "password", "confirm", "note")

    def __init__(self, client: RelayClient) -> None:
        super().__init__()
        self.client = client
        self.creating = False

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide"):
            yield Label("Invite a customer", classes="title", markup=False)
            yield BoundedInput(placeholder="customer@example.com", id="email", compact=True,
                               max_length=MAX_EMAIL_CHARS, what="the customer's email")
            yield BoundedInput(password=True, placeholder="session password", id="password",
                               compact=True, max_length=SESSION_PASSWORD_MAX,
                               what="the session password")
            yield BoundedInput(password=True, placeholder="session password again", id="confirm",
                               compact=True, max_length=SESSION_PASSWORD_MAX,
                               what="the session password")
            yield Label(strength_hint(""), id="hint", classes="hint", markup=False)
            yield BoundedInput(placeholder="note (optional)", id="note", max_length=MAX_NOTE_CHARS,
                               compact=True, what="the note")
            yield Label("", id="error", classes="error", markup=False)
            yield Button("Create and send invitation", variant="primary", id="create")

    @on(Input.Changed, "#password")
    def _hint(self, event: Input.Changed) -> None:
        self.query_one("#hint", Label).update(strength_hint(event.value))

    @on(Input.Changed)
    def _edited(self) -> None:
        """An error said about the old values is stale once any of them changes."""
        if not self.creating:
            self.query_one("#error", Label).update("")

    def action_next_field(self) -> None:
        """Enter in a field but the last moves on at once; elsewhere enter goes its usual way
        (in the last field after the keys before it, so the values read are whole)."""
        current = self.focused.id if isinstance(self.focused, Input) else None
        if current not in self.FIELDS[:-1]:
            raise SkipAction()
        # set_focus, not focus(): focus() is deferred, and the next key must find the field.
        self.set_focus(self.query_one(f"#{self.FIELDS[self.FIELDS.index(current) + 1]}", Input))

    @on(Input.Submitted)
    def _submitted(self) -> None:
        self._submit()

    @on(Button.Pressed, "#create")
    def _pressed(self) -> None:
        self._submit()

    def _submit(self) -> None:
        if self.creating:
            return
        email = self.query_one("#email", Input).value.strip()
        password = Secret(self.query_one("#password", Input).value)
        confirm = Secret(self.query_one("#confirm", Input).value)
        error = self.query_one("#error", Label)
        if not email:
            error.update("Enter the customer's email address.")
            return
        if password != confirm:
            error.update("The two passwords differ: type the same password twice.")
            return
        error.update("Creating…")
        self.creating = True
        self._create(email, password, self.query_one("#note", Input).value)

    @work(exclusive=True, group="create-session")
    async def _create(self, email: str, password: Secret, note: str) -> None:
        try:
            created = await self.client.create_session(email, password, note)
        except Exception as exc:
            self.query_one("#error", Label).update(explain(exc).text)
            if not isinstance(exc, RelayError):
                raise  # a bug of ours: the app reports it as well
            return
        finally:
            self.creating = False
        self.dismiss(created)

    def action_cancel(self) -> None:
        self.dismiss(None)
