"""Through a real forward proxy (tinyproxy) from a computer that cannot reach the relay any
other way: the agent (and OpenSSH through `adhoc-console tunnel`) runs in a network namespace
whose only way out is the proxy, with the relay on 127.0.0.2 of this machine. The proxy wants
a password and allows CONNECT only to the relay's web port, as office proxies do."""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.reach import summary
from tests import netns
from tests.ports import free_port
from tests.support import Api, OpenSSH, RelayProcess, new_agent, provision

REASON = netns.available()
pytestmark = [
    pytest.mark.skipif(shutil.which("tinyproxy") is None,
                       reason="tinyproxy is not installed; CI installs it"),
    pytest.mark.skipif(REASON is not None, reason=REASON or ""),
]
USER, PASSWORD = "office", "proxy-pass-1"


@contextlib.contextmanager
def tinyproxy(folder: Path, listen: str, connect_ports: tuple[int, ...]):
    """tinyproxy on listen:<free port> with basic auth; CONNECT only to `connect_ports`
    (none: CONNECT refused everywhere, plain HTTP still forwarded)."""
    port = free_port(listen)
    config = folder / "tinyproxy.conf"
    log = folder / "tinyproxy.log"
    lines = [f"Port {port}", f"Listen {listen}", "Timeout 600", f'LogFile "{log}"',
             "LogLevel Info", f'PidFile "{folder / "tinyproxy.pid"}"',
             f"BasicAuth {USER} {PASSWORD}", "DisableViaHeader Yes", "MaxClients 50"]
    lines += [f"ConnectPort {p}" for p in connect_ports] or ["ConnectPort 1"]
    config.write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen(["tinyproxy", "-d", "-c", str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection((listen, port), 1):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"tinyproxy did not start: {log.read_text()[-500:]}")
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def network(tmp_path: Path):
    with netns.Namespace() as ns:
        yield ns


@pytest.fixture
def relay(tmp_path: Path):
    data_dir = tmp_path / "relay"
    provision(data_dir)
    process = RelayProcess(data_dir, ("--http", "127.0.0.2:0", "--ssh", "127.0.0.2:0"))
    process.start()
    yield process
    process.stop()


def web_port(relay: RelayProcess) -> int:
    return int(relay.base_url.rsplit(":", 1)[1])


@pytest.mark.skipif(shutil.which("ssh") is None, reason="OpenSSH client is not installed")
async def test_agent_and_openssh_reach_the_relay_only_through_the_proxy(
        relay, network, agents, tmp_path: Path) -> None:
    with tinyproxy(tmp_path, network.outside, (web_port(relay),)) as port:
        proxy = f"http://{USER}:{PASSWORD}@{network.outside}:{port}"
        # A usual NO_PROXY: it names 127.0.0.1, not the relay's 127.0.0.2, so the proxy is used
        # (no hidden exception for loopback addresses).
        env = {"HTTP_PROXY": proxy, "NO_PROXY": "localhost,127.0.0.1"}
        async with Api(relay.base_url) as api:
            session = await api.create_session()
            agent = new_agent(agents, tmp_path, session)
            agent.start(env=env, wrap=network.wrap)
            line = await agent.wait_for_line("Connected to the relay", timeout=60)
            # The proxy refuses CONNECT to the SSH port, so the agent took the WebSocket.
            assert (f"SSH over WebSocket to ws://127.0.0.2:{web_port(relay)}/api/v1/ssh "
                    f"through the proxy {network.outside}:{port} (HTTP_PROXY)") in line
            assert PASSWORD not in "".join(agent.output)
            view = await api.wait_for(session["id"], lambda v: v["online"])
            relay_key = (await api.relay_info())["host_key"]
        tunnel = " ".join(network.wrap(["env", f"HTTP_PROXY={proxy}", sys.executable, "-m",
                                        "tui.cli", "tunnel", relay.base_url]))
        OpenSSH(tmp_path, relay, relay_key, view,
                [f"ProxyCommand {tunnel}", "HostKeyAlias adhoc-relay"],
                known_name="adhoc-relay").round_trip()
        log = (tmp_path / "tinyproxy.log").read_text()
        assert f"CONNECT 127.0.0.2:{web_port(relay)}" in log or "127.0.0.2" in log


async def test_without_the_proxy_password_the_customer_is_told_so(
        relay, network, agents, tmp_path: Path) -> None:
    with tinyproxy(tmp_path, network.outside, (web_port(relay),)) as port:
        async with Api(relay.base_url) as api:
            session = await api.create_session()
        agent = new_agent(agents, tmp_path, session)
        agent.start(env={"HTTP_PROXY": f"http://{network.outside}:{port}"}, wrap=network.wrap)
        assert agent.wait_exit(30) == 1
        assert ("the proxy asks for a user name and password: put them in the proxy setting, "
                "as http://user:password@proxy:port") in "".join(agent.output)
        # And straight past the proxy there is no way at all.
        direct = new_agent(agents, tmp_path, session)
        direct.start(wrap=network.wrap)
        assert direct.wait_exit(30) == 1
        assert (f"127.0.0.2:{web_port(relay)} refused the connection"
                in "".join(direct.output))


async def test_a_proxy_that_blocks_every_ssh_route_shows_on_the_technicians_row(
        relay, network, agents, tmp_path: Path) -> None:
    """Plain HTTP goes through (the agent activates), CONNECT nowhere: the agent cannot hold
    its SSH connection, says why on the customer's screen, and tells the relay over HTTP."""
    with tinyproxy(tmp_path, network.outside, ()) as port:
        proxy = f"http://{USER}:{PASSWORD}@{network.outside}:{port}"
        async with Api(relay.base_url) as api:
            session = await api.create_session()
            agent = new_agent(agents, tmp_path, session)
            agent.start(env={"HTTP_PROXY": proxy}, wrap=network.wrap)
            line = await agent.wait_for_line("The relay cannot be reached yet",
                                             timeout=60)
            assert f"blocked: the proxy {network.outside}:{port} (HTTP_PROXY) refused to " \
                   f"connect to 127.0.0.2:{relay.ssh_port} (HTTP 403)" in line
            assert f"(tried SSH to 127.0.0.2:{relay.ssh_port} through the proxy" in line
            assert "(tried SSH over WebSocket to ws://127.0.0.2" in line
            view = await api.wait_for(session["id"], lambda v: v["host_problem"] is not None)
            assert view["online"] is False
            text = view["host_problem"]["text"]
            assert summary(text) == "blocked"
            assert "next try" not in text and PASSWORD not in text
            assert text.count("refused to connect to 127.0.0.2") == 2


async def test_ssh_port_through_the_proxy_loses_no_byte_of_the_relays_greeting(
        relay, tmp_path: Path) -> None:
    """The relay speaks first (its SSH version line), often in the same packet as the proxy's
    answer to CONNECT: reading that answer must leave the greeting for SSH."""
    from common.reach import relay_routes
    from tui.client import open_relay

    with tinyproxy(tmp_path, "127.0.0.1", (relay.ssh_port, web_port(relay))) as port:
        environ = {"http_proxy": f"http://{USER}:{PASSWORD}@127.0.0.1:{port}"}
        async with Api(relay.base_url) as api:
            info = await api.relay_info()
            routes = relay_routes(info["ssh"], relay.base_url, environ=environ)
            for _ in range(5):
                conn, route = await open_relay(routes, "alice", api.token, info["host_key"])
                assert route.kind == "ssh" and route.proxy is not None
                conn.close()
                await conn.wait_closed()


async def test_https_through_a_proxy_that_wants_a_password_or_is_not_there(
        tmp_path: Path, agents) -> None:
    """httpx meets the proxy's answer to CONNECT (https), not a response of the relay: the
    customer still hears that the proxy wants a password, and a proxy that is not there is
    named as the one not there (not the relay)."""
    from tests.certs import Authority, bundle

    folder = tmp_path / "tls"
    folder.mkdir()
    authority = Authority(folder)
    cert = authority.issue("relay", ("127.0.0.2",))
    data_dir = tmp_path / "relay-tls"
    provision(data_dir)
    relay = RelayProcess(data_dir, ("--http", "127.0.0.2:0", "--ssh", "127.0.0.2:0",
                                    "--tls-cert", str(cert.cert), "--tls-key", str(cert.key)))
    relay.start()
    try:
        trusted = bundle(folder / "trusted.pem", authority)
        async with Api(relay.base_url,
                       verify=ssl.create_default_context(cafile=str(trusted))) as api:
            session = await api.create_session()
        with tinyproxy(tmp_path, "127.0.0.1", (web_port(relay),)) as port:
            agent = new_agent(agents, tmp_path, session)
            agent.start(env={"HTTPS_PROXY": f"http://127.0.0.1:{port}",
                             "SSL_CERT_FILE": str(trusted)})
            assert agent.wait_exit(30) == 1
            assert ("cannot reach the relay: proxy asks for a password: the proxy asks for a "
                    "user name and password") in "".join(agent.output)
        gone = new_agent(agents, tmp_path, session)
        gone.start(env={"HTTPS_PROXY": f"http://127.0.0.1:{port}",
                        "SSL_CERT_FILE": str(trusted)})
        assert gone.wait_exit(30) == 1
        assert (f"refused: the proxy 127.0.0.1:{port} (HTTPS_PROXY) refused the connection: "
                "the proxy may be down") in "".join(gone.output)
    finally:
        relay.stop()
