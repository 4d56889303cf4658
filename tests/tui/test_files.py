"""The file manager against a real relay and a real agent, driven with Textual's Pilot."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from textual.widgets import Input, Static

from tests.support import SESSION_PASSWORD, Api, RelayProcess, new_agent, provision
from tests.tui.helpers import open_files, wait_until
from tui.app import ConsoleApp
from tui.client import RelayClient
from tui.screens.files import FilesScreen
from tui.screens.modals import ConfirmModal
from tui.screens.overwrite import OverwriteModal
from tui.widgets.files import FilePane


async def active_session(relay: RelayProcess, agents, tmp_path: Path,
                         login: str = "alice") -> tuple[dict, str]:
    async with Api(relay.base_url, login=login) as api:
        created = await api.create_session("dana@example.com")
        agent = new_agent(agents, tmp_path, created)
        agent.start()
        await agent.wait_for_line("Connected to the relay")
        view = await api.wait_for(created["id"], lambda v: v["online"] and v.get("host_key"))
        return view, api.token


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def highlight(pane: FilePane, name: str) -> None:
    pane.table.move_cursor(row=pane.rows.index(next(e for e in pane.rows
                                                    if e is not None and e.name == name)))


def shown_name(pane: FilePane, name_start: str) -> str:
    for index, entry in enumerate(pane.rows):
        if entry is not None and entry.name.startswith(name_start):
            return str(pane.table.get_row_at(index)[0])
    raise AssertionError(f"{name_start!r} is not listed")


def bar_text(screen: FilesScreen) -> str:
    return str(screen.query_one("#transfer-label", Static).render())


async def test_browse_copy_both_ways_and_manage_remote_files(relay, agents, tmp_path) -> None:
    view, token = await active_session(relay, agents, tmp_path)
    host, local, down = tmp_path / "host", tmp_path / "local", tmp_path / "down"
    for folder in (host, local, down):
        folder.mkdir()
    (host / "hello.txt").write_text("hi")
    (host / ".secret").write_text("s")
    (host / "\x1b]0;pwned\x07[b]bold[red]\u202e.txt").write_text("x")
    payload = os.urandom(700_000)
    (local / "payload.bin").write_bytes(payload)

    client = RelayClient(relay.base_url, token)
    app = ConsoleApp(client, "alice")
    async with app.run_test(size=(100, 30)) as pilot:
        screen = FilesScreen(view, app.connector, SESSION_PASSWORD, local_path=str(local),
                             remote_path=str(host))
        await app.push_screen(screen)
        await wait_until(pilot, lambda: screen.remote.loaded and screen.local.loaded)
        assert "hello.txt" in screen.remote.names()
        assert ".secret" not in screen.remote.names()
        # A hostile name shows escaped and without markup, never as raw control bytes.
        assert shown_name(screen.remote, "\x1b") == "\\x1b]0;pwned\\x07[b]bold[red]\\u202e.txt"
        await pilot.press("full_stop")
        assert ".secret" in screen.remote.names()

        # Upload: the local pane has the focus; F5 copies the highlighted file across.
        assert screen.active_id == "local-pane"
        highlight(screen.local, "payload.bin")
        await pilot.press("f5")
        await wait_until(pilot, lambda: screen.transfer is None
                         and "payload.bin" in screen.remote.names())
        assert sha((host / "payload.bin").read_bytes()) == sha(payload)
        assert "SHA-256 verified" in bar_text(screen)
        assert not list(host.glob("*.adhoc-part"))

        # Go to another local folder, then download the file back from the remote pane.
        await pilot.press("g")
        prompt = screen.query_one("#files-prompt", Input)
        assert prompt.has_focus and prompt.value == str(local)
        prompt.value = str(down)
        await pilot.press("enter")
        await wait_until(pilot, lambda: screen.local.path == str(down))
        await pilot.press("tab")
        assert screen.active_id == "remote-pane"
        highlight(screen.remote, "payload.bin")
        await pilot.press("c")
        await wait_until(pilot, lambda: screen.transfer is None
                         and "payload.bin" in screen.local.names())
        assert sha((down / "payload.bin").read_bytes()) == sha(payload)

        # Copying onto an existing file asks; "n" keeps it, "y" replaces it.
        (down / "payload.bin").write_bytes(b"old")
        await pilot.press("c")
        await wait_until(pilot, lambda: isinstance(app.screen, OverwriteModal))
        await pilot.press("n")
        await wait_until(pilot, lambda: app.screen is screen)
        assert (down / "payload.bin").read_bytes() == b"old"
        await pilot.press("c")
        await wait_until(pilot, lambda: isinstance(app.screen, OverwriteModal))
        await pilot.press("y")
        await wait_until(pilot, lambda: screen.transfer is None
                         and (down / "payload.bin").stat().st_size == len(payload))
        assert sha((down / "payload.bin").read_bytes()) == sha(payload)

        # Make a folder, rename it, delete it (after confirming) on the customer's side.
        await pilot.press("f7")
        await pilot.press(*"newdir", "enter")
        await wait_until(pilot, lambda: "newdir" in screen.remote.names())
        assert (host / "newdir").is_dir()
        assert screen.remote.highlighted_name() == "newdir"
        await pilot.press("r")
        assert screen.query_one("#files-prompt", Input).value == "newdir"
        screen.query_one("#files-prompt", Input).value = ""
        await pilot.press(*"renamed", "enter")
        await wait_until(pilot, lambda: "renamed" in screen.remote.names())
        assert (host / "renamed").is_dir() and not (host / "newdir").exists()
        (host / "renamed" / "inside.txt").write_text("gone soon")
        await pilot.press("f8")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmModal))
        assert "renamed" in app.screen.question
        await pilot.press("y")
        await wait_until(pilot, lambda: "renamed" not in screen.remote.names())
        assert not (host / "renamed").exists()

        # Escape leaves for the sessions list.
        await pilot.press("escape")
        await wait_until(pilot, lambda: app.screen is not screen)
        await app.action_quit()
    await client.aclose()


async def test_base_plan_shows_why_files_are_unavailable(agents, tmp_path) -> None:
    data_dir = tmp_path / "base-relay"
    provision(data_dir, company="Basic Ltd", plan="base", technicians=("bert",))
    relay = RelayProcess(data_dir)
    relay.start()
    try:
        view, token = await active_session(relay, agents, tmp_path, login="bert")
        client = RelayClient(relay.base_url, token)
        app = ConsoleApp(client, "bert")
        async with app.run_test(size=(80, 24)) as pilot:
            screen = FilesScreen(view, app.connector, SESSION_PASSWORD,
                                 local_path=str(tmp_path))
            await app.push_screen(screen)
            await wait_until(pilot, lambda: screen.remote.message is not None
                             and "unavailable" in screen.remote.message)
            assert "not included in this session's plan" in screen.remote.message
            # The technician's own side still works, and copying says why it cannot.
            await wait_until(pilot, lambda: screen.local.loaded)
            assert "base-relay" in screen.local.names()
            await pilot.press("f5")
            assert app.screen is screen
            await app.action_quit()
        await client.aclose()
    finally:
        relay.stop()


async def test_panes_at_80x24_keep_their_columns_and_count_only_what_they_show(
        relay, agents, tmp_path) -> None:
    view, token = await active_session(relay, agents, tmp_path)
    host, local = tmp_path / "host", tmp_path / "local"
    long = host / "long"
    for folder in (host, local, long):
        folder.mkdir()
    for n in range(3):
        (long / (f"{n}-" + "very-long-file-name-" * 10)).write_text("x" * 1234)
    (host / "short.txt").write_text("hi")
    for name in (".profile", ".cache", ".ssh"):
        (host / name).write_text("")

    client = RelayClient(relay.base_url, token)
    app = ConsoleApp(client, "alice")
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_files(pilot, app, view, local, host)
        remote = screen.remote
        remote.table.focus()
        await pilot.pause()
        # Two entries shown, three hidden: the count says so, not "5 entries".
        assert remote.count_text() == "2 entries, 3 hidden (. shows them)"
        details = str(remote.query_one(".pane-details", Static).render())
        assert details == "2 entries, 3 hidden (. shows them)"
        # Into a folder of long names and back: the size column stays on screen.
        highlight(remote, "long")
        await pilot.press("enter")
        await wait_until(pilot, lambda: remote.path.endswith("/long")
                         and "1.2K" in remote.table.render_line(2).text,
                         what="(the long name's row, with its size)")
        header = remote.table.render_line(0).text
        assert "size" in header, header  # the long name is cut, its size is not
        await pilot.press("backspace")
        await wait_until(pilot, lambda: not remote.path.endswith("/long")
                         and "long" in remote.table.render_line(2).text,
                         what="(the listing above, redrawn)")
        assert "size" in remote.table.render_line(0).text
        await pilot.press("full_stop")
        await pilot.pause()
        assert remote.count_text() == "5 entries"
        await app.action_quit()
    await client.aclose()
