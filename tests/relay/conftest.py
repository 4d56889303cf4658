"""Relay fixtures: a provisioned data dir copied from a template, relay processes with chosen
flags, and an agent that speaks the relay's HTTP and SSH protocol the way hostagent does.

Provisioning through the CLI costs a few seconds (argon2, process start-up), so it is done once
per test run and each test gets its own copy of the data dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import asyncssh
import httpx
import pytest

from common.transport import pinned
from tests.support import Api, RelayProcess, provision_store, relays

# Companies in the template: (name, plan, seats, technicians; the first one is an admin).
COMPANIES = (
    ("Acme", "plus", 3, ("alice", "bob")),
    ("Beta", "premier", 3, ("carol",)),
    ("Basic", "base", 2, ("ben",)),
    ("Trial Co", "trial", 2, ("tina",)),
)
HOST_KEY = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()


@pytest.fixture(scope="session")
def template_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "relay"
    asyncio.run(provision_store(path, list(COMPANIES)))
    return path


@pytest.fixture
def data_dir(template_dir: Path, tmp_path: Path) -> Path:
    path = tmp_path / "relay"
    shutil.copytree(template_dir, path)
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
    """Read the relay's database the way an operator would, with the sqlite3 module."""
    with contextlib.closing(sqlite3.connect(data_dir / "relay.db", timeout=10)) as db:
        return db.execute(sql, params).fetchall()


def db_write(data_dir: Path, sql: str, params: tuple = ()) -> None:
    """Change the relay's database behind its back, as an operator's SQL would."""
    with contextlib.closing(sqlite3.connect(data_dir / "relay.db", timeout=10)) as db, db:
        db.execute(sql, params)


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
