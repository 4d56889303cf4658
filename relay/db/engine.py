"""How the relay talks to its database: one way to run a read or a write transaction on either
engine, with the settings its guarantees rest on, and which errors are worth a retry.

Every store operation is a plain function over a SQLAlchemy `Connection`, run whole by
`Database.read` or `Database.write`:

- SQLite: the standard library's sqlite3 on two threads of the store's own, one for writes and
  one for reads, so an operation costs one hop to its thread (an async driver hops once per
  call: a create's transaction made seventeen, three times the CPU of this). WAL,
  synchronous=FULL, a busy timeout and foreign keys on; every write transaction starts with
  `BEGIN IMMEDIATE` (SQLAlchemy's documented recipe for pysqlite: the driver's own BEGIN is
  turned off and ours is emitted), so what it read stays true until it commits. WAL lets the
  read thread run beside the writer, and other processes on the same file wait on SQLite's lock.
- PostgreSQL: asyncpg, the operation run in SQLAlchemy's greenlet bridge on the event loop, at
  READ COMMITTED whatever the database's default (the store's row and advisory locks are made
  for it), reads without a transaction; an operation that meets a connection the server cut
  runs once more on a new one.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import URL, Connection, create_engine, event, exc

from relay.db.url import POSTGRESQL, SQLITE, backend, sqlite_path

T = TypeVar("T")

# How long one SQLite statement waits for another process's write lock before it raises
# "database is locked" (which is then retried).
SQLITE_BUSY_TIMEOUT_MS = 5000
# Waits between attempts of a transaction the database refused as busy (on top of SQLite's own
# busy timeout per attempt): about a minute in all before the error is let through.
RETRY_DELAYS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 1.0, 2.0, 2.0)
# The execution option that marks a SQLite connection's transaction as a write.
WRITE = "adhoc_write"
# PostgreSQL errors after which the whole transaction may simply run again.
_RETRY_SQLSTATES = {
    "40001",  # serialization_failure
    "40P01",  # deadlock_detected
    "55P03",  # lock_not_available
}


class DatabaseUnavailable(Exception):
    """The database cannot be opened or used; the message says which and what to do."""


class Database:
    """Runs store operations on one database (see the module's docstring)."""

    backend: str

    async def read(self, operation: Callable[[Connection], T]) -> T:
        """Run `operation` on a connection, outside any write transaction."""
        raise NotImplementedError

    async def write(self, operation: Callable[[Connection], T]) -> T:
        """Run `operation` in one write transaction, committed when it returns (one attempt:
        see `retrying`)."""
        raise NotImplementedError

    async def dispose(self) -> None:
        raise NotImplementedError

    async def listen(self, channel: str,
                     wake: Callable[[], None]) -> Callable[[], Awaitable[None]] | None:
        """Call `wake` whenever a transaction that NOTIFYs `channel` commits; returns how to
        stop, or None where the engine has no notifications."""
        return None


def open_database(url: URL) -> Database:
    if backend(url) == SQLITE:
        return SQLiteDatabase(url)
    return PostgreSQLDatabase(url)


class SQLiteDatabase(Database):
    backend = SQLITE

    def __init__(self, url: URL) -> None:
        prepare_sqlite_file(sqlite_path(url))
        # Two connections, one per thread (a connection may pass between the threads through
        # the pool, never be used by both at once). No rollback when one goes back: a read
        # never began a transaction and a write always ended its own.
        self.engine = create_engine(
            url, pool_size=2, max_overflow=0, pool_reset_on_return=None,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False})
        event.listen(self.engine, "connect", _configure_sqlite)
        event.listen(self.engine, "begin", _begin_sqlite)
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="adhoc-db-write")
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="adhoc-db-read")
        self._disposed = False

    async def read(self, operation: Callable[[Connection], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(
            self._reader, self._run, operation, False)

    async def write(self, operation: Callable[[Connection], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(
            self._writer, self._run, operation, True)

    def _run(self, operation: Callable[[Connection], T], write: bool) -> T:
        with self.engine.connect() as conn:
            if not write:
                return operation(conn)
            conn.execution_options(**{WRITE: True})
            with conn.begin():
                return operation(conn)

    async def dispose(self) -> None:
        """Close every connection and the threads; a second call does nothing."""
        if self._disposed:
            return
        self._disposed = True
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._writer, self.engine.dispose)
        for executor in (self._writer, self._reader):
            executor.shutdown(wait=True)


def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    # No BEGIN from the driver: `_begin_sqlite` emits the right one, or none for a read.
    dbapi_connection.isolation_level = None
    for pragma in (f"busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}", "journal_mode = WAL",
                   "synchronous = FULL", "foreign_keys = ON"):
        dbapi_connection.execute(f"PRAGMA {pragma}")


def _begin_sqlite(conn: Connection) -> None:
    # A write takes the database's write lock at once, so what it reads stays true until it
    # commits (the limit checks rely on it). A read runs each statement on its own.
    if conn.get_execution_options().get(WRITE):
        conn.exec_driver_sql("BEGIN IMMEDIATE")


class PostgreSQLDatabase(Database):
    backend = POSTGRESQL

    def __init__(self, url: URL) -> None:
        # Imported here: a relay on SQLite never loads it (7 MiB of every process's memory).
        from sqlalchemy.ext.asyncio import create_async_engine

        self.engine = create_async_engine(
            url, isolation_level="READ COMMITTED", pool_size=10, max_overflow=10,
            connect_args={"timeout": 15,
                          "server_settings": {"application_name": "adhoc-relay"}})
        # Reads need no transaction: one round trip each instead of BEGIN/SELECT/ROLLBACK.
        self._autocommit = self.engine.execution_options(isolation_level="AUTOCOMMIT")

    # A pooled connection the server has cut (a restart, a failover) fails its first
    # statement; SQLAlchemy then drops every connection pooled before, and the operation runs
    # once more on a new one. That costs nothing until it happens, where a ping before every
    # use cost a round trip each. Not retried: a commit whose answer was lost (it may have
    # been applied).

    async def read(self, operation: Callable[[Connection], T]) -> T:
        async def attempt() -> T:
            async with self._autocommit.connect() as conn:
                return await conn.run_sync(operation)
        return await _on_a_live_connection(attempt)

    async def write(self, operation: Callable[[Connection], T]) -> T:
        async def attempt() -> T:
            async with self.engine.connect() as conn:
                return await conn.run_sync(_in_transaction, operation)
        try:
            return await _on_a_live_connection(attempt)
        except _CommitLost as lost:
            raise lost.error from None

    async def dispose(self) -> None:
        await self.engine.dispose()

    async def listen(self, channel: str,
                     wake: Callable[[], None]) -> Callable[[], Awaitable[None]] | None:
        # A connection of its own, held while listening. If the server cuts it, notifications
        # stop and the caller's polling (which it keeps, slower) carries on.
        conn = await self.engine.connect()
        try:
            driver = (await conn.get_raw_connection()).driver_connection

            def notified(*_args) -> None:
                wake()

            await driver.add_listener(channel, notified)
        except BaseException:
            await conn.close()
            raise

        async def stop() -> None:
            try:
                await driver.remove_listener(channel, notified)
            except Exception:  # the connection is already gone: nothing to stop
                pass
            await conn.close()
        return stop


class _CommitLost(Exception):
    """The connection was cut while it committed: the write may or may not have happened."""

    def __init__(self, error: exc.DBAPIError) -> None:
        super().__init__(str(error))
        self.error = error


async def _on_a_live_connection(attempt: Callable[[], Awaitable[T]]) -> T:
    try:
        return await attempt()
    except exc.DBAPIError as error:
        if not error.connection_invalidated:
            raise
    return await attempt()


def _in_transaction(conn: Connection, operation: Callable[[Connection], T]) -> T:
    with conn.begin() as transaction:
        result = operation(conn)
        try:
            transaction.commit()
        except exc.DBAPIError as error:
            if error.connection_invalidated:
                raise _CommitLost(error) from error
            raise
    return result


def prepare_sqlite_file(path: Path) -> None:
    """Create the file readable by its owner only before SQLite opens it, so its -wal and -shm
    files (which SQLite creates with the database's permissions) are private from the start."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)


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
