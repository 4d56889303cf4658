"""The embedded default: the bundled relay in-process, with a local company and admin.

A newcomer runs `adhoc-console` and has a working system: the relay keeps its SQLite database
in the user data dir, and the console is logged in as the local admin (the first run shows
the admin's password once, for `ssh -J` or another console). It listens on loopback unless
told otherwise (`--listen HOST:PORT`, `--public-url URL`, or the config file), so that a
customer on another computer can be let in.

The ports are chosen once and kept in the data dir (`embedded.json`): agents remember the SSH
port they were given, and must find the relay there after a restart. A later start on a taken
port fails with a message rather than moving. One relay per data dir: a lock; a second console
on the same data dir attaches to the running relay instead of starting another on the same
database, and runs the relay itself once the console that ran it has quit (take_over).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import os
import secrets
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from common.passwords import hash_password
from common.secret import Secret
from relay.config import WILDCARDS, RelaySettings, format_hostport
from relay.server import RelayServer, StartError, listen_problem
from relay.store import NotFound, Store
from relay.usecases.technicians import issue_token
from tui.config import embedded_data_dir

LOCAL_COMPANY = "Local"
LOCAL_ADMIN = "admin"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_HTTP_PORT = 8780
DEFAULT_SSH_PORT = 8722
ADDRESSES = "embedded.json"
LOCK = "embedded.lock"


class EmbeddedError(Exception):
    """The bundled relay cannot start as asked; the message says why and what to do."""


@dataclass
class Embedded:
    base_url: str
    token: Secret
    login: str
    first_run_password: Secret | None
    server: RelayServer | None = None  # None: attached to another console's relay
    owner_pid: int | None = None  # the console running the relay, when attached
    _lock: int | None = field(default=None, repr=False)

    @property
    def attached(self) -> bool:
        return self.server is None

    async def take_over(self) -> bool:
        """Attached, and the console that ran the relay has quit (or died): run the relay
        here, on the addresses it kept, so customers' computers and this console find it
        again. Whether this console runs it now; False while another console holds it.
        EmbeddedError if it cannot start (say, something else took its port meanwhile)."""
        if not self.attached:
            return False
        data_dir = embedded_data_dir()
        lock = _lock(data_dir)
        if lock is None:
            return False
        try:
            started = await _start(data_dir, lock, None, None)
        except BaseException:
            os.close(lock)
            raise
        self.base_url, self.server, self.owner_pid, self._lock = \
            started.base_url, started.server, None, lock
        return True

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
        if self._lock is not None:
            os.close(self._lock)  # releases the lock
            self._lock = None


@dataclass
class Addresses:
    """Where the bundled relay listens: chosen once, kept in the data dir."""

    host: str = DEFAULT_HOST
    http_port: int = 0
    ssh_port: int = 0
    public_url: str | None = None

    @classmethod
    def load(cls, data_dir: Path) -> Addresses:
        try:
            data = json.loads((data_dir / ADDRESSES).read_text())
            return cls(str(data["host"]), int(data["http_port"]), int(data["ssh_port"]),
                       data.get("public_url"))
        except (OSError, ValueError, KeyError, TypeError):
            return cls()

    def save(self, data_dir: Path, **running: object) -> None:
        path = data_dir / ADDRESSES
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"host": self.host, "http_port": self.http_port,
                                   "ssh_port": self.ssh_port, "public_url": self.public_url,
                                   **running}, indent=1) + "\n")
        os.replace(tmp, path)


def _free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _not_here(host: str, errno_: int | None) -> str:
    return (f"cannot listen on {host}: {listen_problem(errno_)}: give --listen one of this "
            "computer's own addresses")


def _first_port(host: str, preferred: int) -> int:
    """The preferred port if free, else one the system picks (chosen once, then kept)."""
    if _free(host, preferred):
        return preferred
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, 0))
        except OSError as exc:
            raise EmbeddedError(_not_here(host, exc.errno)) from None
        return sock.getsockname()[1]


def plan(data_dir: Path, listen: tuple[str, int] | None,
         public_url: str | None) -> Addresses:
    """Where to listen this time: what was asked, else what was kept, else the defaults (or
    free ports when those are taken, the first time only)."""
    kept = Addresses.load(data_dir)
    host = listen[0] if listen else kept.host
    addresses = Addresses(host, kept.http_port, kept.ssh_port,
                          public_url if public_url is not None else kept.public_url)
    if listen and listen[1]:
        addresses.http_port = listen[1]
    if host in WILDCARDS and not addresses.public_url:
        raise EmbeddedError(f"listening on every address ({host or '*'}): say how customers "
                            "reach this computer with --public-url http://NAME:PORT")
    if not addresses.http_port:
        addresses.http_port = _first_port(host, DEFAULT_HTTP_PORT)
    if not addresses.ssh_port:
        addresses.ssh_port = _first_port(host, DEFAULT_SSH_PORT)
    return addresses


def _lock(data_dir: Path) -> int | None:
    """Hold the data dir's relay lock; None if another console holds it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


