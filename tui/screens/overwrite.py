"""Ask before a copy replaces files that already exist at the destination."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label

from tui.sanitize import clean

SHOWN = 5


class OverwriteModal(ModalScreen[bool]):
    """True replaces the existing files; False copies nothing."""

    BINDINGS = [
        Binding("escape", "keep", "Keep", id="overwrite.cancel"),
        Binding("y", "replace", "Replace", id="overwrite.yes"),
        Binding("n", "keep", "Keep", show=False, id="overwrite.no"),
    ]

    def __init__(self, names: list[str], where: str) -> None:
        super().__init__()
        self.names = names
        self.where = where

    def compose(self) -> ComposeResult:
        count = len(self.names)
        listed = ", ".join(clean(name, 60) for name in self.names[:SHOWN])
        if count > SHOWN:
            listed += f" and {count - SHOWN} more"
        what = "1 file already exists" if count == 1 else f"{count} files already exist"
        with Vertical(classes="dialog"):
            yield Label(f"{what} in {clean(self.where, 120)}: {listed}.", classes="question",
                        markup=False)
            yield Label("Replace them? Nothing is copied otherwise.", markup=False)
            with Horizontal(classes="buttons"):
                yield Button("Replace (y)", variant="error", id="replace")
                yield Button("Keep (n)", id="keep")

    def on_mount(self) -> None:
        self.query_one("#keep", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "replace")

    def action_replace(self) -> None:
        self.dismiss(True)

    def action_keep(self) -> None:
        self.dismiss(False)
