"""Relays as a cluster on one database, with real processes: a technician on one relay reaches
an agent held by another (relay-to-relay SSH with the cluster key), agents move to a live
relay when theirs dies, and the console reattaches to the same shell."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import shutil
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import asyncssh
import pytest

from common.passwords import hash_password
from relay.cluster.peers import PEER_USER
from relay.db.url import sqlite_url
from tests.support import (
    PASSWORD,
    SESSION_PASSWORD,
    Api,
    OpenSSH,
    RelayProcess,
    first_lines,
    new_agent,
    provision,
    provision_store,
    raw_connections,
    run_cli,
    technician_ssh,
)
from tui.client import HostConnector, RelayClient, RelayError

PID = re.compile(rb"pid-(\d+)-end")
T = TypeVar("T")

KEY_FILES = ("ssh_host_ed25519_key", "secret.key", "cluster_ed25519_key")
# Quick heartbeats and agent keepalives so a killed relay is noticed in seconds.
FAST = {"ADHOC_RELAY_HEARTBEAT": "0.5"}


def node_dir(first: Path, path: Path) -> Path:
    """A new node's data dir: a copy of the first node's key files (docs/ADMIN.md)."""
    path.mkdir()
    for name in KEY_FILES:
        shutil.copy2(first / name, path / name)
    return path


async def connected_agent(api: Api, agents, tmp_path: Path):
    """A new session's agent, connected (reconnecting quickly); (the session's view, the
    agent)."""
    session = await api.create_session()
    agent = new_agent(agents, tmp_path, session)
    agent.start(env={"ADHOC_HOST_BACKOFF_CAP": "2"})
    await agent.wait_for_line("Connected to the relay")
    return await api.wait_for(session["id"], lambda v: v["online"]), agent


async def eventually(attempt: Callable[[], Awaitable[T]], what: str,
                     failures: tuple[type[BaseException], ...] = (OSError, asyncssh.Error,
                                                                  RelayError),
                     timeout: float = 30) -> T:
    """`attempt`'s result once it stops failing with `failures`; fails saying `what` did not
    happen within `timeout` seconds. A technician's connection that reaches no relay at all
    (RelayError, every route tried) is among them: while a worker or relay starts again, a
    connection the kernel hands to it can be lost, and the console retries too."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await attempt()
        except failures:
            assert time.monotonic() < deadline, what
            await asyncio.sleep(0.3)


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch) -> Iterator[Callable[..., RelayProcess]]:
    """start(name) runs a relay node on the first node's SQLite database."""
    first = tmp_path / "node-a"
    provision(first, technicians=("alice", "bob"))
    database = sqlite_url(first / "relay.db").render_as_string(hide_password=False)
    for key, value in FAST.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("ADHOC_DATABASE", database)  # for `adhoc-relay` on any node's data dir
    with nodes_on(tmp_path, first, database) as start:
        yield start


@contextlib.contextmanager
def nodes_on(tmp_path: Path, first: Path,
             database: str) -> Iterator[Callable[..., RelayProcess]]:
    """start(name) runs a relay node on `database`: node "a" on `first`, the others on
    copies of its key files; all are stopped on exit."""
    started: list[RelayProcess] = []

    def start(name: str) -> RelayProcess:
        data = first if name == "a" else node_dir(first, tmp_path / f"node-{name}")
        relay = RelayProcess(data, ("--database", database, "--node", name))
        relay.start()
        started.append(relay)
        return relay

    try:
        yield start
    finally:
        for relay in started:
            relay.stop()


