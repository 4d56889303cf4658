"""The sessions list draws what changed, and only that, once a second and after each event.

A list of many sessions sits open on a technician's screen all day; its one-second countdown
and the refreshes that follow relay events must not redraw the whole table each time (see
docs/BENCHMARKS.md, Console). These tests read the rendered lines, as a technician would,
and count the cells Rich actually renders.
"""

from __future__ import annotations

import inspect
from datetime import UTC, datetime, timedelta

import pytest
from textual.app import App
from textual.widgets import DataTable

from tui.screens.sessions import SessionsScreen
from tui.widgets.celltable import CellCachedTable

START = datetime(2030, 1, 15, 12, 0, tzinfo=UTC)


def views(count: int) -> list[dict]:
    made = []
    for n in range(count):
        state = ("active", "pending", "ended")[n % 3]
        made.append({
            "id": f"s{n:015d}", "state": state, "customer_email": f"customer{n}@example.com",
            "technician": "alice", "created_at": (START - timedelta(minutes=n)).isoformat(),
            "expires_at": (START + timedelta(hours=5, minutes=n)).isoformat(),
            "invite_expires_at": (START + timedelta(minutes=30)).isoformat(),
            "online": True, "online_since": START.isoformat(),
            "host": {"hostname": f"host{n}", "os": "Linux", "user": "root"}
            if state == "active" else None,
            "mail_status": "sent", "ended_reason": "expired" if state == "ended" else None})
    return made


class ListApp(App):
    def __init__(self, sessions: list[dict]) -> None:
        super().__init__()
        self.now = START.timestamp()
        self.sessions = sessions
        self.list = SessionsScreen(clock=lambda: self.now)

    async def on_mount(self) -> None:
        await self.push_screen(self.list)
        self.list.show(self.sessions, None)


def lines(table: DataTable) -> list[str]:
    """The table as drawn: header first, then the rows in view."""
    return [table.render_line(y).text for y in range(table.size.height)]


def line_of(table: DataTable, customer: str) -> str:
    return next(line for line in lines(table) if f" {customer}@" in line)


@pytest.fixture
def rendered(monkeypatch) -> list[tuple[int, int]]:
    """Every cell Rich renders for a DataTable, as (row, column)."""
    calls: list[tuple[int, int]] = []
    real = DataTable._render_cell

    def counting(self, row_index, column_index, *args, **kwargs):
        calls.append((row_index, column_index))
        return real(self, row_index, column_index, *args, **kwargs)

    monkeypatch.setattr(DataTable, "_render_cell", counting)
    return calls


async def test_countdown_tick_redraws_only_the_countdown(rendered) -> None:
    app = ListApp(views(300))
    async with app.run_test(size=(120, 40)) as pilot:
        table = app.list.table
        await pilot.pause()
        assert "5:00:00" in line_of(table, "customer0")
        assert "invite 30:00" in line_of(table, "customer1")
        assert "expired" in line_of(table, "customer2")
        first_draw = len(rendered)
        assert first_draw > 8 * 30  # every cell of a screenful, once

        rendered.clear()
        app.now += 1
        app.list.tick()
        await pilot.pause()
        # What the technician sees moved by a second; ended sessions keep their reason.
        assert "4:59:59" in line_of(table, "customer0")
        assert "invite 29:59" in line_of(table, "customer1")
        assert "expired" in line_of(table, "customer2")
        # Rich rendered the countdown cells of the live rows in view, and nothing else
        # (a plain DataTable renders all eight columns of every row in view again).
        rows_in_view = table.size.height - 1
        live_in_view = sum(1 for n in range(rows_in_view) if n % 3 != 2)
        redrawn = {cell for cell in rendered if cell[0] >= 0}
        assert {column for _, column in redrawn} == {2}
        assert len(redrawn) == live_in_view

        # A tick in which no text changes (ended sessions only) renders nothing at all.
        rendered.clear()
        app.list.show([v for v in app.sessions if v["state"] == "ended"], None)
        await pilot.pause()
        rendered.clear()
        app.now += 1
        app.list.tick()
        await pilot.pause()
        assert rendered == []


