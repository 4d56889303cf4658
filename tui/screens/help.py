"""`?`: the keys of the screen the technician is on, the product's own first (new, remote,
end, audit…), then the keys for moving around that every table and field has."""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Label, Static

# Where a key comes from, in the order help lists them.
SCREEN, APP, WIDGET = 0, 1, 2
SECTIONS = ((SCREEN, "Keys on this screen"), (APP, "Everywhere"), (WIDGET, "Moving around"))


@dataclass(frozen=True)
class KeyHelp:
    keys: str
    description: str
    source: int  # SCREEN, APP or WIDGET

    @property
    def product(self) -> bool:
        """One of Adhoc's own keys (the screen's or the app's), not a widget's."""
        return self.source != WIDGET


def keys_of(app: App, screen: Screen) -> list[KeyHelp]:
    """The keys that act on `screen` now, as remapped, one line per action: Adhoc's own
    first (the screen's, then the app's), then the ones Textual's widgets bring."""
    found: dict[tuple[int, str], KeyHelp] = {}

    def add(source: int, node: object, key: str, binding: Binding) -> None:
        shown = app.get_key_display(Binding(key, binding.action, binding.description))
        group = (id(node), binding.action)
        described = binding.tooltip or binding.description
        if group in found:
            if shown not in found[group].keys.split(", "):
                found[group] = KeyHelp(f"{found[group].keys}, {shown}", described,
                                       found[group].source)
        else:
            found[group] = KeyHelp(shown, described, source)

    # The screen's own keys, all of them: a focused table may shadow one (enter) that the
    # screen still handles through the table.
    for key, bindings in screen._bindings.key_to_bindings.items():
        for binding in bindings:
            if binding.id and binding.description:
                add(SCREEN, screen, key, binding)
    for key, active in screen.active_bindings.items():
        binding = active.binding
        if not active.enabled or not binding.description or active.node is screen:
            continue
        ours = active.node is app and binding.id is not None
        add(APP if ours else WIDGET, active.node, key, binding)
    return sorted(found.values(), key=lambda k: k.source)  # stable: each keeps its order


class HelpModal(ModalScreen[None]):
    BINDINGS = [Binding("escape,question_mark,q,enter", "close", "Close", id="help.close")]

    def __init__(self, keys: list[KeyHelp], extra: str = "") -> None:
        super().__init__()
        self.keys = keys
        self.extra = extra

    def compose(self) -> ComposeResult:
        text = Text()
        for source, title in SECTIONS:
            rows = [k for k in self.keys if k.source == source]
            if not rows:
                continue
            text.append(f"{title}\n", style="bold")
            width = max(len(k.keys) for k in rows)
            for row in rows:
                text.append(f"  {row.keys:<{width}}  ", style="bold")
                text.append(f"{row.description}\n")
            text.append("\n")
        if self.extra:
            text.append(self.extra)
        with Vertical(classes="dialog wide", id="help"):
            with VerticalScroll():
                yield Static(text, markup=False)
            yield Label("esc or ? closes · ctrl+p lists every command", classes="hint",
                        markup=False)

    def action_close(self) -> None:
        self.dismiss(None)
