"""The console against a real relay and a real agent, driven with Textual's Pilot."""

from __future__ import annotations

import time
from pathlib import Path

from textual.widgets import DataTable, Input

from common.secret import Secret
from tests.support import SESSION_PASSWORD, Api
from tests.tui.helpers import (
    cell_texts,
    console,
    online_session,
    open_pane,
    pending_session,
    wait_until,
)
from tui.app import ConsoleApp, SessionsChanged
from tui.client import RelayClient, RelayError
from tui.screens.created import CreatedModal
from tui.screens.modals import PasswordModal
from tui.screens.remote import RemoteScreen
from tui.widgets.terminal import TerminalView


def attributes_shown(obj: object) -> str:
    """What a debugger or a crash report with locals would print of `obj`'s attributes, one
    by one (Textual's WorkerManager cannot repr itself while its workers are in mixed
    states, so the whole dict would not do)."""
    shown = []
    for name, value in vars(obj).items():
        try:
            shown.append(f"{name}={value!r}")
        except TypeError:
            shown.append(f"{name}=<{type(value).__name__}>")
    return "\n".join(shown)


async def test_list_countdown_and_remote_shell(relay, agents, tmp_path: Path) -> None:
    _session, _agent, token = await online_session(relay, agents, tmp_path, "dana@example.com")

    now = [time.time()]
    async with console(relay, token, size=(120, 40), clock=lambda: now[0]) as (app, pilot, table):
        row = cell_texts(table)[0]
        assert row[0] == "dana@example.com"
        assert row[1] == "active"
        assert row[3].startswith("online")
        left = row[2]
        assert left.startswith("23:59:") or left == "24:00:00"
        # The countdown follows the clock, computed from the absolute expiry.
        now[0] += 3600
        await wait_until(pilot, lambda: cell_texts(table)[0][2].startswith("22:59:"))

        await pilot.press("r")
        await wait_until(pilot, lambda: isinstance(app.screen, PasswordModal)
                         and app.screen.query(Input))  # composed, too
        app.screen.query_one(Input).value = "wrong-password"
        await pilot.press("enter")
        # A wrong session password asks again, with the reason (a new prompt: wait for its
        # field, which a busy machine composes a turn later).
        await wait_until(pilot, lambda: isinstance(app.screen, PasswordModal)
                         and app.screen.error is not None and app.screen.query(Input),
                         timeout=30)
        app.screen.query_one(Input).value = SESSION_PASSWORD
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(app.screen, RemoteScreen)
                         and app.screen.query(TerminalView), timeout=30)  # composed, too
        # Held as secrets, which no repr, log line or crash report can show.
        for held in (app.passwords[_session["id"]], app.screen.password, app.client.token):
            assert isinstance(held, Secret)
        assert SESSION_PASSWORD not in attributes_shown(app) + attributes_shown(app.screen)
        # It says how SSH reaches the relay (the relay's SSH port, here).
        assert [text for _severity, text in app.notices] == [
            f"Connected to the relay: SSH to 127.0.0.1:{relay.ssh_port}."]
        # The screen is up before its pane is mounted; the shell opens once the pane is.
        await wait_until(pilot, lambda: app.screen.channel is not None)
        terminal = app.screen.query_one(TerminalView)
        await pilot.press(*"echo hi-$((40+2))", "enter")
        await wait_until(pilot, lambda: any(line.strip() == "hi-42"
                                            for line in terminal.screen_lines()))
        # ctrl+q goes to the shell (no quit); ctrl+] leaves the pane, the shell stays.
        await pilot.press("ctrl+q")
        assert isinstance(app.screen, RemoteScreen)
        await pilot.press("ctrl+right_square_bracket")  # leaves once no second press follows
        await wait_until(pilot, lambda: not isinstance(app.screen, RemoteScreen))
        await pilot.press("r")
        await wait_until(pilot, lambda: isinstance(app.screen, RemoteScreen))
        # The same pane, not a new one: same terminal, same screen, same channel.
        assert app.screen.query_one(TerminalView) is terminal
        assert any(line.strip() == "hi-42" for line in terminal.screen_lines())
        await pilot.press(*"echo again-$((1+1))", "enter")
        await wait_until(pilot, lambda: any(line.strip() == "again-2"
                                            for line in terminal.screen_lines()))
        await pilot.press("ctrl+right_square_bracket")
        await app.action_quit()


