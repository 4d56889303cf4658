"""Real parts for tests: a relay process on loopback ports, agents as processes, API helpers.

Nothing here is a mock: `RelayProcess` runs `adhoc-relay serve` on port 0 with its own data
dir, and `AgentProcess` runs `adhoc-host join` against it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh
import httpx

from common.passwords import hash_password
from common.reach import relay_routes
from relay import sessions as rules
from relay.config import RelaySettings
from relay.db.url import parse_database_url
from relay.server import initialise
from relay.store import SessionRow, Store, Technician
from tui.client import connect_host, open_relay

PASSWORD = "tech-password-1"
SESSION_PASSWORD = "Horse-battery-9"
READY = re.compile(r"adhoc-relay ready http=(\S+) ssh=(\S+)(?: metrics=(\S+))?")


@dataclass(frozen=True)
class Ready:
    """What `adhoc-relay serve` says when it accepts connections."""

    base_url: str
    ssh_host: str  # "" with --ssh off
    ssh_port: int  # 0 with --ssh off
    metrics_url: str | None


def read_ready(proc: subprocess.Popen, log_path: Path, timeout: float) -> Ready:
    """Read `adhoc-relay serve`'s ready line."""
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"relay exited: {log_path.read_text()[-2000:]}")
        match = READY.search(line)
        if match:
            metrics = f"http://{match.group(3)}" if match.group(3) else None
            if match.group(2) == "off":  # SSH over WebSocket only
                return Ready(match.group(1), "", 0, metrics)
            host, _, port = match.group(2).rpartition(":")
            return Ready(match.group(1), host, int(port), metrics)
    raise AssertionError("relay did not start in time")


def wait_for_ready(proc: subprocess.Popen, log_path: Path,
                   timeout: float) -> tuple[str, str, int]:
    """Read `adhoc-relay serve`'s ready line: (base URL, SSH host, SSH port)."""
    ready = read_ready(proc, log_path, timeout)
    return ready.base_url, ready.ssh_host, ready.ssh_port


def run_cli(data_dir: Path, *args: str, stdin: str | None = None,
            check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "relay.cli", "--data-dir", str(data_dir), *args],
        input=stdin, capture_output=True, text=True, timeout=60)
    if check and result.returncode != 0:
        raise AssertionError(f"adhoc-relay {' '.join(args)} failed: {result.stderr}")
    return result


def provision(data_dir: Path, *, company: str = "Acme", plan: str = "plus", seats: int = 3,
              technicians: tuple[str, ...] = ("alice",)) -> None:
    run_cli(data_dir, "init")
    run_cli(data_dir, "company", "add", company, "--plan", plan, "--seats", str(seats))
    for login in technicians:
        run_cli(data_dir, "technician", "add", login, "--email", f"{login}@example.com",
                "--company", company, "--password-stdin", stdin=PASSWORD + "\n")


def stop_process(proc: subprocess.Popen | None, sig: int = signal.SIGTERM) -> None:
    """Signal `proc` and wait for it (SIGKILL after 10 s); close its stdout pipe."""
    if proc and proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    if proc and proc.stdout:
        proc.stdout.close()


async def kill_and_reap(proc: asyncio.subprocess.Process, timeout: float = 30) -> None:
    """Kill `proc` if it still runs and reap it, reading what is left in its pipes.

    Python 3.11's `Process.wait()` returns only once the pipes have closed, and a pipe whose
    reader stopped at its buffer limit (a chatty command nobody read to the end) never sees
    its end: `communicate()` reads them out, so the wait cannot hang.
    """
    if proc.returncode is None:
        proc.kill()
    await asyncio.wait_for(proc.communicate(), timeout)


@dataclass
class RelayProcess:
    data_dir: Path
    extra_args: tuple[str, ...] = ()
    proc: subprocess.Popen | None = None
    base_url: str = ""
    ssh_host: str = "127.0.0.1"
    ssh_port: int = 0
    metrics_url: str | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.data_dir / "relay.log"

    def start(self, *, http_port: int = 0, ssh_port: int = 0, timeout: float = 20) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "relay.cli", "--data-dir", str(self.data_dir), "serve",
                 "--http", f"127.0.0.1:{http_port}", "--ssh", f"127.0.0.1:{ssh_port}",
                 *self.extra_args],
                stdout=subprocess.PIPE, stderr=log, text=True)
        ready = read_ready(self.proc, self.log_path, timeout)
        self.base_url, self.ssh_host, self.ssh_port = ready.base_url, ready.ssh_host, \
            ready.ssh_port
        self.metrics_url = ready.metrics_url

    def stop(self, sig: int = signal.SIGTERM) -> None:
        stop_process(self.proc, sig)

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)