async def test_refresh_redraws_the_changed_row_and_keeps_the_cursor(rendered) -> None:
    sessions = views(300)
    app = ListApp(sessions)
    async with app.run_test(size=(120, 40)) as pilot:
        table = app.list.table
        await pilot.pause()
        for _ in range(45):  # past the first screenful: the table scrolls
            await pilot.press("j")
        await pilot.pause()
        scrolled = table.scroll_offset.y
        assert scrolled > 0
        assert app.list.selected_id() == "s000000000000045"

        # A presence event: the relay's whole list again, as new objects, one host offline.
        again = [dict(view) for view in sessions]
        again[42]["online"] = False
        rendered.clear()
        app.list.show(again, None)
        await pilot.pause()
        assert "offline" in line_of(table, "customer42")
        assert "online" in line_of(table, "customer45")
        assert app.list.selected_id() == "s000000000000045"
        assert table.scroll_offset.y == scrolled
        redrawn = {cell for cell in rendered if cell[0] >= 0}
        assert redrawn == {(42, 3)}

        # A new session changes the order: the list is built again, the cursor stays on
        # the session it was on.
        newest = views(1)[0] | {"id": "snew00000000000", "customer_email": "new@example.com",
                                "created_at": (START + timedelta(minutes=1)).isoformat()}
        app.list.show([newest, *again], None)
        await pilot.pause()
        assert table.row_count == 301
        assert app.list.selected_id() == "s000000000000045"
        table.move_cursor(row=0)
        await pilot.pause()
        assert "new@example.com" in lines(table)[1]


async def test_a_filter_that_hides_the_selected_session_and_a_wanted_one_not_yet_listed(
        ) -> None:
    sessions = views(10)
    app = ListApp(sessions)
    async with app.run_test(size=(120, 40)) as pilot:
        table = app.list.table
        await pilot.pause()
        await pilot.press("j", "j")
        assert app.list.selected_id() == "s000000000000002"
        # Filtered out: the list shows what matches, the cursor on its first row.
        app.list.filter_text = "customer7@"
        app.list.rebuild()
        await pilot.pause()
        assert table.row_count == 1 and app.list.selected_id() == "s000000000000007"
        app.list.filter_text = ""
        app.list.rebuild()
        # Wanted before the relay lists it (just created): selected as soon as it is.
        app.list.select("snew00000000000")
        assert app.list.wanted == "snew00000000000"
        newest = views(1)[0] | {"id": "snew00000000000", "customer_email": "new@example.com"}
        app.list.show([*sessions, newest], None)
        await pilot.pause()
        assert app.list.selected_id() == "snew00000000000" and app.list.wanted is None


async def test_cursor_focus_and_theme_still_redraw_rows() -> None:
    app = ListApp(views(30))
    async with app.run_test(size=(120, 40)) as pilot:
        table = app.list.table
        await pilot.pause()
        row_one = table.render_line(2)
        await pilot.press("j")
        await pilot.pause()
        highlighted = table.render_line(2)
        assert highlighted.text == row_one.text
        assert list(highlighted) != list(row_one)  # the cursor's colours, not the cache's
        await pilot.press("k")
        await pilot.pause()
        assert list(table.render_line(2)) == list(row_one)

        # Focus leaves the table: the cursor row's look changes with it.
        focused_cursor = list(table.render_line(1))
        table.blur()
        await pilot.pause()
        assert list(table.render_line(1)) != focused_cursor

        # A theme change repaints every cell in the new colours.
        before = table.render_line(3)
        app.theme = "nord" if app.theme != "nord" else "gruvbox"
        await pilot.pause()
        assert table.render_line(3).text == before.text
        assert list(table.render_line(3)) != list(before)


def test_the_textual_hooks_it_relies_on_are_there() -> None:
    """CellCachedTable overrides DataTable internals; a textual release that renames or
    reshapes them must fail here rather than leave a stale table on screen."""
    params = list(inspect.signature(DataTable._render_cell).parameters)
    assert params == ["self", "row_index", "column_index", "base_style", "width", "cursor",
                      "hover"]
    assert callable(DataTable._clear_caches)
    assert CellCachedTable._render_cell is not DataTable._render_cell


async def test_an_offline_hosts_problem_shows_on_its_row() -> None:
    """What the agent told the relay (it cannot connect, and why) is on the technician's row,
    as text, until the host is back."""
    problem = ("refused: relay.example:8722 refused the connection: the relay may be down, or "
               "a firewall rejects it (tried SSH to relay.example:8722); blocked: the proxy "
               "[bold]proxy:3128[/] (HTTPS_PROXY) refused to connect to relay.example:443 "
               "(HTTP 403): it may block this address or port (tried SSH over WebSocket to "
               "wss://relay.example/api/v1/ssh through the proxy proxy:3128 (HTTPS_PROXY))")
    sessions = views(1)
    sessions[0].update(online=False, host_problem={"text": problem, "at": START.isoformat()})
    app = ListApp(sessions)
    async with app.run_test(size=(200, 10)) as pilot:
        await pilot.pause()
        row = line_of(app.list.table, "customer0")
        assert "offline !" in row
        assert "refused, blocked" in row
        app.list.show([{**sessions[0], "online": True}], None)
        await pilot.pause()
        row = line_of(app.list.table, "customer0")
        assert "refused" not in row and "host0 (Linux, root)" in row
