"""At 80×24 every dialog and status line wraps instead of being cut (issue 13, polish): the
end and delete confirmations, the password prompt and its error, the limit error, the
"lost the relay" banner and a pane's status line, each read in full off the screen."""

from __future__ import annotations

import re

from textual.widgets import Input, Label, Static

from tests.support import SESSION_PASSWORD
from tests.tui.helpers import (
    console,
    fill_new_session,
    online_session,
    open_files,
    screen_text,
    wait_until,
)
from tui.screens.chat import ChatScreen
from tui.screens.modals import ConfirmModal, PasswordModal

LONG_EMAIL = "a-customer-with-a-rather-long-name@example-company.example"
FRAME = re.compile(r"[\s│╭╮╰╯─▔▁▎▊▌▐▏▕]+")


def squashed(text: str) -> str:
    return FRAME.sub("", text)


def in_full(app, text: str) -> bool:
    """`text` is on screen whole, however it wrapped (frames and spaces aside)."""
    return squashed(text) in squashed(screen_text(app))


def rendered(widget) -> str:
    return str(widget.render())


async def test_dialogs_and_status_lines_wrap_at_80_columns(relay, agents, tmp_path) -> None:
    _view, _agent, token = await online_session(relay, agents, tmp_path, LONG_EMAIL)
    async with console(relay, token, size=(80, 24)) as (app, pilot, _table):
        # The end confirmation, in full.
        await pilot.press("e")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmModal))
        await pilot.pause()
        assert in_full(app, app.screen.question), screen_text(app)
        await pilot.press("n")

        # The password prompt's title, and its error after a wrong password.
        await pilot.press("r")
        await wait_until(pilot, lambda: isinstance(app.screen, PasswordModal)
                         and app.screen.query(Input))
        await pilot.pause()
        title = rendered(app.screen.query(Label).first())
        assert LONG_EMAIL in title and in_full(app, title), screen_text(app)
        app.screen.query_one(Input).value = "not-the-password"
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(app.screen, PasswordModal)
                         and app.screen.error is not None and app.screen.query(".error"),
                         timeout=30)
        await pilot.pause()
        error = rendered(app.screen.query_one(".error", Label))
        assert "refused" in error and in_full(app, error), screen_text(app)
        await pilot.press("escape")

        # The limit error of the form (alice has her one live session).
        form = await fill_new_session(pilot, app, "second@example.com")
        form.query_one("#create").press()
        await wait_until(pilot, lambda: "limit" in rendered(form.query_one("#error"))
                         or "one live" in rendered(form.query_one("#error")), timeout=30)
        await pilot.pause()
        assert in_full(app, rendered(form.query_one("#error"))), screen_text(app)
        await pilot.press("escape")

        # A pane's status line: the chat's, once the relay is gone.
        await pilot.press("t")
        await wait_until(pilot, lambda: isinstance(app.screen, PasswordModal)
                         and app.screen.query(Input))
        app.screen.query_one(Input).value = SESSION_PASSWORD
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(app.screen, ChatScreen)
                         and app.screen.channel is not None, timeout=30)
        chat = app.screen
        relay.stop()
        await wait_until(pilot, lambda: "reconnecting" in chat.state, timeout=30)
        # Whole once laid out again (the state may change meanwhile: each one, whole).
        bar = chat.query_one("#pane-status", Static)
        await wait_until(pilot, lambda: in_full(app, rendered(bar)), timeout=10,
                         what="(the pane's status line, whole)")
        await pilot.press("ctrl+right_square_bracket")

        # The banner that says the relay is gone, and what to check.
        banner = app.sessions_screen.query_one("#banner", Static)
        await wait_until(pilot, lambda: banner.display and in_full(app, rendered(banner)),
                         timeout=30, what="(the relay-gone banner, whole)")
        assert "check" in rendered(banner), screen_text(app)
        await app.action_quit()


async def test_the_delete_confirmation_wraps_at_80_columns(relay, agents, tmp_path) -> None:
    view, _agent, token = await online_session(relay, agents, tmp_path, "del@example.com")
    host = tmp_path / "host"
    host.mkdir()
    name = "a-report-with-a-name-long-enough-to-need-two-lines-of-its-own.pdf"
    (host / name).write_text("x")
    async with console(relay, token, size=(80, 24)) as (app, pilot, _table):
        screen = await open_files(pilot, app, view, tmp_path, host)
        screen.remote.table.focus()
        screen.remote.table.move_cursor(row=1)
        await pilot.press("d")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmModal))
        await pilot.pause()
        question = app.screen.question
        assert name in question and "del@example.com" in question
        assert in_full(app, question), screen_text(app)
        await pilot.press("n")
        await app.action_quit()