@contextlib.contextmanager
def relays(data_dir_for: Callable[[int], Path]) -> Iterator[Callable[..., RelayProcess]]:
    """A starter of relay processes (`start(*serve_flags)`); the n-th runs on
    `data_dir_for(n)`. Every relay started is stopped on exit."""
    started: list[RelayProcess] = []

    def start(*extra: str) -> RelayProcess:
        process = RelayProcess(data_dir_for(len(started)), tuple(extra))
        process.start()
        started.append(process)
        return process

    try:
        yield start
    finally:
        for process in started:
            process.stop()


class Api:
    """A technician's view of the relay API (real HTTP)."""

    def __init__(self, base_url: str, login: str = "alice", password: str = PASSWORD, *,
                 verify: ssl.SSLContext | bool = True) -> None:
        self.base_url = base_url
        # Idle connections are let go before the relay's HTTP server closes them (uvicorn: 5 s),
        # so a request never races that close on a connection the test left idle.
        self.client = httpx.AsyncClient(base_url=base_url, timeout=30, verify=verify,
                                        limits=httpx.Limits(keepalive_expiry=2.0))
        self.login_name = login
        self.password = password
        self.token = ""

    async def __aenter__(self) -> Api:
        response = await self.client.post(
            "/api/v1/login", json={"login": self.login_name, "password": self.password})
        response.raise_for_status()
        self.token = response.json()["token"]
        self.client.headers["Authorization"] = f"Bearer {self.token}"
        return self

    async def __aexit__(self, *exc) -> None:
        await self.client.aclose()

    async def create_session(self, email: str = "customer@example.com",
                             password: str = SESSION_PASSWORD,
                             technician_key: str | None = None) -> dict:
        """A new session; `technician_key` (an OpenSSH public key line) logs in to the host."""
        body = {"customer_email": email, "password": password}
        if technician_key is not None:
            body["technician_key"] = technician_key
        response = await self.client.post("/api/v1/sessions", json=body)
        assert response.status_code == 201, response.text
        return response.json()

    async def session(self, session_id: str) -> dict:
        response = await self.client.get(f"/api/v1/sessions/{session_id}")
        response.raise_for_status()
        return response.json()

    async def relay_info(self) -> dict:
        return (await self.client.get("/api/v1/relay")).json()

    async def wait_for(self, session_id: str, predicate, timeout: float = 20) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            view = await self.session(session_id)
            if predicate(view):
                return view
            if time.monotonic() > deadline:
                raise AssertionError(f"session never reached the expected state: {view}")
            await asyncio.sleep(0.1)


@dataclass
class AgentProcess:
    join_url: str
    code: str
    workdir: Path
    proc: subprocess.Popen | None = None
    output: list[str] = field(default_factory=list)

    def start(self, *extra: str, env: dict[str, str] | None = None,
              wrap: Callable[[list[str]], list[str]] = lambda argv: argv) -> None:
        """Run the agent; `env` adds to this process's environment, `wrap` runs it inside
        something (a network namespace)."""
        # /bin/sh keeps shells quick to start: root's login bash on a developer machine may
        # run version-manager hooks (pyenv rehash) that stall for a minute on a stale lock.
        # The link and the code travel in the environment, as on a shared computer: never in
        # the arguments, which every local user can read.
        env = {**os.environ, "ADHOC_HOST_LOCK": str(self.workdir / "agent.lock"),
               "TMPDIR": str(self.workdir), "ADHOC_HOST_SHELL": "/bin/sh",
               "ADHOC_JOIN_URL": self.join_url, "ADHOC_JOIN_CODE": self.code, **(env or {})}
        self.proc = subprocess.Popen(
            wrap([sys.executable, "-m", "hostagent.cli", "join", "--yes", "--allow-unprivileged",
                  *extra]),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
            stdin=subprocess.DEVNULL)

    async def wait_for_line(self, text: str, timeout: float = 20) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + timeout
        for line in self.output:
            if text in line:
                return line
        pending = None
        while time.monotonic() < deadline:
            pending = pending or loop.run_in_executor(None, self.proc.stdout.readline)
            done, _ = await asyncio.wait({pending}, timeout=max(0.1, deadline - time.monotonic()))
            if not done:
                continue
            line, pending = pending.result(), None
            if not line:
                break
            self.output.append(line)
            if text in line:
                return line
        if pending is not None:
            # The reading thread would wait for a line forever (and the test's event loop for
            # it): stop the agent so the test fails instead of hanging.
            self.stop()
            await pending
        raise AssertionError(f"agent never printed {text!r}; it printed:\n{''.join(self.output)}")

    def wait_exit(self, timeout: float = 20) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout)
        if self.proc.stdout:
            self.output.extend(self.proc.stdout.readlines())
        return code

    def stop(self) -> None:
        stop_process(self.proc)


