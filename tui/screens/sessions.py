"""The sessions list: the company's sessions at a glance, with the time left counting down."""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, Static

from tui.sanitize import clean, plain
from tui.times import format_left, parse_time
from tui.widgets.celltable import CellCachedTable

# The columns a technician needs first come first, so they stay visible at 80 columns.
# Fixed widths: the layout does not jump as rows arrive, and snapshots are stable.
COLUMNS = (("customer", "customer", 22), ("state", "state", 7), ("left", "time left", 14),
           ("online", "online", 12), ("host", "host", 32), ("mail", "mail", 10),
           ("technician", "tech", 10), ("id", "session", 16))
ENDED_REASONS = {"ended_by_technician": "by technician", "ended_by_customer": "by customer",
                 "expired": "expired", "invite_expired": "invite expired",
                 "code_attempts": "wrong codes", "ended_by_admin": "by admin"}
LEFT_COLUMN = [key for key, _, _ in COLUMNS].index("left")
SORTS = ("created", "customer", "state", "left")


def time_left(view: dict, now: float) -> Text:
    """From the absolute expiry, never by counting down (timers drop ticks when busy)."""
    if view["state"] == "active":
        expires = parse_time(view.get("expires_at"))
        return Text(format_left(expires - now) if expires else "?")
    if view["state"] == "pending":
        expires = parse_time(view.get("invite_expires_at"))
        return Text(f"invite {format_left(expires - now)}" if expires else "?", style="dim")
    reason = view.get("ended_reason") or ""
    return plain(ENDED_REASONS.get(reason, reason), 30, style="dim")


def host_text(view: dict) -> Text:
    host = view.get("host")
    if not host:
        return Text("—", style="dim")
    return plain(f"{clean(host.get('hostname'), 40)} ({clean(host.get('os'), 30)}, "
                 f"{clean(host.get('user'), 20)})", 100)


def online_text(view: dict) -> Text:
    if view["state"] != "active":
        return Text("")
    if view.get("online"):
        since = (view.get("online_since") or "")[11:16]
        return Text(f"online {since}".strip(), style="green")
    return Text("offline", style="yellow")


def look(text: Text) -> tuple:
    """What a cell shows (rich's Text equality ignores the base style)."""
    return text.plain, str(text.style), tuple(text.spans)


def row_cells(view: dict, now: float) -> tuple[Text, ...]:
    """One session's cells, in COLUMNS order."""
    return (plain(view["customer_email"], 60), state_text(view), time_left(view, now),
            online_text(view), host_text(view), mail_text(view), plain(view.get("technician")),
            Text(view["id"]))


def state_text(view: dict) -> Text:
    style = {"active": "bold", "ended": "dim"}.get(view["state"], "")
    return Text(view["state"], style=style)


def mail_text(view: dict) -> Text:
    status = clean(view.get("mail_status"), 20)
    if status == "failed":
        return plain(f"failed ({clean(view.get('mail_detail'), 60)})", style="red")
    return Text(status)


