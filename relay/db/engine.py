"""Which database the relay uses and how it connects: URLs, engines and the errors worth a retry.

SQLite (aiosqlite) is the embedded default, one file in the data dir; PostgreSQL (asyncpg) takes
several relays on one database. Each engine gets the settings its guarantees rest on:
SQLite runs in WAL mode with synchronous=FULL, a busy timeout and foreign keys on, and every
write transaction starts with `BEGIN IMMEDIATE` (SQLAlchemy's documented recipe for pysqlite:
the driver's own BEGIN is turned off and ours is emitted); PostgreSQL runs at READ COMMITTED
with explicit row and advisory locks where the store needs them. A URL's password is never
shown: messages use `describe()`.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import URL, event, exc, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

T = TypeVar("T")

SQLITE = "sqlite"
POSTGRESQL = "postgresql"
_DRIVERS = {SQLITE: "sqlite+aiosqlite", POSTGRESQL: "postgresql+asyncpg"}
_ACCEPTED = {
    "sqlite": SQLITE, "sqlite+aiosqlite": SQLITE,
    "postgresql": POSTGRESQL, "postgresql+asyncpg": POSTGRESQL, "postgres": POSTGRESQL,
}
# What a PostgreSQL URL's query may say (asyncpg's names, and libpq's sslmode).
_POSTGRESQL_OPTIONS = {"host", "port", "ssl", "sslmode", "passfile", "target_session_attrs",
                       "prepared_statement_cache_size"}
URL_HELP = ("use postgresql://USER:PASSWORD@HOST:PORT/DATABASE (or postgresql+asyncpg://...) "
            "or sqlite:////absolute/path/relay.db")

# How long one SQLite statement waits for another process's write lock before it raises
# "database is locked" (which the store then retries).
SQLITE_BUSY_TIMEOUT_MS = 5000
# Waits between attempts of a transaction the database refused as busy (on top of SQLite's own
# busy timeout per attempt): about a minute in all before the error is let through.
RETRY_DELAYS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 1.0, 2.0, 2.0)
# The execution option that marks a connection's transaction as a write (BEGIN IMMEDIATE).
WRITE = "adhoc_write"
# PostgreSQL errors after which the whole transaction may simply run again.
_RETRY_SQLSTATES = {
    "40001",  # serialization_failure (a database whose default isolation is SERIALIZABLE)
    "40P01",  # deadlock_detected
    "55P03",  # lock_not_available
}


class DatabaseUnavailable(Exception):
    """The database cannot be opened or used; the message says which and what to do."""


def parse_database_url(text: str) -> URL:
    """A SQLite or PostgreSQL URL from what an operator typed, with its async driver."""
    try:
        url = make_url(text.strip())
    except (exc.ArgumentError, ValueError):
        raise ValueError(f"cannot read the database URL: {URL_HELP}") from None
    backend = _ACCEPTED.get(url.drivername)
    if backend is None:
        raise ValueError(f"the database {url.drivername!r} is not supported: {URL_HELP}")
    url = url.set(drivername=_DRIVERS[backend])
    if backend == SQLITE:
        if not url.database or url.database == ":memory:":
            raise ValueError(f"a SQLite database needs a file: {URL_HELP}")
        return url.set(database=str(Path(url.database).expanduser().resolve()))
    if not url.database:
        raise ValueError(f"the PostgreSQL URL names no database: {URL_HELP}")
    unknown = sorted(set(url.query) - _POSTGRESQL_OPTIONS)
    if unknown:
        raise ValueError(f"the database URL's option {', '.join(unknown)} is not one the relay "
                         f"passes on: use {', '.join(sorted(_POSTGRESQL_OPTIONS))}")
    if "sslmode" in url.query:  # libpq's name for what asyncpg calls ssl
        query = dict(url.query)
        query.setdefault("ssl", query.pop("sslmode"))
        url = url.set(query=query)
    return url


def sqlite_url(path: Path) -> URL:
    return URL.create(_DRIVERS[SQLITE], database=str(path))


def backend(url: URL) -> str:
    return url.get_backend_name()


def describe(url: URL) -> str:
    """The URL for messages and logs: the password, if any, as ***."""
    return url.render_as_string(hide_password=True)


def sqlite_path(url: URL) -> Path:
    return Path(url.database or "")


def create_engine(url: URL) -> AsyncEngine:
    if backend(url) == SQLITE:
        return _sqlite_engine(url)
    # READ COMMITTED whatever the database's default: the store's locks are made for it (each
    # statement after a lock wait sees what the lock holder committed). A pooled connection is
    # pinged before use, so a restarted server costs a reconnect, not a failed request.
    return create_async_engine(
        url, isolation_level="READ COMMITTED", pool_size=10, max_overflow=10,
        pool_pre_ping=True,
        connect_args={"timeout": 15, "server_settings": {"application_name": "adhoc-relay"}})


def prepare_sqlite_file(path: Path) -> None:
    """Create the file readable by its owner only before SQLite opens it, so its -wal and -shm
    files (which SQLite creates with the database's permissions) are private from the start."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)


def _sqlite_engine(url: URL) -> AsyncEngine:
    # A few connections: WAL lets reads run beside the one writer (the store keeps one write
    # transaction at a time in this process; other processes wait on SQLite's lock).
    # No rollback when a connection goes back to the pool: a read never began a transaction
    # (see `begin`), a write always ended its own, and each call to the driver is a hop to its
    # thread (a fifth of a read's time).
    engine = create_async_engine(url, pool_size=4, max_overflow=4, pool_reset_on_return=None,
                                 connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine.sync_engine, "connect")
    def configure(dbapi_connection: Any, _record: Any) -> None:
        # No BEGIN from the driver: `begin` below emits the right one, or none for a read.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            for pragma in (f"busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}", "journal_mode = WAL",
                           "synchronous = FULL", "foreign_keys = ON"):
                cursor.execute(f"PRAGMA {pragma}")
        finally:
            cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def begin(conn: Any) -> None:
        # A write takes the database's write lock at once, so what it reads stays true until
        # it commits (the limit checks rely on it). A read runs each statement on its own.
        if conn.get_execution_options().get(WRITE):
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


