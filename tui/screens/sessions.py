"""The sessions list: the company's sessions at a glance, with the time left counting down."""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, Static
from textual.widgets.data_table import RowDoesNotExist

from common.reach import summary
from tui.sanitize import clean, plain
from tui.times import format_left, local_time, parse_time
from tui.widgets.bounded import BoundedInput
from tui.widgets.celltable import CellCachedTable

# Every column: key, label, width (0: shares what the fixed ones leave, by weight).
COLUMNS = {"customer": ("customer", 0), "state": ("state", 7), "left": ("time left", 13),
           "online": ("online", 12), "host": ("host", 0), "mail": ("mail", 8),
           "technician": ("tech", 10), "id": ("session", 16)}
# Which columns, by the width there is: all of them from WIDE columns on; below that what a
# technician needs to act (the host is in the pane's status line and `i`), and always the
# id (for ssh -J). The widths do not jump as rows arrive, and snapshots are stable.
WIDE = 110
WIDE_LAYOUT = ("customer", "state", "left", "online", "host", "mail", "technician", "id")
NARROW_LAYOUT = ("customer", "state", "left", "online", "id")
FLEX_WEIGHTS = {"customer": 0.55, "host": 0.45}
NARROW_ONLINE = 7  # "offline": the time it came online needs the wide layout
ENDED_REASONS = {"ended_by_technician": "by technician", "ended_by_customer": "by customer",
                 "expired": "expired", "invite_expired": "link expired",
                 "code_attempts": "wrong codes", "ended_by_admin": "by admin"}
SORTS = ("created", "customer", "state", "left")


def layout(width: int) -> list[tuple[str, str, int]]:
    """The columns (key, label, width) for a table `width` cells wide."""
    keys = WIDE_LAYOUT if width >= WIDE else NARROW_LAYOUT
    widths = {key: COLUMNS[key][1] for key in keys}
    if width < WIDE:
        widths["online"] = NARROW_ONLINE
    padding = 2 * len(keys) + 1  # a space each side of every cell, and the scroll bar
    free = max(0, width - padding - sum(widths.values()))
    flex = [key for key in keys if widths[key] == 0]
    total = sum(FLEX_WEIGHTS[key] for key in flex)
    for key in flex:
        widths[key] = max(12, int(free * FLEX_WEIGHTS[key] / total))
    return [(key, COLUMNS[key][0], widths[key]) for key in keys]


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


def host_problem(view: dict) -> str | None:
    """Why the host cannot connect, as its agent last told the relay (while offline)."""
    problem = view.get("host_problem")
    if view["state"] != "active" or view.get("online") or not isinstance(problem, dict):
        return None
    return str(problem.get("text") or "") or None


def host_text(view: dict) -> Text:
    problem = host_problem(view)
    if problem:  # what kind of failure first: the column is narrow
        return plain(summary(problem), 300, style="red")
    host = view.get("host")
    if not host:
        return Text("—", style="dim")
    return plain(f"{clean(host.get('hostname'), 40)} ({clean(host.get('os'), 30)}, "
                 f"{clean(host.get('user'), 20)})", 100)


def online_text(view: dict) -> Text:
    if view["state"] != "active":
        return Text("")
    if view.get("online"):
        since = local_time(view.get("online_since"))[11:16] if view.get("online_since") \
            else ""
        return Text(f"online {since}".strip(), style="green")
    if host_problem(view):
        return Text("offline !", style="red")
    return Text("offline", style="yellow")


def look(text: Text) -> tuple:
    """What a cell shows (rich's Text equality ignores the base style)."""
    return text.plain, str(text.style), tuple(text.spans)


def row_cells(view: dict, now: float, keys: tuple[str, ...] | list[str]) -> list[Text]:
    """One session's cells for the columns `keys`."""
    cells = {"customer": lambda: plain(view["customer_email"], 60),
             "state": lambda: state_text(view), "left": lambda: time_left(view, now),
             "online": lambda: online_text(view), "host": lambda: host_text(view),
             "mail": lambda: mail_text(view), "technician": lambda: plain(view.get("technician")),
             "id": lambda: plain(view["id"], 40)}
    return [cells[key]() for key in keys]


