"""Fan-in: many idle agents on one relay, what each costs, and how fast all come back.

Run: python -m bench.fanin [--agents 1000,10000] [--workers 4] [--budget 180]

The agents are real `hostagent.tunnel.Tunnel`s (the agent's own connect/forward/backoff loop,
with a bare inner server and no shell) run many per process from --workers processes, so they
authenticate with real agent secrets and register the virtual forward exactly as the agent does.

The sessions are created in a bench-only data dir directly through relay.store.Store (one
technician per session, five per company) rather than through the API, whose limits (one live
session per technician, five per company) and argon2 hashing would make 10,000 live sessions
slow to set up. SQLite runs with synchronous=OFF while seeding only; the relay then opens the
database as it always does.

Figures, all for the relay process (psutil): RSS per agent (RSS with N agents minus RSS before
any, over N), CPU per connection set-up (CPU time during the ramp over N), connections per
second during the ramp (with --concurrency set-ups in flight per worker), idle CPU with N agents
(keepalives), and after the relay is stopped and started again on the same ports, the time
until every agent is back (full-jitter backoff, base 0.5 s, cap 10 s, as shipped), with the
CPU the agent processes used meanwhile: they share the machine's cores with the relay, where
real agents would not.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import gc
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import psutil

from bench.common import (
    ROOT,
    BenchRelay,
    header,
    lift_open_files,
    table,
    verdict,
)
from common.transport import tune_process
from tests.ports import free_port

READY_TIMEOUT = 60


# --- seeding ---------------------------------------------------------------------------------


async def seed_without_fsync(store) -> None:
    """Seeding only (the relay opens the file again, with synchronous=FULL): every connection
    the store opens from now on skips the fsyncs."""
    from sqlalchemy import event

    def no_fsync(dbapi_connection, _record) -> None:
        dbapi_connection.execute("PRAGMA synchronous = OFF")

    engine = store._database.engine
    event.listen(engine, "connect", no_fsync)
    await asyncio.to_thread(engine.dispose)  # the connections open so far had synchronous=FULL


async def seed(data_dir: Path, count: int) -> tuple[list[tuple[str, str]], str]:
    """`count` active sessions with known agent secrets; returns them and the relay host key."""
    from relay import sessions as rules
    from relay.config import RelaySettings
    from relay.server import initialise
    from relay.sshd import load_or_create_host_key
    from relay.store import Store
    from tests.support import add_active_session

    settings = RelaySettings(data_dir=data_dir)
    await initialise(settings)
    store = await Store.open(settings.db_path)
    await seed_without_fsync(store)
    now = time.time()
    out: list[tuple[str, str]] = []
    company_id = 0
    for n in range(count):
        if n % 5 == 0:
            company_id = (await store.add_company(f"fan{n // 5}", "plus", 5, now)).id
        tech = await store.add_technician(company_id, f"tech{n}", f"tech{n}@example.com",
                                          "not-a-hash", False, now)
        secret = rules.new_token()
        out.append((await add_active_session(store, tech, secret), secret))
    await store.close()
    host_key = load_or_create_host_key(settings.host_key_path)
    return out, host_key.export_public_key("openssh").decode().strip()


# --- a worker process: many agents' tunnels --------------------------------------------------


# The address each simulated agent dials from: its own, as real agents on their own hosts
# have. All from 127.0.0.1, 20,000 agents used most of the machine's ephemeral ports to the
# relay's one port, so an agent dialling again got the port of its lost connection back, hence
# the same listening socket of the relay's workers (SO_REUSEPORT hashes the address and port):
# nearly all of a dead worker's agents waited for its replacement while the survivor idled.
source: contextvars.ContextVar[str] = contextvars.ContextVar("source", default="127.0.0.1")


def agent_address(n: int) -> str:
    """Agent n's own loopback address (127.0.0.0/8 is all loopback on Linux)."""
    return f"127.{1 + n // 65536}.{(n // 256) % 256}.{n % 256}"


