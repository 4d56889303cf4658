"""The console never falls over: relay restarts, a relay that is down, a host that is gone and
a pooled HTTP connection the relay closed all end up as a sentence in the app, never as a
crash (issue 13, blocker 1). Real relay processes, real agents, the real console (Pilot)."""

from __future__ import annotations

import signal
from pathlib import Path

from textual.widgets import Static

from tests.faults.conftest import restart
from tests.faults.proxy import DeadLinkProxy, StaleKeepAliveProxy
from tests.ports import free_port
from tests.support import PASSWORD, Api
from tests.tui.helpers import console, give_password, online_session, open_pane, wait_until
from tui.client import RelayClient
from tui.screens.chat import ChatScreen
from tui.screens.files import FilesScreen
from tui.screens.modals import ConfirmModal
from tui.screens.remote import RemoteScreen
from tui.screens.sessions import SessionsScreen


def notices(app) -> str:
    return "\n".join(text for _severity, text in app.notices)


async def test_relay_restart_with_a_chat_opened_earlier_keeps_the_console(
        start_relay, agents, tmp_path: Path, quick_agent) -> None:
    relay = start_relay()
    _view, _agent, token = await online_session(relay, agents, tmp_path, "ann@example.com")
    async with console(relay, token, size=(100, 30)) as (app, pilot, _table):
        chat = await open_pane(pilot, app, "t", ChatScreen)
        await wait_until(pilot, lambda: chat.channel is not None, timeout=30)
        await pilot.press("ctrl+right_square_bracket")
        await wait_until(pilot, lambda: isinstance(app.screen, SessionsScreen))

        relay.stop()
        banner = app.screen.query_one("#banner", Static)
        await wait_until(pilot, lambda: banner.display, timeout=30)
        await wait_until(pilot, lambda: chat.channel is None, timeout=30)
        assert "reconnect" in chat.state
        restart(relay)
        await wait_until(pilot, lambda: not banner.display, timeout=40)
        # The chat reader came back by itself, on a new connection.
        await wait_until(pilot, lambda: chat.channel is not None, timeout=40,
                         what="the chat reconnecting")
        assert app.is_running
        await app.action_quit()


async def test_remote_on_a_host_that_is_gone_says_so(start_relay, agents, tmp_path: Path,
                                                      quick_agent) -> None:
    relay = start_relay()
    view, agent, token = await online_session(relay, agents, tmp_path, "bo@example.com")
    async with console(relay, token, size=(100, 30)) as (app, pilot, _table):
        agent.proc.send_signal(signal.SIGKILL)  # gone without a word; the session lives on
        agent.proc.wait(10)
        async with Api(relay.base_url) as api:
            await api.wait_for(view["id"], lambda v: not v["online"])
        await pilot.press("r")
        await give_password(pilot, app)
        await wait_until(pilot, lambda: "offline" in notices(app) or "reach" in notices(app),
                         timeout=30, what="a sentence about the host")
        assert app.is_running
        assert not isinstance(app.screen, RemoteScreen)
        await app.action_quit()


async def test_audit_and_end_while_the_relay_is_down(start_relay) -> None:
    relay = start_relay()
    async with Api(relay.base_url) as api:
        await api.create_session("cy@example.com")
        token = api.token
    async with console(relay, token, size=(100, 30)) as (app, pilot, _table):
        relay.stop()
        banner = app.screen.query_one("#banner", Static)
        await wait_until(pilot, lambda: banner.display, timeout=30)
        await pilot.press("a")
        await wait_until(pilot, lambda: "relay" in notices(app), what="the audit's failure")
        await pilot.press("e")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmModal))
        await pilot.press("y")
        await wait_until(pilot, lambda: notices(app).count("relay") >= 2,
                         what="the end's failure")
        assert "check" in notices(app)  # says what to do next
        assert app.is_running
        restart(relay)
        await wait_until(pilot, lambda: not banner.display, timeout=40)
        await app.action_quit()


