"""500 agents reconnecting after a relay kill -9: all come back, spread out by their jittered
backoff, and the relay's memory stays bounded (THREATS: "500 agents reconnecting after a relay
restart").

The agents are the agent's own `hostagent.tunnel.Tunnel` (outer connection, virtual forward,
inner SSH server on it, keepalive, full-jitter backoff), 500 of them as tasks in this process:
500 agent processes would not fit on two cores. Their sessions are written through
`relay.store.Store`, 5 per company (the company limit) across 100 companies.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from datetime import datetime
from pathlib import Path

import asyncssh
import httpx
import psutil
import pytest

from common.passwords import hash_password
from hostagent import tunnel as tunnel_module
from hostagent.tunnel import Tunnel
from relay import sessions as rules
from relay.store import Store
from tests.faults.conftest import provision_store, restart
from tests.support import SESSION_PASSWORD, add_active_session

AGENTS = 500
PER_COMPANY = rules.MAX_LIVE_PER_COMPANY
BACKOFF_CAP = 2.0
RSS_BOUND = 300 * 2**20


async def active_sessions(data_dir: Path, host_key: str) -> tuple[list[tuple[str, str]],
                                                                   list[str]]:
    """Provision AGENTS active sessions; returns (session id, agent secret) pairs and one API
    token per company."""
    companies = [(f"Company {c}", "plus", PER_COMPANY,
                  [f"tech{c}-{t}" for t in range(PER_COMPANY)])
                 for c in range(AGENTS // PER_COMPANY)]
    await provision_store(data_dir, companies)
    verifier = hash_password(SESSION_PASSWORD)
    store = await Store.open(data_dir / "relay.db")
    agents, tokens = [], []
    try:
        now = time.time()
        for tech in await store.technicians():
            if tech.is_admin:
                token = rules.new_token()
                await store.add_token(rules.token_hash(token), tech.id, now, now + 3600)
                tokens.append(token)
            secret = rules.new_token()
            session_id = await add_active_session(store, tech, secret, verifier=verifier,
                                                  host_key=host_key)
            agents.append((session_id, secret))
    finally:
        await store.close()
    return agents, tokens


class Swarm:
    """AGENTS tunnels; when each one connected, as it reported it."""

    def __init__(self, agents: list[tuple[str, str]], port: int, relay_key: str) -> None:
        inner_key = asyncssh.generate_private_key("ssh-ed25519")
        self.connected_at: dict[str, list[float]] = {sid: [] for sid, _ in agents}
        self.lost: set[str] = set()
        self.tunnels = [
            Tunnel(sid, secret, "127.0.0.1", port, relay_key,
                   {"server_host_keys": [inner_key]}, on_state=self._state_of(sid),
                   backoff_cap=BACKOFF_CAP)
            for sid, secret in agents]
        self.tasks = [asyncio.create_task(tunnel.run()) for tunnel in self.tunnels]

    def _state_of(self, session_id: str):
        def on_state(state: str, detail: str) -> None:
            if state == "connected":
                self.connected_at[session_id].append(time.monotonic())
                self.lost.discard(session_id)
            elif state == "reconnecting":
                self.lost.add(session_id)
        return on_state

    async def until(self, predicate, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            ended = [t for t in self.tasks if t.done()]
            assert not ended, f"a tunnel gave up: {ended[0].result()}"
            assert time.monotonic() < deadline, f"{what} did not happen within {timeout}s"
            await asyncio.sleep(0.1)

    async def stop(self) -> None:
        for tunnel in self.tunnels:
            tunnel.stop()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def online_count(base_url: str, tokens: list[str]) -> tuple[int, list[float]]:
    """How many sessions the relay's registry has online, and since when (relay clock)."""
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        pages = await asyncio.gather(*(
            http.get("/api/v1/sessions", headers={"Authorization": f"Bearer {token}"})
            for token in tokens))
    views = [view for page in pages for view in page.raise_for_status().json()["sessions"]]
    assert len(views) == AGENTS
    online = [view for view in views if view["online"]]
    return len(online), [view["online_since"] for view in online]


