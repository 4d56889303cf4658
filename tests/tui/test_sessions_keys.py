"""The sessions list's keys do what the docs say (issue 13, majors 4 to 6 and polish): enter
opens the shell, a new session is selected at once, confirmations name the customer, a code
issued again says how many tries the link has left, `?` lists Adhoc's keys first, `i` shows
the host key's fingerprint as OpenSSH prints it, and the form drops a stale error."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
from textual.widgets import DataTable, Input, Label

from tests.support import SESSION_PASSWORD, Api
from tests.tui.helpers import (
    cell_texts,
    console,
    fill_new_session,
    online_session,
    pending_session,
    screen_text,
    wait_until,
)
from tui.screens.audit import AuditModal, AuditRowModal
from tui.screens.created import CreatedModal
from tui.screens.detail import DetailModal, detail_lines
from tui.screens.help import HelpModal
from tui.screens.modals import ConfirmModal, PasswordModal


def openssh_fingerprint(host_key: str, tmp_path: Path) -> str:
    key_file = tmp_path / "host_key.pub"
    key_file.write_text(host_key + "\n")
    out = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", str(key_file)],
                         capture_output=True, text=True, check=True).stdout
    return out.split()[1]


async def test_enter_opens_the_shell_and_i_shows_the_fingerprint(relay, agents,
                                                                  tmp_path: Path) -> None:
    view, _agent, token = await online_session(relay, agents, tmp_path, "ed@example.com")
    fingerprint = openssh_fingerprint(view["host_key"], tmp_path)
    assert fingerprint.startswith("SHA256:")
    async with console(relay, token, size=(80, 24)) as (app, pilot, _table):
        await pilot.press("i")
        await wait_until(pilot, lambda: isinstance(app.screen, DetailModal)
                         and app.screen.query("#detail-text"))
        await pilot.pause()
        drawn = screen_text(app)
        assert fingerprint in drawn.replace("\n", "") or fingerprint in drawn
        assert view["id"] in drawn
        await pilot.press("escape")
        await wait_until(pilot, lambda: not isinstance(app.screen, DetailModal))
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(app.screen, PasswordModal)
                         and app.screen.query(Input))
        await pilot.pause()
        assert fingerprint in screen_text(app).replace(" ", "").replace("│", "") \
            .replace("\n", "")
        await pilot.press("escape")
        await app.action_quit()


async def test_a_new_session_is_selected_and_confirmations_name_the_customer(relay) -> None:
    async with Api(relay.base_url, login="bob") as bob:
        await bob.create_session("bobs-customer@example.com")
    async with Api(relay.base_url) as api:
        token = api.token
    async with console(relay, token, size=(80, 24)) as (app, pilot, table):
        assert app.sessions_screen.selected_id() is not None
        form = await fill_new_session(pilot, app, "fresh@example.com",
                                      confirm="not the same")
        form.query_one("#create").press()
        await wait_until(pilot, lambda: "differ" in str(form.query_one("#error").render()))
        # The error is about values that have changed since: it goes.
        form.query_one("#confirm", Input).value = SESSION_PASSWORD
        await pilot.pause()
        assert str(form.query_one("#error", Label).render()) == ""
        form.query_one("#create").press()
        await wait_until(pilot, lambda: isinstance(app.screen, CreatedModal)
                         and app.screen.query("#code"))
        created = app.screen.created
        await pilot.press("enter")
        await wait_until(pilot, lambda: table.row_count == 2)
        await wait_until(pilot, lambda: app.sessions_screen.selected_id() == created["id"])
        await pilot.press("e")  # acts on the new session, and says whose it is
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmModal))
        assert "fresh@example.com" in app.screen.question
        await pilot.press("n")
        await app.action_quit()


async def test_a_code_issued_again_says_how_many_tries_are_left(relay) -> None:
    async with Api(relay.base_url) as api:
        created = await api.create_session("gus@example.com")
        token = api.token
    link = created["join_url"].rsplit("/", 1)[1]
    async with httpx.AsyncClient(base_url=relay.base_url) as raw:
        for wrong in ("000000", "111111"):
            answer = await raw.post(f"/api/v1/join/{link}/activate", json={
                "code": wrong if wrong != created["security_code"] else "222222",
                "host_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBq4pRAtgxpyC8k6d4XdgBGp9Nf"
                            "DDWJ0hRgbchaZZc0D", "hostname": "h", "os": "o", "user": "u"})
            assert answer.status_code == 403, answer.text
    async with console(relay, token, size=(80, 24)) as (app, pilot, _table):
        await pilot.press("c")
        await wait_until(pilot, lambda: isinstance(app.screen, CreatedModal)
                         and app.screen.query("#tries"))
        assert "3 of 5 tries left" in str(app.screen.query_one("#tries", Label).render())
        await pilot.press("enter")
        await app.action_quit()


async def test_help_lists_adhocs_keys_first_at_80x24(relay) -> None:
    _created, token = await pending_session(relay, "hu@example.com")
    async with console(relay, token, size=(80, 24)) as (app, pilot, table):
        await pilot.press("question_mark")
        await wait_until(pilot, lambda: isinstance(app.screen, HelpModal))
        await pilot.pause()
        keys = app.screen.keys
        first_generic = next(i for i, k in enumerate(keys) if not k.product)
        product = " ".join(f"{k.keys} {k.description}" for k in keys[:first_generic])
        for words in ("n new session", "r, ⏎ remote control", "e end the session",
                      "a audit trail", "c a new security code", "i details", "q Quit"):
            assert words in product, product
        assert all(not k.product for k in keys[first_generic:])  # table keys come after
        drawn = screen_text(app)
        for words in ("audit trail", "new security code", "Quit"):  # in the first screenful
            assert words in drawn
        await pilot.press("escape")
        await wait_until(pilot, lambda: not isinstance(app.screen, HelpModal))
        assert cell_texts(table)[0][0] == "hu@example.com"
        await app.action_quit()


async def test_audit_rows_open_and_name_technicians_by_login(relay) -> None:
    async with Api(relay.base_url) as api:
        created = await api.create_session("au@example.com")
        await api.client.post(f"/api/v1/sessions/{created['id']}/end")
        token = api.token
        rows = (await api.client.get(f"/api/v1/sessions/{created['id']}/audit")).json()
    actors = {row["actor"] for row in rows["audit"]}  # as the relay writes them
    async with console(relay, token, size=(80, 24)) as (app, pilot, _table):
        await pilot.press("a")
        await wait_until(pilot, lambda: isinstance(app.screen, AuditModal)
                         and app.screen.query(DataTable))
        await pilot.pause()
        table = app.screen.query_one(DataTable)
        shown = {str(table.get_row_at(i)[1]) for i in range(table.row_count)}
        assert "technician:1" in actors  # how the relay names the creator, by number
        assert "alice" in shown and "1" not in shown, (actors, shown)
        assert not any(actor.startswith("technician:") for actor in shown), shown
        drawn = screen_text(app)
        assert "customer_email=au@ex" in drawn, drawn  # a detail column to read at 80
        await pilot.press("enter")  # a row opens in full
        await wait_until(pilot, lambda: isinstance(app.screen, AuditRowModal))
        await pilot.pause()
        assert "actor: technician:alice" in screen_text(app) or "event:" in screen_text(app)
        await pilot.press("escape")
        await pilot.press("escape")
        await app.action_quit()


def test_the_details_count_wrong_codes_as_the_relay_does() -> None:
    """How many tries are left is the relay's number (its limit), not one the console
    assumes."""
    view = {"id": "a" * 16, "state": "pending", "customer_email": "c@example.com",
            "code_attempts": 2, "code_attempts_left": 1}
    lines = dict(detail_lines(view, "alice", None))
    assert lines["wrong codes"] == "2 tried, 1 left before the link stops working"
    hostile = dict(detail_lines(view | {"code_attempts": "x", "code_attempts_left": -3},
                                "alice", None))
    assert hostile["wrong codes"].startswith("0 tried, 0 left")


async def test_home_and_end_go_to_the_first_and_last_row() -> None:
    """Every table is a TextTable; DataTable gave Home and End to scrolling sideways, so
    End in the file manager did nothing and F5 then copied the wrong row."""
    from textual.app import App

    from tui.widgets.texttable import TextTable

    class Tables(App):
        def compose(self):
            yield TextTable(cursor_type="row")

        def on_mount(self) -> None:
            table = self.query_one(TextTable)
            table.add_column("name")
            for n in range(50):
                table.add_row(f"file-{n}")
            table.focus()

    app = Tables()
    async with app.run_test(size=(40, 12)) as pilot:
        table = app.query_one(TextTable)
        await pilot.press("end")
        assert table.cursor_row == 49
        await pilot.press("home")
        assert table.cursor_row == 0