async def test_a_technician_on_one_relay_reaches_an_agent_held_by_another(
        cluster, agents, tmp_path: Path) -> None:
    relay_a, relay_b = cluster("a"), cluster("b")
    async with Api(relay_a.base_url) as api_a, Api(relay_b.base_url) as api_b:
        session = await api_a.create_session()
        # A console on relay B follows the live events that relay A produces.
        events = asyncio.create_task(_event_kinds(api_b, until="online"))
        agent = new_agent(agents, tmp_path, session)
        agent.start()
        await agent.wait_for_line("Connected to the relay")
        # The agent dialled relay A; relay B knows from the database that it is online.
        view = await api_b.wait_for(session["id"], lambda v: v["state"] == "active"
                                    and v["online"])
        kinds = await asyncio.wait_for(events, 30)
        assert "activated" in kinds and "keepalive" not in kinds, kinds
        async with technician_ssh(relay_b, api_b, view) as inner:
            result = await inner.run("echo hello-across-relays", check=True)
            assert result.stdout.strip() == "hello-across-relays"
            source = tmp_path / "payload.bin"
            source.write_bytes(os.urandom(2 * 1024 * 1024 + 5))
            remote, back = tmp_path / "remote.bin", tmp_path / "back.bin"
            async with inner.start_sftp_client() as sftp:
                await sftp.put(str(source), str(remote))
                await sftp.get(str(remote), str(back))
            digest = hashlib.sha256(source.read_bytes()).hexdigest()
            assert hashlib.sha256(back.read_bytes()).hexdigest() == digest
        # Stock OpenSSH through relay B too.
        OpenSSH(tmp_path, relay_b, (await api_b.relay_info())["host_key"], view,
                ["HostName 127.0.0.1", f"Port {relay_b.ssh_port}"]).round_trip()
        # The customer saw the technician's name, which crossed the relays.
        await agent.wait_for_line("Technician alice runs: echo hello-across-relays")
        audit = (await api_b.client.get(f"/api/v1/sessions/{session['id']}/audit")).json()
        assert any(row["event"] == "tunnel" and row["outcome"] == "ok"
                   for row in audit["audit"])

        # Disabling the technician cuts their connection through relay B at once, whichever
        # relay or program the administrator used.
        async with technician_ssh(relay_b, api_b, view) as inner:
            run_cli(relay_a.data_dir, "--database", relay_a.extra_args[1], "technician",
                    "disable", "alice")
            await asyncio.wait_for(inner.wait_closed(), 10)

    # Ending the session on relay B ends the agent held by relay A.
    async with Api(relay_b.base_url, "bob") as api_bob:
        ended = await api_bob.client.post(f"/api/v1/sessions/{session['id']}/end")
        assert ended.status_code == 200
        assert agent.wait_exit(20) == 0


async def _event_kinds(api: Api, until: str,
                       opened: asyncio.Event | None = None) -> list[str]:
    """The kinds of the live events the relay streams to `api`, up to `until`; an idle
    stream's keepalive counts as "keepalive" (the relay sends one after 15 s without
    events: another relay's events must wake the stream long before)."""
    kinds = []
    async with api.client.stream("GET", "/api/v1/events") as response:
        if opened is not None:
            opened.set()
        async for line in response.aiter_lines():
            if line.startswith(": keepalive"):
                kinds.append("keepalive")
            elif line.startswith("event:"):
                kinds.append(line[6:].strip())
                if kinds[-1] == until:
                    return kinds
    return kinds


async def test_the_cluster_key_opens_nothing_but_the_peer_user(cluster, tmp_path: Path) -> None:
    relay = cluster("a")
    key = asyncssh.read_private_key(str(relay.data_dir / "cluster_ed25519_key"))
    host_key = (relay.data_dir / "ssh_host_ed25519_key")
    known = ([asyncssh.read_private_key(str(host_key)).convert_to_public()], [], [])
    # As a technician's login, the cluster key is refused.
    with pytest.raises(asyncssh.PermissionDenied):
        await asyncssh.connect(relay.ssh_host, relay.ssh_port, username="alice",
                               client_keys=[key], known_hosts=known, agent_path=None,
                               config=None)
    # A technician's password does not open the peer user.
    with pytest.raises(asyncssh.PermissionDenied):
        await asyncssh.connect(relay.ssh_host, relay.ssh_port, username=PEER_USER,
                               password=PASSWORD, client_keys=None, known_hosts=known,
                               agent_path=None, config=None)
    # Another key does not either.
    with pytest.raises(asyncssh.PermissionDenied):
        await asyncssh.connect(relay.ssh_host, relay.ssh_port, username=PEER_USER,
                               client_keys=[asyncssh.generate_private_key("ssh-ed25519")],
                               known_hosts=known, agent_path=None, config=None)
    # The peer user may only open channels to agents the relay holds: never a shell.
    async with asyncssh.connect(relay.ssh_host, relay.ssh_port, username=PEER_USER,
                                client_keys=[key], known_hosts=known, agent_path=None,
                                config=None) as peer:
        with pytest.raises(asyncssh.ChannelOpenError):
            await peer.open_connection("aaaaaaaaaaaaaaaa", 22)
        with pytest.raises(asyncssh.ChannelOpenError):
            await peer.create_session(asyncssh.SSHClientSession)