# Alone: 500 agents in this process and the relay take both cores for a while, and every step
# is bounded in time (all agents noticing within 30 s, reconnecting within 90 s).
@pytest.mark.serial
async def test_500_agents_all_return_after_a_relay_kill_9_spread_out_and_bounded(
        start_relay, tmp_path: Path) -> None:
    data_dir = tmp_path / "relay-storm"
    host_key = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    agents, tokens = await active_sessions(data_dir, host_key.strip())
    relay = start_relay(data_dir=data_dir)
    async with httpx.AsyncClient(base_url=relay.base_url) as http:
        relay_key = (await http.get("/api/v1/relay")).json()["host_key"]
    swarm = Swarm(agents, relay.ssh_port, relay_key)
    try:
        await swarm.until(lambda: all(swarm.connected_at.values()), "all agents connecting",
                          90)
        assert (await online_count(relay.base_url, tokens))[0] == AGENTS

        relay.kill9()
        killed_at = time.monotonic()
        await swarm.until(lambda: len(swarm.lost) == AGENTS, "all agents noticing", 30)
        # In a thread: the agents live on this event loop and must keep their own time.
        await asyncio.to_thread(restart, relay)
        await swarm.until(lambda: not swarm.lost, "all agents reconnecting", 90)

        back = [times[-1] for times in swarm.connected_at.values()]
        assert all(t > killed_at for t in back)
        online, since = await online_count(relay.base_url, tokens)
        assert online == AGENTS
        # Jitter: they did not all come back in one instant, as the agents and as the relay
        # saw it.
        assert max(back) - min(back) > 0.5, max(back) - min(back)
        registered = [datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
                      for s in since]
        assert max(registered) - min(registered) > 0.5
        assert psutil.Process(relay.proc.pid).memory_info().rss < RSS_BOUND
        # Every return is in the audit log, though the relay writes them in batches.
        restarted_wall = time.time() - (time.monotonic() - killed_at)
        await swarm.until(lambda: len(audited_online(data_dir, restarted_wall)) == AGENTS,
                          "an 'online' audit row for every agent", 30)
    finally:
        await swarm.stop()


def audited_online(data_dir: Path, after: float) -> set[str]:
    with contextlib.closing(sqlite3.connect(f"file:{data_dir / 'relay.db'}?mode=ro",
                                            uri=True)) as db:
        rows = db.execute("SELECT session_id FROM audit WHERE event = 'online' AND at > ?",
                          (after,)).fetchall()
    return {session_id for (session_id,) in rows}


async def test_an_agent_kept_waiting_by_a_busy_relay_keeps_its_place(
        start_relay, tmp_path: Path, monkeypatch) -> None:
    """After a restart the relay starts handshakes as earlier ones finish and leaves the rest
    waiting in line (relay/sshd.py Startups). An agent in that line waits for the relay to
    speak rather than give up at its handshake timeout and dial again at the back."""
    monkeypatch.setenv("ADHOC_RELAY_MAX_STARTUPS", "1")
    monkeypatch.setattr(tunnel_module, "CONNECT_TIMEOUT", 2)
    data_dir = tmp_path / "relay-busy"
    await provision_store(data_dir, [("Company", "plus", 1, ["tech"])])
    store = await Store.open(data_dir / "relay.db")
    try:
        secret = rules.new_token()
        session_id = await add_active_session(store, (await store.technicians())[0], secret)
    finally:
        await store.close()
    relay = start_relay(data_dir=data_dir)
    async with httpx.AsyncClient(base_url=relay.base_url) as http:
        relay_key = (await http.get("/api/v1/relay")).json()["host_key"]
    # Someone holds the relay's one handshake place and never answers.
    reader, writer = await asyncio.open_connection(relay.ssh_host, relay.ssh_port)
    assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"SSH-2.0-")

    states: list[tuple[str, str]] = []
    connected = asyncio.Event()

    def on_state(state: str, detail: str) -> None:
        states.append((state, detail))
        if state == "connected":
            connected.set()

    tunnel = Tunnel(session_id, secret, "127.0.0.1", relay.ssh_port, relay_key,
                    {"server_host_keys": [asyncssh.generate_private_key("ssh-ed25519")]},
                    on_state=on_state, backoff_cap=0.1)
    task = asyncio.create_task(tunnel.run())
    try:
        await asyncio.sleep(3 * tunnel_module.CONNECT_TIMEOUT)
        assert states == [("connecting", f"SSH to 127.0.0.1:{relay.ssh_port}")], states
        writer.close()  # the place is free: the agent's turn
        await asyncio.wait_for(connected.wait(), 10)
        assert [state for state, _ in states] == ["connecting", "connected"], states
    finally:
        tunnel.stop()
        await asyncio.wait_for(task, 10)
