"""Cluster: idle agents on `serve --workers 2` beside one relay process, a worker or a relay
killed, and how fast its agents are back.

Run: python -m bench.cluster [--agents 2000] [--cluster-agents N] [--workers 4] [--budget 120]

Side by side in one run, on sessions seeded as bench/fanin.py seeds them (its agents, many
per process, run the agent's own tunnel loop):
- one relay process: RSS per agent; killed with SIGKILL and started again at once (what a
  single relay's failure costs), the time until every agent is back;
- `serve --workers 2`: RSS per agent (all processes), one worker killed with SIGKILL (its
  parent starts it again), the time until every agent is back;
- three relays on one database (nodes a, b, c; each agent starts on one and knows all three):
  one killed with SIGKILL and not restarted, the time until its agents are on the other two.
Targets (DESIGN.md §6): 20,000 agents back within 30 s of a worker's death; a 3-relay cluster
re-homes a dead relay's agents within 30 s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

import psutil

from bench.common import BenchRelay, header, lift_open_files, table, verdict
from bench.fanin import Workers, agent_arguments, cpu_seconds, seed
from tests.ports import free_port

KEY_FILES = ("ssh_host_ed25519_key", "secret.key", "cluster_ed25519_key")


def _over_tree(processes, measure) -> float:
    """`measure` summed over the processes and their children (gone ones count nothing)."""
    total = 0.0
    for process in processes:
        for each in [process, *process.children()]:
            try:
                total += measure(each)
            except psutil.NoSuchProcess:
                pass
    return total


def rss(process: psutil.Process) -> int:
    """RSS of a relay: the process and its workers."""
    return int(_over_tree([process], lambda p: p.memory_info().rss))


def cpu(processes) -> float:
    """CPU seconds the given processes (and their children) have used so far."""
    return _over_tree(processes, cpu_seconds)


def held_by(process: psutil.Process, ssh_port: int) -> int:
    """How many agents' connections a relay process holds."""
    try:
        return sum(1 for c in process.net_connections("tcp")
                   if c.laddr and c.laddr.port == ssh_port and c.status == "ESTABLISHED")
    except psutil.NoSuchProcess:
        return 0


def all_back(agents: Workers, count: int, killed_at: float, budget: float,
             relays=lambda: [], relay_cpu: float = 0.0, agents_cpu: float = 0.0) -> dict:
    """Once the agents have noticed the kill: seconds from it until all `count` are connected
    again (None past `budget`), and how many are; the CPU seconds the relays still running
    (`relays()`, which had used `relay_cpu` at the kill) and the agents spent meanwhile."""
    agents.wait_for(lambda n: n < count, 10)
    back = agents.wait_for(lambda n: n >= count, budget)
    attempts, failures = agents.tally()
    return {"back_s": None if back is None else time.monotonic() - killed_at,
            "back": agents.connected, "attempts": attempts,
            "failures": dict(failures.most_common(4)),
            "relay_cpu_s": cpu(relays()) - relay_cpu,
            "agents_cpu_s": agents.cpu_seconds() - agents_cpu}


def one_relay(count: int, sessions, data_dir: Path, host_key: str, args, workers: int) -> dict:
    """One relay (workers=1) or `--workers N`: RSS, then one process killed; back when?"""
    http_port, ssh_port = free_port(), free_port()
    extra = ("--workers", str(workers)) if workers > 1 else ()
    relay = BenchRelay(data_dir, extra)
    relay.start(http_port=http_port, ssh_port=ssh_port, timeout=90)
    agents: Workers | None = None
    result: dict = {"mode": f"--workers {workers}" if workers > 1 else "one process",
                    "agents": count}
    try:
        parent = psutil.Process(relay.proc.pid)
        time.sleep(1)
        rss0 = rss(parent)
        agents = Workers(sessions[:count], host_key, ssh_port, args.workers, args.concurrency)
        ramp = agents.wait_for(lambda n: n >= count, args.budget)
        result["connected"] = agents.connected
        result["ramp_s"] = ramp
        time.sleep(args.settle)
        result["kib_per_agent"] = (rss(parent) - rss0) / max(1, agents.connected) / 1024
        result["rss_mib"] = rss(parent) / 2**20
        agents_cpu = agents.cpu_seconds()
        if workers > 1:
            victim = max(parent.children(), key=lambda w: held_by(w, ssh_port))
            result["on_victim"] = held_by(victim, ssh_port)
            relay_cpu = cpu([parent]) - cpu([victim])
            killed_at = time.monotonic()
            victim.kill()
        else:
            result["on_victim"] = agents.connected
            relay_cpu = 0.0  # a new process
            killed_at = time.monotonic()
            relay.stop(signal.SIGKILL)
            relay = BenchRelay(data_dir, extra)
            relay.start(http_port=http_port, ssh_port=ssh_port, timeout=90)
            parent = psutil.Process(relay.proc.pid)
        result.update(all_back(agents, count, killed_at, args.budget, lambda: [parent],
                               relay_cpu, agents_cpu))
    finally:
        if agents is not None:
            agents.stop()
        relay.stop()
    return result