async def dial_from_own_address(host: str, port: int) -> socket.socket:
    """common.transport.dial for a simulated agent: from the agent's own address."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        sock.bind((source.get(), 0))
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return sock


async def worker(config: dict) -> None:
    import asyncssh

    import common.reach

    common.reach.dial = dial_from_own_address

    from common.reach import Route
    from hostagent.tunnel import Tunnel

    key = asyncssh.generate_private_key("ssh-ed25519")
    # As the agent's own inner options (hostagent/server.py): no GSS, so no look-up of this
    # host's FQDN each time the tunnel listens again.
    inner = {"server_host_keys": [key], "gss_host": None}
    connected: set[str] = set()
    attempts = [0]
    failures: Counter[str] = Counter()
    gate = asyncio.Semaphore(config["concurrency"])
    stop = asyncio.Event()

    async def one(session_id: str, secret: str) -> None:
        first = asyncio.Event()

        def on_state(state: str, detail: str) -> None:
            if state == "connected":
                connected.add(session_id)
                first.set()
                return
            connected.discard(session_id)
            if state == "connecting":
                attempts[0] += 1
            elif state == "reconnecting":
                failures[detail.split(";")[0].split(":")[0][:60]] += 1

        # Several relays (bench/cluster.py): each agent starts on the next one in turn and
        # knows the others, as a cluster's agents do.
        ports = config.get("ports") or [config["port"]]
        turn = hash(session_id) % len(ports)
        routes = [Route("ssh", config["host"], port) for port in ports[turn:] + ports[:turn]]
        tunnel = Tunnel(session_id, secret, config["host"], config["port"], config["host_key"],
                        inner, on_state=on_state, routes=routes)
        async with gate:
            task = asyncio.create_task(tunnel.run())
            waiter = asyncio.create_task(first.wait())
            await asyncio.wait({task, waiter}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
        await stop.wait()
        tunnel.stop()
        task.cancel()

    # A real agent's heap is one tunnel's; 5,000 in one process give the collector millions of
    # long-lived objects to scan again and again: 11-13 s of full collections per process in
    # one run (up to 2.4 s each), on the CPUs the relay is measured on, a cost no real agent
    # has. So the simulated agents make none (young collections go on).
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, 1 << 30)

    async def report() -> None:
        while not stop.is_set():
            print(json.dumps({"connected": len(connected), "attempts": attempts[0],
                              "failures": failures}), flush=True)
            await asyncio.sleep(0.1)

    loop = asyncio.get_running_loop()
    loop.add_reader(sys.stdin.fileno(), stop.set)  # any input (or EOF) ends the worker
    tasks = []
    for k, (sid, secret) in enumerate(config["sessions"]):
        source.set(agent_address(config.get("first", 0) + k * config.get("stride", 1)))
        tasks.append(asyncio.create_task(one(sid, secret)))  # the task keeps its address
    reporter = asyncio.create_task(report())
    await stop.wait()
    reporter.cancel()
    await asyncio.wait(tasks, timeout=10)


# --- the parent ------------------------------------------------------------------------------


class Workers:
    """The worker processes and the latest count each reported."""

    def __init__(self, sessions: list[tuple[str, str]], host_key: str, port: int, workers: int,
                 concurrency: int, ports: list[int] | None = None) -> None:
        self.counts = [0] * workers
        self.attempts = [0] * workers
        self.failures: list[Counter[str]] = [Counter() for _ in range(workers)]
        self.procs: list[subprocess.Popen] = []
        for i in range(workers):
            config = {"host": "127.0.0.1", "port": port, "host_key": host_key,
                      "sessions": sessions[i::workers], "concurrency": concurrency,
                      "ports": ports, "first": i, "stride": workers}
            path = Path(tempfile.mkstemp(prefix="adhoc-fanin-", suffix=".json")[1])
            path.write_text(json.dumps(config))
            proc = subprocess.Popen([sys.executable, "-m", "bench.fanin", "--worker", str(path)],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                    cwd=ROOT)
            self.procs.append(proc)
            threading.Thread(target=self._follow, args=(i, proc, path), daemon=True).start()

    def _follow(self, index: int, proc: subprocess.Popen, path: Path) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("{"):
                state = json.loads(line)
                self.counts[index] = state["connected"]
                self.attempts[index] = state["attempts"]
                self.failures[index] = Counter(state["failures"])
                path.unlink(missing_ok=True)

    def cpu_seconds(self) -> float:
        """CPU time the agent processes have used so far."""
        return sum(cpu_seconds(psutil.Process(proc.pid)) for proc in self.procs
                   if proc.poll() is None)

    def tally(self) -> tuple[int, Counter[str]]:
        """Connection attempts so far, and the failed ones by what went wrong."""
        return sum(self.attempts), sum(self.failures, Counter())

    @property
    def connected(self) -> int:
        return sum(self.counts)

    def wait_for(self, predicate, timeout: float) -> float | None:
        """Seconds until predicate(connected) holds, or None on timeout."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if predicate(self.connected):
                return time.monotonic() - start
            time.sleep(0.05)
        return None

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None and proc.stdin is not None:
                proc.stdin.close()
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def run_count(count: int, sessions: list[tuple[str, str]], data_dir: Path, host_key: str,
              args: argparse.Namespace) -> dict:
    http_port, ssh_port = free_port(), free_port()
    relay = BenchRelay(data_dir)
    relay.start(http_port=http_port, ssh_port=ssh_port)
    assert relay.proc is not None
    workers: Workers | None = None
    result: dict = {"agents": count}
    try:
        ps = psutil.Process(relay.proc.pid)
        time.sleep(1)
        rss0, cpu0 = ps.memory_info().rss, cpu_seconds(ps)
        workers = Workers(sessions[:count], host_key, ssh_port, args.workers, args.concurrency)
        ramp = workers.wait_for(lambda n: n >= count, args.budget)
        reached = workers.connected
        result["connected"] = reached
        result["ramp_s"] = ramp if ramp is not None else float(args.budget)
        cpu1 = cpu_seconds(ps)
        result["cpu_ms_per_setup"] = (cpu1 - cpu0) / max(1, reached) * 1e3
        result["setups_per_s"] = reached / result["ramp_s"]
        time.sleep(args.settle)  # let presence writes and handshake garbage settle
        cpu2 = cpu_seconds(ps)
        time.sleep(args.idle)
        result["idle_cpu_pct"] = (cpu_seconds(ps) - cpu2) / args.idle * 100
        rss1 = ps.memory_info().rss
        result["rss0_mib"] = rss0 / 2**20
        result["rss_mib"] = rss1 / 2**20
        result["kib_per_agent"] = (rss1 - rss0) / max(1, reached) / 1024
        # Restart: stop the relay, start a new one on the same ports, time until all are back.
        stopped_at = time.monotonic()
        agents_cpu = workers.cpu_seconds()
        attempts0, failures0 = workers.tally()
        relay.stop(signal.SIGTERM)
        result["stop_s"] = time.monotonic() - stopped_at
        workers.wait_for(lambda n: n == 0, 30)
        relay = BenchRelay(data_dir)
        relay.start(http_port=http_port, ssh_port=ssh_port)
        ready_at = time.monotonic()
        fresh = psutil.Process(relay.proc.pid)
        cpu_ready = cpu_seconds(fresh)  # the new relay's start-up, not reconnects
        result["relay_start_s"] = ready_at - stopped_at - result["stop_s"]
        back = workers.wait_for(lambda n: n >= reached, args.budget)
        result["back_from_ready_s"] = back
        result["back_from_stop_s"] = None if back is None else time.monotonic() - stopped_at
        result["back"] = workers.connected
        result["restart_cpu_s"] = cpu_seconds(fresh) - cpu_ready
        result["agents_cpu_s"] = workers.cpu_seconds() - agents_cpu
        attempts1, failures1 = workers.tally()
        result["attempts_per_agent"] = (attempts1 - attempts0) / max(1, reached)
        result["failures"] = failures1 - failures0
        result["cpu_ms_per_setup_restart"] = result["restart_cpu_s"] \
            / max(1, workers.connected) * 1e3
    finally:
        if workers is not None:
            workers.stop()
        relay.stop()
    return result


