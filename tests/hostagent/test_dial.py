"""The agent dials the relay over TCP before any SSH (common/transport.py dial), so retrying a
relay that is down costs a refused connect, not an SSH set-up (docs/BENCHMARKS.md, Fan-in)."""

from __future__ import annotations

import asyncio
import socket

import asyncssh
import pytest

from common.secret import Secret
from common.transport import dial
from hostagent.tunnel import Tunnel
from tests.ports import free_port


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", pytest.param(
    "::1", marks=pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback"))])
async def test_dial_reaches_a_listener_by_address_or_name(host: str) -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readexactly(5))
        await writer.drain()
        writer.close()

    bind = "::1" if host == "::1" else "127.0.0.1"
    server = await asyncio.start_server(echo, bind, 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        sock = await dial(host, port)
        with sock:
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            reader, writer = await asyncio.open_connection(sock=sock)
            writer.write(b"hello")
            assert await reader.readexactly(5) == b"hello"
            writer.close()


async def test_a_relay_that_is_down_is_retried_without_ssh_set_up(monkeypatch) -> None:
    port = free_port()  # nothing listens here

    prepared = []
    real_init = asyncssh.SSHClientConnectionOptions.__init__

    def counting_init(self, *args, **kwargs):
        prepared.append(1)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(asyncssh.SSHClientConnectionOptions, "__init__", counting_init)
    key = asyncssh.generate_private_key("ssh-ed25519")
    states: list[tuple[str, str]] = []
    tunnel = Tunnel("s-down", Secret("secret"), "127.0.0.1", port,
                    key.export_public_key("openssh").decode(), {"server_host_keys": [key]},
                    on_state=lambda state, detail: states.append((state, detail)),
                    backoff_cap=0.02)
    task = asyncio.create_task(tunnel.run())
    for _ in range(500):
        if sum(state == "reconnecting" for state, _ in states) >= 5:
            break
        await asyncio.sleep(0.01)
    tunnel.stop()
    await asyncio.wait_for(task, 5)
    retries = [detail for state, detail in states if state == "reconnecting"]
    assert len(retries) >= 5
    assert all("refused the connection" in detail for detail in retries), retries
    assert prepared == []  # no SSH options were built for a relay that was not there
