"""Foreign text is shown as text (issue 12.3, 12.12): names, hostnames, emails and the relay's
details that carry markup (`[a=:]x`, `[@click=app.quit]`, `[blink reverse]`), escape
sequences and bidi overrides are drawn literally (markup) or escaped (control characters)
everywhere: the file manager against a real agent, toasts, dialogs, the sessions list and
the audit view. And structurally: no widget the console makes reads markup."""

from __future__ import annotations

import ast
import contextlib
import sqlite3
from pathlib import Path

from textual.widgets import DataTable, Input

from common.secret import Secret
from tests.support import SESSION_PASSWORD, Api
from tests.tui.helpers import console, online_session, open_files, screen_text, wait_until
from tui.app import ConsoleApp, SessionsChanged
from tui.client import RelayClient, RelayError
from tui.sanitize import clean
from tui.screens.audit import AuditModal
from tui.screens.detail import DetailModal
from tui.screens.files import FilesScreen
from tui.screens.modals import ConfirmModal, PasswordModal
from tui.screens.openssh import OpenSSHModal
from tui.screens.remote import RemoteScreen

ROOT = Path(__file__).resolve().parents[2]
MARKUP = ("[a=:]x", "[@click=app.quit]q", "[blink reverse]b", "[bold red]r")
ESCAPES = ("\x1b]52;c;aGk=\x07clip", "\x1b]0;pwned\x07title", "\x1bc-reset", "\u202eexe.txt")
FORBIDDEN = ("\x1b", "\x07", "\x9b", "\u202e")
# Widgets that would read a str as markup unless told not to.
TEXT_WIDGETS = {"Static", "Label"}


def _calls(path: Path):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            yield name, node
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Attribute) and target.attr == "border_title":
                    yield "border_title", node


def test_no_widget_the_console_makes_reads_markup() -> None:
    """Every Static and Label is made with markup=False, every table is a TextTable (its
    str cells are text), and a border title is given as Text."""
    wrong = []
    for path in sorted((ROOT / "tui").rglob("*.py")):
        where = path.relative_to(ROOT)
        for name, node in _calls(path):
            if name in TEXT_WIDGETS:
                markup = [k for k in node.keywords if k.arg == "markup"]
                if not markup or not (isinstance(markup[0].value, ast.Constant)
                                      and markup[0].value.value is False):
                    wrong.append(f"{where}:{node.lineno} {name} without markup=False")
            elif name == "DataTable" and path.name != "texttable.py":
                wrong.append(f"{where}:{node.lineno} a DataTable (use TextTable)")
            elif name == "border_title" and not (
                    isinstance(node.value, ast.Call)
                    and getattr(node.value.func, "id", "") in ("plain", "Text")):
                wrong.append(f"{where}:{node.lineno} a border title that is not Text")
    assert not wrong, "\n".join(wrong)


def assert_shown_as_text(app, *names: str) -> None:
    """Each markup name is on screen literally; no control byte reaches the terminal."""
    drawn = screen_text(app)
    for name in names:
        if any(c in name for c in FORBIDDEN):
            continue
        assert name in drawn, f"{name!r} is not shown literally:\n{drawn}"
    for forbidden in FORBIDDEN:
        assert forbidden not in drawn
    assert app.is_running and app.title == "Adhoc"
    assert not app.unexpected


async def wait_shown_as_text(pilot, app, *names: str) -> None:
    """assert_shown_as_text once each name is drawn: a toast or a dialog takes a frame or
    more to appear on a busy machine (a name drawn as markup never appears)."""
    literal = [name for name in names if not any(c in name for c in FORBIDDEN)]
    await wait_until(pilot, lambda: all(name in screen_text(app) for name in literal),
                     timeout=10, what=f"(drawn literally: {literal!r})")
    assert_shown_as_text(app, *names)