async def test_create_session_from_console_shows_code_once(relay) -> None:
    async with Api(relay.base_url) as api:
        token = api.token
    client = RelayClient(relay.base_url, token)
    app = ConsoleApp(client, "alice")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("n")
        await wait_until(pilot, lambda: app.screen.query("#email"))
        app.screen.query_one("#email", Input).value = "erin@example.com"
        app.screen.query_one("#password", Input).value = SESSION_PASSWORD
        app.screen.query_one("#confirm", Input).value = SESSION_PASSWORD + "x"
        app.screen.query_one("#create").press()
        await wait_until(pilot, lambda: "differ" in str(app.screen.query_one("#error").render()))
        # An address the relay refuses: said in the form's words, every field kept.
        app.screen.query_one("#email", Input).value = "not-an-email"
        app.screen.query_one("#confirm", Input).value = SESSION_PASSWORD
        app.screen.query_one("#create").press()
        await wait_until(pilot, lambda: "not an email" in str(app.screen.query_one("#error")
                                                                  .render()))
        assert str(app.screen.query_one("#error").render()).startswith(
            "Customer email: 'not-an-email' is not an email address")
        assert app.screen.query_one("#password", Input).value == SESSION_PASSWORD
        app.screen.query_one("#email", Input).value = "erin@example.com"
        # A weak password is refused with the relay's words (checked in the console, which
        # sends the relay only the password's verifier).
        for field in ("#password", "#confirm"):
            app.screen.query_one(field, Input).value = "abcdefghij"
        app.screen.query_one("#create").press()
        await wait_until(pilot, lambda: "too simple" in str(app.screen.query_one("#error")
                                                                .render()))
        app.screen.query_one("#password", Input).value = SESSION_PASSWORD
        app.screen.query_one("#confirm", Input).value = SESSION_PASSWORD
        app.screen.query_one("#create").press()
        # The dialog is pushed, then composed: wait for what is checked, the code itself.
        await wait_until(pilot, lambda: isinstance(app.screen, CreatedModal)
                         and app.screen.query("#code"))
        code = app.screen.created["security_code"]
        assert len(code) == 6
        assert app.screen.query_one("#code").value == code
        await pilot.press("escape")
        table = app.screen.query_one("#sessions", DataTable)
        await wait_until(pilot, lambda: table.row_count == 1)
        assert cell_texts(table)[0][1] == "pending"
        # The code is not in the list or anywhere the API shows again.
        assert code not in " ".join(cell_texts(table)[0])
        async with Api(relay.base_url) as api:
            listed = (await api.client.get("/api/v1/sessions")).json()
        assert code not in str(listed)
        await app.action_quit()


async def test_dashboard_and_chat_panes(relay, agents, tmp_path: Path) -> None:
    from tui.screens.chat import ChatScreen
    from tui.screens.dashboard import DashboardScreen
    from tui.widgets.dashboard import DashboardView

    _session, agent, token = await online_session(relay, agents, tmp_path, "fay@example.com")
    async with console(relay, token, size=(120, 40)) as (app, pilot, _table):
        view = (await open_pane(pilot, app, "d", DashboardScreen)).query_one(DashboardView)
        await wait_until(pilot, lambda: view.last_sample is not None, timeout=30)
        assert view.last_sample["hostname"]
        assert view.query_one("#dash-processes", DataTable).row_count > 0
        await pilot.press("s")
        assert view.process_sort == "memory"
        await pilot.press("ctrl+right_square_bracket")
        # The password is remembered for the session: chat opens without asking again.
        await pilot.press("t")
        await wait_until(pilot, lambda: isinstance(app.screen, ChatScreen), timeout=30)
        chat = app.screen
        await wait_until(pilot, lambda: chat.channel is not None)
        await pilot.press(*"hello from alice", "enter")
        await agent.wait_for_line("hello from alice")
        await wait_until(pilot, lambda: any(line.get("text") == "hello from alice"
                                            for line in chat.lines))
        # A host that floods the chat costs a bounded amount of memory.
        for n in range(3000):
            chat.post_message(chat.Received({"from": "customer", "text": f"flood {n}"}))
        await wait_until(pilot, lambda: chat.lines[-1].get("text") == "flood 2999")
        assert len(chat.lines) == 1000
        assert len(chat.query_one("#chat-log").lines) <= 1000
        await pilot.press("ctrl+right_square_bracket")
        await app.action_quit()


