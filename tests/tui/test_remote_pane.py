"""The remote-control pane in the console, against a real relay and agent, driven by Pilot."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest
from textual.widgets import Static

from tests.tui.helpers import console, give_password, online_session, wait_until
from tui.screens import remote
from tui.screens.audit import AuditModal
from tui.screens.remote import RemoteScreen
from tui.widgets.terminal import TerminalView


@contextlib.asynccontextmanager
async def shell_pane(relay, agents, tmp_path: Path, email: str, size: tuple[int, int],
                     **options):
    """The console with a remote shell open on a fresh online session: app, pilot, pane."""
    _session, _agent, token = await online_session(relay, agents, tmp_path, email)
    async with console(relay, token, size=size, **options) as (app, pilot, _table):
        yield app, pilot, await open_shell(app, pilot)
        await app.action_quit()


async def open_shell(app, pilot) -> TerminalView:
    await pilot.press("r")
    await give_password(pilot, app)
    await wait_until(pilot, lambda: isinstance(app.screen, RemoteScreen), timeout=30)
    await wait_until(pilot, lambda: app.screen.channel is not None, timeout=30)
    terminal = app.screen.query_one(TerminalView)
    await wait_until(pilot, lambda: any(line.rstrip().endswith(("#", "$"))
                                        for line in terminal.screen_lines()))
    return terminal


def shows(terminal: TerminalView, text: str) -> bool:
    return any(text in line for line in terminal.screen_lines())


def status(app) -> str:
    return str(app.screen.query_one("#pane-status", Static).render())


async def test_the_shell_starts_at_the_panes_size(relay, agents, tmp_path: Path) -> None:
    async with shell_pane(relay, agents, tmp_path, "ida@example.com", (120, 40)) as (
            _app, pilot, terminal):
        await pilot.press(*"stty size", "enter")
        await wait_until(pilot, lambda: shows(terminal, "39 120"))


async def test_the_leave_key_twice_goes_to_the_shell(relay, agents, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    async with shell_pane(relay, agents, tmp_path, "jo@example.com", (100, 30)) as (
            app, pilot, terminal):
        assert status(app).endswith("^] back")
        await pilot.press(*"cat -v", "enter")
        monkeypatch.setattr(remote, "LEAVE_TWICE_SECONDS", 60)  # the test's pace is no matter
        await pilot.press("ctrl+right_square_bracket")
        assert isinstance(app.screen, RemoteScreen)
        assert status(app).startswith(" ^] again: send ^] ·")
        await pilot.press("ctrl+right_square_bracket", "enter")
        await wait_until(pilot, lambda: shows(terminal, "^]"))
        assert isinstance(app.screen, RemoteScreen) and app.focused is terminal
        assert status(app).endswith("^] back")
        await pilot.press("ctrl+c")

        # Once, then any other key: back to the list, and the key is the list's.
        await pilot.press("ctrl+right_square_bracket", "a")
        await wait_until(pilot, lambda: isinstance(app.screen, AuditModal))
        await pilot.press("escape")

        # Once, and nothing else: back to the list when the wait is over.
        await pilot.press("r")
        await wait_until(pilot, lambda: app.focused is terminal)
        monkeypatch.setattr(remote, "LEAVE_TWICE_SECONDS", 0.05)
        await pilot.press("ctrl+right_square_bracket")
        await wait_until(pilot, lambda: not isinstance(app.screen, RemoteScreen))


async def test_history_from_the_leave_key_as_tmux_prefix(relay, agents, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    async with shell_pane(relay, agents, tmp_path, "liv@example.com", (100, 30)) as (
            app, pilot, terminal):
        await pilot.press(*"echo marker-$((6*7))", "enter")
        await wait_until(pilot, lambda: shows(terminal, "marker-42"))
        monkeypatch.setattr(remote, "LEAVE_TWICE_SECONDS", 60)
        await pilot.press("ctrl+right_square_bracket", "slash")
        await wait_until(pilot, lambda: status(app).startswith(" search older:"))
        await pilot.press(*"marker-42", "enter", "v", "dollar_sign", "y")
        await wait_until(pilot, lambda: app.clipboard == "marker-42")
        await wait_until(pilot, lambda: status(app).endswith("^] back"))
        assert isinstance(app.screen, RemoteScreen) and app.focused is terminal
        await pilot.press("ctrl+right_square_bracket", "left_square_bracket")
        await wait_until(pilot, lambda: status(app).startswith(" history ["))
        await pilot.press("q")
        await wait_until(pilot, lambda: status(app).endswith("^] back"))


async def test_a_remapped_leave_key_frees_ctrl_bracket(relay, agents, tmp_path: Path) -> None:
    async with shell_pane(relay, agents, tmp_path, "kim@example.com", (100, 30),
                          keymap={"pane.leave": "f12"}) as (app, pilot, terminal):
        assert status(app).endswith("f12 back")
        await pilot.press(*"cat -v", "enter", "ctrl+right_square_bracket", "enter")
        await wait_until(pilot, lambda: shows(terminal, "^]"))
        assert isinstance(app.screen, RemoteScreen)
        await pilot.press("ctrl+c", *"echo done", "enter")
        await wait_until(pilot, lambda: shows(terminal, "done"))
        await pilot.press("f12")
        await wait_until(pilot, lambda: not isinstance(app.screen, RemoteScreen))


async def test_messages_in_the_shell_go_on_the_status_line_not_over_the_screen(
        relay, agents, tmp_path: Path) -> None:
    """A toast covered the remote screen's bottom right (vim's ruler, a prompt) at 80x24;
    in the shell the console says things on the status line, for a while, on one line."""
    async with shell_pane(relay, agents, tmp_path, "nia@example.com", (80, 24)) as (
            app, pilot, terminal):
        before = status(app)
        app.notify("The relay is slow to answer: the session list may be out of date. "
                   "It refreshes again in 10 s.\nSecond line", severity="error", timeout=1.5)
        await pilot.pause()
        assert not list(app.screen.query("Toast")), "a toast over the remote screen"
        assert not app._notifications, "the list's toasts went when the shell was shown"
        bar = app.screen.query_one("#pane-status", Static)
        shown = status(app)
        assert shown.startswith(" ! The relay is slow to answer") and shown.endswith("^] back")
        assert len(shown) <= 78 and "\n" not in shown and "…" in shown
        assert bar.has_class("-error") and bar.size.height == 1
        assert terminal.size.height == 23, "the terminal keeps its rows"
        assert app.notices[-1][1].endswith("Second line"), "kept whole for the record"
        await wait_until(pilot, lambda: status(app) == before, timeout=5)
        assert not bar.has_class("-error")


async def test_r_after_a_console_restart_reattaches_to_the_shell_left_running(
        relay, agents, tmp_path: Path) -> None:
    """The technician's own connection drops and takes the console with it: started again,
    `r` finds the shell they left (its variables, what it printed), not a new one."""
    _session, _agent, token = await online_session(relay, agents, tmp_path, "kim@example.com")
    async with console(relay, token, size=(100, 30)) as (app, pilot, _table):
        terminal = await open_shell(app, pilot)
        await pilot.press(*"export LEFT=running-$((40+2))", "enter")
        await wait_until(pilot, lambda: shows(terminal, "running-$((40+2))"))
        await app.action_quit()
    async with console(relay, token, size=(100, 30)) as (app, pilot, _table):
        terminal = await open_shell(app, pilot)
        await pilot.press(*"echo still-$LEFT", "enter")
        await wait_until(pilot, lambda: shows(terminal, "still-running-42"))
        await app.action_quit()


async def test_a_shell_taken_by_another_console_is_not_taken_back_by_itself(
        relay, agents, tmp_path: Path) -> None:
    """Two consoles of one technician on one shell: the one that lost it says so and waits
    (taking it back at once, each would take it from the other in turn), and takes it back
    when the technician comes back to it."""
    from tests.support import Api, technician_ssh

    session, _agent, token = await online_session(relay, agents, tmp_path, "lee@example.com")
    async with console(relay, token, size=(100, 30)) as (app, pilot, _table):
        terminal = await open_shell(app, pilot)
        shell_id = app.screen.shell_id
        async with Api(relay.base_url) as api, technician_ssh(relay, api, session) as other:
            taker = await other.create_process(term_type="xterm", term_size=(80, 24),
                                               env={"ADHOC_SHELL_ID": shell_id},
                                               encoding=None)
            await wait_until(pilot, lambda: "opened in another console" in status(app))
            assert app.screen.channel is None
            await pilot.pause(3)  # it does not reconnect: the other keeps the shell
            taker.stdin.write(b"echo kept-$((6*7))\r")
            seen = b""
            async with asyncio.timeout(20):
                while b"kept-42" not in seen:
                    seen += await taker.stdout.read(4096)
            assert app.screen.channel is None
            await pilot.press("ctrl+right_square_bracket")
            await wait_until(pilot, lambda: not isinstance(app.screen, RemoteScreen))
            await pilot.press("r")
            await wait_until(pilot, lambda: isinstance(app.screen, RemoteScreen)
                             and app.screen.channel is not None, timeout=30)
            await taker.wait_closed()  # taken back from it
            await pilot.press(*"echo back-$((2*21))", "enter")
            await wait_until(pilot, lambda: shows(terminal, "back-42"))
        await app.action_quit()