async def test_relay_killed_mid_shell_the_agent_and_the_console_move_to_another(
        cluster, agents, tmp_path: Path) -> None:
    relay_a, relay_b = cluster("a"), cluster("b")
    async with Api(relay_a.base_url) as api:
        view, _agent = await connected_agent(api, agents, tmp_path)

    # The console, logged in to relay A, opens a shell on the host (held by A).
    client = RelayClient(relay_a.base_url)
    await client.login("alice", PASSWORD)
    info = await client.relay_info()
    assert relay_b.base_url in client.relays, info
    connector = HostConnector(client, "alice")
    output = bytearray()
    closed = asyncio.Event()

    async def open_main():
        output.clear()
        closed.clear()
        return await connector.open_shell(view, SESSION_PASSWORD, cols=80, rows=24,
                                          shell_id="main", on_output=output.extend,
                                          on_closed=lambda why: closed.set())

    async def shell_pid(shell) -> int:
        shell.send(b"echo pid-$$-e\"\"nd\r")
        async with asyncio.timeout(15):
            while not PID.search(bytes(output)):
                await asyncio.sleep(0.05)
        return int(PID.findall(bytes(output))[-1])

    try:
        shell = await open_main()
        pid = await shell_pid(shell)
        shell.send(b"cd /tmp && MARK=kept-$((6*7)) && echo set-$MARK-done\r")
        async with asyncio.timeout(15):
            while b"set-kept-42-done" not in bytes(output):
                await asyncio.sleep(0.05)

        relay_a.kill9()
        await asyncio.wait_for(closed.wait(), 30)  # the shell's channel went with relay A

        # The agent moves to relay B by itself; the console moves there too and reattaches.
        async def reopen():
            connector.forget(view["id"])
            await connector.close()
            return await open_main()

        again = await eventually(reopen, "the console did not get the shell back",
                                 (RelayError,))
        assert client.base_url == relay_b.base_url
        assert await shell_pid(again) == pid  # the very same shell
        again.send(b"echo mark-$MARK-$(pwd)\r")
        async with asyncio.timeout(15):
            while b"mark-kept-42-/tmp" not in bytes(output):
                await asyncio.sleep(0.05)
        assert b"mark-kept-42-/tmp" in bytes(output), bytes(output)[-400:]
        # The session itself is unchanged.
        now = await client.session(view["id"])
        assert now["state"] == "active" and now["online"]
        assert now["expires_at"] == view["expires_at"]
    finally:
        await connector.close()
        await client.aclose()


def two_workers(tmp_path: Path) -> RelayProcess:
    """A provisioned relay running `serve --workers 2`, started (the caller stops it)."""
    data = tmp_path / "relay"
    provision(data)
    relay = RelayProcess(data, ("--workers", "2"))
    relay.start()
    return relay


async def test_workers_share_the_ports_and_a_dead_worker_comes_back(agents,
                                                                    tmp_path: Path) -> None:
    import psutil

    relay = two_workers(tmp_path)
    try:
        parent = psutil.Process(relay.proc.pid)
        assert len(parent.children()) == 2
        async with Api(relay.base_url) as api:
            view, agent = await connected_agent(api, agents, tmp_path)

            async def reach(rounds: int) -> None:
                # Each connection lands on either worker: some reach the agent on the same
                # worker, some through the other.
                for _ in range(rounds):
                    async with technician_ssh(relay, api, view) as inner:
                        result = await inner.run("echo hi", check=True)
                        assert result.stdout.strip() == "hi"

            await reach(4)
            # Kill the worker that holds the agent's connection.
            agent_ports = {c.laddr.port for c in psutil.Process(agent.proc.pid).net_connections()
                           if c.raddr and c.raddr.port == relay.ssh_port}
            holder = next(w for w in parent.children()
                          if any(c.raddr and c.raddr.port in agent_ports
                                 for c in w.net_connections()))
            holder.kill()
            holder.wait(10)
            deadline = time.monotonic() + 30
            while len(workers := {w.pid for w in parent.children()} - {holder.pid}) < 2:
                assert time.monotonic() < deadline, "the dead worker was not started again"
                await asyncio.sleep(0.1)
            # The new worker stays up (it once failed its own start, again and again).
            await asyncio.sleep(4)
            assert {w.pid for w in parent.children()} == workers
            log = relay.log_path.read_text()
            assert "is serving again" in log and "failed" not in log
            # The agent is back (on either worker) and reachable through any.
            await eventually(lambda: reach(2), "the agent did not come back")
    finally:
        relay.stop()