async def start_embedded(listen: tuple[str, int] | None = None,
                         public_url: str | None = None) -> Embedded:
    """The bundled relay for the user data dir: started here, or, when another console runs
    it already, that one (attached)."""
    data_dir = embedded_data_dir()
    lock = _lock(data_dir)
    if lock is None:
        return await _attach(data_dir, listen, public_url)
    try:
        return await _start(data_dir, lock, listen, public_url)
    except BaseException:
        os.close(lock)
        raise


async def running_embedded() -> Embedded | None:
    """The bundled relay a console runs now on this user's data dir, attached to (for
    `ssh-config`); None when no console runs it."""
    data_dir = embedded_data_dir()
    if not (data_dir / "relay.db").exists():
        return None  # never started here
    lock = _lock(data_dir)
    if lock is not None:
        os.close(lock)  # nobody held it: no console runs the relay
        return None
    return await _attach(data_dir, None, None)


async def _start(data_dir: Path, lock: int, listen: tuple[str, int] | None,
                 public_url: str | None) -> Embedded:
    addresses = plan(data_dir, listen, public_url)
    settings = RelaySettings(data_dir=data_dir, http_host=addresses.host,
                             http_port=addresses.http_port, ssh_host=addresses.host,
                             ssh_port=addresses.ssh_port, public_url=addresses.public_url,
                             prepare_wheels=True)
    server = RelayServer(settings)
    try:
        service = await server.start()
    except StartError as exc:
        raise EmbeddedError(_cannot_listen(exc, addresses, data_dir)) from None
    try:
        addresses.save(data_dir, base_url=service.base_url, pid=os.getpid())
        tech, password = await _local_admin(service.store)
        token = Secret(await service.issue_token(tech))
    except BaseException:
        await server.stop()
        raise
    return Embedded(service.base_url, token, tech.login, password, server, None, lock)


def _cannot_listen(exc: StartError, addresses: Addresses, data_dir: Path) -> str:
    """Why the bundled relay did not start, with what the console's user can do about it
    (the relay's own words name flags the console does not have)."""
    kept = ("the bundled relay keeps the ports it first had, so that customers' computers "
            "find it again")
    if exc.listener is None:
        return f"{exc} ({kept})"
    if exc.errno == errno.EADDRNOTAVAIL:
        return _not_here(addresses.host, exc.errno)
    problem = listen_problem(exc.errno)
    if exc.listener == "HTTP":
        where = format_hostport(addresses.host, addresses.http_port)
        return (f"cannot listen for HTTP on {where}: {problem}: stop it, or move the web port "
                f"with --listen HOST:PORT ({kept})")
    where = format_hostport(addresses.host, addresses.ssh_port)
    return (f"cannot listen for SSH on {where}: {problem}: stop it ({kept}: to move it anyway, "
            f"delete \"ssh_port\" from {data_dir / ADDRESSES}, and invite again the customers "
            "whose computers joined already)")


async def _local_admin(store: Store):
    """The local admin, made with the company `Local` on the first run (with a password shown
    once); returns (technician, that password as a Secret, or None)."""
    try:
        return await store.technician_by_login(LOCAL_ADMIN), None
    except NotFound:
        pass
    now = time.time()
    try:
        company = await store.company_by_name(LOCAL_COMPANY)
    except NotFound:
        company = await store.add_company(LOCAL_COMPANY, "premier", 5, now)
    password = Secret(secrets.token_urlsafe(12))
    tech = await store.add_technician(
        company.id, LOCAL_ADMIN, "admin@localhost",
        await asyncio.to_thread(hash_password, password.reveal()), True, now, actor="console")
    return tech, password


async def _attach(data_dir: Path, listen: tuple[str, int] | None,
                  public_url: str | None) -> Embedded:
    """Another console runs the bundled relay on this data dir: use it (the same database,
    so a token made here is good there)."""
    running = {}
    with contextlib.suppress(OSError, ValueError):
        running = json.loads((data_dir / ADDRESSES).read_text())
    base_url, pid = running.get("base_url"), running.get("pid")
    if not base_url:
        raise EmbeddedError(f"another console is starting the bundled relay for {data_dir}: "
                            "wait a moment and start again")
    if listen or public_url:
        kept = f"{format_hostport(running.get('host', '?'), running.get('http_port', 0))}"
        raise EmbeddedError(f"another console (process {pid}) runs the bundled relay for "
                            f"{data_dir} on {kept}: quit it to start the relay with "
                            "--listen or --public-url, or start without them to share it")
    store = await Store.open(data_dir / "relay.db")
    try:
        tech, _ = await _local_admin(store)
        token = Secret(await issue_token(store, tech, time.time()))
    finally:
        await store.close()
    return Embedded(base_url, token, tech.login, None, None, pid)
