"""Helpers for driving the real console (Pilot) against a real relay and real agents."""

from __future__ import annotations

import contextlib
import io
import time
from pathlib import Path

from rich.console import Console
from textual.widgets import DataTable, Input

from tests.ports import free_port
from tests.support import SESSION_PASSWORD, Api, new_agent
from tui.app import ConsoleApp
from tui.client import RelayClient
from tui.embedded import Addresses
from tui.screens.modals import PasswordModal


def own_bundled_ports(data_dir: Path) -> Path:
    """Give the bundled relay of `data_dir` ports of this test's own, kept there as a first
    start keeps its choice: on the defaults (8780, 8722) tests running at once took each
    other's ports between choosing and listening."""
    data_dir.mkdir(parents=True, exist_ok=True)
    Addresses("127.0.0.1", free_port(), free_port()).save(data_dir)
    return data_dir


async def wait_until(pilot, predicate, timeout: float = 20.0, what: str = "") -> None:
    """Poll `predicate` between the app's turns until it holds (no sleep-guessing)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"the console never showed what the test waited for "
                                 f"{what}; it shows {type(pilot.app.screen).__name__}:\n"
                                 f"{screen_text(pilot.app)}")
        await pilot.pause(0.05)


async def online_session(relay, agents, tmp_path: Path, email: str):
    """A session activated by a real agent and online; returns it, the agent and a token."""
    async with Api(relay.base_url) as api:
        session = await api.create_session(email)
        agent = new_agent(agents, tmp_path, session)
        agent.start()
        await agent.wait_for_line("Connected to the relay")
        view = await api.wait_for(session["id"], lambda v: v["online"])
        return view, agent, api.token


async def give_password(pilot, app, password: str = SESSION_PASSWORD) -> None:
    await wait_until(pilot, lambda: isinstance(app.screen, PasswordModal)
                     and app.screen.query(Input))
    app.screen.query_one(Input).value = password
    await pilot.press("enter")


@contextlib.asynccontextmanager
async def console(relay, token: str, *, size: tuple[int, int], rows: int = 1, **options):
    """The console app against the relay, once its list shows `rows` sessions."""
    app = ConsoleApp(RelayClient(relay.base_url, token), "alice", **options)
    async with app.run_test(size=size, notifications=True) as pilot:
        table = app.screen.query_one("#sessions", DataTable)
        await wait_until(pilot, lambda: table.row_count == rows)
        yield app, pilot, table


def cell_texts(table: DataTable) -> list[list[str]]:
    return [[str(cell) for cell in table.get_row_at(i)] for i in range(table.row_count)]


def screen_text(app) -> str:
    """Every character the console draws now (toasts, and the screens under a dialog too),
    as the technician would read it."""
    console = Console(width=app.size.width, height=app.size.height, file=io.StringIO(),
                      force_terminal=True, color_system="truecolor", record=True,
                      legacy_windows=False, safe_box=False)
    console.print(app.screen._compositor.render_update(
        full=True, screen_stack=app._background_screens))
    return console.export_text(styles=False)


async def open_pane(pilot, app, key: str, kind: type, password: str = SESSION_PASSWORD):
    """Press `key` on the list, give the session password, and wait for the pane of `kind`
    to be on screen and composed; returns it."""
    await pilot.press(key)
    await give_password(pilot, app, password)
    await wait_until(pilot, lambda: isinstance(app.screen, kind) and app.screen.children,
                     timeout=30)
    return app.screen


async def open_files(pilot, app, view: dict, local: Path, remote: Path):
    """The file manager on `view`'s host, opened on two folders, once both are listed."""
    from tui.screens.files import FilesScreen

    screen = FilesScreen(view, app.connector, SESSION_PASSWORD, local_path=str(local),
                         remote_path=str(remote))
    await app.push_screen(screen)
    await wait_until(pilot, lambda: screen.remote.loaded and screen.local.loaded)
    return screen


async def fill_new_session(pilot, app, email: str, password: str = SESSION_PASSWORD,
                           confirm: str | None = None):
    """Press n and fill the form in (not sent); returns the form."""
    from tui.screens.new_session import NewSessionModal

    await pilot.press("n")
    await wait_until(pilot, lambda: isinstance(app.screen, NewSessionModal)
                     and app.screen.query("#email"))
    form = app.screen
    form.query_one("#email", Input).value = email
    form.query_one("#password", Input).value = password
    form.query_one("#confirm", Input).value = password if confirm is None else confirm
    return form


async def pending_session(relay, email: str, login: str = "alice") -> tuple[dict, str]:
    """A session created through the API, waiting for its customer; and the token."""
    async with Api(relay.base_url, login=login) as api:
        return await api.create_session(email), api.token
