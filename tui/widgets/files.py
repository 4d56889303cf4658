"""A file manager pane: one folder's listing (local or remote), sorted, with marks and details.

Names and owners may come from a hostile host: every one goes through tui.sanitize before it
is shown, and rows are keyed by position, never by name (a host can list a name twice).
"""

from __future__ import annotations

import stat
import time

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import DataTable, Static
from textual.widgets.data_table import ColumnKey

from tui.failures import connection_lost, reason
from tui.sanitize import clean, plain
from tui.transfers import DIR, LINK, Entry, LocalFiles, RemoteFiles
from tui.widgets.texttable import TextTable

SORTS = ("name", "size", "time")
UP = ".."
# Fixed widths for every column but the name, which takes the rest of the pane: a folder of
# long names must not push size, mode, owner and time out of sight. A narrow pane keeps them
# in KEEP order while the name keeps MIN_NAME; the details line under the table shows all
# of them for the highlighted entry anyway.
FIXED_COLUMNS = (("size", 7), ("mode", 10), ("owner", 8), ("modified", 16))
KEEP = ("size", "modified", "mode", "owner")
MIN_NAME = 20


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "K", "M", "G", "T"):
        if value < 1024 or unit == "T":
            return f"{int(value)}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return str(size)


def format_time(mtime: float) -> str:
    if not mtime:
        return ""
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(mtime))


def sort_entries(entries: list[Entry], key: str, show_hidden: bool) -> list[Entry]:
    """Folders first, then by name, size (largest first) or time (newest first)."""
    shown = [e for e in entries if show_hidden or not e.hidden]
    if key == "size":
        order = lambda e: (e.kind != DIR, -e.size, e.name.casefold())  # noqa: E731
    elif key == "time":
        order = lambda e: (e.kind != DIR, -e.mtime, e.name.casefold())  # noqa: E731
    else:
        order = lambda e: (e.kind != DIR, e.name.casefold(), e.name)  # noqa: E731
    return sorted(shown, key=order)


class PathLine(Static):
    """One line that keeps the end of a long path visible (the folder name matters most)."""

    def __init__(self, classes: str) -> None:
        super().__init__("", classes=classes, markup=False)
        self.value = ""

    def show(self, value: str) -> None:
        self.value = clean(value, 4096)
        self.refresh()

    def render(self) -> Text:
        width = max(1, self.size.width)
        value = self.value
        if len(value) > width:
            value = "…" + value[-(width - 1):]
        return Text(value, no_wrap=True, overflow="crop")


class FileTable(TextTable):
    """The listing itself; the pane around it knows the folder."""

    BINDINGS = [
        Binding("j", "cursor_down", "Down", show=False, id="files.down"),
        Binding("k", "cursor_up", "Up", show=False, id="files.up"),
        Binding("enter", "open", "Open folder", show=False, id="files.open"),
        Binding("backspace", "parent", "Parent folder", show=False, id="files.parent"),
        Binding("space", "mark", "Mark or unmark", show=False, id="files.mark"),
    ]

    def action_open(self) -> None:
        pane = self.pane
        if pane is not None:
            pane.open_highlighted()

    def action_parent(self) -> None:
        pane = self.pane
        if pane is not None:
            pane.go_up()

    def action_mark(self) -> None:
        pane = self.pane
        if pane is not None:
            pane.toggle_mark()

    @property
    def pane(self) -> FilePane | None:
        for node in self.ancestors:
            if isinstance(node, FilePane):
                return node
        return None


