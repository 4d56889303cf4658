"""A throwaway PostgreSQL cluster for tests: initdb and pg_ctl in a temp dir, on a Unix socket.

The cluster runs as an unprivileged user (the `postgres` system user when the tests run as
root, else the user running them), listens on no TCP address, only on a socket in its own
folder, and is stopped by its postmaster's PID. The relay logs in as the role `adhoc` with a
password (scram-sha-256, so the password is really checked); the tests' own look-ups use the
superuser `postgres`, trusted on that socket. Each test gets a database of its own, cloned
from a template the session provisions once.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import make_url

RELAY_ROLE = "adhoc"
RELAY_PASSWORD = "pg-Relay-pass-7319"  # scram-checked: the relay must send it, and never show it
ADMIN_ROLE = "postgres"


def binaries() -> Path | None:
    """The newest installed PostgreSQL's bin folder (Debian: /usr/lib/postgresql/<ver>/bin)."""
    found = [Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin")
             if (Path(p) / "initdb").exists() and (Path(p) / "pg_ctl").exists()]
    if not found:
        return None
    return max(found, key=lambda p: [int(n) for n in re.findall(r"\d+", p.parent.name)] or [0])


@dataclass
class PostgresCluster:
    bin_dir: Path
    base: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="adhoc-pg-")))
    # Tests skip fsync (they exercise the relay, not the disk); a benchmark keeps PostgreSQL's
    # defaults, as a server would run.
    durable: bool = False
    pid: int = 0
    _databases: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def log(self) -> Path:
        return self.base / "server.log"

    @property
    def socket_dir(self) -> str:
        return str(self.base)

    def _as_owner(self, *command: str) -> list[str]:
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            return ["runuser", "-u", "postgres", "--", *command]
        return list(command)

    def start(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.base, "postgres", "postgres")
        self.base.chmod(0o700)
        subprocess.run(self._as_owner(
            str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", ADMIN_ROLE,
            "--auth-local=trust", "--auth-host=reject", "-E", "UTF8", "--locale=C", "--no-sync"),
            check=True, capture_output=True, timeout=120)
        # The relay's role must present its password; the tests' superuser is trusted.
        (self.data / "pg_hba.conf").write_text(
            f"local all {RELAY_ROLE} scram-sha-256\nlocal all all trust\n")
        self._start_server()
        self.admin(f"CREATE ROLE {RELAY_ROLE} LOGIN CREATEDB PASSWORD '{RELAY_PASSWORD}'")

    def _start_server(self) -> None:
        subprocess.run(self._as_owner(
            str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w",
            "-t", "60", "start", "-o",
            f"-c listen_addresses='' -k {self.socket_dir} -c max_connections=300"
            + ("" if self.durable else " -c fsync=off")),
            check=True, capture_output=True, timeout=90)
        self.pid = int((self.data / "postmaster.pid").read_text().split()[0])

    def restart(self) -> None:
        """Restart the server (every client connection is cut) and wait until it accepts."""
        subprocess.run(self._as_owner(
            str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w",
            "-t", "60", "restart", "-m", "fast"), check=True, capture_output=True, timeout=90)
        self.pid = int((self.data / "postmaster.pid").read_text().split()[0])

    @contextlib.contextmanager
    def down(self) -> Iterator[None]:
        """The server stopped (its clients cut off, its socket gone) until the block ends."""
        subprocess.run(self._as_owner(
            str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-w", "-m", "fast", "stop"),
            check=True, capture_output=True, timeout=90)
        try:
            yield
        finally:
            self._start_server()

    def stop(self) -> None:
        """Fast shutdown by the postmaster's PID (SIGINT), then remove the folder."""
        if self.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGINT)
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    os.kill(self.pid, 0)
                    time.sleep(0.05)
                os.kill(self.pid, signal.SIGKILL)
            self.pid = 0
        shutil.rmtree(self.base, ignore_errors=True)

    def url(self, database: str, *, password: bool = True) -> str:
        secret = f":{RELAY_PASSWORD}" if password else ""
        return f"postgresql://{RELAY_ROLE}{secret}@/{database}?host={self.socket_dir}"

    def admin(self, sql: str, database: str = "postgres") -> None:
        """Run one statement as the superuser (CREATE DATABASE cannot run in a transaction)."""
        run_async(self._admin(sql, database))

    async def _admin(self, sql: str, database: str) -> None:
        conn = await asyncpg.connect(host=self.socket_dir, user=ADMIN_ROLE, database=database)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    def new_database(self, template: str | None = None) -> str:
        """A new, empty (or template-cloned) database owned by the relay's role."""
        with self._lock:
            self._databases += 1
            name = f"adhoc_{os.getpid()}_{self._databases}"
        clone = f" TEMPLATE {template}" if template else ""
        self.admin(f"CREATE DATABASE {name} OWNER {RELAY_ROLE}{clone}")
        return name



def rows(url: str, sql: str, params: tuple = ()) -> list[tuple]:
    """Run `sql` on the database a test cluster's URL names, as an operator would (the
    superuser); `?` placeholders, as with sqlite3."""
    parsed = make_url(url)
    numbered = iter(range(1, sql.count("?") + 1))
    sql = re.sub(r"\?", lambda _m: f"${next(numbered)}", sql)

    async def fetch() -> list[tuple]:
        conn = await asyncpg.connect(host=parsed.query["host"], user=ADMIN_ROLE,
                                     database=parsed.database)
        try:
            return [tuple(r) for r in await conn.fetch(sql, *params)]
        finally:
            await conn.close()
    return run_async(fetch())


def run_async(coro) -> Any:
    """Run a coroutine to completion from sync code, even inside a running event loop (the
    async tests call the sync look-ups): on a thread of its own."""
    result: list[Any] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(coro))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(120)
    if errors:
        raise errors[0]
    return result[0] if result else None


@contextlib.contextmanager
def postgres_cluster(*, durable: bool = False) -> Iterator[PostgresCluster | None]:
    """A running throwaway cluster, or None when PostgreSQL is not installed."""
    bin_dir = binaries()
    if bin_dir is None:
        yield None
        return
    cluster = PostgresCluster(bin_dir, durable=durable)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def server_log(url: str) -> bytes:
    """The log of the test cluster a URL points into (its socket folder holds the log)."""
    return (Path(make_url(url).query["host"]) / "server.log").read_bytes()
