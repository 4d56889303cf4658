"""Relay fixtures: a provisioned data dir copied from a template, relay processes with chosen
flags, and an agent that speaks the relay's HTTP and SSH protocol the way hostagent does.

Provisioning through the CLI costs a few seconds (argon2, process start-up), so it is done once
per test run and each test gets its own copy of the data dir. Every test that uses the data dir
runs twice, once per database engine: on the data dir's SQLite file, and on a PostgreSQL
database of its own (cloned from a provisioned template) that the relay and the CLI find in
ADHOC_DATABASE, as an operator would set it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import asyncssh
import httpx
import pytest

from common.transport import pinned
from tests import postgres as pg
from tests.support import Api, RelayProcess, provision_store, relays

# Companies in the template: (name, plan, seats, technicians; the first one is an admin).
COMPANIES = (
    ("Acme", "plus", 3, ("alice", "bob")),
    ("Beta", "premier", 3, ("carol",)),
    ("Basic", "base", 2, ("ben",)),
    ("Trial Co", "trial", 2, ("tina",)),
)
HOST_KEY = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()


ENGINES = ("sqlite", "postgresql")
NO_POSTGRES = ("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): "
               "apt-get install postgresql to run these tests on it")


@pytest.fixture(scope="session")
def template_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "relay"
    asyncio.run(provision_store(path, list(COMPANIES)))
    return path


@pytest.fixture(scope="session")
def postgres_template(postgres: pg.PostgresCluster | None,
                      tmp_path_factory: pytest.TempPathFactory) -> str:
    """A PostgreSQL database provisioned like template_dir, for cloning."""
    if postgres is None:
        pytest.skip(NO_POSTGRES)
    name = postgres.new_database()
    asyncio.run(provision_store(tmp_path_factory.mktemp("pg-template"), list(COMPANIES),
                                database=postgres.url(name)))
    return name


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests of what the store decides (limits, codes, expiry, revocation, the CLI, the
    database itself) run on both engines: their modules say `ON_BOTH_ENGINES = True`. The
    rest, whose SQL is the same store calls, run on SQLite only, to keep the suite short;
    ADHOC_TEST_ENGINES=all runs every one of them on PostgreSQL too."""
    if "engine" not in metafunc.fixturenames:
        return
    both = (getattr(metafunc.module, "ON_BOTH_ENGINES", False)
            or os.environ.get("ADHOC_TEST_ENGINES") == "all")
    metafunc.parametrize("engine", ENGINES if both else ENGINES[:1], indirect=True)


@pytest.fixture
def engine(request: pytest.FixtureRequest) -> str:
    """The database engine this run of the test uses."""
    return request.param


def _postgres_database(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
                       template: str | None) -> str:
    """A new database on the test cluster (a clone of `template`), put in ADHOC_DATABASE."""
    cluster = request.getfixturevalue("postgres")
    if cluster is None:
        pytest.skip(NO_POSTGRES)
    url = cluster.url(cluster.new_database(template))
    monkeypatch.setenv("ADHOC_DATABASE", url)
    return url


@pytest.fixture
def database(engine: str, request: pytest.FixtureRequest,
             monkeypatch: pytest.MonkeyPatch) -> str | None:
    """An empty PostgreSQL database in ADHOC_DATABASE, or None on SQLite (the data dir's file)."""
    monkeypatch.delenv("ADHOC_DATABASE", raising=False)
    if engine == "sqlite":
        return None
    return _postgres_database(request, monkeypatch, None)


@pytest.fixture
def data_dir(engine: str, template_dir: Path, tmp_path: Path, request: pytest.FixtureRequest,
             monkeypatch: pytest.MonkeyPatch) -> Path:
    """A provisioned data dir; on PostgreSQL its keys, with the rows in ADHOC_DATABASE."""
    path = tmp_path / "relay"
    shutil.copytree(template_dir, path)
    monkeypatch.delenv("ADHOC_DATABASE", raising=False)
    if engine == "postgresql":
        _postgres_database(request, monkeypatch, request.getfixturevalue("postgres_template"))
        (path / "relay.db").unlink()
    return path


@pytest.fixture
def start_relay(data_dir: Path) -> Iterator[Callable[..., RelayProcess]]:
    """start_relay(*serve_flags) -> a running relay on the test's data dir; all stopped after."""
    with relays(lambda _n: data_dir) as start:
        yield start


@pytest.fixture
def relay(start_relay) -> RelayProcess:
    return start_relay()


def db_rows(data_dir: Path, sql: str, params: tuple = ()) -> list[tuple]:
    """Query the database of the relay in `data_dir` the way an operator would: its SQLite
    file with the sqlite3 module, or the PostgreSQL database in ADHOC_DATABASE as its
    superuser. `?` placeholders on both. SQL the database refuses raises."""
    url = os.environ.get("ADHOC_DATABASE")
    if url:
        return pg.rows(url, sql, params)
    with contextlib.closing(sqlite3.connect(data_dir / "relay.db", timeout=10)) as db:
        rows = db.execute(sql, params).fetchall()
        db.commit()
        return rows