async def test_requests_survive_a_pooled_connection_the_relay_closed(start_relay) -> None:
    """The relay (like any HTTP server) closes an idle keep-alive connection on its own
    schedule; a request sent on it just then gets "Server disconnected without sending a
    response". Reads and the idempotent end are sent again, once, on a fresh connection."""
    relay = start_relay()
    async with Api(relay.base_url) as api:
        created = await api.create_session("di@example.com")
    proxy = await StaleKeepAliveProxy(relay.base_url).start()
    client = RelayClient(proxy.base_url)
    try:
        await client.login("alice", PASSWORD)  # a fresh connection, kept in the pool
        assert (await client.sessions())["sessions"]  # the pooled one: closed, sent again
        assert (await client.session(created["id"]))["state"] == "pending"  # a fresh one
        assert (await client.sessions())["sessions"]  # the pooled one again
        assert (await client.session(created["id"]))["state"] == "pending"
        assert (await client.end_session(created["id"]))["state"] == "ended"  # pooled
        assert proxy.dropped == 3
    finally:
        await client.aclose()
        await proxy.close()


async def test_panes_stop_and_say_why_when_the_customer_ends_the_session(
        start_relay, agents, tmp_path: Path, quick_agent) -> None:
    """The shell pane retried forever once the customer had ended the session; now every
    pane of the session stops, says it ended and why, and the console carries on."""
    relay = start_relay()
    _view, agent, token = await online_session(relay, agents, tmp_path, "fin@example.com")
    async with console(relay, token, size=(100, 30)) as (app, pilot, _table):
        await pilot.press("t")
        await give_password(pilot, app)
        await wait_until(pilot, lambda: isinstance(app.screen, ChatScreen)
                         and app.screen.channel is not None, timeout=30)
        chat = app.screen
        await pilot.press("ctrl+right_square_bracket")
        await pilot.press("r")
        await wait_until(pilot, lambda: isinstance(app.screen, RemoteScreen)
                         and app.screen.channel is not None, timeout=30)
        shell = app.screen
        agent.proc.send_signal(signal.SIGTERM)  # the customer ends it from their window
        await wait_until(pilot, lambda: shell.ended is not None and chat.ended is not None,
                         timeout=30, what="the panes learning the session ended")
        assert "ended by the customer" in shell.state
        assert "ended by the customer" in notices(app)
        await wait_until(pilot, lambda: not [w for w in app.workers if w.node in (shell, chat)
                                             and w.is_running])  # nothing retries
        assert app.passwords == {}
        await pilot.press("ctrl+right_square_bracket")
        await wait_until(pilot, lambda: isinstance(app.screen, SessionsScreen))
        await wait_until(pilot, lambda: not app.retired)  # the ended panes are gone
        await pilot.press("r")  # and the session cannot be opened again
        await wait_until(pilot, lambda: "ended" in notices(app).rsplit("\n", 1)[-1])
        assert app.is_running and not app.unexpected
        await app.action_quit()


async def test_a_network_drop_under_the_file_manager_is_not_called_a_plan_refusal(
        start_relay, agents, tmp_path: Path, quick_agent, monkeypatch) -> None:
    """Found by the chaos test: with the link silently dead, the SFTP channel failed as the
    connection died, and the file manager said the plan did not include files."""
    for name in ("ADHOC_CONSOLE_KEEPALIVE", "ADHOC_HOST_KEEPALIVE", "ADHOC_RELAY_KEEPALIVE"):
        monkeypatch.setenv(name, "1")
    proxy = await DeadLinkProxy().start()
    ssh_port = free_port()
    proxy.upstream = ("127.0.0.1", ssh_port)
    try:
        relay = start_relay("--ssh-public", f"127.0.0.1:{proxy.port}", ssh_port=ssh_port)
        view, _agent, token = await online_session(relay, agents, tmp_path, "net@example.com")
        async with console(relay, token, size=(100, 30)) as (app, pilot, _table):
            await pilot.press("t")  # a pane first: the connection to the host is open
            await give_password(pilot, app)
            await wait_until(pilot, lambda: isinstance(app.screen, ChatScreen)
                             and app.screen.channel is not None, timeout=30)
            await pilot.press("ctrl+right_square_bracket")
            proxy.cut()
            files = FilesScreen(view, app.connector, app.passwords[view["id"]],
                                local_path=str(tmp_path))
            await app.push_screen(files)
            await wait_until(pilot, lambda: files.remote.message is not None
                             and "unavailable" in files.remote.message, timeout=30)
            assert "plan" not in files.remote.message
            assert "ctrl+r" in files.remote.message
            assert app.is_running and not app.unexpected
            proxy.mend()
            await app.action_quit()
    finally:
        await proxy.close()