@contextlib.asynccontextmanager
async def technician_ssh(relay: RelayProcess, api: Api, session: dict,
                         password: str = SESSION_PASSWORD, **options):
    """Outer connection to the relay as the technician, inner connection to the host, made as
    the console makes them (tui/client.py: the SSH port, else SSH over WebSocket);
    `options` override asyncssh settings."""
    info = await api.relay_info()
    outer, _route = await open_relay(relay_routes(info["ssh"], relay.base_url),
                                     api.login_name, api.token, info["host_key"], **options)
    try:
        inner = await connect_host(outer, session["id"], session["host_key"], password,
                                   **options)
        try:
            yield inner
        finally:
            inner.close()
            await inner.wait_closed()
    finally:
        outer.close()
        await outer.wait_closed()


async def raw_connections(host: str, port: int, count: int) -> list[tuple[
        asyncio.StreamReader, asyncio.StreamWriter]]:
    """`count` TCP connections to host:port, opened one after the other."""
    return [await asyncio.open_connection(host, port) for _ in range(count)]


async def first_lines(connections, timeout: float) -> list[bytes]:
    """The first line each connection receives (an SSH server's version line)."""
    return await asyncio.wait_for(
        asyncio.gather(*(reader.readline() for reader, _ in connections)), timeout)


def console_login(base_url: str, config: Path) -> dict[str, str]:
    """Log the console in to the relay as alice (`adhoc-console login`), its settings in
    `config`; the environment that runs that console."""
    env = {"ADHOC_CONSOLE_CONFIG_DIR": str(config), "TERM": "xterm-256color",
           "PYTHONPATH": os.getcwd()}
    login = subprocess.run(
        [sys.executable, "-m", "tui.cli", "login", base_url, "--login", "alice",
         "--password-stdin"], input=PASSWORD + "\n", text=True, capture_output=True,
        env={**os.environ, **env}, timeout=60)
    assert login.returncode == 0, login.stderr
    assert PASSWORD not in login.stdout + login.stderr
    return env


def new_agent(agents: list[AgentProcess], tmp_path: Path, session: dict) -> AgentProcess:
    """An agent for `session`, in its own folder, stopped by the `agents` fixture."""
    workdir = tmp_path / f"agent{len(agents)}"
    workdir.mkdir()
    agent = AgentProcess(session["join_url"], session["security_code"], workdir)
    agents.append(agent)
    return agent


async def start_session(api: Api, agents: list[AgentProcess], tmp_path: Path,
                        *extra: str) -> tuple[dict, AgentProcess]:
    """Create a session, start an agent on it, and wait until the host is online."""
    session = await api.create_session()
    agent = new_agent(agents, tmp_path, session)
    agent.start(*extra)
    await agent.wait_for_line("Connected to the relay")
    view = await api.wait_for(session["id"], lambda v: v["state"] == "active" and v["online"])
    return view, agent


async def add_active_session(store: Store, tech: Technician, secret: str, *,
                             verifier: str = "-", host_key: str = "-",
                             lifetime: float = 86400) -> str:
    """An invited and activated session of `tech`, straight through the store, whose agent
    logs in with `secret`; returns its id."""
    now = time.time()
    session_id = rules.new_session_id()
    await store.create_session(SessionRow(
        id=session_id, company_id=tech.company_id, technician_id=tech.id,
        customer_email="customer@example.com", note="", password_verifier=verifier,
        join_token_hash=rules.token_hash(rules.new_token()), code_hmac="-",
        code_attempts=0, state=rules.State.PENDING, ended_reason=None, created_at=now,
        invite_expires_at=now + 1800, activated_at=None, expires_at=None,
        ended_at=None, agent_secret_hash=None, host_key=None, hostname=None, os=None,
        os_user=None, ip=None, machine_fp=None, features="[]", mail_status="sent",
        mail_detail=None))
    await store.activate(
        session_id, now, now + lifetime, agent_secret_hash=rules.token_hash(secret),
        host_key=host_key, hostname=f"host-{session_id}", os="Linux", os_user="root",
        ip="127.0.0.1", machine_fp=None, features=["remote_control"], source="127.0.0.1")
    return session_id