async def test_lost_relay_shows_banner_and_reconnects(relay) -> None:
    from textual.widgets import Static

    _created, token = await pending_session(relay, "gil@example.com")
    async with console(relay, token, size=(100, 30)) as (app, pilot, table):
        banner = app.screen.query_one("#banner", Static)
        assert not banner.display
        http_port = int(relay.base_url.rsplit(":", 1)[1])
        relay.stop()
        await wait_until(pilot, lambda: banner.display, timeout=30)
        assert "Lost the relay" in str(banner.render())
        # Keys are still answered while the relay is gone.
        await pilot.press("s")
        assert app.screen.sort_key == "customer"
        relay.start(http_port=http_port, ssh_port=relay.ssh_port)
        await wait_until(pilot, lambda: not banner.display, timeout=40)
        assert table.row_count == 1
        await app.action_quit()


async def test_news_from_the_relay_as_the_console_quits_is_let_go(relay) -> None:
    """The list's refresh, or word that the relay was lost or is back, can arrive while the
    console is closing its screens: it used to crash there ("No nodes match '#limits'") and
    print a traceback on the technician's terminal after they had quit."""
    _created, token = await pending_session(relay, "quit@example.com")
    app = ConsoleApp(RelayClient(relay.base_url, token), "alice")
    async with app.run_test(size=(80, 24)) as pilot:
        table = app.screen.query_one("#sessions", DataTable)
        await wait_until(pilot, lambda: table.row_count == 1)
        views, limits = list(app.views.values()), app.limits
        app.exit()
        app.post_message(SessionsChanged(views, limits))
        app.call_later(app._lost_relay, RelayError(0, "unreachable", "gone"))
        app.call_later(app._relay_back)
    assert app.return_code == 0 and not app._exit_renderables


async def test_keys_remap_from_config_and_palette_knows_the_screen(relay) -> None:
    from textual.command import CommandPalette

    from tui.screens.new_session import NewSessionModal

    async with Api(relay.base_url) as api:
        token = api.token
    client = RelayClient(relay.base_url, token)
    app = ConsoleApp(client, "alice", keymap={"sessions.new": "o"})
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("n")
        await pilot.pause()  # let the key's handlers run: n is no longer bound
        assert not isinstance(app.screen, NewSessionModal)
        await pilot.press("o")
        await wait_until(pilot, lambda: isinstance(app.screen, NewSessionModal))
        await pilot.press("escape")
        await wait_until(pilot, lambda: not isinstance(app.screen, NewSessionModal))
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert "New session" in titles and "Back to sessions" not in titles
        await pilot.press("ctrl+p")
        await wait_until(pilot, lambda: isinstance(app.screen, CommandPalette))
        await pilot.press(*"new session", "enter")
        await wait_until(pilot, lambda: isinstance(app.screen, NewSessionModal))
        await app.action_quit()


async def test_files_pane_opens_from_the_list(relay, agents, tmp_path: Path) -> None:
    from tui.screens.files import FilesScreen

    _session, _agent, token = await online_session(relay, agents, tmp_path, "hal@example.com")
    async with console(relay, token, size=(120, 40)) as (app, pilot, _table):
        files = await open_pane(pilot, app, "f", FilesScreen)
        await pilot.press("escape")
        await wait_until(pilot, lambda: not isinstance(app.screen, FilesScreen))
        await pilot.press("f")
        await wait_until(pilot, lambda: app.screen is files)
        await app.action_quit()


