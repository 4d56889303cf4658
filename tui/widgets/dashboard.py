"""The host's live system view: CPU and memory sparklines, load, disks, network, processes,
failed units and the journal tail. Every value came from the host, so all text is sanitised."""

from __future__ import annotations

from collections import deque

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widget import Widget
from textual.widgets import DataTable, Label, Sparkline, Static

from tui.sanitize import clean, plain

HISTORY = 120
PROCESS_SORTS = ("cpu", "memory", "name", "pid")


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
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0


class DashboardView(Widget):
    DEFAULT_CSS = """
    DashboardView { height: 1fr; }
    DashboardView .row { height: auto; }
    DashboardView Sparkline { height: 3; width: 1fr; margin: 0 1; }
    DashboardView .gauge { width: 1fr; height: 1; padding: 0 1; }
    DashboardView #dash-processes { height: 1fr; min-height: 6; }
    DashboardView #dash-disks, DashboardView #dash-net { height: auto; max-height: 8; width: 1fr; }
    DashboardView #dash-log { height: auto; max-height: 8; padding: 0 1; color: $text-muted; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.cpu_history: deque[float] = deque(maxlen=HISTORY)
        self.memory_history: deque[float] = deque(maxlen=HISTORY)
        self.process_sort = "cpu"
        self.last_sample: dict | None = None

    def compose(self) -> ComposeResult:
        yield Static("waiting for the first sample…", id="dash-summary", markup=False)
        with Horizontal(classes="row"):
            with Vertical():
                yield Label("CPU %", id="dash-cpu-label", classes="gauge")
                yield Sparkline([], id="dash-cpu")
            with Vertical():
                yield Label("memory %", id="dash-mem-label", classes="gauge")
                yield Sparkline([], id="dash-mem")
        with Horizontal(classes="row"):
            disks = DataTable(id="dash-disks", cursor_type="none", show_cursor=False)
            disks.add_columns("mount", "used", "size", "use%")
            yield disks
            net = DataTable(id="dash-net", cursor_type="none", show_cursor=False)
            net.add_columns("interface", "sent", "received")
            yield net
        processes = DataTable(id="dash-processes", cursor_type="row", zebra_stripes=True)
        processes.add_columns("pid", "user", "cpu%", "mem%", "name")
        yield processes
        yield Static("", id="dash-log", markup=False)

    def show(self, sample: dict) -> None:
        self.last_sample = sample
        cpu = sample.get("cpu") or {}
        memory = sample.get("memory") or {}
        swap = sample.get("swap") or {}
        load = sample.get("load") or []
        self.cpu_history.append(_number(cpu.get("percent")))
        self.memory_history.append(_number(memory.get("percent")))
        self.query_one("#dash-cpu", Sparkline).data = list(self.cpu_history)
        self.query_one("#dash-mem", Sparkline).data = list(self.memory_history)
        self.query_one("#dash-cpu-label", Label).update(
            f"CPU {_number(cpu.get('percent')):.0f}% of {clean(cpu.get('count'), 4)} cores")
        self.query_one("#dash-mem-label", Label).update(
            f"memory {_number(memory.get('percent')):.0f}% "
            f"({human_bytes(memory.get('used'))} of {human_bytes(memory.get('total'))}), "
            f"swap {_number(swap.get('percent')):.0f}%")
        loads = " ".join(f"{_number(x):.2f}" for x in list(load)[:3])
        self.query_one("#dash-summary", Static).update(
            f"{clean(sample.get('hostname'), 64)} · {clean(sample.get('os'), 60)} · up "
            f"{human_uptime(sample.get('uptime'))} · load {loads} · at "
            f"{clean(sample.get('at'), 30)}")
        disks = self.query_one("#dash-disks", DataTable)
        disks.clear()
        for disk in list(sample.get("disks") or [])[:32]:
            disks.add_row(plain(disk.get("mount"), 40), human_bytes(disk.get("used")),
                          human_bytes(disk.get("total")), f"{_number(disk.get('percent')):.0f}")
        net = self.query_one("#dash-net", DataTable)
        net.clear()
        for nic in list(sample.get("net") or [])[:32]:
            net.add_row(plain(nic.get("name"), 24), human_bytes(nic.get("bytes_sent")),
                        human_bytes(nic.get("bytes_recv")))
        self._show_processes()
        units = [clean(u, 120) for u in list(sample.get("failed_units") or [])[:10]]
        journal = [clean(line, 200) for line in list(sample.get("journal") or [])[-6:]]
        log = []
        if units:
            log.append("failed units: " + ", ".join(units))
        log += journal
        self.query_one("#dash-log", Static).update(Text("\n".join(log)))

    def _show_processes(self) -> None:
        if self.last_sample is None:
            return
        rows = [p for p in list(self.last_sample.get("processes") or []) if isinstance(p, dict)]
        key = self.process_sort
        if key in ("cpu", "memory"):
            rows.sort(key=lambda p: _number(p.get(key)), reverse=True)
        elif key == "pid":
            rows.sort(key=lambda p: _number(p.get("pid")))
        else:
            rows.sort(key=lambda p: clean(p.get("name")).lower())
        table = self.query_one("#dash-processes", DataTable)
        table.clear()
        for proc in rows[:50]:
            table.add_row(clean(proc.get("pid"), 10), plain(proc.get("user"), 16),
                          f"{_number(proc.get('cpu')):.1f}", f"{_number(proc.get('memory')):.1f}",
                          plain(proc.get("name"), 60))

    def cycle_process_sort(self) -> str:
        self.process_sort = PROCESS_SORTS[(PROCESS_SORTS.index(self.process_sort) + 1)
                                          % len(PROCESS_SORTS)]
        self._show_processes()
        return self.process_sort