async def test_hostile_names_in_the_file_manager_against_a_real_agent(
        relay, agents, tmp_path: Path) -> None:
    host = tmp_path / "host"
    host.mkdir()
    for name in (*MARKUP, *ESCAPES):
        (host / name).write_text("x")
    (host / "[bold]folder").mkdir()
    view, _agent, token = await online_session(relay, agents, tmp_path, "fm@example.com")
    local = tmp_path / "local"
    local.mkdir()
    async with console(relay, token, size=(120, 40)) as (app, pilot, _table):
        screen = await open_files(pilot, app, view, local, host)
        screen.remote.table.focus()
        await pilot.pause()
        for name in (*MARKUP, *ESCAPES):
            index = screen.remote.names().index(name) + 1  # after the ".." row
            screen.remote.table.move_cursor(row=index)
            await wait_shown_as_text(pilot, app, name)  # in the listing and the details line
            await pilot.press("g")  # go to it: "Cannot open …/name: …" as a toast
            await wait_until(pilot, lambda: screen.prompt_mode == "goto")
            screen.query_one("#files-prompt", Input).value = name
            await pilot.press("enter")
            await wait_until(pilot, lambda n=name: any(
                "Cannot open" in text and clean(n) in text for _s, text in app.notices))
            await wait_until(pilot, lambda n=name: any(
                clean(n) in str(toast.render()) for toast in app.screen.query("Toast")),
                             what="(the toast, drawn)")
            assert_shown_as_text(app, name)
            await pilot.press("r")  # the rename prompt names it in its title
            await wait_until(pilot, lambda: screen.prompt_mode == "rename")
            await wait_shown_as_text(pilot, app, name)
            await pilot.press("escape")
            await wait_until(pilot, lambda: screen.prompt_mode is None)
            await pilot.press("d")  # the delete question names it
            await wait_until(pilot, lambda: isinstance(app.screen, ConfirmModal))
            await wait_shown_as_text(pilot, app, name)
            await pilot.press("n")
            await wait_until(pilot, lambda: app.screen is screen)
        # Copied to this computer: progress, result and toasts name them; the files arrive.
        for name in MARKUP:
            screen.remote.marked.add(name)
        await pilot.press("c")
        await wait_until(pilot, lambda: all((local / n).exists() for n in MARKUP),
                         timeout=30)
        await wait_until(pilot, lambda: screen.transfer is None)
        assert_shown_as_text(app)
        # The audit view lists what was copied, names as they are.
        await pilot.press("escape")
        await wait_until(pilot, lambda: app.screen is app.sessions_screen)
        await pilot.press("a")
        await wait_until(pilot, lambda: isinstance(app.screen, AuditModal)
                         and app.screen.query(DataTable))
        await pilot.pause()
        audit = app.screen
        row = next(i for i, r in enumerate(audit.rows) if "[a=:]x" in str(r["detail"]))
        audit.query_one(DataTable).move_cursor(row=row)
        await pilot.press("enter")  # the row in full
        await wait_until(pilot, lambda: app.screen is not audit and app.screen.query("Static"))
        await wait_shown_as_text(pilot, app, "[a=:]x")
        await pilot.press("escape")
        await pilot.press("escape")
        await app.action_quit()


def _seed_hostile_session(data_dir: Path, email: str, hostname: str) -> None:
    """A session whose customer email and host were written by someone hostile (an older
    relay let ESC into emails; a host chooses its own name), straight into the relay's
    SQLite database, past every check the relay makes now."""
    with contextlib.closing(sqlite3.connect(data_dir / "relay.db", timeout=10)) as db, db:
        db.execute("UPDATE sessions SET customer_email = ?, hostname = ?, os = ?",
                   (email, hostname, hostname))


HOSTILE_EMAIL = "[blink reverse]x\x1bc\u202e@example.com"
HOSTILE_HOST = "[@click=app.quit]evil\x1b]0;pwned\x07"


async def test_a_hostile_email_and_host_in_the_list_dialogs_and_toasts(
        relay, agents, tmp_path: Path) -> None:
    await online_session(relay, agents, tmp_path, "plain@example.com")
    _seed_hostile_session(relay.data_dir, HOSTILE_EMAIL, HOSTILE_HOST)
    async with Api(relay.base_url) as api:
        token = api.token
    async with console(relay, token, size=(120, 40)) as (app, pilot, _table):
        await wait_until(pilot, lambda: "[@click=app.quit" in screen_text(app))
        assert_shown_as_text(app, "[blink reverse]x", "[@click=app.quit")
        await pilot.press("i")  # the details show the host in full
        await wait_until(pilot, lambda: isinstance(app.screen, DetailModal)
                         and app.screen.query("#detail-text"))
        await wait_shown_as_text(pilot, app, "[@click=app.quit]evil")
        assert "[@click=app.quit]evil\\x1b]0;pwned\\x07" in screen_text(app)
        await pilot.press("escape")
        await pilot.press("r")  # the password prompt (12.12)
        await wait_until(pilot, lambda: isinstance(app.screen, PasswordModal)
                         and app.screen.query(Input))
        await wait_shown_as_text(pilot, app, "[blink reverse]x")
        drawn = screen_text(app)
        assert "reverse]x\\x1bc\\u202e@example.com" in drawn, drawn
        await pilot.press("escape")
        await pilot.press("e")  # the end question names the customer
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmModal))
        await wait_shown_as_text(pilot, app, "[blink reverse]x")
        await pilot.press("y")
        await wait_until(pilot, lambda: any("Ended the session" in t for _s, t in app.notices))
        await wait_shown_as_text(pilot, app, "[blink reverse]x")
        await app.action_quit()


