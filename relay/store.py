"""The relay's database: schema, migrations and every SQL statement (aiosqlite, WAL).

One connection per process, serialised by a lock, with explicit `BEGIN IMMEDIATE` transactions
for every write so that limit checks and inserts are atomic. "database is locked" (another
process, such as an admin command, holding the write lock) is retried, never reported as a
limit. Every state change writes its audit row and its event row in the same transaction.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import aiosqlite

from relay import sessions as rules

MIGRATIONS: list[str] = [
    # 1: the first schema
    """
    CREATE TABLE companies(
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE COLLATE NOCASE,
        plan TEXT NOT NULL CHECK (plan IN ('trial', 'base', 'plus', 'premier')),
        seats INTEGER NOT NULL CHECK (seats >= 0),
        disabled INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL
    );
    CREATE TABLE technicians(
        id INTEGER PRIMARY KEY,
        company_id INTEGER NOT NULL REFERENCES companies(id),
        login TEXT NOT NULL UNIQUE,
        email TEXT NOT NULL,
        password_hash TEXT NOT NULL,
        is_admin INTEGER NOT NULL DEFAULT 0,
        disabled INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL
    );
    CREATE TABLE ssh_keys(
        id INTEGER PRIMARY KEY,
        technician_id INTEGER NOT NULL REFERENCES technicians(id),
        public_key TEXT NOT NULL,
        created_at REAL NOT NULL,
        UNIQUE (technician_id, public_key)
    );
    CREATE TABLE api_tokens(
        token_hash TEXT PRIMARY KEY,
        technician_id INTEGER NOT NULL REFERENCES technicians(id),
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL
    );
    CREATE TABLE sessions(
        id TEXT PRIMARY KEY,
        company_id INTEGER NOT NULL REFERENCES companies(id),
        technician_id INTEGER NOT NULL REFERENCES technicians(id),
        customer_email TEXT NOT NULL,
        note TEXT NOT NULL DEFAULT '',
        password_verifier TEXT NOT NULL,
        join_token_hash TEXT NOT NULL UNIQUE,
        code_hmac TEXT NOT NULL,
        code_attempts INTEGER NOT NULL DEFAULT 0,
        state TEXT NOT NULL CHECK (state IN ('pending', 'active', 'ended')),
        ended_reason TEXT,
        created_at REAL NOT NULL,
        invite_expires_at REAL NOT NULL,
        activated_at REAL,
        expires_at REAL,
        ended_at REAL,
        agent_secret_hash TEXT,
        host_key TEXT,
        hostname TEXT,
        os TEXT,
        os_user TEXT,
        ip TEXT,
        machine_fp TEXT,
        features TEXT NOT NULL DEFAULT '[]',
        mail_status TEXT NOT NULL DEFAULT 'queued',
        mail_detail TEXT
    );
    CREATE UNIQUE INDEX sessions_one_live_per_technician
        ON sessions(technician_id) WHERE state IN ('pending', 'active');
    CREATE UNIQUE INDEX sessions_one_live_per_machine
        ON sessions(machine_fp) WHERE state IN ('pending', 'active') AND machine_fp IS NOT NULL;
    CREATE INDEX sessions_by_company ON sessions(company_id, state);
    CREATE INDEX sessions_by_expiry ON sessions(state, expires_at);
    CREATE TABLE audit(
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        actor TEXT NOT NULL,
        company_id INTEGER,
        session_id TEXT,
        event TEXT NOT NULL,
        outcome TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX audit_by_session ON audit(session_id, id);
    CREATE TRIGGER audit_is_append_only_update BEFORE UPDATE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    CREATE TRIGGER audit_is_append_only_delete BEFORE DELETE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    CREATE TABLE events(
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        company_id INTEGER NOT NULL,
        session_id TEXT,
        kind TEXT NOT NULL,
        data TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX events_by_company ON events(company_id, id);
    """,
    # 2: an SSH public key the creating technician may log in to the host with (issue 15)
    """
    ALTER TABLE sessions ADD COLUMN technician_key TEXT;
    """,
]

_LOCKED_RETRY_DELAYS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 1.0, 2.0, 2.0)


class NotFound(Exception):
    """The row does not exist (or belongs to another company: the caller cannot tell)."""


class Conflict(Exception):
    """A uniqueness rule refused the write (duplicate name, machine already in a session)."""


@dataclass(frozen=True)
class Company:
    id: int
    name: str
    plan: str
    seats: int
    disabled: bool
    created_at: float


@dataclass(frozen=True)
class Technician:
    id: int
    company_id: int
    login: str
    email: str
    password_hash: str
    is_admin: bool
    disabled: bool
    created_at: float


@dataclass(frozen=True)
class SessionRow:
    id: str
    company_id: int
    technician_id: int
    customer_email: str
    note: str
    password_verifier: str
    join_token_hash: str
    code_hmac: str
    code_attempts: int
    state: str
    ended_reason: str | None
    created_at: float
    invite_expires_at: float
    activated_at: float | None
    expires_at: float | None
    ended_at: float | None
    agent_secret_hash: str | None
    host_key: str | None
    hostname: str | None
    os: str | None
    os_user: str | None
    ip: str | None
    machine_fp: str | None
    features: str
    mail_status: str
    mail_detail: str | None
    technician_key: str | None = None  # OpenSSH public key; handed to the agent at activation

    @property
    def is_live(self) -> bool:
        return self.state in rules.LIVE_STATES

    @property
    def feature_list(self) -> list[str]:
        return json.loads(self.features)


@dataclass(frozen=True)
class Presence:
    """An agent's connection to the relay came up (online) or went down."""

    session_id: str
    online: bool
    at: float
    ip: str | None = None


@dataclass(frozen=True)
class AuditRow:
    id: int
    at: float
    actor: str
    company_id: int | None
    session_id: str | None
    event: str
    outcome: str
    detail: str


@dataclass(frozen=True)
class EventRow:
    id: int
    at: float
    company_id: int
    session_id: str | None
    kind: str
    data: str


def _columns(cls: type) -> str:
    return ", ".join(f.name for f in fields(cls))


def _row(cls: type, row: Iterable[Any] | None):
    if row is None:
        return None
    return cls(*row)


def _is_locked(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


class Tx:
    """The statements available inside one write transaction."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self.db = db
        self.wrote_events = False

    async def one(self, sql: str, params: Iterable[Any] = ()):
        async with self.db.execute(sql, tuple(params)) as cur:
            return await cur.fetchone()

    async def all(self, sql: str, params: Iterable[Any] = ()):
        async with self.db.execute(sql, tuple(params)) as cur:
            return await cur.fetchall()

    async def run(self, sql: str, params: Iterable[Any] = ()) -> int:
        async with self.db.execute(sql, tuple(params)) as cur:
            return cur.rowcount

    async def audit(
        self, at: float, actor: str, event: str, outcome: str, *,
        company_id: int | None = None, session_id: str | None = None, **detail: Any,
    ) -> None:
        await self.run(
            "INSERT INTO audit(at, actor, company_id, session_id, event, outcome, detail) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (at, actor, company_id, session_id, event, outcome, json.dumps(detail, sort_keys=True)),
        )

    async def event(self, at: float, company_id: int, kind: str, session_id: str | None,
                    **data: Any) -> None:
        await self.run(
            "INSERT INTO events(at, company_id, session_id, kind, data) VALUES (?, ?, ?, ?, ?)",
            (at, company_id, session_id, kind, json.dumps(data, sort_keys=True)),
        )
        self.wrote_events = True


class Store:
    """The relay database. Open with `await Store.open(path)`; close with `await store.close()`."""

    def __init__(self, db: aiosqlite.Connection, path: Path) -> None:
        self._db = db
        self.path = path
        self._lock = asyncio.Lock()
        # Active sessions' agent credentials, kept once read (see agent_credential).
        self._credentials: dict[str, tuple[str, float]] = {}
        self._ends = 0  # bumped by every end: a read that raced one must not be kept

    @classmethod
    async def open(cls, path: Path) -> Store:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(str(path), isolation_level=None)
        try:
            await db.execute("PRAGMA busy_timeout = 5000")
            await db.execute("PRAGMA journal_mode = WAL")
            await db.execute("PRAGMA synchronous = FULL")
            await db.execute("PRAGMA foreign_keys = ON")
            store = cls(db, path)
            await store._migrate()
        except BaseException:
            await db.close()
            raise
        os.chmod(path, 0o600)
        return store

    async def close(self) -> None:
        await self._db.close()

    async def _migrate(self) -> None:
        async with self.transaction() as tx:
            (version,) = await tx.one("PRAGMA user_version")
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in _split_sql(script):
                    await tx.run(statement)
                await tx.run(f"PRAGMA user_version = {number}")

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        """A `BEGIN IMMEDIATE` write transaction, retried while another process holds the lock."""
        async with self._lock:
            for delay in (*_LOCKED_RETRY_DELAYS, None):
                try:
                    await self._db.execute("BEGIN IMMEDIATE")
                    break
                except sqlite3.OperationalError as exc:
                    if delay is None or not _is_locked(exc):
                        raise
                    await asyncio.sleep(delay)
            tx = Tx(self._db)
            try:
                yield tx
            except BaseException:
                await self._db.execute("ROLLBACK")
                raise
            await self._commit()

    async def _commit(self) -> None:
        for delay in (*_LOCKED_RETRY_DELAYS, None):
            try:
                await self._db.execute("COMMIT")
                return
            except sqlite3.OperationalError as exc:
                if delay is None or not _is_locked(exc):
                    await self._db.execute("ROLLBACK")
                    raise
                await asyncio.sleep(delay)

    async def _one(self, sql: str, params: Iterable[Any] = ()):
        async with self._lock, self._db.execute(sql, tuple(params)) as cur:
            return await cur.fetchone()

    async def _all(self, sql: str, params: Iterable[Any] = ()):
        async with self._lock, self._db.execute(sql, tuple(params)) as cur:
            return await cur.fetchall()

    async def integrity_check(self) -> str:
        (result,) = await self._one("PRAGMA integrity_check")
        return result

    async def schema_version(self) -> int:
        (version,) = await self._one("PRAGMA user_version")
        return version

    # --- companies -------------------------------------------------------------------------

    async def add_company(self, name: str, plan: str, seats: int, now: float) -> Company:
        async with self.transaction() as tx:
            try:
                await tx.run(
                    "INSERT INTO companies(name, plan, seats, created_at) VALUES (?, ?, ?, ?)",
                    (name, plan, seats, now),
                )
            except sqlite3.IntegrityError:
                raise Conflict(f"a company named {name!r} already exists") from None
            row = await tx.one(f"SELECT {_columns(Company)} FROM companies WHERE name = ?", (name,))
            await tx.audit(now, "admin", "company_added", "ok", company_id=row[0], plan=plan,
                           seats=seats)
        return Company(*row)

    async def company_by_name(self, name: str) -> Company:
        row = await self._one(f"SELECT {_columns(Company)} FROM companies WHERE name = ?", (name,))
        if row is None:
            raise NotFound(f"no company named {name!r}")
        return Company(*row)

    async def company(self, company_id: int) -> Company:
        row = await self._one(f"SELECT {_columns(Company)} FROM companies WHERE id = ?",
                              (company_id,))
        if row is None:
            raise NotFound(f"no company with id {company_id}")
        return Company(*row)

    async def companies(self) -> list[Company]:
        return [Company(*r) for r in await self._all(
            f"SELECT {_columns(Company)} FROM companies ORDER BY name")]

    async def update_company(self, company_id: int, now: float, actor: str, **changes: Any) -> None:
        allowed = {"plan", "seats", "disabled"}
        assert changes and set(changes) <= allowed, changes
        assignments = ", ".join(f"{k} = ?" for k in changes)
        async with self.transaction() as tx:
            count = await tx.run(f"UPDATE companies SET {assignments} WHERE id = ?",
                                 (*changes.values(), company_id))
            if not count:
                raise NotFound(f"no company with id {company_id}")
            if changes.get("disabled"):
                await tx.run("DELETE FROM api_tokens WHERE technician_id IN "
                             "(SELECT id FROM technicians WHERE company_id = ?)", (company_id,))
            await tx.audit(now, actor, "company_changed", "ok", company_id=company_id, **changes)

    # --- technicians -----------------------------------------------------------------------

    async def add_technician(
        self, company_id: int, login: str, email: str, password_hash: str, is_admin: bool,
        now: float, actor: str = "admin",
    ) -> Technician:
        async with self.transaction() as tx:
            try:
                await tx.run(
                    "INSERT INTO technicians(company_id, login, email, password_hash, is_admin, "
                    "created_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (company_id, login, email, password_hash, int(is_admin), now),
                )
            except sqlite3.IntegrityError:
                raise Conflict(f"a technician with login {login!r} already exists") from None
            row = await tx.one(f"SELECT {_columns(Technician)} FROM technicians WHERE login = ?",
                               (login,))
            await tx.audit(now, actor, "technician_added", "ok", company_id=company_id,
                           login=login, admin=is_admin)
        return Technician(*row)

    async def technician_by_login(self, login: str) -> Technician:
        row = await self._one(f"SELECT {_columns(Technician)} FROM technicians WHERE login = ?",
                              (login,))
        if row is None:
            raise NotFound(f"no technician with login {login!r}")
        return Technician(*row)

    async def technician(self, technician_id: int) -> Technician:
        row = await self._one(f"SELECT {_columns(Technician)} FROM technicians WHERE id = ?",
                              (technician_id,))
        if row is None:
            raise NotFound(f"no technician with id {technician_id}")
        return Technician(*row)

    async def technicians(self, company_id: int | None = None) -> list[Technician]:
        if company_id is None:
            rows = await self._all(f"SELECT {_columns(Technician)} FROM technicians ORDER BY login")
        else:
            rows = await self._all(
                f"SELECT {_columns(Technician)} FROM technicians WHERE company_id = ? "
                "ORDER BY login", (company_id,))
        return [Technician(*r) for r in rows]

    async def update_technician(self, technician_id: int, now: float, actor: str,
                                **changes: Any) -> None:
        allowed = {"password_hash", "disabled", "is_admin", "email"}
        assert changes and set(changes) <= allowed, changes
        assignments = ", ".join(f"{k} = ?" for k in changes)
        async with self.transaction() as tx:
            count = await tx.run(f"UPDATE technicians SET {assignments} WHERE id = ?",
                                 (*changes.values(), technician_id))
            if not count:
                raise NotFound(f"no technician with id {technician_id}")
            if "password_hash" in changes or changes.get("disabled"):
                await tx.run("DELETE FROM api_tokens WHERE technician_id = ?", (technician_id,))
            shown = {k: v for k, v in changes.items() if k != "password_hash"}
            if "password_hash" in changes:
                shown["password"] = "reset"
            await tx.audit(now, actor, "technician_changed", "ok", technician_id=technician_id,
                           **shown)

    async def add_ssh_key(self, technician_id: int, public_key: str, now: float) -> None:
        async with self.transaction() as tx:
            await tx.run(
                "INSERT OR IGNORE INTO ssh_keys(technician_id, public_key, created_at) "
                "VALUES (?, ?, ?)", (technician_id, public_key, now))

    async def ssh_keys(self, technician_id: int) -> list[str]:
        rows = await self._all("SELECT public_key FROM ssh_keys WHERE technician_id = ? "
                               "ORDER BY id", (technician_id,))
        return [r[0] for r in rows]

    # --- API tokens ------------------------------------------------------------------------

    async def add_token(self, token_hash: str, technician_id: int, now: float,
                        expires_at: float) -> None:
        async with self.transaction() as tx:
            await tx.run("DELETE FROM api_tokens WHERE expires_at <= ?", (now,))
            await tx.run(
                "INSERT INTO api_tokens(token_hash, technician_id, created_at, expires_at) "
                "VALUES (?, ?, ?, ?)", (token_hash, technician_id, now, expires_at))

    async def technician_for_token(self, token_hash: str, now: float) -> Technician | None:
        row = await self._one(
            f"SELECT {', '.join('t.' + f.name for f in fields(Technician))} "
            "FROM api_tokens k JOIN technicians t ON t.id = k.technician_id "
            "JOIN companies c ON c.id = t.company_id "
            "WHERE k.token_hash = ? AND k.expires_at > ? AND t.disabled = 0 AND c.disabled = 0",
            (token_hash, now))
        return _row(Technician, row)

    # --- sessions --------------------------------------------------------------------------

    async def occupancy(self, company_id: int, technician_id: int) -> rules.Occupancy:
        """A snapshot of what counts against the limits (not atomic: create_session decides)."""
        plan, seats = await self._one("SELECT plan, seats FROM companies WHERE id = ?",
                                      (company_id,))
        (for_tech,) = await self._one(
            "SELECT count(*) FROM sessions WHERE technician_id = ? "
            "AND state IN ('pending', 'active')", (technician_id,))
        (for_company,) = await self._one(
            "SELECT count(*) FROM sessions WHERE company_id = ? "
            "AND state IN ('pending', 'active')", (company_id,))
        return rules.Occupancy(plan=plan, seats=seats, live_for_technician=for_tech,
                               live_for_company=for_company)

    async def create_session(self, row: SessionRow) -> SessionRow:
        """Insert a pending session if the plan and limits allow, atomically."""
        async with self.transaction() as tx:
            plan, seats = await tx.one("SELECT plan, seats FROM companies WHERE id = ?",
                                       (row.company_id,))
            (for_tech,) = await tx.one(
                "SELECT count(*) FROM sessions WHERE technician_id = ? "
                "AND state IN ('pending', 'active')", (row.technician_id,))
            (for_company,) = await tx.one(
                "SELECT count(*) FROM sessions WHERE company_id = ? "
                "AND state IN ('pending', 'active')", (row.company_id,))
            occupancy = rules.Occupancy(plan=plan, seats=seats, live_for_technician=for_tech,
                                        live_for_company=for_company)
            actor = f"technician:{row.technician_id}"
            refusal: rules.LimitError | None = None
            try:
                rules.check_can_create(occupancy)
            except rules.LimitError as exc:
                # The refusal is audited (and committed) even though no session is created.
                refusal = exc
                await tx.audit(row.created_at, actor, "session_create", "refused",
                               company_id=row.company_id, reason=exc.code)
            else:
                values = [getattr(row, f.name) for f in fields(SessionRow)]
                await tx.run(
                    f"INSERT INTO sessions({_columns(SessionRow)}) "
                    f"VALUES ({', '.join('?' * len(values))})", values)
                await tx.audit(row.created_at, actor, "session_created", "ok",
                               company_id=row.company_id, session_id=row.id,
                               customer_email=row.customer_email)
                await tx.event(row.created_at, row.company_id, "created", row.id)
        if refusal is not None:
            raise refusal
        return row

    async def session(self, session_id: str) -> SessionRow:
        row = await self._one(f"SELECT {_columns(SessionRow)} FROM sessions WHERE id = ?",
                              (session_id,))
        if row is None:
            raise NotFound("no such session")
        return SessionRow(*row)

    async def agent_credential(self, session_id: str) -> tuple[str, float] | None:
        """(agent secret hash, expires_at) of an active session, or None.

        Every agent login asks, and after a relay restart thousands ask at once: one read
        each on the database thread was a sixth of the relay's CPU in that storm. So a
        credential is kept in memory once read, and dropped as this store ends the session
        (sessions end only through this store, and only the relay process runs one that
        serves agents). Expiry is the caller's to check against its clock."""
        kept = self._credentials.get(session_id)
        if kept is not None:
            return kept
        ends = self._ends
        row = await self._one("SELECT agent_secret_hash, expires_at FROM sessions "
                              "WHERE id = ? AND state = 'active'", (session_id,))
        if row is None or row[0] is None or row[1] is None:
            return None
        if ends == self._ends:
            self._credentials[session_id] = (row[0], row[1])
        return row[0], row[1]

    async def load_agent_credentials(self) -> int:
        """Read every active session's agent credential at once (the relay's start, when all
        its agents are about to reconnect); returns how many."""
        ends = self._ends
        rows = await self._all("SELECT id, agent_secret_hash, expires_at FROM sessions "
                               "WHERE state = 'active' AND agent_secret_hash IS NOT NULL "
                               "AND expires_at IS NOT NULL")
        if ends == self._ends:
            self._credentials.update((row[0], (row[1], row[2])) for row in rows)
        return len(rows)

    async def session_by_join_hash(self, join_token_hash: str) -> SessionRow:
        row = await self._one(
            f"SELECT {_columns(SessionRow)} FROM sessions WHERE join_token_hash = ?",
            (join_token_hash,))
        if row is None:
            raise NotFound("no such link")
        return SessionRow(*row)

    async def sessions_for_company(self, company_id: int, recent_since: float) -> list[SessionRow]:
        rows = await self._all(
            f"SELECT {_columns(SessionRow)} FROM sessions WHERE company_id = ? "
            "AND (state IN ('pending', 'active') OR ended_at >= ?) ORDER BY created_at DESC",
            (company_id, recent_since))
        return [SessionRow(*r) for r in rows]

    async def live_sessions(self) -> list[SessionRow]:
        rows = await self._all(
            f"SELECT {_columns(SessionRow)} FROM sessions WHERE state IN ('pending', 'active')")
        return [SessionRow(*r) for r in rows]

    async def record_wrong_code(self, session_id: str, now: float, source: str) -> SessionRow:
        """Count a wrong code; the fifth burns the link. Returns the updated row."""
        async with self.transaction() as tx:
            await tx.run("UPDATE sessions SET code_attempts = code_attempts + 1 WHERE id = ?",
                         (session_id,))
            row = SessionRow(*await tx.one(
                f"SELECT {_columns(SessionRow)} FROM sessions WHERE id = ?", (session_id,)))
            await tx.audit(now, f"agent@{source}", "code_attempt", "wrong_code",
                           company_id=row.company_id, session_id=session_id,
                           attempts=row.code_attempts)
            if row.code_attempts >= rules.MAX_CODE_ATTEMPTS and row.state == rules.State.PENDING:
                row = await self._end(tx, row, rules.EndReason.CODE_ATTEMPTS, now, "relay")
        return row

    async def record_refused_code(self, session_id: str, now: float, source: str,
                                  reason: str) -> None:
        """Audit an attempt on a link that can no longer be activated."""
        async with self.transaction() as tx:
            row = await tx.one("SELECT company_id FROM sessions WHERE id = ?", (session_id,))
            await tx.audit(now, f"agent@{source}", "code_attempt", "refused",
                           company_id=row[0] if row else None, session_id=session_id,
                           reason=reason)

    async def activate(self, session_id: str, now: float, expires_at: float, *,
                       agent_secret_hash: str, host_key: str, hostname: str, os: str,
                       os_user: str, ip: str, machine_fp: str | None, features: list[str],
                       source: str) -> SessionRow:
        """pending -> active, only if still pending (so two agents racing: exactly one wins)."""
        async with self.transaction() as tx:
            try:
                count = await tx.run(
                    "UPDATE sessions SET state = 'active', activated_at = ?, expires_at = ?, "
                    "agent_secret_hash = ?, host_key = ?, hostname = ?, os = ?, os_user = ?, "
                    "ip = ?, machine_fp = ?, features = ? "
                    "WHERE id = ? AND state = 'pending' AND invite_expires_at > ?",
                    (now, expires_at, agent_secret_hash, host_key, hostname, os, os_user, ip,
                     machine_fp, json.dumps(features), session_id, now))
            except sqlite3.IntegrityError:
                raise Conflict("this computer already runs an Adhoc session") from None
            row = SessionRow(*await tx.one(
                f"SELECT {_columns(SessionRow)} FROM sessions WHERE id = ?", (session_id,)))
            if not count:
                await tx.audit(now, f"agent@{source}", "activate", "refused",
                               company_id=row.company_id, session_id=session_id,
                               reason=f"session is {row.state}")
                raise rules.InvalidTransition(f"cannot activate a session that is {row.state}")
            await tx.audit(now, f"agent@{source}", "activated", "ok", company_id=row.company_id,
                           session_id=session_id, hostname=hostname, os=os, user=os_user)
            await tx.event(now, row.company_id, "activated", session_id)
        return row

    async def reissue_code(self, session_id: str, code_hmac: str, now: float,
                           actor: str) -> SessionRow:
        """Replace a pending session's code; the count of wrong codes on the link is kept."""
        async with self.transaction() as tx:
            count = await tx.run(
                "UPDATE sessions SET code_hmac = ? WHERE id = ? AND state = 'pending' "
                "AND invite_expires_at > ?", (code_hmac, session_id, now))
            row = SessionRow(*await tx.one(
                f"SELECT {_columns(SessionRow)} FROM sessions WHERE id = ?", (session_id,)))
            if not count:
                await tx.audit(now, actor, "code_reissued", "refused", company_id=row.company_id,
                               session_id=session_id, reason=f"session is {row.state}")
            else:
                await tx.audit(now, actor, "code_reissued", "ok", company_id=row.company_id,
                               session_id=session_id, attempts=row.code_attempts)
                await tx.event(now, row.company_id, "code_reissued", session_id,
                               code_attempts=row.code_attempts)
        if not count:
            raise rules.InvalidTransition(f"cannot issue a code for a session that is {row.state}")
        return row

    async def end_session(self, session_id: str, reason: str, now: float,
                          actor: str) -> tuple[SessionRow, bool]:
        """End a live session; idempotent. Returns (row, whether this call ended it)."""
        async with self.transaction() as tx:
            row = SessionRow(*await tx.one(
                f"SELECT {_columns(SessionRow)} FROM sessions WHERE id = ?", (session_id,)))
            if not row.is_live:
                return row, False
            row = await self._end(tx, row, reason, now, actor)
        return row, True

    async def _end(self, tx: Tx, row: SessionRow, reason: str, now: float,
                   actor: str) -> SessionRow:
        rules.next_state(rules.State(row.state), rules.Event.END)
        self._credentials.pop(row.id, None)
        self._ends += 1
        await tx.run(
            "UPDATE sessions SET state = 'ended', ended_reason = ?, ended_at = ? "
            "WHERE id = ? AND state IN ('pending', 'active')", (reason, now, row.id))
        await tx.audit(now, actor, "ended", "ok", company_id=row.company_id, session_id=row.id,
                       reason=reason)
        await tx.event(now, row.company_id, "ended", row.id, reason=reason)
        return SessionRow(*await tx.one(
            f"SELECT {_columns(SessionRow)} FROM sessions WHERE id = ?", (row.id,)))

    async def end_expired(self, now: float) -> list[SessionRow]:
        """End every session whose invite or lifetime has run out; returns those ended."""
        async with self.transaction() as tx:
            rows = [SessionRow(*r) for r in await tx.all(
                f"SELECT {_columns(SessionRow)} FROM sessions WHERE "
                "(state = 'pending' AND invite_expires_at <= ?) OR "
                "(state = 'active' AND expires_at <= ?)", (now, now))]
            ended = []
            for row in rows:
                reason = (rules.EndReason.INVITE_EXPIRED if row.state == rules.State.PENDING
                          else rules.EndReason.EXPIRED)
                ended.append(await self._end(tx, row, reason, now, "relay"))
        return ended

    async def next_expiry(self) -> float | None:
        row = await self._one(
            "SELECT min(CASE state WHEN 'pending' THEN invite_expires_at ELSE expires_at END) "
            "FROM sessions WHERE state IN ('pending', 'active')")
        return row[0] if row else None

    async def set_mail_status(self, session_id: str, status: str, detail: str | None,
                              now: float) -> None:
        async with self.transaction() as tx:
            row = await tx.one("SELECT company_id FROM sessions WHERE id = ?", (session_id,))
            if row is None:
                return
            await tx.run("UPDATE sessions SET mail_status = ?, mail_detail = ? WHERE id = ?",
                         (status, detail, session_id))
            await tx.audit(now, "relay", "mail", status, company_id=row[0],
                           session_id=session_id, detail=detail)
            await tx.event(now, row[0], "mail", session_id, status=status, detail=detail)

    async def record_presence(self, changes: Sequence[Presence]) -> None:
        """Agents that came or went, in order, in one transaction (one fsync for a batch)."""
        async with self.transaction() as tx:
            for change in changes:
                row = await tx.one("SELECT company_id FROM sessions WHERE id = ?",
                                   (change.session_id,))
                if row is None:
                    continue
                kind = "online" if change.online else "offline"
                await tx.audit(change.at, "agent", kind, "ok", company_id=row[0],
                               session_id=change.session_id, ip=change.ip)
                await tx.event(change.at, row[0], kind, change.session_id)

    async def audit(self, at: float, actor: str, event: str, outcome: str, *,
                    company_id: int | None = None, session_id: str | None = None,
                    **detail: Any) -> None:
        async with self.transaction() as tx:
            await tx.audit(at, actor, event, outcome, company_id=company_id,
                           session_id=session_id, **detail)

    async def last_audit_id(self) -> int:
        (value,) = await self._one("SELECT coalesce(max(id), 0) FROM audit")
        return value

    async def access_changes_after(self, after_id: int,
                                   limit: int = 500) -> list[tuple[int, str, int | None, str]]:
        """(id, event, company_id, detail) of technician and company changes after an audit
        row: how a serving relay learns of revocations made by another process."""
        return list(await self._all(
            "SELECT id, event, company_id, detail FROM audit WHERE id > ? "
            "AND event IN ('technician_changed', 'company_changed') ORDER BY id LIMIT ?",
            (after_id, limit)))

    async def audit_many(self, at: float, actor: str, company_id: int, session_id: str,
                         rows: Sequence[tuple[str, str, dict[str, Any]]]) -> None:
        """Several (event, outcome, detail) rows of one actor and session, in one transaction
        (an agent's batch of reports: one fsync, not one each)."""
        async with self.transaction() as tx:
            for event, outcome, detail in rows:
                await tx.run(
                    "INSERT INTO audit(at, actor, company_id, session_id, event, outcome, "
                    "detail) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (at, actor, company_id, session_id, event, outcome,
                     json.dumps(detail, sort_keys=True)))

    async def audit_count(self, session_id: str, actor: str) -> int:
        (count,) = await self._one("SELECT count(*) FROM audit WHERE session_id = ? "
                                   "AND actor = ?", (session_id, actor))
        return count

    async def audit_for_session(self, session_id: str, after_id: int = 0,
                                limit: int = -1) -> list[AuditRow]:
        """The session's audit rows after `after_id`, oldest first, at most `limit` (-1: all)."""
        rows = await self._all(f"SELECT {_columns(AuditRow)} FROM audit WHERE session_id = ? "
                               "AND id > ? ORDER BY id LIMIT ?", (session_id, after_id, limit))
        return [AuditRow(*r) for r in rows]

    async def events_after(self, company_id: int, after_id: int,
                           limit: int = 500) -> list[EventRow]:
        rows = await self._all(
            f"SELECT {_columns(EventRow)} FROM events WHERE company_id = ? AND id > ? "
            "ORDER BY id LIMIT ?", (company_id, after_id, limit))
        return [EventRow(*r) for r in rows]

    async def last_event_id(self) -> int:
        (value,) = await self._one("SELECT coalesce(max(id), 0) FROM events")
        return value


def _split_sql(script: str) -> list[str]:
    """Split a migration into statements, keeping trigger bodies whole."""
    statements, current = [], []
    for line in script.strip().splitlines():
        current.append(line)
        joined = "\n".join(current).strip()
        if joined.endswith(";") and sqlite3.complete_statement(joined):
            statements.append(joined)
            current = []
    if "\n".join(current).strip():
        statements.append("\n".join(current).strip())
    return statements
