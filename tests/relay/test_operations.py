"""What an operator runs and watches: serve refuses a taken port and exits, /healthz and
/readyz answer on both listeners, Prometheus metrics count what happens and stay off the
public port."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from relay.config import RelaySettings
from relay.server import RelayServer
from tests.support import (
    Api,
    RelayProcess,
    provision,
    start_session,
    technician_ssh,
)


@pytest.fixture
def taken() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock
    sock.close()


@pytest.mark.parametrize("flag", ["--http", "--ssh", "--metrics"])
def test_serve_on_a_taken_port_says_so_and_exits(data_dir: Path, taken: socket.socket,
                                                 flag: str) -> None:
    port = taken.getsockname()[1]
    addresses = {"--http": "127.0.0.1:0", "--ssh": "127.0.0.1:0", "--metrics": "127.0.0.1:0"}
    addresses[flag] = f"127.0.0.1:{port}"
    argv = [sys.executable, "-m", "relay.cli", "--data-dir", str(data_dir), "serve"]
    for name, address in addresses.items():
        argv += [name, address]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    what = {"--http": "HTTP", "--ssh": "SSH", "--metrics": "metrics"}[flag]
    assert result.stderr.strip().splitlines() == [
        f"adhoc-relay: cannot listen for {what} on 127.0.0.1:{port}: the address is already in "
        f"use (another relay or program listens there): stop it, or choose another port with "
        f"{flag}"]
    assert "Traceback" not in result.stderr


def metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = re.escape(name) + (r"\{" + re.escape(wanted) + r"\}" if labels else "") + \
        r" ([0-9.e+]+)$"
    found = re.search(pattern, text, re.MULTILINE)
    assert found, f"{name} {labels} not in:\n{text}"
    return float(found.group(1))


async def test_health_readiness_and_metrics(data_dir: Path, agents, tmp_path: Path) -> None:
    relay = RelayProcess(data_dir, ("--metrics", "127.0.0.1:0"))
    relay.start()
    try:
        log = relay.log_path.read_text()
        assert "Traceback" not in log
        async with httpx.AsyncClient() as http:
            metrics_url = relay.metrics_url
            assert metrics_url is not None
            for base in (relay.base_url, metrics_url):
                assert (await http.get(f"{base}/healthz")).json() == {"status": "ok"}
                assert (await http.get(f"{base}/readyz")).json() == {"status": "ready"}
            # The numbers are not on the public listener.
            assert (await http.get(f"{relay.base_url}/metrics")).status_code == 404
            await http.post(f"{relay.base_url}/api/v1/login",
                            json={"login": "alice", "password": "wrong-password-1"})
            async with Api(relay.base_url) as api:
                view, _agent = await start_session(api, agents, tmp_path)
                async with technician_ssh(relay, api, view) as inner:
                    await inner.run("head -c 100000 /dev/zero", check=True)
                    during = (await http.get(f"{metrics_url}/metrics")).text
            after = (await http.get(f"{metrics_url}/metrics")).text
        assert metric(during, "adhoc_relay_agents_online") == 1
        assert metric(during, "adhoc_relay_tunnels_open") == 1
        assert metric(after, "adhoc_relay_tunnels_open") == 0
        assert metric(after, "adhoc_relay_tunnels_opened_total") == 1
        assert metric(after, "adhoc_relay_bytes_relayed_total") > 100000
        assert metric(after, "adhoc_relay_logins_total", route="http", who="technician",
                      outcome="failed") == 1
        assert metric(after, "adhoc_relay_logins_total", route="http", who="technician",
                      outcome="ok") == 1
        assert metric(after, "adhoc_relay_logins_total", route="ssh", who="agent",
                      outcome="ok") >= 1
        assert metric(after, "adhoc_relay_sessions", state="active") == 1
        assert metric(after, "adhoc_relay_sessions", state="pending") == 0
        assert metric(after, "adhoc_relay_ssh_handshakes_waiting") == 0
        assert metric(after, "adhoc_relay_mail_sending") == 0
        assert metric(after, "adhoc_relay_http_request_seconds_count", method="POST",
                      route="/api/v1/login") == 2
    finally:
        relay.stop()


async def test_readiness_fails_when_the_database_is_gone(tmp_path: Path) -> None:
    data_dir = tmp_path / "relay"
    provision(data_dir)
    server = RelayServer(RelaySettings(data_dir=data_dir, http_port=0, ssh_port=0))
    service = await server.start()
    try:
        async with httpx.AsyncClient(base_url=service.base_url) as http:
            assert (await http.get("/readyz")).status_code == 200
            await service.store.close()  # the database stops answering
            answer = await http.get("/readyz")
            assert answer.status_code == 503
            assert answer.json()["status"] == "not ready"
            assert answer.json()["problems"][0].startswith("database: ")
            assert (await http.get("/healthz")).status_code == 200
    finally:
        await server.stop()