def state_text(view: dict) -> Text:
    style = {"active": "bold", "ended": "dim"}.get(view["state"], "")
    return Text(clean(view["state"], 20), style=style)


def mail_text(view: dict) -> Text:
    status = clean(view.get("mail_status"), 20)
    if status == "failed":
        return plain(f"failed ({clean(view.get('mail_detail'), 60)})", style="red")
    return Text(status)


def limits_text(limits: dict) -> str:
    """The company's and technician's numbers as the relay gives them, each shown as text."""
    def number(key: str, default: int = 0) -> int | str:
        value = limits.get(key, default)
        return value if isinstance(value, int) else clean(value, 12)

    seats, most = number("seats"), number("max_live_per_company", 5)
    shown = min(seats, most) if isinstance(seats, int) and isinstance(most, int) else seats
    return (f"{clean(limits.get('company'))} · plan {clean(limits.get('plan'))} · "
            f"live sessions {number('live_for_company')}/{shown} (seats {seats}, company max "
            f"{most}) · yours {number('live_for_technician')}/"
            f"{number('max_live_per_technician')}")

class SessionsScreen(Screen):
    # The columns are laid out for the width there is (layout() counts this scroll bar).
    DEFAULT_CSS = """
    #sessions { overflow-x: hidden; scrollbar-size-vertical: 1; }
    """
    BINDINGS = [
        Binding("n", "app.new_session", "New", id="sessions.new",
                tooltip="new session: invite a customer by email"),
        # enter is the table's (it opens the shell too: _row_selected); named for ? help
        Binding("r,enter", "app.remote", "Remote", id="sessions.remote",
                tooltip="remote control: a live shell on the customer's computer"),
        Binding("f", "app.files", "Files", id="sessions.files",
                tooltip="file manager: this computer beside the customer's"),
        Binding("d", "app.dashboard", "Dash", id="sessions.dashboard",
                tooltip="dashboard: CPU, memory, processes, disks, log"),
        Binding("t", "app.chat", "Chat", id="sessions.chat", tooltip="chat with the customer"),
        Binding("e", "app.end_session", "End", id="sessions.end",
                tooltip="end the session (asks first)"),
        Binding("i", "app.details", "Details", show=False, id="sessions.details",
                tooltip="details: host, host key fingerprint, times, the ssh -J line"),
        Binding("c", "app.reissue_code", "New code", show=False, id="sessions.code",
                tooltip="a new security code for a session still waiting for one"),
        Binding("a", "app.audit", "Audit", show=False, id="sessions.audit",
                tooltip="audit trail: who did what (enter opens a row)"),
        Binding("o", "app.openssh", "OpenSSH", show=False, id="sessions.openssh",
                tooltip="OpenSSH: the ssh command to copy, and forwarding a local port"),
        Binding("slash", "filter", "Filter", id="sessions.filter",
                tooltip="filter by customer, host, state or id (esc clears)"),
        Binding("s", "cycle_sort", "Sort", show=False, id="sessions.sort",
                tooltip="sort by created, customer, state, time left"),
        Binding("j", "cursor_down", "Down", show=False, id="sessions.down"),
        Binding("k", "cursor_up", "Up", show=False, id="sessions.up"),
        Binding("question_mark", "app.help", "Help", id="sessions.help",
                tooltip="this list of keys"),
        Binding("q", "app.quit", "Quit", id="sessions.quit"),
    ]

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.clock = clock
        self.views: dict[str, dict] = {}
        self.filter_text = ""
        self.sort_key = "created"
        self.columns: list[tuple[str, str, int]] = []
        self.wanted: str | None = None  # a session to select once it is listed
        self._shown: list[dict] = []  # the rows as last drawn, in order
        self._looks: dict[str, dict[str, tuple]] = {}  # id -> column -> look of its cell

    @property
    def keys(self) -> list[str]:
        return [key for key, _label, _width in self.columns]

    def compose(self) -> ComposeResult:
        yield Static("", id="banner", markup=False)
        yield Static("Loading sessions…", id="limits", markup=False)
        table = CellCachedTable(id="sessions", cursor_type="row", zebra_stripes=True)
        self.columns = layout(self.app.size.width)
        for key, label, width in self.columns:
            table.add_column(label, key=key, width=width)
        yield table
        yield BoundedInput(placeholder="filter: customer, host, state, id (esc clears)",
                           id="filter", max_length=200, what="the filter")
        yield Footer(show_command_palette=False)  # ctrl+p still opens it; ? says so

    def on_mount(self) -> None:
        self.query_one("#filter", Input).display = False
        self.query_one("#banner", Static).display = False
        self.set_interval(1.0, self.tick)
        self.query_one(DataTable).focus()

    class Back(Message):
        """The list is on screen again (a pane was left: if its session ended, it can go)."""

    def on_screen_resume(self) -> None:
        self.post_message(self.Back())

    def on_resize(self) -> None:
        self.call_after_refresh(self._relayout)  # once the table has its new size

    def _relayout(self) -> None:
        """Lay the columns out for the width the table has now (80 columns and up)."""
        if not self.is_attached or not self.table.size.width:
            return
        columns = layout(self.table.size.width)
        if columns == self.columns:
            return
        self.columns = columns
        table = self.table
        selected = self.selected_id()
        table.clear(columns=True)
        for key, label, width in columns:
            table.add_column(label, key=key, width=width)
        self._shown = []
        if selected is not None:
            self.wanted = self.wanted or selected
        self.rebuild()

    @property
    def table(self) -> DataTable:
        return self.query_one("#sessions", DataTable)

    def selected_id(self) -> str | None:
        table = self.table
        if table.row_count == 0:
            return None
        row_key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
        return row_key.value

    def select(self, session_id: str) -> None:
        """Put the cursor on this session, now or as soon as the list has it (after a
        create, so the next key acts on the new session, not on another customer's)."""
        self.wanted = session_id
        self._select_wanted()

    def _select_wanted(self) -> None:
        if self.wanted is None:
            return
        try:
            row = self.table.get_row_index(self.wanted)
        except RowDoesNotExist:  # not listed yet (or filtered out)
            return
        self.table.move_cursor(row=row)
        self.wanted = None

    @on(DataTable.RowSelected, "#sessions")
    def _row_selected(self) -> None:
        """enter (or a click on the highlighted row) opens the shell, as r does."""
        self.app.action_remote()

    def set_banner(self, text: str | None) -> None:
        banner = self.query_one("#banner", Static)
        banner.display = bool(text)
        banner.update(text or "")

    def show(self, views: list[dict], limits: dict | None) -> None:
        self.views = {v["id"]: v for v in views}
        if limits:
            self.query_one("#limits", Static).update(limits_text(limits))
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
        keys = self.keys
        if [v["id"] for v in shown] == [v["id"] for v in self._shown]:
            for drawn, view in zip(self._shown, shown, strict=True):
                if view != drawn:  # the countdown is the tick's
                    for key, cell in zip(keys, row_cells(view, now, keys), strict=True):
                        self._set_cell(view["id"], key, cell)
            self._shown = shown
            self._select_wanted()
            return
        selected = self.selected_id()
        table.clear()
        self._shown = shown
        self._looks = {}
        for view in shown:
            cells = row_cells(view, now, keys)
            self._looks[view["id"]] = {k: look(c) for k, c in zip(keys, cells, strict=True)}
            table.add_row(*cells, key=view["id"])
        if selected is not None and selected in self._looks:  # still shown (not filtered out)
            table.move_cursor(row=table.get_row_index(selected))
        self._select_wanted()

    def _set_cell(self, session_id: str, key: str, cell: Text) -> None:
        looks = self._looks[session_id]
        cell_look = look(cell)
        if cell_look != looks.get(key):
            looks[key] = cell_look
            self.table.update_cell(session_id, key, cell)

    def tick(self) -> None:
        """Refresh the countdown cells of the rows on screen, once a second (a list of a
        thousand sessions costs no more than the rows the technician can see, and a cell
        is redrawn only when its text changes)."""
        table = self.table
        now = self.clock()
        first = int(table.scroll_offset.y)
        for view in self._shown[first:first + table.size.height]:
            if view["state"] != "ended":
                self._set_cell(view["id"], "left", time_left(view, now))

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
        self.notify(f"Sorted by {self.sort_key}.", timeout=2)
        self.rebuild()