async def test_a_burst_of_keys_fills_the_new_session_form_field_by_field(relay) -> None:
    """Keys that arrive together (typed fast, pasted, sent by a script or tmux send-keys)
    land in the field they follow: tab and enter move on before the next key is handed out."""
    from textual import events

    from tui.screens.new_session import NewSessionModal

    async with Api(relay.base_url) as api:
        token = api.token
    app = ConsoleApp(RelayClient(relay.base_url, token), "alice")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("n")
        await wait_until(pilot, lambda: isinstance(app.screen, NewSessionModal)
                         and app.screen.focused is not None)
        burst = [*"dana@example.com", "tab", *"Secret-pass-123", "enter", *"Secret-pass-124",
                 "shift+tab", "tab", "tab", *"a note"]
        for key in burst:  # all in the app's queue at once, as the terminal driver puts them
            app.post_message(events.Key(key, key if len(key) == 1 else
                                        {"tab": "\t", "enter": "\r"}.get(key)))
        await wait_until(pilot, lambda: app.screen.query_one("#note", Input).value == "a note",
                         what="the note in its own field")
        form = app.screen
        assert form.query_one("#email", Input).value == "dana@example.com"
        assert form.query_one("#password", Input).value == "Secret-pass-123"
        assert form.query_one("#confirm", Input).value == "Secret-pass-124"
        await app.action_quit()


async def test_a_huge_paste_or_key_flood_into_a_form_field_is_refused_in_words(relay) -> None:
    """100 KB pasted into the customer's email, as one paste or as keystrokes, leaves the form
    usable: the field takes at most the relay's 254 characters and the console says why. With
    no limit, Textual reworked the whole value at every key: a paste of 100 KB sent as keys
    held the console at a full core for minutes while its memory grew past 1.5 GB."""
    from textual import events

    from relay.api import CreateSessionRequest
    from relay.sessions import MAX_EMAIL_CHARS, MAX_NOTE_CHARS
    from tui.screens.new_session import NewSessionModal

    fields = CreateSessionRequest.model_fields  # the console's limits are the relay's
    assert [m.max_length for m in fields["customer_email"].metadata] == [MAX_EMAIL_CHARS]
    assert [m.max_length for m in fields["note"].metadata] == [MAX_NOTE_CHARS]
    async with Api(relay.base_url) as api:
        token = api.token
    app = ConsoleApp(RelayClient(relay.base_url, token), "alice")
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await pilot.press("n")
        await wait_until(pilot, lambda: isinstance(app.screen, NewSessionModal)
                         and app.screen.focused is not None)
        form = app.screen
        email = form.query_one("#email", Input)

        def said() -> list[str]:
            return [str(n.message) for n in app._notifications]

        for _ in range(3000):  # 3,000 keys, as a terminal without bracketed paste sends them
            app.post_message(events.Key("x", "x"))
        await wait_until(pilot, lambda: said(), what="a word about the keys past the limit")
        assert said() == ["The customer's email takes at most 254 characters: the rest was "
                          "not taken."]
        email.post_message(events.Paste("y" * 100_000 + "@example.com"))  # one paste
        await wait_until(pilot, lambda: len(said()) == 2, what="a word about the paste")
        assert said()[1] == ("The customer's email takes at most 254 characters: nothing of "
                             "the 100,012 characters pasted was taken.")
        for key in ["tab", *"Secret-pass-123"]:
            app.post_message(events.Key(key, key if len(key) == 1 else "\t"))
        await wait_until(pilot, lambda: form.query_one("#password", Input).value
                         == "Secret-pass-123", what="the next field typed into")
        assert email.value == "x" * MAX_EMAIL_CHARS  # nothing lost, nothing of the paste taken
        await app.action_quit()


def test_every_text_field_of_the_console_has_a_limit() -> None:
    """A field with no limit grows with whatever is pasted into it until the console stalls
    (above): the console's fields are all BoundedInput, which needs one."""
    import ast

    tui = Path(__file__).resolve().parents[2] / "tui"
    unbounded = [f"{path.relative_to(tui.parent)}:{node.lineno}"
                 for path in sorted(tui.rglob("*.py"))
                 for node in ast.walk(ast.parse(path.read_text()))
                 if isinstance(node, ast.Call) and getattr(node.func, "id", "") in (
                     "Input", "TextArea")]
    assert unbounded == []