async def writable(conn: AsyncConnection) -> AsyncConnection:
    """Mark a connection so that its next transaction is a write transaction."""
    return await conn.execution_options(**{WRITE: True})


async def retrying(attempt: Callable[[], Awaitable[T]]) -> T:
    """Run `attempt` (one whole transaction), again from the start while the database is busy;
    a busy database is waited for, never reported."""
    for delay in (*RETRY_DELAYS, None):
        try:
            return await attempt()
        except exc.DBAPIError as error:
            if delay is None or not is_retryable(error):
                raise
        await asyncio.sleep(delay)
    raise AssertionError("unreachable")


def is_unavailable(error: BaseException) -> bool:
    """Whether the database could not be reached or used at all (down, restarting, its disk
    full, busy for longer than the retries wait), rather than refusing a statement."""
    if isinstance(error, OSError):
        return True
    return isinstance(error, exc.DBAPIError) and (
        error.connection_invalidated
        or isinstance(error, (exc.OperationalError, exc.InterfaceError)))


def is_retryable(error: BaseException) -> bool:
    """Whether running the whole transaction again may succeed: SQLite's "database is locked"
    (another process held the write lock past the busy timeout), PostgreSQL's serialisation
    failures and deadlocks."""
    if not isinstance(error, exc.DBAPIError) or error.connection_invalidated:
        return False
    sqlstate = getattr(error.orig, "sqlstate", None)
    if sqlstate is not None:
        return sqlstate in _RETRY_SQLSTATES
    if isinstance(error, exc.OperationalError):
        text = str(error.orig).lower()
        return "locked" in text or "busy" in text
    return False
