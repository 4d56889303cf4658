"""A hostile host against the technician: strings it controls never reach the real terminal.

The host chooses its hostname, OS and user name at activation; the relay shows them in the
list. Each carries escape sequences (clipboard write, title, clear screen), C1 bytes and a
bidi override; the console must show them escaped and emit none of those bytes.
"""

from __future__ import annotations

import asyncio
import gc
import time
import warnings

import asyncssh
import httpx
import pytest
from textual.widgets import DataTable

from common.reach import relay_routes
from common.secret import Secret
from tests.ports import free_port
from tests.support import Api, impostor_relay
from tui.app import ConsoleApp
from tui.client import RelayClient, RelayError, open_relay

HOSTILE = "evil\x1b]52;c;aGVsbG8=\x07\x1b]0;pwned\x07\x1b[2J\x9b31m\u202eexe.txt"
FORBIDDEN = ("\x1b", "\x07", "\x9b", "\u202e")


async def test_hostile_host_strings_are_escaped(relay) -> None:
    async with Api(relay.base_url) as api:
        session = await api.create_session("victim@example.com")
        token = api.token
    async with httpx.AsyncClient(base_url=relay.base_url) as raw:
        token_part = session["join_url"].rsplit("/", 1)[1]
        response = await raw.post(f"/api/v1/join/{token_part}/activate", json={
            "code": session["security_code"], "host_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA"
            "IBq4pRAtgxpyC8k6d4XdgBGp9NfDDWJ0hRgbchaZZc0D", "hostname": HOSTILE,
            "os": HOSTILE, "user": HOSTILE})
        assert response.status_code == 200, response.text

    client = RelayClient(relay.base_url, token)
    app = ConsoleApp(client, "alice")
    async with app.run_test(size=(160, 30)) as pilot:
        table = app.screen.query_one("#sessions", DataTable)
        deadline = time.monotonic() + 20
        while table.row_count == 0 and time.monotonic() < deadline:
            await pilot.pause(0.05)
        host_cell = str(table.get_row_at(0)[4])
        assert "evil\\x1b]52;c;" in host_cell
        assert "\\u202e" in host_cell
        for text in (host_cell, app.export_screenshot()):
            for forbidden in FORBIDDEN:
                assert forbidden not in text
        # What Textual would write to the real terminal for this screen.
        rendered = "".join(segment.text for line in app.screen._compositor.render_strips()
                           for segment in line)
        for forbidden in FORBIDDEN:
            assert forbidden not in rendered
        assert app.title == "Adhoc"
        await app.action_quit()
    await client.aclose()


async def test_a_server_posing_as_the_relay_is_told_nothing_and_stops_nothing() -> None:
    """What answers SSH at the relay's address with another host key (a network that
    redirects connections, someone posing as the relay) is not the relay: the console sends
    it no login, and says so as a failure to reach the relay, which its panes retry, rather
    than as a refused login ("log in again"), which they did not."""
    relay_key = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    async with impostor_relay() as (port, logins):
        with pytest.raises(RelayError) as failed:
            await open_relay(relay_routes(f"127.0.0.1:{port}", f"http://127.0.0.1:{free_port()}"),
                             "alice", Secret("token-of-alice"), relay_key)
    assert failed.value.status == 0 and failed.value.code == "unreachable"
    assert f"not the relay: what answered at 127.0.0.1:{port} has another SSH host key" \
        in failed.value.detail and "nothing was sent to it" in failed.value.detail
    assert logins == []


async def test_an_attempt_cancelled_while_the_relay_says_nothing_leaves_no_socket() -> None:
    """Something at the relay's address accepts and never sends its banner (a relay busy
    stopping, a tarpit); the pane is left, or the console quits, while the console waits:
    the connection is closed, not left to the garbage collector (a leaked socket each
    time)."""
    held, ended = [], asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await reader.read()  # until the console's side closes
        ended.set()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    relay_key = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    try:
        attempt = asyncio.create_task(open_relay(
            relay_routes(f"127.0.0.1:{port}", f"http://127.0.0.1:{free_port()}"),
            "alice", Secret("token-of-alice"), relay_key))
        for _ in range(200):
            if held:
                break
            await asyncio.sleep(0.01)
        assert held, "the console never connected"
        attempt.cancel()
        with pytest.raises(asyncio.CancelledError):
            await attempt
        # Closed by the console: the silent server's read ends.
        await asyncio.wait_for(ended.wait(), 5)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            gc.collect()
        assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()
