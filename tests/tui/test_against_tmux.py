"""The terminal pane shows what tmux shows, cell by cell (text and attributes), and puts the
cursor where tmux does, for recorded output of real programs and hand-made byte streams.

Each fixture in tests/tui/fixtures/ (record.py and synthetic.py made them) is replayed into
a real tmux (tmux_oracle.py) and into the pane at the size it was recorded at, 80x24 or
120x40, resizes included.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest
from textual.app import App, ComposeResult

from tests.tui.tmux_oracle import FIXTURES, differences, events, load, pane_cells, tmux_screen
from tui.widgets.terminal import TerminalView


def _tmux_version() -> str:
    if shutil.which("tmux") is None:
        return ""
    return subprocess.run(["tmux", "-V"], capture_output=True, text=True).stdout.strip()


# The fixtures' expectations are tmux 3.3a's (Debian 12's): later tmux releases changed how
# wide a character with a variation selector is, among other things.
pytestmark = pytest.mark.skipif(_tmux_version() != "tmux 3.3a",
                                reason="needs tmux 3.3a, the reference these fixtures were "
                                       "checked against (Debian 12's; CI installs it)")

NAMES = sorted(path.name for path in FIXTURES.glob("*.json"))


class PaneApp(App, inherit_bindings=False):
    """A bare app holding one pane the size of the screen."""

    ENABLE_COMMAND_PALETTE = False

    def compose(self) -> ComposeResult:
        yield TerminalView(lambda data: None, id="term")


async def pane_screen(name: str):
    fixture = load(name)
    app = PaneApp()
    async with app.run_test(size=(fixture["cols"], fixture["rows"])) as pilot:
        view = app.query_one(TerminalView)
        for kind, value in events(fixture):
            if kind == "out":
                view.feed(value)
                async with asyncio.timeout(60):
                    while view.pending_bytes:
                        await pilot.pause(0.01)
            else:
                await pilot.resize_terminal(*value)
                async with asyncio.timeout(60):
                    while view.size_in_cells != value:
                        await pilot.pause(0.01)
        cursor = view._board.cursor
        return pane_cells(view), (cursor.x, cursor.y)


@pytest.mark.parametrize("name", NAMES)
async def test_the_pane_shows_what_tmux_shows(name: str, tmp_path: Path) -> None:
    expected, expected_cursor = tmux_screen(FIXTURES / name, tmp_path)
    actual, cursor = await pane_screen(name)
    assert not differences(expected, actual), differences(expected, actual)
    assert cursor == expected_cursor
