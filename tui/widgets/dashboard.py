"""The host's live system view, in four tabs that each fit 80×24: overview (CPU and memory
graphs on a fixed 0–100 % scale, load, uptime, swap), processes, disks and network, and the
log (failed units, journal tail). Every value came from the host: all text is cleaned."""

from __future__ import annotations

from collections import deque

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widget import Widget
from textual.widgets import Label, Static, TabbedContent, TabPane

from tui.sanitize import clean, plain
from tui.times import local_time
from tui.widgets.texttable import TextTable

HISTORY = 240
PROCESS_SORTS = ("cpu", "memory", "name", "pid")
# (tab id, title): the keys 1 to 4 pick them (tui/screens/dashboard.py).
TABS = (("overview", "1 Overview"), ("processes", "2 Processes"),
        ("storage", "3 Disks & network"), ("log", "4 Log"))
BARS = " ▁▂▃▄▅▆▇█"
JOURNAL_LINES = 200


def human_bytes(value: object) -> str:
    try:
        size = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "?"
    for unit in ("B", "K", "M", "G", "T"):
        if abs(size) < 1024 or unit == "T":
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    return "?"


def human_uptime(seconds: object) -> str:
    try:
        total = int(float(seconds))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "?"
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    return f"{days}d {hours}h {rest // 60}m" if days else f"{hours}h {rest // 60}m"


def _number(value: object) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0
    return number if number == number else 0.0  # NaN is no number


def percent_rows(values: list[float], width: int, height: int) -> list[str]:
    """A bar graph of percentages on a fixed 0–100 scale, newest at the right, one column
    per sample: 5 % draws a sliver, not a full bar (a graph scaled to its own data would)."""
    shown = values[-width:] if width > 0 else []
    levels = [round(max(0.0, min(100.0, v)) / 100 * height * 8) for v in shown]
    rows = []
    for row in reversed(range(height)):
        line = "".join(BARS[max(0, min(8, level - row * 8))] for level in levels)
        rows.append(line.rjust(width))
    return rows