async def test_agents_dialling_while_a_worker_restarts_wait_for_it_not_all_on_the_other(
        tmp_path: Path, monkeypatch) -> None:
    """The kernel spreads new connections over the port's listening sockets when they
    arrive. A dead worker's agents all dial again within a second, before its replacement
    listens: if its socket died with it, every one of them went to the surviving worker
    (which then took 40 s over 10,000 handshakes while the new one idled). The parent keeps
    the socket, so about half wait there for the replacement."""
    import psutil

    # All from 127.0.0.1 here, where agents come from many addresses: no per-source share.
    monkeypatch.setenv("ADHOC_RELAY_MAX_STARTUPS_PER_SOURCE", "128")
    relay = two_workers(tmp_path)
    try:
        parent = psutil.Process(relay.proc.pid)
        victim = parent.children()[0]
        victim.kill()
        victim.wait(10)
        # The agents of the dead worker dial again at once (its replacement starts ~1 s on).
        connections = await raw_connections(relay.ssh_host, relay.ssh_port, 40)
        try:
            lines = await first_lines(connections, 30)
            assert all(line.startswith(b"SSH-2.0-") for line in lines)
            ports = {writer.get_extra_info("sockname")[1] for _, writer in connections}
            held = {w.pid: sum(1 for c in w.net_connections("tcp")
                               if c.laddr.port == relay.ssh_port and c.raddr
                               and c.raddr.port in ports)
                    for w in parent.children()}
            assert victim.pid not in held and len(held) == 2
            assert min(held.values()) >= 5, f"one worker took (nearly) all: {held}"
        finally:
            for _, writer in connections:
                writer.close()
        # Stopped while a worker is starting again: no worker outlives the relay.
        before = parent.children()
        before[0].kill()
        deadline = time.monotonic() + 10
        while not set(workers := parent.children()) - set(before):  # its replacement
            assert time.monotonic() < deadline, "the dead worker was not started again"
            await asyncio.sleep(0.01)
        relay.stop()
        _gone, alive = psutil.wait_procs(workers, timeout=5)
        assert not alive, f"workers outlived their relay: {alive}"
    finally:
        relay.stop()


def test_workers_of_a_relay_killed_outright_stop_by_themselves(tmp_path: Path) -> None:
    """kill -9 (or the OOM killer) gives the parent no chance to stop its workers: they stop
    themselves, rather than serve on unsupervised and share the ports with the next relay."""
    import psutil

    relay = two_workers(tmp_path)
    try:
        workers = psutil.Process(relay.proc.pid).children()
        relay.kill9()
        _gone, alive = psutil.wait_procs(workers, timeout=20)
        assert not alive, f"workers outlived their relay: {alive}"
    finally:
        for worker in workers:
            with contextlib.suppress(psutil.NoSuchProcess):
                worker.kill()


async def test_a_drained_relay_moves_its_agents_and_stops(cluster, agents,
                                                          tmp_path: Path) -> None:
    relay_a, relay_b = cluster("a"), cluster("b")
    database = relay_a.extra_args[1]
    async with Api(relay_a.base_url) as api:
        view, _agent = await connected_agent(api, agents, tmp_path)
    nodes = run_cli(relay_b.data_dir, "--database", database, "nodes").stdout
    assert nodes.startswith("a\trunning") and "\nb\trunning" in nodes

    drained = await asyncio.to_thread(run_cli, relay_b.data_dir, "--database", database,
                                      "drain", "a")
    assert "a: drained and stopped" in drained.stdout
    assert relay_a.proc.wait(10) == 0  # it stopped by itself, cleanly
    async with Api(relay_b.base_url) as api:
        async def run_on_b():
            async with technician_ssh(relay_b, api, view) as inner:
                return await inner.run("echo moved", check=True)

        result = await eventually(run_on_b, "the agent did not move to relay b")
        assert result.stdout.strip() == "moved"
    nodes = run_cli(relay_b.data_dir, "--database", database, "nodes").stdout
    assert nodes.startswith("b\trunning") and "a\t" not in nodes
    unknown = run_cli(relay_b.data_dir, "--database", database, "drain", "a", check=False)
    assert unknown.returncode == 2 and "adhoc-relay nodes" in unknown.stderr