def report(results: list[dict]) -> None:
    def fmt(value, spec: str = ".1f") -> str:
        return "timeout" if value is None else format(value, spec)

    table(("agents", "connected", "relay RSS before→with MiB", "KiB/agent (target ≤ 32)",
           "CPU ms/set-up", "set-ups/s", "idle CPU %"),
          [(r["agents"], r["connected"], f"{r['rss0_mib']:.0f}→{r['rss_mib']:.0f}",
            f"{r['kib_per_agent']:.1f}", f"{r['cpu_ms_per_setup']:.2f}",
            f"{r['setups_per_s']:.0f}", f"{r['idle_cpu_pct']:.1f}") for r in results])
    table(("agents", "relay stop s", "relay start s", "all back after start s",
           "all back after stop s (target ≤ 30)", "back", "relay CPU s", "CPU ms/reconnect",
           "agents' CPU s, stop to back", "attempts/agent"),
          [(r["agents"], f"{r['stop_s']:.1f}", f"{r['relay_start_s']:.1f}",
            fmt(r["back_from_ready_s"]), fmt(r["back_from_stop_s"]), r["back"],
            f"{r['restart_cpu_s']:.1f}",
            f"{r['cpu_ms_per_setup_restart']:.2f}" if r["back"] else "n/a",
            f"{r['agents_cpu_s']:.1f}", f"{r['attempts_per_agent']:.1f}") for r in results])
    for r in results:
        failures = ", ".join(f"{n} × {kind}" for kind, n in r["failures"].most_common())
        print(f"{r['agents']} agents, failed attempts during the return: {failures or 'none'}")
    for r in results:
        back = r["back_from_stop_s"]
        print(f"{r['agents']} agents: ≤ 32 KiB/agent {verdict(r['kib_per_agent'] <= 32)}; "
              f"all back within 30 s {verdict(back is not None and back <= 30)}; "
              f"all connected {verdict(r['connected'] == r['agents'])}")
    print()


