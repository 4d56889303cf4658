"""The relay behind a real TLS reverse proxy (nginx, Caddy) configured exactly as
docs/ADMIN.md says, with its SSH port off: one public port carries the join, activation, the
event stream, a shell, SFTP, and stock OpenSSH through `adhoc-console tunnel`.

The proxy configuration is read from the doc itself (only addresses, port and certificate
paths are replaced, each replacement checked), so the doc cannot drift from what works."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.certs import Authority, ServerCert, bundle
from tests.ports import free_port
from tests.support import (
    Api,
    OpenSSH,
    RelayProcess,
    new_agent,
    provision,
    stop_process,
    technician_ssh,
)

ADMIN_DOC = Path(__file__).resolve().parents[2] / "docs" / "ADMIN.md"
DOC_PORT = "127.0.0.1:8780"


def doc_block(language: str) -> str:
    """The one fenced block of `language` in docs/ADMIN.md."""
    blocks = re.findall(rf"^```{language}\n(.*?)^```$", ADMIN_DOC.read_text(), re.M | re.S)
    assert len(blocks) == 1, f"docs/ADMIN.md should hold one ```{language} block"
    return blocks[0]


def replace(text: str, old: str, new: str) -> str:
    assert old in text, f"docs/ADMIN.md's config no longer contains {old!r}"
    return text.replace(old, new)


def wait_listening(port: int, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 20
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"the proxy did not start: {log.read_text()[-2000:]}")
        time.sleep(0.05)


@contextlib.contextmanager
def nginx(folder: Path, port: int, relay_port: int, cert: ServerCert) -> Iterator[None]:
    site = doc_block("nginx")
    site = replace(site, "listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;")
    site = replace(site, "/etc/letsencrypt/live/support.example.com/fullchain.pem",
                   str(cert.cert))
    site = replace(site, "/etc/letsencrypt/live/support.example.com/privkey.pem",
                   str(cert.key))
    site = replace(site, f"proxy_pass http://{DOC_PORT};",
                   f"proxy_pass http://127.0.0.1:{relay_port};")
    (folder / "adhoc.conf").write_text(site)
    temp = "".join(f"    {kind}_temp_path {folder}/{kind};\n"
                   for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    log = folder / "error.log"
    (folder / "nginx.conf").write_text(
        f"user root;\nworker_processes 1;\npid {folder}/nginx.pid;\n"
        f"error_log {log} info;\ndaemon off;\nevents {{ worker_connections 256; }}\n"
        f"http {{\n    access_log {folder}/access.log;\n{temp}"
        f"    include {folder}/adhoc.conf;\n}}\n")
    with log.open("ab") as errors:
        proc = subprocess.Popen(["nginx", "-p", str(folder), "-c",
                                 str(folder / "nginx.conf")],
                                stdout=subprocess.DEVNULL, stderr=errors)
    try:
        wait_listening(port, proc, log)
        yield
    finally:
        stop_process(proc, 15)


@contextlib.contextmanager
def caddy(folder: Path, port: int, relay_port: int, cert: ServerCert) -> Iterator[None]:
    site = doc_block("caddyfile")
    site = replace(site, "support.example.com {", f"https://127.0.0.1:{port} {{")
    site = replace(site, "tls /etc/ssl/adhoc/fullchain.pem /etc/ssl/adhoc/privkey.pem",
                   f"tls {cert.cert} {cert.key}")
    site = replace(site, f"reverse_proxy {DOC_PORT} {{", f"reverse_proxy 127.0.0.1:{relay_port} {{")
    # The test's own global options: no admin API, no port 80, state in the test's folder.
    config = folder / "Caddyfile"
    config.write_text(f"{{\n    admin off\n    auto_https disable_redirects\n"
                      f"    storage file_system {folder}/storage\n}}\n{site}")
    log = folder / "caddy.log"
    env = {"HOME": str(folder), "XDG_DATA_HOME": str(folder / "data"),
           "XDG_CONFIG_HOME": str(folder / "config"), "PATH": "/usr/bin:/bin"}
    with log.open("ab") as output:
        proc = subprocess.Popen(["caddy", "run", "--config", str(config), "--adapter",
                                 "caddyfile"], stdout=output, stderr=subprocess.STDOUT,
                                env=env)
    try:
        wait_listening(port, proc, log)
        yield
    finally:
        stop_process(proc)


PROXIES = {"nginx": nginx, "caddy": caddy}


@pytest.mark.parametrize("name", sorted(PROXIES))
async def test_everything_through_one_tls_port_behind_the_documented_proxy(
        name: str, tmp_path: Path, agents, monkeypatch) -> None:
    if shutil.which(name) is None:
        pytest.skip(f"{name} is not installed; CI installs it")
    if shutil.which("ssh") is None:
        pytest.skip("OpenSSH client is not installed")
    folder = tmp_path / name
    folder.mkdir()
    authority = Authority(folder)
    cert = authority.issue("proxy")
    # The customer's computer and the technician's trust the proxy's authority, as they would
    # a public one.
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle(folder / "trusted.pem", authority)))
    port, relay_port = free_port(), free_port()
    public = f"https://127.0.0.1:{port}"
    data_dir = tmp_path / "relay"
    provision(data_dir)
    relay = RelayProcess(data_dir, ("--ssh", "off", "--public-url", public,
                                    "--trusted-proxy", "127.0.0.1"))
    relay.start(http_port=relay_port)
    try:
        with PROXIES[name](folder, port, relay_port, cert):
            await one_port_walk(relay, public, authority, agents, tmp_path)
    finally:
        relay.stop()


async def one_port_walk(relay: RelayProcess, public: str, authority: Authority, agents,
                        tmp_path: Path) -> None:
    assert relay.base_url == public and relay.ssh_port == 0
    trust = ssl.create_default_context(cafile=str(authority.path))
    async with Api(public, verify=trust) as api:
        session = await api.create_session()
        assert session["join_url"].startswith(f"{public}/join/")
        # The event stream flows through the proxy as events happen (no buffering).
        events: list[dict] = []
        stream = asyncio.create_task(follow_events(api, events))
        try:
            agent = new_agent(agents, tmp_path, session)
            agent.start()
            line = await agent.wait_for_line("Connected to the relay", timeout=60)
            assert f"SSH over WebSocket to wss://127.0.0.1:{public.rsplit(':', 1)[1]}" \
                   "/api/v1/ssh" in line
            view = await api.wait_for(session["id"], lambda v: v["online"])
            for _ in range(200):
                if any(e.get("kind") == "online" for e in events):
                    break
                await asyncio.sleep(0.05)
            assert any(e.get("kind") == "online" and e["session_id"] == session["id"]
                       for e in events), events
        finally:
            stream.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stream
        # The relay saw the customer's address as the proxy reported it.
        assert view["host"]["ip"] == "127.0.0.1"
        async with technician_ssh(relay, api, view) as inner:
            result = await inner.run("echo behind-the-proxy", check=True)
            assert result.stdout.strip() == "behind-the-proxy"
            payload = tmp_path / "payload"
            payload.write_bytes(bytes(range(256)) * 4096)
            async with inner.start_sftp_client() as sftp:
                await sftp.put(str(payload), str(tmp_path / "up"))
                await sftp.get(str(tmp_path / "up"), str(tmp_path / "down"))
            assert (tmp_path / "down").read_bytes() == payload.read_bytes()
        relay_key = (await api.relay_info())["host_key"]
    tunnel = f"{sys.executable} -m tui.cli tunnel {public}"
    OpenSSH(tmp_path, relay, relay_key, view,
            [f"ProxyCommand {tunnel}", "HostKeyAlias adhoc-relay"],
            known_name="adhoc-relay").round_trip()


async def follow_events(api: Api, into: list[dict]) -> None:
    async with api.client.stream("GET", "/api/v1/events", timeout=None) as response:
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                into.append(json.loads(line[5:]))