class SessionsScreen(Screen):
    BINDINGS = [
        Binding("n", "app.new_session", "New", id="sessions.new"),
        Binding("r,enter", "app.remote", "Remote", id="sessions.remote"),
        Binding("f", "app.files", "Files", id="sessions.files"),
        Binding("d", "app.dashboard", "Dash", id="sessions.dashboard"),
        Binding("t", "app.chat", "Chat", id="sessions.chat"),
        Binding("e", "app.end_session", "End", id="sessions.end"),
        Binding("c", "app.reissue_code", "Code", show=False, id="sessions.code"),
        Binding("a", "app.audit", "Audit", show=False, id="sessions.audit"),
        Binding("slash", "filter", "Filter", id="sessions.filter"),
        Binding("s", "cycle_sort", "Sort", show=False, id="sessions.sort"),
        Binding("j", "cursor_down", "Down", show=False, id="sessions.down"),
        Binding("k", "cursor_up", "Up", show=False, id="sessions.up"),
        Binding("question_mark", "app.help", "Help", id="sessions.help"),
        Binding("q", "app.quit", "Quit", id="sessions.quit"),
    ]

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.clock = clock
        self.views: dict[str, dict] = {}
        self.filter_text = ""
        self.sort_key = "created"
        self._shown: list[dict] = []  # the rows as last drawn, in order
        self._looks: dict[str, list[tuple]] = {}  # session id -> look of each cell drawn

    def compose(self) -> ComposeResult:
        yield Static("", id="banner", markup=False)
        yield Static("Loading sessions…", id="limits", markup=False)
        table = CellCachedTable(id="sessions", cursor_type="row", zebra_stripes=True)
        for key, label, width in COLUMNS:
            table.add_column(label, key=key, width=width)
        yield table
        yield Input(placeholder="filter: customer, host, state, id (esc clears)", id="filter")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#filter", Input).display = False
        self.query_one("#banner", Static).display = False
        self.set_interval(1.0, self.tick)
        self.query_one(DataTable).focus()

    @property
    def table(self) -> DataTable:
        return self.query_one("#sessions", DataTable)

    def selected_id(self) -> str | None:
        table = self.table
        if table.row_count == 0:
            return None
        row_key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
        return row_key.value

    def set_banner(self, text: str | None) -> None:
        banner = self.query_one("#banner", Static)
        banner.display = bool(text)
        banner.update(text or "")

    def show(self, views: list[dict], limits: dict | None) -> None:
        self.views = {v["id"]: v for v in views}
        if limits:
            self.query_one("#limits", Static).update(
                f"{clean(limits.get('company'))} · plan {clean(limits.get('plan'))} · "
                f"live sessions {limits.get('live_for_company')}/"
                f"{min(limits.get('seats', 0), limits.get('max_live_per_company', 5))} "
                f"(seats {limits.get('seats')}, company max "
                f"{limits.get('max_live_per_company')}) · yours "
                f"{limits.get('live_for_technician')}/{limits.get('max_live_per_technician')}")
        self.rebuild()

    def _visible(self) -> list[dict]:
        needle = self.filter_text.lower()
        rows = [v for v in self.views.values() if not needle or needle in " ".join(
            str(x) for x in (v["customer_email"], v["state"], v["id"], v.get("technician"),
                             (v.get("host") or {}).get("hostname"))).lower()]
        now = self.clock()
        keys = {
            "created": lambda v: v.get("created_at") or "",
            "customer": lambda v: v["customer_email"],
            "state": lambda v: ("active", "pending", "ended").index(v["state"]),
            "left": lambda v: (parse_time(v.get("expires_at")) or now) - now,
        }
        return sorted(rows, key=keys[self.sort_key], reverse=self.sort_key == "created")

    def rebuild(self) -> None:
        """Draw the visible sessions. When the rows and their order are what is on screen
        already (a refresh after an event, usually), only the cells that changed are
        redrawn: the cursor and scroll stay put and a thousand rows cost little."""
        table = self.table
        now = self.clock()
        shown = self._visible()
        if [v["id"] for v in shown] == [v["id"] for v in self._shown]:
            for drawn, view in zip(self._shown, shown, strict=True):
                if view != drawn:  # the countdown is the tick's
                    for index, cell in enumerate(row_cells(view, now)):
                        self._set_cell(view["id"], index, cell)
            self._shown = shown
            return
        selected = self.selected_id()
        table.clear()
        self._shown = shown
        self._looks = {}
        for view in shown:
            cells = row_cells(view, now)
            self._looks[view["id"]] = [look(cell) for cell in cells]
            table.add_row(*cells, key=view["id"])
        if selected is not None and selected in self.views:
            try:
                table.move_cursor(row=table.get_row_index(selected))
            except Exception:
                pass

    def _set_cell(self, session_id: str, index: int, cell: Text) -> None:
        looks = self._looks[session_id]
        cell_look = look(cell)
        if cell_look != looks[index]:
            looks[index] = cell_look
            self.table.update_cell(session_id, COLUMNS[index][0], cell)

    def tick(self) -> None:
        """Refresh the countdown cells of the rows on screen, once a second (a list of a
        thousand sessions costs no more than the rows the technician can see, and a cell
        is redrawn only when its text changes)."""
        table = self.table
        now = self.clock()
        first = int(table.scroll_offset.y)
        for view in self._shown[first:first + table.size.height]:
            if view["state"] != "ended":
                self._set_cell(view["id"], LEFT_COLUMN, time_left(view, now))

    def action_cursor_down(self) -> None:
        self.table.action_cursor_down()

    def action_cursor_up(self) -> None:
        self.table.action_cursor_up()

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.display = True
        box.focus()

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.filter_text = event.value.strip()
        self.rebuild()

    @on(Input.Submitted, "#filter")
    def _filter_done(self) -> None:
        self.table.focus()

    def key_escape(self) -> None:
        box = self.query_one("#filter", Input)
        if box.display:
            box.value = ""
            box.display = False
            self.table.focus()

    def action_cycle_sort(self) -> None:
        self.sort_key = SORTS[(SORTS.index(self.sort_key) + 1) % len(SORTS)]
        self.notify(f"sorted by {self.sort_key}", timeout=2)
        self.rebuild()
