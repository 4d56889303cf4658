"""The dashboard is a usable screen at 80×24 (issue 13, major 3): every section can be reached,
the graphs are labelled and drawn on a fixed 0–100 % scale, `s` sorts a table you can see.
Against a real agent at 80×24, and as snapshots at 80×24 and 120×40 of samples recorded from
the agent's own collector (tests/tui/dashboard_sample.json)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from textual.app import App, ComposeResult
from textual.widgets import DataTable

from tests.tui.helpers import console, online_session, open_pane, screen_text, wait_until
from tui.screens.dashboard import DashboardScreen
from tui.widgets.dashboard import DashboardView, percent_rows

SAMPLES = json.loads((Path(__file__).parent / "dashboard_sample.json").read_text())


def test_a_graph_of_a_small_percentage_stays_small() -> None:
    """Memory at 5 % all along draws a sliver at the bottom, not a full-height block."""
    rows = percent_rows([5.0] * 10, width=10, height=3)
    assert rows[0].strip() == rows[1].strip() == ""
    assert set(rows[2]) == {"▁"}
    assert percent_rows([100.0, 50.0], width=2, height=2) == ["█ ", "██"]


async def shows(pilot, *words: str) -> None:
    """Wait until the screen shows every one of `words` (it repaints on the app's next turns)."""
    await wait_until(pilot, lambda: all(w in screen_text(pilot.app) for w in words),
                     what=f"the words {words}")


async def test_every_section_is_reachable_at_80x24_against_a_real_agent(
        relay, agents, tmp_path: Path) -> None:
    _view, _agent, token = await online_session(relay, agents, tmp_path, "dash@example.com")
    async with console(relay, token, size=(80, 24)) as (app, pilot, _table):
        view = (await open_pane(pilot, app, "d", DashboardScreen)).query_one(DashboardView)
        await wait_until(pilot, lambda: view.last_sample is not None, timeout=30)
        await shows(pilot, "CPU", "memory", "100%", "load", "up ")
        await pilot.press("2")
        await wait_until(pilot, lambda: view.tab == "processes")
        await shows(pilot, "pid")
        names = [str(view.query_one("#dash-processes", DataTable).get_row_at(0)[4])]
        assert names[0]
        await shows(pilot, names[0])
        await pilot.press("3")
        await wait_until(pilot, lambda: view.tab == "storage")
        await shows(pilot, "Disks", "Network", "mount")
        await pilot.press("4")
        await wait_until(pilot, lambda: view.tab == "log")
        await shows(pilot, "Failed units")
        # s sorts the processes, and shows them.
        await pilot.press("s")
        await wait_until(pilot, lambda: view.tab == "processes")
        assert view.process_sort == "memory"
        await pilot.press("ctrl+right_square_bracket")
        await app.action_quit()


class DashboardApp(App):
    """The dashboard view as the pane shows it, fed the recorded samples."""

    def __init__(self, tab: str) -> None:
        super().__init__()
        self.tab = tab

    def compose(self) -> ComposeResult:
        yield DashboardView(id="dashboard")

    def on_mount(self) -> None:
        view = self.query_one(DashboardView)
        last = SAMPLES["last"]
        for point in SAMPLES["series"]:
            view.show({**last, "cpu": {**last["cpu"], "percent": point["cpu"]},
                       "memory": {**last["memory"], "percent": point["memory"]}})
        view.show(last)
        view.show_tab(self.tab)


@pytest.fixture
def utc(monkeypatch):
    """Times are drawn in the local zone: the snapshots are taken in UTC."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
@pytest.mark.parametrize("tab", ["overview", "processes", "storage", "log"])
def test_dashboard_snapshots(snap_compare, utc, size, tab) -> None:
    async def settle(pilot) -> None:
        await pilot.pause(0.2)

    assert snap_compare(DashboardApp(tab), terminal_size=size, run_before=settle)