class FilePane(Vertical):
    """A folder on one side. `fs` is None until the side is ready (remote: SFTP connected)."""

    class Listed(Message):
        def __init__(self, path: str, entries: list[Entry], select: str | None) -> None:
            super().__init__()
            self.path = path
            self.entries = entries
            self.select = select

    class ListFailed(Message):
        def __init__(self, path: str, error: BaseException) -> None:
            super().__init__()
            self.path = path
            self.error = error

    def __init__(self, title: str, fs: LocalFiles | RemoteFiles | None = None, *,
                 id: str | None = None) -> None:
        super().__init__(id=id, classes="file-pane")
        self.title = title
        self.fs = fs
        self.path = ""
        self.entries: list[Entry] = []
        self.rows: list[Entry | None] = []  # None is the ".." row
        self.marked: set[str] = set()
        self.show_hidden = False
        self.sort_key = SORTS[0]
        self.message: str | None = None
        self.loaded = 0  # listings shown so far (tests wait on it)

    def compose(self) -> ComposeResult:
        yield PathLine(classes="pane-path")
        table = FileTable(cursor_type="row", zebra_stripes=False, classes="file-table")
        table.add_column("name", key="name", width=MIN_NAME)
        for label, width in FIXED_COLUMNS:
            table.add_column(label, key=label, width=width)
        yield table
        yield Static("", classes="pane-details", markup=False)

    def on_mount(self) -> None:
        self.border_title = plain(self.title)

    def on_resize(self) -> None:
        self.call_after_refresh(self._fit_columns)

    def _fit_columns(self) -> None:
        """The name column takes what the fixed ones leave; the columns the pane cannot
        hold at all (a narrow pane at 80 columns) go, from the right, time first."""
        table = self.table
        width = table.size.width - 1  # the scroll bar
        if width <= 0:
            return
        name_width = width - 2 * (1 + len(FIXED_COLUMNS))  # every cell's padding
        widths = dict(FIXED_COLUMNS)
        for label in KEEP:
            column = table.columns[ColumnKey(label)]
            fits = name_width - widths[label] >= MIN_NAME
            column.width = widths[label] if fits else 0
            column.auto_width = False
            if fits:
                name_width -= widths[label]
        name = table.columns[ColumnKey("name")]
        name.auto_width = False
        name.width = max(MIN_NAME, name_width)
        table._require_update_dimensions = True
        table._clear_caches()
        table.refresh()

    @property
    def table(self) -> FileTable:
        return self.query_one(FileTable)

    # --- loading -----------------------------------------------------------------------------

    def start(self, fs: LocalFiles | RemoteFiles, path: str) -> None:
        self.fs = fs
        self.message = None
        self.load(path)

    def show_message(self, text: str) -> None:
        """Say why this side has nothing to show (not connected, refused by the plan)."""
        self.message = text
        self.query_one(PathLine).show(text)
        self.query_one(".pane-details", Static).update(text)
        self.table.clear()
        self.rows = []

    def reload(self, select: str | None = None) -> None:
        if self.fs is not None and self.path:
            self.load(self.path, select or self.highlighted_name())

    @work(exclusive=True, group="list", exit_on_error=False)
    async def load(self, path: str, select: str | None = None) -> None:
        assert self.fs is not None
        try:
            resolved = await self.fs.resolve(path)
            entries = await self.fs.list(resolved)
        except Exception as exc:  # local and SFTP errors, a dropped connection
            self.post_message(self.ListFailed(path, exc))
            return
        self.post_message(self.Listed(resolved, entries, select))

    @on(Listed)
    def _listed(self, message: Listed) -> None:
        message.stop()
        if message.path != self.path:
            self.marked.clear()
        self.path = message.path
        self.entries = message.entries
        self.message = None
        self.query_one(PathLine).show(message.path)
        self._fill(message.select)
        self.loaded += 1

    @on(ListFailed)
    def _list_failed(self, message: ListFailed) -> None:
        message.stop()
        if connection_lost(message.error):
            step = "press ctrl+r to connect again once the host is back"
        else:
            step = "check the path (g goes to another)"
        self.app.notify(f"Cannot open {clean(message.path, 120)}: {reason(message.error)}; "
                        f"{step}.", severity="error")
        if not self.path:
            self.show_message(f"cannot open {clean(message.path, 120)}")

    def _fill(self, select: str | None = None) -> None:
        table = self.table
        table.clear()
        shown = sort_entries(self.entries, self.sort_key, self.show_hidden)
        self.rows = [None, *shown] if self.fs is not None and self._has_parent() else shown
        cursor = 0
        for index, entry in enumerate(self.rows):
            table.add_row(*self._cells(entry), key=str(index))
            if entry is not None and entry.name == select:
                cursor = index
        if self.rows:
            table.move_cursor(row=cursor)
        self._show_details()

    def _has_parent(self) -> bool:
        assert self.fs is not None
        return self.fs.parent(self.path) != self.path

    def _cells(self, entry: Entry | None) -> tuple:
        if entry is None:
            return (Text(UP + "/", style="bold"), Text("<up>"), "", "", "")
        mark = "* " if entry.name in self.marked else ""
        suffix = "/" if entry.kind == DIR else "@" if entry.kind == LINK else ""
        style = "bold" if entry.kind == DIR else "italic" if entry.kind == LINK else ""
        if entry.name in self.marked:
            style = f"{style} reverse".strip()
        name = Text(mark) + plain(entry.name, 120, style=style) + Text(suffix)
        name.no_wrap, name.overflow = True, "ellipsis"  # a cut name shows that it is cut
        size = Text("<dir>" if entry.kind == DIR else human_size(entry.size), justify="right")
        return (name, size, stat.filemode(entry.mode) if entry.mode else "?",
                plain(entry.owner, 16), format_time(entry.mtime))

    # --- what is highlighted and chosen ------------------------------------------------------

    def highlighted(self) -> Entry | None:
        row = self.table.cursor_row
        if 0 <= row < len(self.rows):
            return self.rows[row]
        return None

    def highlighted_name(self) -> str | None:
        entry = self.highlighted()
        return entry.name if entry is not None else None

    def chosen(self) -> list[Entry]:
        """The marked entries in this folder, or else the highlighted one."""
        marked = [e for e in self.rows if e is not None and e.name in self.marked]
        if marked:
            return marked
        entry = self.highlighted()
        return [entry] if entry is not None else []

    @on(DataTable.RowHighlighted)
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        event.stop()
        self._show_details()

    def count_text(self) -> str:
        """How many entries are listed, and how many hidden ones are not (. shows them)."""
        shown = sum(1 for e in self.rows if e is not None)
        hidden = 0 if self.show_hidden else sum(1 for e in self.entries if e.hidden)
        text = f"{shown} entr{'y' if shown == 1 else 'ies'}" if shown else "(empty)"
        return text + (f", {hidden} hidden (. shows them)" if hidden else "")

    def _show_details(self) -> None:
        entry = self.highlighted()
        details = self.query_one(".pane-details", Static)
        if entry is None:
            details.update(self.count_text())
            return
        what = {DIR: "folder", LINK: "symlink"}.get(entry.kind, "")
        size = "" if entry.kind == DIR else human_size(entry.size)
        details.update(Text(
            f"{stat.filemode(entry.mode) if entry.mode else '?'} {clean(entry.owner, 24)} "
            f"{size} {format_time(entry.mtime)} {what} {clean(entry.name, 200)}".replace(
                "  ", " "), no_wrap=True, overflow="ellipsis"))

    # --- navigation --------------------------------------------------------------------------

    def open_highlighted(self) -> None:
        entry = self.highlighted()
        if self.fs is None:
            return
        if entry is None:
            if self.rows and self.table.cursor_row == 0 and self.rows[0] is None:
                self.go_up()
            return
        if entry.kind in (DIR, LINK):
            self.enter(entry)

    @work(group="enter", exit_on_error=False)
    async def enter(self, entry: Entry) -> None:
        assert self.fs is not None
        try:
            is_dir = await self.fs.is_dir(entry.path)
        except Exception:
            is_dir = False
        if is_dir:
            self.load(entry.path)
        else:
            self.app.notify(f"{clean(entry.name, 80)} is not a folder.", severity="warning")

    def go_up(self) -> None:
        if self.fs is None or not self.path:
            return
        parent = self.fs.parent(self.path)
        if parent != self.path:
            name = self.path.rstrip("/").rsplit("/", 1)[-1]
            self.load(parent, name)

    def go_to(self, path: str) -> None:
        if self.fs is not None and path:
            self.load(path if path.startswith(("/", "~")) else self.fs.join(self.path, path))

    def toggle_mark(self) -> None:
        entry = self.highlighted()
        if entry is None:
            return
        self.marked.symmetric_difference_update({entry.name})
        row = self.table.cursor_row
        for column, value in enumerate(self._cells(entry)):
            self.table.update_cell_at((row, column), value)
        if row + 1 < len(self.rows):
            self.table.move_cursor(row=row + 1)

    def toggle_hidden(self) -> None:
        self.show_hidden = not self.show_hidden
        self._fill(self.highlighted_name())

    def cycle_sort(self) -> str:
        self.sort_key = SORTS[(SORTS.index(self.sort_key) + 1) % len(SORTS)]
        self._fill(self.highlighted_name())
        return self.sort_key

    def names(self) -> list[str]:
        """The names shown, in order (without the .. row)."""
        return [e.name for e in self.rows if e is not None]
