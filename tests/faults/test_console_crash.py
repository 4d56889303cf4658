"""kill -9 of the relay during a live console session: the console's own service layer
(RelayClient + HostConnector, no Textual) gets the same shell back once the relay and the agent
are back, and the session is unchanged (THREATS: "relay restarted during a live shell")."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.faults.conftest import restart
from tests.hostagent.helpers import wait_for_count
from tests.support import PASSWORD, SESSION_PASSWORD, new_agent
from tui.client import HostConnector, RelayClient, RelayError


class Screen:
    """What a terminal pane would be fed: the bytes, and whether the channel closed."""

    def __init__(self) -> None:
        self.bytes = bytearray()
        self.closed = asyncio.Event()
        self.why = ""

    def output(self, data: bytes) -> None:
        self.bytes.extend(data)

    def ended(self, why: str) -> None:
        self.why = why
        self.closed.set()

    async def shows(self, needle: bytes, timeout: float = 15) -> None:
        async with asyncio.timeout(timeout):
            while needle not in self.bytes:
                if self.closed.is_set():
                    raise AssertionError(f"the shell closed ({self.why}) before {needle!r}; "
                                         f"got {bytes(self.bytes[-500:])!r}")
                await asyncio.sleep(0.05)


async def wait_online(client: RelayClient, session_id: str, timeout: float = 30) -> dict:
    async with asyncio.timeout(timeout):
        while not (view := await client.session(session_id))["online"]:
            await asyncio.sleep(0.1)
    return view


async def test_relay_kill_9_mid_shell_the_console_gets_the_same_shell_back(
        start_relay, agents, tmp_path: Path, quick_agent) -> None:
    relay = start_relay()
    client = RelayClient(relay.base_url)
    connector = HostConnector(client, "alice")
    try:
        await client.login("alice", PASSWORD)
        created = await client.create_session("customer@example.com", SESSION_PASSWORD)
        agent = new_agent(agents, tmp_path, created)
        agent.start()
        await agent.wait_for_line("Connected to the relay")
        before = await wait_online(client, created["id"])

        screen = Screen()
        shell = await connector.open_shell(before, SESSION_PASSWORD, cols=80, rows=24,
                                           shell_id="crash-test", on_output=screen.output,
                                           on_closed=screen.ended)
        shell.send(b"export X=before-$((6*7)); echo set-$X\r")
        await screen.shows(b"set-before-42")

        relay.kill9()
        await asyncio.wait_for(screen.closed.wait(), 15)  # the pane learns its channel died
        await agent.wait_for_line("Connection to the relay lost")
        # While the relay is down the console gets a sentence, not a traceback.
        with pytest.raises(RelayError) as down:
            await connector.open_shell(before, SESSION_PASSWORD, cols=80, rows=24,
                                       shell_id="crash-test", on_output=screen.output,
                                       on_closed=screen.ended)
        assert down.value.code == "unreachable"

        restart(relay)
        await wait_for_count(agent, "Connected to the relay", 2, timeout=30)
        after = await wait_online(client, created["id"])  # the API token survived the crash

        again = Screen()
        shell = await connector.open_shell(after, SESSION_PASSWORD, cols=80, rows=24,
                                           shell_id="crash-test", on_output=again.output,
                                           on_closed=again.ended)
        await again.shows(b"set-before-42")  # the repaint of the screen it left
        shell.send(b"echo still-$X\r")
        await again.shows(b"still-before-42")  # the same shell: its variable survived

        assert after["state"] == "active"
        for field in ("expires_at", "activated_at", "host_key"):
            assert after[field] == before[field], field
        shell.close()
    finally:
        await connector.close()
        await client.aclose()