async def provision_store(path: Path, companies: list[tuple[str, str, int, list[str]]], *,
                          database: str | None = None) -> None:
    """Create a relay data dir with these (name, plan, seats, technician logins) through the
    store's own calls in one process (much faster than the CLI, which test_admin.py covers);
    the first technician of each company is its admin. `database`: a URL instead of the data
    dir's relay.db."""
    settings = RelaySettings(data_dir=path,
                             database=parse_database_url(database) if database else None)
    await initialise(settings)
    store = await Store.open(settings.database_url)
    try:
        verifier = hash_password(PASSWORD)
        for name, plan, seats, logins in companies:
            company = await store.add_company(name, plan, seats, time.time())
            for index, login in enumerate(logins):
                await store.add_technician(company.id, login, f"{login}@example.com", verifier,
                                           index == 0, time.time())
    finally:
        await store.close()


@dataclass
class OpenSSH:
    """Stock OpenSSH (`ssh`, `sftp`) as a technician uses it through the relay: a key
    registered for the relay hop, the session password from an askpass script, and both
    host keys pinned. `relay_options` are ssh_config lines for the relay hop (HostName and
    Port, or a ProxyCommand)."""

    tmp_path: Path
    relay: RelayProcess
    relay_key: str
    session: dict
    relay_options: list[str]
    known_name: str = ""  # how known_hosts names the relay (default: the ssh address)

    def __post_init__(self) -> None:
        self.key = self.tmp_path / "id_ed25519"
        if not self.key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                            str(self.key)], check=True)
            run_cli(self.relay.data_dir, "technician", "add-key", "alice", f"{self.key}.pub")
        known = self.tmp_path / "known_hosts"
        name = self.known_name or f"[{self.relay.ssh_host}]:{self.relay.ssh_port}"
        known.write_text(f"{name} {self.relay_key}\n"
                         f"{self.session['id']} {self.session['host_key']}\n")
        self.config = self.tmp_path / "ssh_config"
        self.config.write_text(
            "Host adhoc-relay\n" + "".join(f"  {line}\n" for line in self.relay_options)
            + f"  User alice\n  IdentityFile {self.key}\n  IdentitiesOnly yes\n"
            f"Host *\n  UserKnownHostsFile {known}\n  GlobalKnownHostsFile /dev/null\n"
            "  StrictHostKeyChecking yes\n  BatchMode no\n")
        askpass = self.tmp_path / "askpass"
        askpass.write_text(f"#!/bin/sh\necho '{SESSION_PASSWORD}'\n")
        askpass.chmod(0o700)
        self.env = dict(os.environ, SSH_ASKPASS=str(askpass), SSH_ASKPASS_REQUIRE="force",
                        DISPLAY=":0")

    def ssh(self, command: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["ssh", "-F", str(self.config), "-J", "adhoc-relay",
             f"support@{self.session['id']}", command],
            capture_output=True, text=True, env=self.env, stdin=subprocess.DEVNULL, timeout=60)

    def sftp(self, batch: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["sftp", "-q", "-F", str(self.config), "-J", "adhoc-relay",
             f"support@{self.session['id']}"],
            input=batch, capture_output=True, text=True, env=self.env, timeout=60)

    def round_trip(self) -> None:
        """A command with `ssh`, and a megabyte up and down again with `sftp`."""
        result = self.ssh("echo via-openssh-$((20+1))")
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "via-openssh-21"
        blob = self.tmp_path / "blob"
        blob.write_bytes(os.urandom(1024 * 1024))
        up, down = self.tmp_path / "up", self.tmp_path / "down"
        result = self.sftp(f"put {blob} {up}\nget {up} {down}\n")
        assert result.returncode == 0, result.stderr
        assert down.read_bytes() == blob.read_bytes()


@contextlib.asynccontextmanager
async def impostor_relay(port: int = 0) -> AsyncIterator[tuple[int, list[str]]]:
    """An SSH server posing as the relay on 127.0.0.1:`port` (0: any), with a host key of its
    own; yields its port and the user names that reached its login (there must be none)."""
    logins: list[str] = []

    class Impostor(asyncssh.SSHServer):
        def begin_auth(self, username: str) -> bool:
            logins.append(username)
            return True

    server = await asyncssh.create_server(
        Impostor, "127.0.0.1", port, reuse_address=True,
        server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")])
    try:
        yield server.sockets[0].getsockname()[1], logins
    finally:
        server.close()
        await server.wait_closed()
