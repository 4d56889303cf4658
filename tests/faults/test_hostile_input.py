"""Hostile input before anyone has authenticated: slow and garbage SSH banners at the relay's SSH
port, oversized and deeply nested JSON at its open HTTP routes. Garbage is dropped or refused
cleanly, and a live session carries on meanwhile (THREATS: "slow or garbage SSH banners,
oversized or deeply nested JSON")."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

import httpx
import psutil

from tests.support import Api, RelayProcess, new_agent, start_session, technician_ssh

IDLE = 150  # connections that never send a byte
DRIP = 50  # connections that send a version string one byte a second
# The attack comes from its own loopback address, as it would from its own host: the relay
# admits only so many unauthenticated connections from one address (relay/sshd.py).
ATTACKER = "127.0.0.2"
PER_SOURCE = 16  # relay/sshd.py MAX_STARTUPS_PER_SOURCE: an eighth of the 128 handshakes
QUEUED_PER_SOURCE = 36  # ADHOC_RELAY_MAX_QUEUED_PER_SOURCE here (512 by default)
DRIP_BANNER = b"SSH-2.0-slowloris-and-then-some-more-bytes\r\n"
GARBAGE = {
    "http": b"GET / HTTP/1.1\r\nHost: relay\r\n\r\n",
    "tls": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(500) + b"\n",
    "nul line": b"\x00" * 100 + b"\n",
    "empty line": b"\r\n",
    "ssh 1": b"SSH-1.5-ancient\r\n",
    "version too long": b"SSH-2.0-" + b"x" * 400 + b"\r\n",
    "banner without end": b"SSH-2.0-" + b"A" * 1_000_000,
    "binary without end": os.urandom(64 * 1024).replace(b"\n", b"."),
    "huge packet": b"SSH-2.0-ok\r\n" + b"\xff\xff\xff\xf0" + os.urandom(64),
    "bad kexinit": b"SSH-2.0-ok\r\n" + b"\x00\x00\x00\x1c\x06\x14" + os.urandom(26),
    "random": os.urandom(4096),
}


async def run_on_host(relay: RelayProcess, api: Api, session: dict, command: str) -> str:
    async with technician_ssh(relay, api, session) as inner:
        result = await asyncio.wait_for(inner.run(command, check=True), 30)
    return str(result.stdout)


async def send_garbage(relay: RelayProcess, payload: bytes) -> bytes:
    """Send `payload` and read until the relay hangs up; what it sent back is returned."""
    reader, writer = await asyncio.open_connection(relay.ssh_host, relay.ssh_port)
    try:
        writer.write(payload)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        seen = b""
        while chunk := await reader.read(65536):
            seen += chunk
        return seen
    except ConnectionError:
        return b""  # reset: dropped all the same
    finally:
        writer.close()


async def drip(relay: RelayProcess, opened: list[asyncio.StreamWriter]) -> None:
    _, writer = await asyncio.open_connection(relay.ssh_host, relay.ssh_port,
                                              local_addr=(ATTACKER, 0))
    opened.append(writer)
    with contextlib.suppress(ConnectionError):
        for byte in DRIP_BANNER:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(1)


async def test_slow_and_garbage_banners_are_dropped_and_the_session_carries_on(
        start_relay, agents, tmp_path: Path, quick_agent, monkeypatch) -> None:
    monkeypatch.setenv("ADHOC_RELAY_MAX_QUEUED_PER_SOURCE", str(QUEUED_PER_SOURCE))
    relay = start_relay()
    opened: list[asyncio.StreamWriter] = []
    drips: list[asyncio.Task] = []
    async with Api(relay.base_url) as api:
        session = await api.create_session()
        try:
            idle = [await asyncio.open_connection(relay.ssh_host, relay.ssh_port,
                                                  local_addr=(ATTACKER, 0))
                    for _ in range(IDLE)]
            opened += [writer for _, writer in idle]
            # The relay took as many as one address may hold in their handshake (each got its
            # version line), left the next ones waiting in line, and hung up on the rest at
            # once, without a byte.
            waiting = PER_SOURCE + QUEUED_PER_SOURCE
            lines = [await asyncio.wait_for(reader.readline(), 20)
                     for reader, _ in idle[:PER_SOURCE] + idle[waiting:]]
            assert all(line.startswith(b"SSH-2.0-") for line in lines[:PER_SOURCE])
            assert lines[PER_SOURCE:] == [b""] * (IDLE - waiting)
            queued = [asyncio.ensure_future(reader.readline())
                      for reader, _ in idle[PER_SOURCE:waiting]]
            done, _ = await asyncio.wait(queued, timeout=1)
            assert not done, "a connection past the address's share started its handshake"
            for line in queued:
                line.cancel()
            drips = [asyncio.create_task(drip(relay, opened)) for _ in range(DRIP)]

            # Under the attack, a customer's agent still connects and a technician still works.
            agent = new_agent(agents, tmp_path, session)
            agent.start()
            await agent.wait_for_line("Connected to the relay")
            view = await api.wait_for(session["id"], lambda v: v["online"])
            answers = await asyncio.wait_for(asyncio.gather(
                *(send_garbage(relay, payload) for payload in GARBAGE.values()),
                run_on_host(relay, api, view, "echo alive-$((6*7))")), 20)
            # Each garbage connection was hung up on well before the 30 s login timeout.
            for name, answer in zip(GARBAGE, answers[:-1], strict=True):
                assert answer == b"" or answer.startswith(b"SSH-2.0-"), (name, answer[:200])
            assert "alive-42" in answers[-1]
            assert (await api.client.get("/api/v1/relay")).status_code == 200
            assert psutil.Process(relay.proc.pid).memory_info().rss < 300 * 2**20
            assert (await api.session(view["id"]))["online"]
        finally:
            for task in drips:
                task.cancel()
            await asyncio.gather(*drips, return_exceptions=True)
            for writer in opened:
                writer.close()
    assert "Traceback" not in relay.log_path.read_text()


async def test_oversized_and_deep_json_on_open_routes_leaves_sessions_alone(
        start_relay, agents, tmp_path: Path, quick_agent) -> None:
    relay = start_relay()
    async with Api(relay.base_url) as api, Api(relay.base_url, login="bob") as bob:
        view, _agent = await start_session(api, agents, tmp_path)
        pending = await bob.create_session()
        token = pending["join_url"].rsplit("/", 1)[1]
        routes = ["/api/v1/login", f"/api/v1/join/{token}/activate", "/api/v1/agent/audit",
                  "/api/v1/agent/end", "/api/v1/sessions"]
        mebibyte = b'{"login": "' + b"a" * 2**20 + b'"}'
        deepest = b"[" * 100_000 + b"]" * 100_000  # over the body limit as well
        deep = b"[" * 32_000 + b"]" * 32_000  # within the body limit: the depth check speaks
        deep_object = b'{"code":' * 7_000 + b"1" + b"}" * 7_000
        expected = {mebibyte: 413, deepest: 413, deep: 422, deep_object: 422}
        headers = {"content-type": "application/json",
                   "authorization": f"Bearer {view['id']}:not-the-secret"}

        async with httpx.AsyncClient(base_url=relay.base_url, timeout=60,
                                     headers=headers) as attacker:
            async def post(route: str, body: bytes) -> httpx.Response:
                return await attacker.post(route, content=body)

            jobs = [(route, body) for route in routes for body in expected] * 2
            answers = await asyncio.gather(*(post(r, b) for r, b in jobs),
                                           run_on_host(relay, api, view, "echo alive-$((6*7))"))
        for (route, body), answer in zip(jobs, answers[:-1], strict=True):
            assert answer.status_code == expected[body], (route, len(body), answer.text[:200])
            assert answer.json()["error"] in ("too_large", "invalid"), answer.text[:200]
        assert "alive-42" in answers[-1]
        # Nothing counted against anyone: the link still takes its code, the host is online.
        assert (await api.session(view["id"]))["online"]
        assert (await bob.session(pending["id"]))["state"] == "pending"
        link = await bob.client.get(f"/api/v1/join/{token}")
        assert link.status_code == 200
        assert psutil.Process(relay.proc.pid).memory_info().rss < 300 * 2**20
    assert "Traceback" not in relay.log_path.read_text()
