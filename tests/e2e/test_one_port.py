"""One public port: SSH over WebSocket on the relay's HTTP listener carries the agent, the
console and stock OpenSSH (through `adhoc-console tunnel`), with the relay's SSH port off or
out of reach, through the same handshake gate and with the client's address as the relay
believes it."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import sys
from pathlib import Path

import pytest
from websockets.asyncio.client import connect as websocket_connect

from common.reach import relay_routes, websocket_route
from common.wsbridge import bridge
from tests.ports import free_port
from tests.support import (
    SESSION_PASSWORD,
    Api,
    OpenSSH,
    RelayProcess,
    new_agent,
    provision,
    start_session,
    technician_ssh,
)
from tui.client import connect_host, open_relay


@pytest.fixture
def start(tmp_path: Path):
    started: list[RelayProcess] = []

    def start(*flags: str) -> RelayProcess:
        data_dir = tmp_path / f"relay{len(started)}"
        provision(data_dir, technicians=("alice",))
        relay = RelayProcess(data_dir, flags)
        relay.start()
        started.append(relay)
        return relay

    yield start
    for relay in started:
        relay.stop()


@pytest.mark.skipif(shutil.which("ssh") is None, reason="OpenSSH client is not installed")
async def test_with_the_ssh_port_off_everything_goes_over_the_http_port(
        start, agents, tmp_path: Path, monkeypatch) -> None:
    # A WebSocket idles for minutes between keepalives; the HTTP header deadline (1 s here)
    # must not close it.
    monkeypatch.setenv("ADHOC_RELAY_HEADER_TIMEOUT", "1")
    relay = start("--ssh", "off")
    async with Api(relay.base_url) as api:
        info = await api.relay_info()
        assert info["ssh"] is None
        session = await api.create_session()
        agent = new_agent(agents, tmp_path, session)
        agent.start()
        line = await agent.wait_for_line("Connected to the relay")
        assert f"SSH over WebSocket to ws://{relay.base_url[7:]}/api/v1/ssh" in line
        view = await api.wait_for(session["id"], lambda v: v["online"])
        await asyncio.sleep(2.5)  # idle past the header deadline
        assert (await api.session(session["id"]))["online"]
        async with technician_ssh(relay, api, view) as inner:
            result = await inner.run("echo one-port-$((6*7))", check=True)
            assert result.stdout.strip() == "one-port-42"
            async with inner.start_sftp_client() as sftp:
                await sftp.put(__file__, str(tmp_path / "copy.py"))
            assert (tmp_path / "copy.py").read_bytes() == Path(__file__).read_bytes()
        # Stock OpenSSH, carried by the console's ProxyCommand.
        tunnel = f"{sys.executable} -m tui.cli tunnel {relay.base_url}"
        OpenSSH(tmp_path, relay, info["host_key"], view,
                [f"ProxyCommand {tunnel}", "HostKeyAlias adhoc-relay"],
                known_name="adhoc-relay").round_trip()


async def test_the_agent_and_console_fall_back_to_the_websocket_and_say_so(
        start, agents, tmp_path: Path) -> None:
    # The relay tells agents an SSH port that refuses (a firewall would do the same).
    closed = free_port()
    relay = start("--ssh-public", f"127.0.0.1:{closed}")
    async with Api(relay.base_url) as api:
        view, agent = await start_session(api, agents, tmp_path)
        connected = await agent.wait_for_line("Connected to the relay")
        assert "SSH over WebSocket" in connected
        info = await api.relay_info()
        routes = relay_routes(info["ssh"], relay.base_url)
        assert [route.kind for route in routes] == ["ssh", "websocket"]
        conn, route = await open_relay(routes, "alice", api.token, info["host_key"])
        try:
            assert route.kind == "websocket"
            inner = await connect_host(conn, view["id"], view["host_key"], SESSION_PASSWORD)
            assert (await inner.run("echo fell-back", check=True)).stdout.strip() == \
                "fell-back"
            inner.close()
        finally:
            conn.close()


@contextlib.asynccontextmanager
async def websocket_from(base_url: str, headers: dict[str, str]):
    """A socket carrying SSH over the relay's WebSocket, opened with extra HTTP headers (what
    a reverse proxy adds)."""
    route = websocket_route(base_url)
    ws = await websocket_connect(route.url, additional_headers=headers, proxy=None,
                                 compression=None)
    mine, theirs = socket.socketpair()

    async def receive() -> bytes | None:
        try:
            return await ws.recv()
        except Exception:
            return None

    task = asyncio.create_task(bridge(theirs, receive, ws.send))
    try:
        yield mine
    finally:
        mine.close()
        await ws.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.mark.parametrize("trusted", [True, False])
async def test_the_websocket_clients_address_is_the_one_the_proxy_rule_allows(
        start, agents, tmp_path: Path, trusted: bool) -> None:
    from common.transport import wait_for_banner
    from tui.client import connect_relay

    relay = start("--ssh", "off", *(("--trusted-proxy", "127.0.0.1") if trusted else ()))
    async with Api(relay.base_url) as api:
        view, _agent = await start_session(api, agents, tmp_path)
        info = await api.relay_info()
        async with websocket_from(relay.base_url, {"X-Forwarded-For": "203.0.113.9"}) as sock:
            await wait_for_banner(sock, 10)
            outer = await connect_relay("relay", 0, "alice", api.token, info["host_key"],
                                        sock=sock)
            inner = await connect_host(outer, view["id"], view["host_key"], SESSION_PASSWORD)
            inner.close()
            outer.close()
        audit = (await api.client.get(f"/api/v1/sessions/{view['id']}/audit")).json()["audit"]
    tunnels = [row for row in audit if row["event"] == "tunnel"]
    assert tunnels, audit
    assert tunnels[-1]["detail"]["ip"] == ("203.0.113.9" if trusted else "127.0.0.1")


async def test_websockets_wait_at_the_same_handshake_gate_as_the_ssh_port(
        start, monkeypatch) -> None:
    from common.reach import open_route

    monkeypatch.setenv("ADHOC_RELAY_MAX_STARTUPS", "1")
    monkeypatch.setenv("ADHOC_RELAY_KEX_TIMEOUT", "60")
    relay = start()
    # Someone holds the one handshake place on the SSH port and says nothing.
    reader, writer = await asyncio.open_connection(relay.ssh_host, relay.ssh_port)
    assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"SSH-2.0-")
    sock = await open_route(websocket_route(relay.base_url))
    try:
        loop = asyncio.get_running_loop()
        sock.setblocking(False)
        with pytest.raises(TimeoutError):  # the WebSocket's SSH waits in line ...
            await asyncio.wait_for(loop.sock_recv(sock, 100), 1.5)
        writer.close()  # ... until the place is free
        banner = await asyncio.wait_for(loop.sock_recv(sock, 100), 10)
        assert banner.startswith(b"SSH-2.0-")
    finally:
        sock.close()


async def test_hostile_websockets_cost_the_relay_little(start) -> None:
    """An oversized message, text instead of bytes, garbage instead of SSH: each is dropped
    alone; the relay answers everyone else."""
    from websockets.exceptions import ConnectionClosed

    relay = start("--ssh", "off")
    url = websocket_route(relay.base_url).url
    async with websocket_connect(url, proxy=None, max_size=None) as ws:
        assert (await ws.recv()).startswith(b"SSH-2.0-")
        await ws.send(b"\0" * (2 * 1024 * 1024))  # over the relay's 1 MiB message limit
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
        assert closed.value.rcvd.code == 1009  # message too big
    async with websocket_connect(url, proxy=None) as ws:
        assert (await ws.recv()).startswith(b"SSH-2.0-")
        await ws.send("text is not SSH")
        await ws.send(b"garbage that is not an SSH version line\r\n" * 10)
        with pytest.raises(ConnectionClosed):
            while True:
                await asyncio.wait_for(ws.recv(), 15)
    async with Api(relay.base_url) as api:
        assert (await api.relay_info())["ssh"] is None