def three_relays(count: int, sessions, data_dir: Path, host_key: str, args) -> dict:
    """Nodes a, b, c on a's database; c killed; its agents on a and b when?"""
    database = f"sqlite:///{data_dir / 'relay.db'}"
    relays, ports = [], []
    result: dict = {"mode": "3 relays, one killed", "agents": count}
    agents: Workers | None = None
    try:
        for name in ("a", "b", "c"):
            folder = data_dir if name == "a" else data_dir.parent / f"node-{name}"
            if name != "a":
                folder.mkdir(exist_ok=True)
                for key in KEY_FILES:
                    shutil.copy2(data_dir / key, folder / key)
            relay = BenchRelay(folder, ("--database", database, "--node", name))
            port = free_port()
            relay.start(http_port=free_port(), ssh_port=port, timeout=90)
            relays.append(relay)
            ports.append(port)
        time.sleep(1)
        rss0 = sum(rss(psutil.Process(r.proc.pid)) for r in relays)
        agents = Workers(sessions[:count], host_key, ports[0], args.workers, args.concurrency,
                         ports=ports)
        result["ramp_s"] = agents.wait_for(lambda n: n >= count, args.budget)
        result["connected"] = agents.connected
        time.sleep(args.settle)
        result["rss_mib"] = sum(rss(psutil.Process(r.proc.pid)) for r in relays) / 2**20
        result["kib_per_agent"] = (result["rss_mib"] * 2**20 - rss0) / max(
            1, agents.connected) / 1024
        victim = relays[2]
        result["on_victim"] = held_by(psutil.Process(victim.proc.pid), ports[2])
        survivors = [psutil.Process(r.proc.pid) for r in relays[:2]]
        relay_cpu, agents_cpu = cpu(survivors), agents.cpu_seconds()
        killed_at = time.monotonic()
        victim.stop(signal.SIGKILL)
        result.update(all_back(agents, count, killed_at, args.budget, lambda: survivors,
                               relay_cpu, agents_cpu))
    finally:
        if agents is not None:
            agents.stop()
        for relay in relays:
            relay.stop()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=2000, help="idle agents (default 2000)")
    parser.add_argument("--modes", default="one,workers,three",
                        help="which set-ups: one (process), workers (2), three (relays)")
    parser.add_argument("--cluster-agents", type=int, default=0,
                        help="idle agents on the 3-relay cluster (default: --agents)")
    agent_arguments(parser, 120)
    args = parser.parse_args()
    # Every bench agent dials from 127.0.0.1 (bench/fanin.py says why this is lifted).
    os.environ.setdefault("ADHOC_RELAY_MAX_STARTUPS_PER_SOURCE",
                          os.environ.get("ADHOC_RELAY_MAX_STARTUPS", "128"))
    os.environ.setdefault("ADHOC_RELAY_MAX_QUEUED_PER_SOURCE",
                          os.environ.get("ADHOC_RELAY_MAX_QUEUED", "16384"))
    header("Cluster: --workers 2 beside one process, and a 3-relay cluster losing a relay",
           "asyncssh", "psutil")
    lift_open_files()
    folder = Path(tempfile.mkdtemp(prefix="adhoc-bench-cluster-"))
    try:
        sessions, host_key = asyncio.run(seed(folder / "relay", args.agents))
        modes = args.modes.split(",")
        results = []
        if "one" in modes:
            results.append(one_relay(args.agents, sessions, folder / "relay", host_key, args, 1))
        if "workers" in modes:
            results.append(one_relay(args.agents, sessions, folder / "relay", host_key, args, 2))
        if "three" in modes:
            results.append(three_relays(args.cluster_agents or args.agents, sessions,
                                        folder / "relay", host_key, args))
    finally:
        if os.environ.get("ADHOC_BENCH_KEEP"):
            print(f"kept: {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)

    def fmt(value) -> str:
        return "timeout" if value is None else f"{value:.1f}"

    table(("relay", "agents", "connected", "RSS MiB", "KiB/agent", "held by the killed",
           "all back after the kill s (target ≤ 30)", "back"),
          [(r["mode"], r["agents"], r["connected"], f"{r['rss_mib']:.0f}",
            f"{r['kib_per_agent']:.1f}", r["on_victim"], fmt(r["back_s"]), r["back"])
           for r in results])
    for r in results:
        print(f"{r['mode']}: {r['attempts']} connection attempts by the agents in all, "
              f"failures by kind: {r['failures'] or 'none'}")
        back = max(1, r["back"] - (r["connected"] - r["on_victim"]))
        print(f"{r['mode']}: CPU from the kill until all were back (or the budget): relays "
              f"{r['relay_cpu_s']:.1f} s, agents {r['agents_cpu_s']:.1f} s; per agent back "
              f"{1000 * r['relay_cpu_s'] / back:.2f} ms and {1000 * r['agents_cpu_s'] / back:.2f}"
              " ms")
    single = results[0]["back_s"] if "one" in modes else None
    for r in results[1:] if "one" in modes else results:
        ratio = "n/a" if not (single and r["back_s"]) else f"{r['back_s'] / single:.2f}×"
        print(f"{r['mode']}: back {fmt(r['back_s'])} s, {ratio} one process's restart; "
              f"within 30 s {verdict(r['back_s'] is not None and r['back_s'] <= 30)}")


if __name__ == "__main__":
    main()
