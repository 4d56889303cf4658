"""Shared parts of the benchmarks: the machine, statistics, tables, and the real parts under test.

The relay, the host agent and the bare inner server run as their own processes (as in
production), started through bench.launch so a lever can be tried by monkeypatching without
touching the product. The OpenSSH anchor is a throwaway sshd on loopback with its own keys.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import asyncssh
import psutil

from bench.launch import (
    LEVERS_ENV,
    packet_copies,
    prefer_aes_gcm,
    restore_encryption,
    send_ignores,
)
from common.transport import INNER_USER, pinned, tune_process
from tests.openssh import Sshd, sshd_server
from tests.support import (
    PASSWORD,
    SESSION_PASSWORD,
    Api,
    RelayProcess,
    run_cli,
    stop_process,
    technician_ssh,
    wait_for_ready,
)
from tui.client import technician_options

ROOT = Path(__file__).resolve().parent.parent


# --- the machine and the numbers -------------------------------------------------------------


def machine() -> str:
    cpu = platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        names = [line.split(":", 1)[1].strip() for line in info if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return f"{cpu}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}"


def versions(*packages: str) -> str:
    parts = [f"python {platform.python_version()}"]
    for name in packages:
        try:
            parts.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            parts.append(f"{name} (not installed)")
    return ", ".join(parts)


def openssh_version() -> str:
    result = subprocess.run(["ssh", "-V"], capture_output=True, text=True, check=False)
    return (result.stderr or result.stdout).strip().split(",")[0]


def _steal_and_total() -> tuple[float, float] | None:
    """CPU seconds so far stolen by the hypervisor (other guests of the host), and in all."""
    times = psutil.cpu_times()
    steal = getattr(times, "steal", None)
    if steal is None:
        return None
    names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    return steal, sum(getattr(times, name, 0.0) for name in names)


def _load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _at_the_end(start: tuple[float, float] | None) -> None:
    line = f"load average at the end: {_load_average()}"
    end = _steal_and_total()
    if start is not None and end is not None and end[1] > start[1]:
        # On a virtual machine whose host is busy, both sides of every ratio lose CPU to the
        # other guests, unevenly: a run with much stolen is not a figure to quote alone.
        line += (f"; CPU stolen by the host during the run: "
                 f"{100 * (end[0] - start[0]) / (end[1] - start[1]):.0f} %")
    print(line)


def header(title: str, *packages: str) -> None:
    """What, where, when and how loaded; the load and the CPU stolen by the host are printed
    again when the benchmark ends."""
    print(f"== {title}")
    print(f"date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}")
    print(f"machine: {machine()}")
    print(f"versions: {versions(*packages)}")
    print(f"load average at start: {_load_average()}")
    print()
    atexit.register(_at_the_end, _steal_and_total())


def lift_open_files(wanted: int = 1 << 20) -> int:
    """Raise this process's open-file limit, hard and soft, to `wanted` where allowed (as
    root, as a relay's `LimitNOFILE=1048576` does under systemd, docs/ADMIN.md), for the
    relays and agents it starts; returns the soft limit now in force. Tens of thousands of
    agents need as many descriptors: at this box's 20,000 a relay holding them all could
    accept no more, which is a set-up limit, not the relay's."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < min(hard, wanted):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, wanted), hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    print(f"open-file limit for the relays and agents: {soft}")
    return soft


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (p50 is the median of an odd count)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def table(columns: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """Print a Markdown table (readable in a terminal, pasteable into docs/BENCHMARKS.md)."""
    body = [[str(cell) for cell in row] for row in rows]
    widths = [max(len(col), *(len(row[i]) for row in body)) if body else len(col)
              for i, col in enumerate(columns)]
    print("| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in body:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
    print()
    sys.stdout.flush()


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def settle(calm: float = 3.0, busy: float = 0.15, window: float = 0.25,
           limit: float = 20.0) -> float:
    """Wait until the machine's CPUs have been busy under `busy` (all of them together) for
    `calm` seconds in a row, at most `limit` seconds; returns the seconds waited. So no
    contender pays for work another left running: the agent's digest of a file it sent; after
    a flood, the agent bringing its reattach emulator up to date (~0.8 s of CPU for `yes`'s
    tail), the kernel, the terminals. And for a while after a long burst on both CPUs this
    virtual machine runs slower (a loop took 1.2-1.6x as long in the first half second; tested
    by hand): whichever run came next paid for it."""
    start = time.monotonic()
    quiet_since = None
    while time.monotonic() - start < limit:
        now = time.monotonic()
        if psutil.cpu_percent(interval=window) < busy * 100:
            quiet_since = now if quiet_since is None else quiet_since
            if time.monotonic() - quiet_since >= calm:
                break
        else:
            quiet_since = None
    return time.monotonic() - start


def scratch_dir(prefix: str) -> Path:
    """A scratch folder in RAM where there is one, so disks do not flavour the numbers."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


# --- levers ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Levers:
    """Changes tried by monkeypatching (bench.launch); the defaults are the product as shipped."""

    gcm: bool = False  # aes128-gcm first on every asyncssh client (technician, agent tunnel)
    relay_window: int = 0  # relay/sshd.py CHANNEL_WINDOW
    relay_packet: int = 0  # relay/sshd.py CHANNEL_PACKET
    inner_window: int = 0  # hostagent/server.py SHELL_WINDOW (every inner channel, SFTP too)
    agent_window: int = 0  # window/max_pktsize on the agent's outer connection (tunnel.py)
    agent_packet: int = 0
    tech_window: int = 0  # window/max_pktsize on the technician's outer and inner connections
    tech_packet: int = 0
    uvloop: bool = False  # uvloop in the relay and the agent
    relay_uvloop: bool = False  # uvloop in the relay only (the agent's PTY shells break on it)
    ignores: bool = False  # asyncssh's SSH_MSG_IGNORE before each packet, as it comes
    server_ciphers: tuple[str, ...] = ()  # what the relay and the agent's server offer
    narrow_pipes: bool = False  # the agent's command pipes 64 KiB, paused after every read
    shell_window: int = 0  # tui/client.py SHELL_WINDOW (the console's remote pane)
    write_at_once: bool = False  # every write sent at once (before bulk writes were joined)
    digest_wait: bool = False  # the agent's SFTP close waits for the file's digest (before)
    packet_copies: bool = False  # asyncssh's own packet path (before common/packets.py)
    label: str = "as shipped"

    def env(self) -> dict[str, str]:
        return {**os.environ, LEVERS_ENV: json.dumps(asdict(self))}

    def tech_options(self) -> dict:
        opts: dict = {}
        if self.tech_window:
            opts["window"] = self.tech_window
        if self.tech_packet:
            opts["max_pktsize"] = self.tech_packet
        return opts


SHIPPED = Levers()


@contextlib.contextmanager
def technician_process(levers: Levers):
    """The bench process plays the technician: apply the levers that concern its whole
    process (not only connection set-up) while a variant runs."""
    if not (levers.ignores or levers.packet_copies):
        yield
        return
    from asyncssh.channel import SSHChannel
    from asyncssh.connection import SSHConnection
    from asyncssh.encryption import GCMEncryption

    import common.transport

    saved = (SSHConnection.send_packet, GCMEncryption.decrypt_packet, SSHChannel.send_packet,
             common.transport.skip_needless_ignores, common.transport.faster_gcm_packets)
    if levers.ignores:
        send_ignores()
    if levers.packet_copies:
        packet_copies()
    try:
        yield
    finally:
        (SSHConnection.send_packet, GCMEncryption.decrypt_packet, SSHChannel.send_packet,
         common.transport.skip_needless_ignores, common.transport.faster_gcm_packets) = saved


@contextlib.contextmanager
def technician_ciphers(levers: Levers):
    """The bench process plays the technician: apply the cipher lever to it while in use."""
    if not levers.gcm:
        yield
        return
    before = prefer_aes_gcm()
    try:
        yield
    finally:
        restore_encryption(before)


def _launch(kind: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "bench.launch", kind, *args]


# --- the relay and an agent, as real processes -----------------------------------------------


@dataclass
class BenchRelay(RelayProcess):
    """tests.support.RelayProcess, started through bench.launch with the levers applied."""

    levers: Levers = SHIPPED

    def start(self, *, http_port: int = 0, ssh_port: int = 0, timeout: float = 30) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                _launch("relay", "--data-dir", str(self.data_dir), "serve",
                        "--http", f"127.0.0.1:{http_port}", "--ssh", f"127.0.0.1:{ssh_port}",
                        *self.extra_args),
                stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT, env=self.levers.env())
        self.base_url, self.ssh_host, self.ssh_port = wait_for_ready(self.proc, self.log_path,
                                                                     timeout)


def provision_relay(data_dir: Path, login: str = "alice", ssh_key: Path | None = None) -> None:
    run_cli(data_dir, "init")
    run_cli(data_dir, "company", "add", "Bench", "--plan", "plus", "--seats", "5")
    extra = ("--ssh-key", str(ssh_key)) if ssh_key else ()
    run_cli(data_dir, "technician", "add", login, "--email", f"{login}@example.com",
            "--company", "Bench", "--password-stdin", *extra, stdin=PASSWORD + "\n")


@dataclass
class Deployment:
    """A relay, one activated agent on it, and the technician's API handle."""

    relay: BenchRelay
    api: Api
    session: dict
    agent: subprocess.Popen
    workdir: Path
    relay_host_key: str = ""

    async def view(self) -> dict:
        return await self.api.session(self.session["id"])


def start_agent(session: dict, workdir: Path, levers: Levers) -> subprocess.Popen:
    """`adhoc-host join` for `session`, unattended, its output in workdir/agent.log."""
    (workdir / "agent").mkdir()
    env = {**levers.env(), "ADHOC_HOST_LOCK": str(workdir / "agent" / "agent.lock"),
           "TMPDIR": str(workdir / "agent"), "ADHOC_JOIN_CODE": session["security_code"]}
    with (workdir / "agent.log").open("wb") as log:
        return subprocess.Popen(
            _launch("host", "join", session["join_url"], "--yes", "--allow-unprivileged"),
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=ROOT)


@contextlib.asynccontextmanager
async def deployment(levers: Levers = SHIPPED, ssh_key: Path | None = None,
                     technician_key: str | None = None) -> AsyncIterator[Deployment]:
    """A real relay and a real `adhoc-host join` agent on loopback, both with `levers`;
    `ssh_key` logs the technician in to the relay, `technician_key` to the host (item 9)."""
    workdir = Path(tempfile.mkdtemp(prefix="adhoc-bench-"))
    provision_relay(workdir / "relay", ssh_key=ssh_key)
    relay = BenchRelay(workdir / "relay", levers=levers)
    relay.start()
    agent: subprocess.Popen | None = None
    try:
        async with Api(relay.base_url) as api:
            session = await api.create_session(technician_key=technician_key)
            agent = start_agent(session, workdir, levers)
            view = await api.wait_for(session["id"], lambda v: v.get("online"), timeout=60)
            info = await api.relay_info()
            yield Deployment(relay, api, {**session, **view}, agent, workdir, info["host_key"])
    finally:
        stop_process(agent)
        relay.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.asynccontextmanager
async def relayed_connection(dep: Deployment, levers: Levers = SHIPPED
                             ) -> AsyncIterator[asyncssh.SSHClientConnection]:
    """The technician's outer connection to the relay and inner connection to the agent, made
    as the console makes them (tui/client.py), with the levers' technician settings."""
    with technician_ciphers(levers):
        async with technician_ssh(dep.relay, dep.api, dep.session,
                                  **levers.tech_options()) as inner:
            yield inner


@contextlib.asynccontextmanager
async def cross_relay_connection(dep: Deployment, levers: Levers = SHIPPED
                                 ) -> AsyncIterator[asyncssh.SSHClientConnection]:
    """Like relayed_connection, but the technician logs in to a second relay of the cluster
    (on the deployment's database, started from a copy of its key files), which reaches the
    agent through the deployment's relay: the cross-relay hop (relay/cluster/peers.py)."""
    folder = dep.workdir / "relay-b"
    folder.mkdir(exist_ok=True)
    for name in ("ssh_host_ed25519_key", "secret.key", "cluster_ed25519_key"):
        shutil.copy2(dep.relay.data_dir / name, folder / name)
    database = f"sqlite:///{dep.relay.data_dir / 'relay.db'}"
    relay = BenchRelay(folder, ("--database", database, "--node", "b"), levers=levers)
    relay.start()
    try:
        async with Api(relay.base_url) as api:
            await api.wait_for(dep.session["id"], lambda v: v.get("online"), timeout=60)
            with technician_ciphers(levers):
                async with technician_ssh(relay, api, dep.session,
                                          **levers.tech_options()) as inner:
                    yield inner
    finally:
        relay.stop()


# --- the direct anchor: the same inner server on a plain socket ------------------------------


@dataclass
class DirectServer:
    proc: subprocess.Popen
    port: int
    host_key: str

    def stop(self) -> None:
        stop_process(self.proc)


@contextlib.contextmanager
def direct_server(levers: Levers = SHIPPED):
    """hostagent.server's inner SSH server listening on loopback: the agent with no relay."""
    folder = Path(tempfile.mkdtemp(prefix="adhoc-bench-direct-"))
    port_file = folder / "port.json"
    proc = subprocess.Popen(_launch("direct", str(port_file)), env=levers.env(), cwd=ROOT,
                            stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the direct inner server did not start")
        time.sleep(0.05)
    info = json.loads(port_file.read_text())
    server = DirectServer(proc, info["port"], info["host_key"])
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.asynccontextmanager
async def direct_connection(server: DirectServer, levers: Levers = SHIPPED
                            ) -> AsyncIterator[asyncssh.SSHClientConnection]:
    # The same client settings as the relayed path, so the ratio measures only the relay hop.
    with technician_ciphers(levers):
        conn = await asyncssh.connect(
            "127.0.0.1", server.port, username=INNER_USER, password=SESSION_PASSWORD,
            known_hosts=pinned(server.host_key),
            **technician_options(**levers.tech_options()))
    try:
        yield conn
    finally:
        conn.close()
        await conn.wait_closed()


# --- the OpenSSH anchor: a throwaway sshd on loopback ----------------------------------------


class OpenSSH(Sshd):
    """tests.openssh.Sshd (a throwaway sshd on loopback), which the bench also reaches with
    asyncssh."""

    async def asyncssh_connection(self, levers: Levers = SHIPPED) -> asyncssh.SSHClientConnection:
        with technician_ciphers(levers):
            return await asyncssh.connect(
                "127.0.0.1", self.port, username=self.user, client_keys=[str(self.key)],
                known_hosts=pinned(self.host_public_key), agent_path=None, config=None,
                compression_algs=None)


def openssh_server(*, jump: bool = False) -> contextlib.AbstractContextManager[OpenSSH]:
    return sshd_server(jump=jump, kind=OpenSSH)


def run_async(main) -> None:
    # The bench plays the technician's console, which tunes its allocator at start.
    tune_process()
    asyncio.run(main)