def agent_arguments(parser: argparse.ArgumentParser, budget: float) -> None:
    """The options of the simulated agents (--workers, --concurrency, --budget, --settle)."""
    parser.add_argument("--workers", type=int, default=4, help="agent processes (default 4)")
    parser.add_argument("--concurrency", type=int, default=50,
                        help="set-ups in flight per worker during the ramp (default 50)")
    parser.add_argument("--budget", type=float, default=budget,
                        help=f"seconds allowed for the ramp and for the return (default "
                             f"{budget:.0f})")
    parser.add_argument("--settle", type=float, default=5, help="seconds before sampling")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", default="1000,10000",
                        help="comma-separated agent counts (default 1000,10000)")
    agent_arguments(parser, 180)
    parser.add_argument("--idle", type=float, default=15, help="seconds of idle CPU sampling")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        config = json.loads(Path(args.worker).read_text())
        tune_process()  # as the agent's own command does at start
        asyncio.run(worker(config))
        return
    counts = [int(x) for x in args.agents.split(",")]
    # Every bench agent dials from 127.0.0.1, where real agents come from many addresses: lift
    # the relay's per-address share of handshakes (relay/sshd.py) to its overall limit.
    os.environ.setdefault("ADHOC_RELAY_MAX_STARTUPS_PER_SOURCE",
                          os.environ.get("ADHOC_RELAY_MAX_STARTUPS", "128"))
    os.environ.setdefault("ADHOC_RELAY_MAX_QUEUED_PER_SOURCE",
                          os.environ.get("ADHOC_RELAY_MAX_QUEUED", "16384"))
    header("Fan-in: idle agents on one relay, and a relay restart", "asyncssh", "psutil")
    lift_open_files()
    print(f"{args.workers} agent processes, {args.concurrency} set-ups in flight each; "
          f"sessions seeded through relay.store.Store in a bench-only data dir (see --help)\n")
    folder = Path(tempfile.mkdtemp(prefix="adhoc-bench-fanin-"))
    try:
        started = time.monotonic()
        sessions, host_key = asyncio.run(seed(folder / "relay", max(counts)))
        print(f"seeded {len(sessions)} active sessions in {time.monotonic() - started:.0f} s\n")
        results = [run_count(count, sessions, folder / "relay", host_key, args)
                   for count in counts]
        report(results)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    os.sys.stdout.flush()


if __name__ == "__main__":
    main()