class PercentGraph(Widget):
    """A percentage over time, labelled with what it is and its scale."""

    DEFAULT_CSS = """
    PercentGraph { height: 4; width: 1fr; color: $accent; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.values: deque[float] = deque(maxlen=HISTORY)

    def add(self, value: float) -> None:
        self.values.append(value)
        self.refresh()

    def render(self) -> Text:
        width, height = self.size.width, self.size.height
        rows = percent_rows(list(self.values), max(0, width - 5), height)
        scale = ["100%"] + [""] * (height - 2) + ["  0%"] if height >= 2 else [""] * height
        text = Text(no_wrap=True, overflow="crop")
        for index, (mark, row) in enumerate(zip(scale, rows, strict=True)):
            text.append(f"{mark:>4} ", style="dim")
            text.append(row)
            if index < height - 1:
                text.append("\n")
        return text


class DashboardView(Widget):
    DEFAULT_CSS = """
    DashboardView { height: 1fr; }
    DashboardView TabbedContent, DashboardView ContentSwitcher { height: 1fr; }
    DashboardView TabPane { padding: 0; height: 1fr; }
    DashboardView .graph-label { height: auto; padding: 0 1; text-style: bold; }
    DashboardView #dash-summary { height: auto; padding: 0 1; }
    DashboardView #dash-processes { height: 1fr; }
    DashboardView .storage-title { padding: 0 1; text-style: bold; }
    DashboardView #dash-disks, DashboardView #dash-net { height: auto; }
    DashboardView #dash-log-scroll { height: 1fr; padding: 0 1; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.process_sort = "cpu"
        self.last_sample: dict | None = None

    def compose(self) -> ComposeResult:
        with TabbedContent(initial="overview", id="dash-tabs"):
            with TabPane(TABS[0][1], id="overview"), VerticalScroll():
                yield Static("waiting for the first sample…", id="dash-summary",
                             markup=False)
                yield Label("CPU", id="dash-cpu-label", classes="graph-label",
                            markup=False)
                yield PercentGraph(id="dash-cpu")
                yield Label("memory", id="dash-mem-label", classes="graph-label",
                            markup=False)
                yield PercentGraph(id="dash-mem")
            with TabPane(TABS[1][1], id="processes"):
                processes = TextTable(id="dash-processes", cursor_type="row",
                                      zebra_stripes=True)
                processes.add_columns("pid", "user", "cpu%", "mem%", "name")
                yield processes
            with TabPane(TABS[2][1], id="storage"), VerticalScroll():
                yield Label("Disks", classes="storage-title", markup=False)
                disks = TextTable(id="dash-disks", cursor_type="none", show_cursor=False)
                disks.add_columns("mount", "used", "size", "use%")
                yield disks
                yield Label("Network (bytes since boot)", classes="storage-title",
                            markup=False)
                net = TextTable(id="dash-net", cursor_type="none", show_cursor=False)
                net.add_columns("interface", "sent", "received")
                yield net
            with TabPane(TABS[3][1], id="log"), VerticalScroll(id="dash-log-scroll"):
                yield Static("", id="dash-log", markup=False)

    def show_tab(self, tab: str) -> None:
        self.query_one("#dash-tabs", TabbedContent).active = tab

    @property
    def tab(self) -> str:
        return self.query_one("#dash-tabs", TabbedContent).active

    def show(self, sample: dict) -> None:
        if not isinstance(sample, dict):
            return
        self.last_sample = sample
        cpu = _mapping(sample.get("cpu"))
        memory = _mapping(sample.get("memory"))
        swap = _mapping(sample.get("swap"))
        load = sample.get("load") if isinstance(sample.get("load"), list) else []
        self.query_one("#dash-cpu", PercentGraph).add(_number(cpu.get("percent")))
        self.query_one("#dash-mem", PercentGraph).add(_number(memory.get("percent")))
        self.query_one("#dash-cpu-label", Label).update(
            f"CPU {_number(cpu.get('percent')):.0f}% of {clean(cpu.get('count'), 4)} cores "
            "(one column per sample)")
        self.query_one("#dash-mem-label", Label).update(
            f"memory {_number(memory.get('percent')):.0f}% "
            f"({human_bytes(memory.get('used'))} of {human_bytes(memory.get('total'))}) · "
            f"swap {_number(swap.get('percent')):.0f}%")
        loads = " ".join(f"{_number(x):.2f}" for x in load[:3])
        self.query_one("#dash-summary", Static).update(
            f"{clean(sample.get('hostname'), 64)} · {clean(sample.get('os'), 60)} · up "
            f"{human_uptime(sample.get('uptime'))} · load {loads} · sample at "
            f"{local_time(sample.get('at'))[11:]}")
        disks = self.query_one("#dash-disks", TextTable)
        disks.clear()
        for disk in _rows(sample.get("disks"))[:32]:
            disks.add_row(plain(disk.get("mount"), 40), human_bytes(disk.get("used")),
                          human_bytes(disk.get("total")), f"{_number(disk.get('percent')):.0f}")
        net = self.query_one("#dash-net", TextTable)
        net.clear()
        for nic in _rows(sample.get("net"))[:32]:
            net.add_row(plain(nic.get("name"), 24), human_bytes(nic.get("bytes_sent")),
                        human_bytes(nic.get("bytes_recv")))
        self._show_processes()
        self.query_one("#dash-log", Static).update(log_text(sample))

    def _show_processes(self) -> None:
        if self.last_sample is None:
            return
        rows = _rows(self.last_sample.get("processes"))
        key = self.process_sort
        if key in ("cpu", "memory"):
            rows.sort(key=lambda p: _number(p.get(key)), reverse=True)
        elif key == "pid":
            rows.sort(key=lambda p: _number(p.get("pid")))
        else:
            rows.sort(key=lambda p: clean(p.get("name")).lower())
        table = self.query_one("#dash-processes", TextTable)
        table.clear()
        for proc in rows[:200]:
            table.add_row(clean(proc.get("pid"), 10), plain(proc.get("user"), 16),
                          f"{_number(proc.get('cpu')):.1f}", f"{_number(proc.get('memory')):.1f}",
                          plain(proc.get("name"), 60))

    def cycle_process_sort(self) -> str:
        self.process_sort = PROCESS_SORTS[(PROCESS_SORTS.index(self.process_sort) + 1)
                                          % len(PROCESS_SORTS)]
        self._show_processes()
        return self.process_sort


def log_text(sample: dict) -> Text:
    units = [clean(u, 120) for u in _list(sample.get("failed_units"))[:50]]
    journal = [clean(line, 300) for line in _list(sample.get("journal"))[-JOURNAL_LINES:]]
    text = Text()
    text.append("Failed units: ", style="bold")
    text.append(", ".join(units) if units else "none")
    text.append("\n\nJournal (newest last)\n", style="bold")
    text.append("\n".join(journal) if journal else "(the host has no journal to show)")
    return text


def _mapping(value: object) -> dict:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list:
    return list(value) if isinstance(value, list) else []


def _rows(value: object) -> list[dict]:
    return [row for row in _list(value) if isinstance(row, dict)]
