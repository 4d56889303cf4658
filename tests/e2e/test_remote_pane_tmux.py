"""The remote terminal pane as a technician uses it: the real console in tmux, through a real
relay to a real agent's PTY, checked with the programs a technician runs."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support import SESSION_PASSWORD, Api, console_login, start_session
from tests.tmux import Tmux

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None,
                                reason="tmux is not installed; CI installs it")

PROMPT = r"(?m)[#$] *$"


class ConsoleTmux(Tmux):
    """tmux holding the console, with what these tests also do to its window."""

    def coloured_screen(self) -> str:
        """The window's text with its colours and attributes as escape sequences."""
        return subprocess.run([*self.base, "capture-pane", "-p", "-e", "-t", self.name],
                              capture_output=True, text=True).stdout

    def resize(self, cols: int, rows: int) -> None:
        subprocess.run([*self.base, "resize-window", "-t", self.name, "-x", str(cols),
                        "-y", str(rows)], check=True)


@contextlib.asynccontextmanager
async def remote_pane(relay, agents, tmp_path: Path, cols: int, rows: int
                      ) -> AsyncIterator[ConsoleTmux]:
    """The console in a tmux window of cols x rows, its remote pane open on a live shell."""
    async with Api(relay.base_url) as api:
        await start_session(api, agents, tmp_path)
    env = console_login(relay.base_url, tmp_path / "console-config")
    tmux = ConsoleTmux("adhoc", tmp_path / "tmux.sock")
    tmux.start(f"{sys.executable} -m tui.cli", env, cols=cols, rows=rows)
    try:
        tmux.wait_for(r"customer@example\.com .*active")
        tmux.keys("r")
        tmux.wait_for("Session password for")
        tmux.type(SESSION_PASSWORD)
        tmux.keys("Enter")
        tmux.wait_for(r"· connected ·")
        tmux.wait_for(PROMPT)
        yield tmux
    finally:
        tmux.kill()


@pytest.mark.parametrize(("cols", "rows"), [(120, 40), (80, 24)])
async def test_the_shell_starts_at_the_panes_size(relay, agents, tmp_path: Path, cols: int,
                                                  rows: int) -> None:
    # The status bar takes one row; the rest is the remote PTY, from its first byte on.
    async with remote_pane(relay, agents, tmp_path, cols, rows) as tmux:
        tmux.type("stty size")
        tmux.keys("Enter")
        tmux.wait_for(rf"(?m)^{rows - 1} {cols}\s*$")
        # The window changes size while the list is on view: back in the pane, the shell
        # has the pane's new size.
        tmux.keys("C-]")
        tmux.wait_for(r"customer@example\.com .*active")
        tmux.resize(cols - 10, rows - 4)
        # Typed as soon as the pane shows: the shell has its new size before the first key.
        tmux.keys("r")
        tmux.wait_for(r"· connected ·")
        tmux.type("echo size-$(stty size)-")
        tmux.keys("Enter")
        answer = tmux.wait_for(r"size-(\d+) (\d+)-")
        assert (int(answer[1]), int(answer[2])) == (rows - 5, cols - 10), answer.group(0)


async def test_a_quick_esc_colon_reaches_vim_as_typed(relay, agents, tmp_path: Path) -> None:
    # Esc then :q! typed faster than Textual's escape delay: vim must see Esc, then :q!,
    # and quit without writing what was typed into the file.
    kept = tmp_path / "notes.txt"
    kept.write_text("original\n")
    async with remote_pane(relay, agents, tmp_path, 100, 30) as tmux:
        # Esc :q! leaves the file as it was; Esc :wq saves: the keys were not merely lost.
        for command, after in ((":q!", "original\n"), (":wq", "typed original\n")):
            tmux.type(f"vim -u NONE -N {kept}")
            tmux.keys("Enter")
            tmux.wait_for(r"(?m)^original")
            tmux.keys("i")
            tmux.type("typed ")
            tmux.keys("Escape", command, "Enter")
            tmux.wait_for(r"(?m)^[#$] *$")
            assert kept.read_text() == after


async def test_ansi_colours_reach_the_technicians_terminal_as_ansi(relay, agents,
                                                                   tmp_path: Path) -> None:
    # The remote's red is the technician's own red: ANSI indexes (31, 94), not RGB from a
    # fixed palette; text in the default colours stays in the terminal's defaults.
    async with remote_pane(relay, agents, tmp_path, 100, 30) as tmux:
        tmux.type(r"printf '\033[31mRED\033[0m \033[94mBLUE\033[0m plain\n'")
        tmux.keys("Enter")
        tmux.wait_for(r"(?m)^RED BLUE plain")
        coloured = tmux.coloured_screen()
        assert "\x1b[31mRED" in coloured
        assert "\x1b[94mBLUE" in coloured
        plain = next(line for line in coloured.splitlines() if "plain" in line and "RED" in line)
        assert "38;" not in plain and "48;" not in plain


async def test_vim_takes_the_mouse_it_asked_for(relay, agents, tmp_path: Path) -> None:
    # A click on the third line's fifth character (the status bar is the screen's first
    # row), as the technician's terminal reports it, then x: that character goes.
    text = tmp_path / "clicked.txt"
    text.write_text("line one\nline two\nabcdefgh\n")
    async with remote_pane(relay, agents, tmp_path, 100, 30) as tmux:
        tmux.type(f"vim -u NONE -N -c 'set mouse=a ruler' {text}")
        tmux.keys("Enter")
        tmux.wait_for(r"(?m)^abcdefgh")
        # vim turns the mouse on a moment after it draws the text (once its terminal has
        # answered): a click before then is not vim's. Its ruler says where the cursor went.
        for _ in range(10):
            tmux.type("\x1b[<0;5;4M\x1b[<0;5;4m")
            with contextlib.suppress(AssertionError):
                tmux.wait_for(r"3,5 +All", timeout=1)
                break
        tmux.type("x")
        tmux.wait_for(r"(?m)^abcdfgh")
        tmux.keys(":wq", "Enter")
        tmux.wait_for(PROMPT)
        assert text.read_text() == "line one\nline two\nabcdfgh\n"