TECHNICIANS = [f"tech{n}" for n in range(10)]


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
async def test_sixty_creates_over_three_relays_keep_the_limits(engine, tmp_path: Path,
                                                               monkeypatch, request) -> None:
    first = tmp_path / "node-a"
    if engine == "postgresql":
        postgres = request.getfixturevalue("postgres")
        if postgres is None:
            pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
        database = postgres.url(postgres.new_database())
    else:
        database = sqlite_url(first / "relay.db").render_as_string(hide_password=False)
    await provision_store(first, [("Acme", "plus", 10, TECHNICIANS)], database=database)
    for key, value in FAST.items():
        monkeypatch.setenv(key, value)
    with nodes_on(tmp_path, first, database) as start:
        relays = await asyncio.gather(*(asyncio.to_thread(start, name)
                                        for name in ("a", "b", "c")))
        await _race(list(relays))


async def _race(relays: list[RelayProcess]) -> None:
    apis = [Api(relays[n % 3].base_url, login) for n, login in enumerate(TECHNICIANS)]
    verifier = hash_password(SESSION_PASSWORD)  # as the console sends it
    try:
        await asyncio.gather(*(api.__aenter__() for api in apis))

        async def create(api: Api, attempt: int):
            # Each technician's creates go to all three relays.
            relay = relays[attempt % 3]
            return await api.client.post(
                f"{relay.base_url}/api/v1/sessions",
                json={"customer_email": "c@example.com", "password_verifier": verifier})

        answers = await asyncio.gather(*(create(api, attempt) for api in apis
                                         for attempt in range(6)))
        created = [a for a in answers if a.status_code == 201]
        refused = [a for a in answers if a.status_code != 201]
        assert len(created) == 5  # the company's limit, exactly
        assert {a.status_code for a in refused} == {409}
        assert {a.json()["error"] for a in refused} == {"limit"}
        async with Api(relays[1].base_url, TECHNICIANS[0]) as api:
            listed = (await api.client.get("/api/v1/sessions")).json()["sessions"]
        live = [s for s in listed if s["state"] in ("pending", "active")]
        assert len(live) == 5
        per_technician = [s["technician"] for s in live]
        assert len(set(per_technician)) == 5  # at most one each
    finally:
        for api in apis:
            await api.client.aclose()


async def test_on_postgresql_other_relays_events_arrive_when_notified(tmp_path: Path,
                                                                      monkeypatch,
                                                                      postgres) -> None:
    if postgres is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    database = postgres.url(postgres.new_database())
    first = tmp_path / "node-a"
    await provision_store(first, [("Acme", "plus", 5, ["alice"])], database=database)
    # Polling so rare that only the database's notification can bring relay A's events to
    # relay B before B's idle stream sends its first keepalive (15 s).
    monkeypatch.setenv("ADHOC_RELAY_HEARTBEAT", "30")
    monkeypatch.setenv("ADHOC_RELAY_FOLLOW_NOTIFIED", "60")
    with nodes_on(tmp_path, first, database) as start:
        relay_a, relay_b = await asyncio.gather(asyncio.to_thread(start, "a"),
                                                asyncio.to_thread(start, "b"))
        async with Api(relay_a.base_url) as api_a, Api(relay_b.base_url) as api_b:
            opened = asyncio.Event()
            events = asyncio.create_task(_event_kinds(api_b, until="mail", opened=opened))
            await asyncio.wait_for(opened.wait(), 20)  # it streams from now: open it first
            await api_a.create_session()
            kinds = await asyncio.wait_for(events, 30)
            assert kinds[-1] == "mail" and "keepalive" not in kinds, kinds


async def test_an_agent_held_by_a_dead_relay_shows_offline_until_it_is_back(
        cluster, agents, tmp_path: Path) -> None:
    relay_a, relay_b = cluster("a"), cluster("b")
    async with Api(relay_a.base_url) as api_a, Api(relay_b.base_url) as api_b:
        view, agent = await connected_agent(api_a, agents, tmp_path)
        await api_b.wait_for(view["id"], lambda v: v["online"])
        agent.proc.send_signal(signal.SIGSTOP)  # the computer is frozen: it cannot move
        try:
            relay_a.kill9()
            # Relay B sees relay A die, and so the agent it held go offline.
            await api_b.wait_for(view["id"], lambda v: not v["online"])
        finally:
            agent.proc.send_signal(signal.SIGCONT)
        await api_b.wait_for(view["id"], lambda v: v["online"])  # it moved to relay B