async def test_the_relay_detail_is_text(relay) -> None:
    """A relay's `detail` (here: the answer to a bad request, through the console's own
    client) with markup is shown as it is, in a toast."""
    async with Api(relay.base_url) as api:
        token = api.token
    app = ConsoleApp(RelayClient(relay.base_url, token), "alice")
    async with app.run_test(size=(100, 30), notifications=True) as pilot:
        await wait_until(pilot, lambda: app.screen.query("#sessions"))
        app.report_failure(RelayError(409, "limit", "[@click=app.quit]limit[/] [blink]x"))
        await wait_shown_as_text(pilot, app, "[@click=app.quit]limit[/] [blink]x")
        await app.action_quit()



HOSTILE_ID = "[red]x[/]\x1b]0;pwned\x07id"


async def test_a_hostile_session_id_is_shown_as_text(relay, agents, tmp_path: Path) -> None:
    """A session id the relay sends (here: written into its database) with markup and an
    escape sequence: the list, the pane status bars and the OpenSSH dialog show it as text,
    and no ssh command is offered for an id that is not one."""
    view, _agent, token = await online_session(relay, agents, tmp_path, "id@example.com")
    with contextlib.closing(sqlite3.connect(relay.data_dir / "relay.db", timeout=10)) as db, db:
        db.execute("UPDATE sessions SET id = ? WHERE id = ?", (HOSTILE_ID, view["id"]))
    async with console(relay, token, size=(120, 40)) as (app, pilot, _table):
        await wait_until(pilot, lambda: "[red]x[/]" in screen_text(app))
        assert_shown_as_text(app, "[red]x[/]")
        await pilot.press("o")  # the OpenSSH dialog would paste the id into a command
        await wait_until(pilot, lambda: any("not one" in t for _s, t in app.notices))
        assert not isinstance(app.screen, OpenSSHModal)
        assert_shown_as_text(app, "[red]x[/]")
        hostile = {**view, "id": HOSTILE_ID}
        for screen in (FilesScreen(hostile, app.connector, Secret(SESSION_PASSWORD)),
                       RemoteScreen(hostile, app.connector, Secret(SESSION_PASSWORD))):
            await app.push_screen(screen)
            await wait_until(pilot, lambda s=screen: app.screen is s
                             and s.query("#files-status, #pane-status"))
            await wait_shown_as_text(pilot, app, "[red]x[/]")
            assert "session [red]x[/]\\x1b]0;pwned\\x07id" in screen_text(app)
            app.pop_screen()
            await pilot.pause()
        await app.action_quit()


async def test_hostile_numbers_and_states_in_the_list_are_text(relay) -> None:
    """The relay's limits and a session's state, as a hostile relay could send them (strings
    with escape sequences where numbers belong), are drawn as text, and nothing fails."""
    async with Api(relay.base_url) as api:
        token = api.token
        await api.create_session("list@example.com")
    async with console(relay, token, size=(140, 30)) as (app, pilot, _table):
        views = [{**view, "state": "[b]\x07"} for view in app.views.values()]
        limits = {"company": "Acme", "plan": "plus", "seats": "\x1b[2J[red]3",
                  "live_for_company": "\x1b[31m1", "max_live_per_company": 5,
                  "live_for_technician": 1, "max_live_per_technician": "\x9b2J"}
        app.post_message(SessionsChanged(views, limits))
        await wait_until(pilot, lambda: "[red]3" in screen_text(app))
        assert_shown_as_text(app, "[red]3")
        drawn = screen_text(app)
        assert "seats \\x1b[2J[red]3" in drawn and "[b]\\x07" in drawn, drawn
        await app.action_quit()
