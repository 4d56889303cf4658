"""What an operator runs and watches: serve refuses a taken port and exits, /healthz and
/readyz answer on both listeners, Prometheus metrics count what happens and stay off the
public port."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from relay.config import RelaySettings
from relay.db.url import parse_database_url, without_password
from relay.server import RelayServer
from tests import postgres as pg
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


@pytest.mark.parametrize(("flag", "value", "words"), [
    ("--public-url", "http://[support.example.com", "cannot read the URL"),
    ("--public-url", "support.example.com", "is not an http:// or https:// URL with a host"),
    ("--http", "[::1", "write an IPv6 address in brackets"),
])
def test_serve_with_an_address_that_cannot_be_read_says_so(data_dir: Path, flag: str,
                                                           value: str, words: str) -> None:
    """A --public-url that cannot be read was taken as it was: the relay started and every
    invitation carried a link nobody could open."""
    argv = [sys.executable, "-m", "relay.cli", "--data-dir", str(data_dir), "serve",
            "--http", "127.0.0.1:0", "--ssh", "127.0.0.1:0", flag, value]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(f"adhoc-relay serve: error: argument {flag}: ") and \
        words in lines[-1], result.stderr
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
            assert answer.json() == {"status": "not ready", "problems": ["database unavailable"]}
            assert (await http.get("/healthz")).status_code == 200
    finally:
        await server.stop()


async def _readiness_hides_the_error(server: RelayServer, break_it, caplog,
                                     hidden: tuple[str, ...], logged: str,
                                     secret: str | None = None) -> None:
    """/readyz answers 200, then (once `break_it` broke the database) 503 with the fixed
    sentence and none of `hidden` nor the detail `logged`, which the log has, once; `secret`
    is in neither."""
    caplog.set_level(logging.INFO, logger="adhoc.relay")
    service = await server.start()
    try:
        async with httpx.AsyncClient(base_url=service.base_url) as http:
            assert (await http.get("/readyz")).status_code == 200
            break_it()
            answers = [await http.get("/readyz") for _ in range(3)]
    finally:
        await server.stop()
    for answer in answers:
        assert answer.status_code == 503
        assert answer.json() == {"status": "not ready", "problems": ["database unavailable"]}
        for text in (*hidden, logged, *filter(None, [secret])):
            assert text not in answer.text
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("readiness")]
    assert len(said) == 1 and logged in said[0], said  # once, not at every probe
    if secret:
        assert secret not in caplog.text


async def test_readiness_shows_no_database_error_text(tmp_path: Path, caplog) -> None:
    """A database that answers with an error (a table dropped behind the relay's back), not
    one that is gone: whoever probes /readyz learns nothing of it but that it is unavailable."""
    data_dir = tmp_path / "relay"
    provision(data_dir)

    def drop_events() -> None:
        with contextlib.closing(sqlite3.connect(data_dir / "relay.db", timeout=10)) as db:
            db.execute("DROP TABLE events")
            db.commit()

    server = RelayServer(RelaySettings(data_dir=data_dir, http_port=0, ssh_port=0))
    await _readiness_hides_the_error(server, drop_events, caplog,
                                     (str(data_dir), "relay.db"), "no such table: events")


async def test_a_failing_database_is_logged_once_not_at_every_try(tmp_path: Path,
                                                                    caplog) -> None:
    """The relay follows the database for live events a few times a second: a database that
    fails (a table dropped behind its back) is said once, with its traceback, not at every try
    (the log grew by a traceback every 250 ms)."""
    data_dir = tmp_path / "relay"
    provision(data_dir)
    caplog.set_level(logging.DEBUG, logger="adhoc.relay.cluster")
    server = RelayServer(RelaySettings(data_dir=data_dir, http_port=0, ssh_port=0))
    await server.start()
    try:
        with contextlib.closing(sqlite3.connect(data_dir / "relay.db", timeout=10)) as db:
            db.execute("DROP TABLE events")
            db.commit()

        def tries() -> list[logging.LogRecord]:
            return [r for r in caplog.records
                    if r.getMessage().startswith("cluster: following the database failed")]

        async with asyncio.timeout(30):
            while len(tries()) < 4:  # the follower tried (and failed) four times
                await asyncio.sleep(0.05)
    finally:
        await server.stop()
    loud = [r for r in tries() if r.levelno >= logging.WARNING]
    assert len(loud) == 1 and loud[0].exc_info, [r.getMessage() for r in loud]


async def test_readiness_on_postgresql_logs_no_password(postgres, postgres_template,
                                                        template_dir: Path, tmp_path: Path,
                                                        caplog) -> None:
    data_dir = tmp_path / "relay"
    shutil.copytree(template_dir, data_dir)
    name = postgres.new_database(postgres_template)
    url = parse_database_url(postgres.url(name))
    assert url.password == pg.RELAY_PASSWORD
    server = RelayServer(RelaySettings(data_dir=data_dir, http_port=0, ssh_port=0,
                                       database=url))
    await _readiness_hides_the_error(
        server, lambda: postgres.admin("DROP TABLE events CASCADE", name), caplog,
        (str(postgres.socket_dir), name), 'relation "events" does not exist',
        secret=pg.RELAY_PASSWORD)


def test_a_password_is_taken_out_of_a_database_error() -> None:
    url = parse_database_url("postgresql://adhoc:p%40ss%2Fw0rd-long@db.example/adhoc")
    text = f"cannot connect to {url.render_as_string(hide_password=False)} as p@ss/w0rd-long"
    scrubbed = without_password(text, url)
    assert "p@ss/w0rd-long" not in scrubbed and "p%40ss%2Fw0rd-long" not in scrubbed
    assert scrubbed == "cannot connect to postgresql+asyncpg://adhoc:***@db.example/adhoc as ***"