def stored(data_dir: Path) -> dict[str, bytes]:
    """Everything the relay has written down: the data dir's files and, on PostgreSQL, every
    table's rows and the server's log (what an attacker with a backup or the logs could read)."""
    found = {str(p.relative_to(data_dir)): p.read_bytes()
             for p in data_dir.rglob("*") if p.is_file()}
    url = os.environ.get("ADHOC_DATABASE")
    if url:
        for (table,) in db_rows(data_dir, "SELECT tablename FROM pg_tables "
                                          "WHERE schemaname = 'public'"):
            found[f"table {table}"] = str(db_rows(data_dir, f"SELECT * FROM {table}")).encode()
        found["postgresql server log"] = pg.server_log(url)
    return found


def db_write(data_dir: Path, sql: str, params: tuple = ()) -> None:
    """Change the relay's database behind its back, as an operator's SQL would (either engine)."""
    db_rows(data_dir, sql, params)


def join_token(session: dict) -> str:
    return session["join_url"].rsplit("/", 1)[1]


async def activate(base_url: str, session: dict, code: str | None = None, *,
                   machine_id: str | None = None, hostname: str = "customer-pc") -> httpx.Response:
    """What `adhoc-host join` sends once the customer typed the code."""
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        return await client.post(
            f"/api/v1/join/{join_token(session)}/activate",
            json={"code": session["security_code"] if code is None else code,
                  "host_key": HOST_KEY, "hostname": hostname, "os": "Linux", "user": "root",
                  **({"machine_id": machine_id} if machine_id else {})})


class AgentClient(asyncssh.SSHClient):
    """Remembers why the relay closed the connection (it says so when a session ends)."""

    def __init__(self) -> None:
        self.lost_because: Exception | None = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost_because = exc


@contextlib.asynccontextmanager
async def agent_connection(relay: RelayProcess, activation: dict,
                           register: bool = True) -> AsyncIterator[asyncssh.SSHClientConnection]:
    """The agent's outer SSH connection, with its virtual forward registered (so it is online).
    `conn.agent.lost_because` holds the relay's reason once it disconnects the agent."""
    conn, client = await asyncssh.create_connection(
        AgentClient, relay.ssh_host, relay.ssh_port, username=activation["session_id"],
        password=activation["agent_secret"], known_hosts=pinned(activation["relay_host_key"]),
        client_keys=None, agent_path=None, config=None)
    conn.agent = client
    try:
        if register:
            await conn.create_server(lambda *a: False, activation["session_id"], 22)
        yield conn
    finally:
        conn.close()
        with contextlib.suppress(Exception):
            await conn.wait_closed()


async def wait_for_audit(api: Api, session_id: str, event: str, timeout: float = 20) -> None:
    """Until the session's audit shows `event`: presence (online, offline) is written in
    batches behind the scenes, so a test that orders its next step after it waits here."""
    async with asyncio.timeout(timeout):
        while event not in {a["event"] for a in (await api.client.get(
                f"/api/v1/sessions/{session_id}/audit")).json()["audit"]}:
            await asyncio.sleep(0.05)


async def wait_closed(conn: asyncssh.SSHClientConnection, timeout: float = 20) -> None:
    await asyncio.wait_for(conn.wait_closed(), timeout)


async def create(api: Api, email: str = "customer@example.com",
                 password: str = "Horse-battery-9") -> httpx.Response:
    return await api.client.post("/api/v1/sessions",
                                 json={"customer_email": email, "password": password})


class EventStream:
    """A console's view of GET /api/v1/events: the parsed events, read as they come."""

    def __init__(self, api: Api, last_event_id: int | None = None) -> None:
        self.api = api
        self.headers = {} if last_event_id is None else {"Last-Event-ID": str(last_event_id)}
        self.events: list[dict] = []
        self._stack = contextlib.AsyncExitStack()
        self._lines = None

    async def __aenter__(self) -> EventStream:
        response = await self._stack.enter_async_context(
            self.api.client.stream("GET", "/api/v1/events", headers=self.headers,
                                   timeout=httpx.Timeout(30, read=60)))
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        self._lines = response.aiter_lines()
        return self

    async def __aexit__(self, *exc) -> None:
        await self._stack.aclose()

    async def next(self) -> dict:
        event: dict = {}
        async for line in self._lines:
            if not line:
                if "data" in event:
                    self.events.append(event)
                    return event
                event = {}
                continue
            name, _, value = line.partition(":")
            if name == "id":
                event["id"] = int(value.strip())
            elif name == "event":
                event["event"] = value.strip()
            elif name == "data":
                event["data"] = json.loads(value.strip())
        raise AssertionError("the event stream ended")

    async def until(self, predicate, timeout: float = 20) -> dict:
        async with asyncio.timeout(timeout):
            while True:
                event = await self.next()
                if predicate(event):
                    return event
