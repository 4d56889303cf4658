"""The relay's database statements: every read and write the relay makes, on SQLite or PostgreSQL.

Written once in SQLAlchemy Core over the tables in relay/db/tables.py; relay/db/engine.py runs
each operation whole, as one plain function over a connection. Every write runs in one
transaction that is retried whole while the database is busy ("database is locked" on SQLite, a
serialisation failure or deadlock on PostgreSQL): a busy database is waited for, never reported
as a limit; one that cannot be reached is DatabaseUnavailable. Several relay processes may share
one database:

- SQLite: writes start with `BEGIN IMMEDIATE` (one writer at a time across processes; within a
  process they queue for the store's writer thread);
- PostgreSQL: a session create locks its company's row (`SELECT ... FOR NO KEY UPDATE`) before
  it counts, so concurrent creates in one company count one after another, and the partial
  unique indexes back up the per-technician and per-computer limits on both engines;
- a code's wrong tries are counted and sessions are ended with single conditional UPDATEs
  (`... RETURNING`), so each try counts once and each session ends once, whoever races;
- every state change writes its audit row and its event row in the same transaction. Event ids
  are what a console resumes from, so on PostgreSQL an advisory lock makes them commit in id
  order (SQLite's single writer does that by itself).
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    URL,
    Column,
    Connection,
    Executable,
    Row,
    Table,
    and_,
    bindparam,
    case,
    delete,
    exc,
    func,
    insert,
    literal_column,
    or_,
    select,
    text,
    update,
)

from relay import sessions as rules
from relay.db.engine import (
    Database,
    DatabaseUnavailable,
    is_unavailable,
    open_database,
    retrying,
)
from relay.db.migrate import ADVISORY_CLASS, current_revision, migrate
from relay.db.tables import (
    agent_holders,
    api_tokens,
    audit,
    companies,
    events,
    nodes,
    sessions,
    ssh_keys,
    technicians,
)
from relay.db.url import POSTGRESQL, describe, parse_database_url, sqlite_url

T = TypeVar("T")

EVENT_ORDER_LOCK = 2  # pg_advisory_xact_lock(ADVISORY_CLASS, EVENT_ORDER_LOCK)


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
class NodeRow:
    """A relay of the cluster, as it registered itself (relay/cluster/nodes.py)."""

    name: str
    peer_address: str
    ssh_address: str | None
    http_url: str
    started_at: float
    seen_at: float
    draining: bool


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


def _columns(table: Table, cls: type) -> tuple[Column, ...]:
    """The table's columns in the order of the dataclass's fields (so `cls(*row)` fits)."""
    return tuple(table.c[f.name] for f in fields(cls))


def _detail(values: dict[str, Any]) -> str:
    return json.dumps(values, sort_keys=True)


COMPANY = _columns(companies, Company)
TECHNICIAN = _columns(technicians, Technician)
SESSION = _columns(sessions, SessionRow)
AUDIT = _columns(audit, AuditRow)
EVENT = _columns(events, EventRow)
NODE = _columns(nodes, NodeRow)
# Inline, not bound: only then may SQLite's planner use the partial indexes on live sessions.
LIVE = sessions.c.state.in_([literal_column(f"'{s}'") for s in rules.LIVE_STATES])
PENDING = sessions.c.state == literal_column(f"'{rules.State.PENDING}'")
ACTIVE = sessions.c.state == literal_column(f"'{rules.State.ACTIVE}'")

# --- the statements --------------------------------------------------------------------------
# Built once: building and caching a statement costs more CPU than running it. Values arrive
# as bound parameters by name (an UPDATE's SET columns by their column names).

COMPANY_BY_ID = select(*COMPANY).where(companies.c.id == bindparam("company_id"))
# ASCII case is ignored, as the unique rule on names does (NOCASE / lower(name)).
COMPANY_BY_NAME = select(*COMPANY).where(
    func.lower(companies.c.name) == func.lower(bindparam("name")))
ALL_COMPANIES = select(*COMPANY).order_by(func.lower(companies.c.name))
ADD_COMPANY = insert(companies).returning(*COMPANY)
# Creates in one company queue on its row (PostgreSQL; SQLite's BEGIN IMMEDIATE already has).
LOCK_COMPANY = select(companies.c.id).where(companies.c.id == bindparam("company_id")) \
    .with_for_update(key_share=True)


def _live_count(*where) -> Any:
    return select(func.count()).select_from(sessions).where(LIVE, *where).scalar_subquery()


OCCUPANCY = select(companies.c.plan, companies.c.seats,
                   _live_count(sessions.c.technician_id == bindparam("technician_id")),
                   _live_count(sessions.c.company_id == bindparam("company_id"))) \
    .where(companies.c.id == bindparam("company_id"))

TECHNICIAN_BY_LOGIN = select(*TECHNICIAN).where(technicians.c.login == bindparam("login"))
TECHNICIAN_BY_ID = select(*TECHNICIAN).where(technicians.c.id == bindparam("technician_id"))
ALL_TECHNICIANS = select(*TECHNICIAN).order_by(technicians.c.login)
COMPANY_TECHNICIANS = ALL_TECHNICIANS.where(technicians.c.company_id == bindparam("company_id"))
ADD_TECHNICIAN = insert(technicians).returning(*TECHNICIAN)
TECHNICIAN_FOR_TOKEN = select(*TECHNICIAN) \
    .join(api_tokens, api_tokens.c.technician_id == technicians.c.id) \
    .join(companies, companies.c.id == technicians.c.company_id) \
    .where(api_tokens.c.token_hash == bindparam("token_hash"),
           api_tokens.c.expires_at > bindparam("now"),
           technicians.c.disabled == 0, companies.c.disabled == 0)
ADD_TOKEN = insert(api_tokens)
DROP_EXPIRED_TOKENS = delete(api_tokens).where(api_tokens.c.expires_at <= bindparam("now"))
REVOKE_TOKENS = delete(api_tokens).where(
    api_tokens.c.technician_id == bindparam("technician_id"))
REVOKE_COMPANY_TOKENS = delete(api_tokens).where(api_tokens.c.technician_id.in_(
    select(technicians.c.id).where(technicians.c.company_id == bindparam("company_id"))
    .scalar_subquery()))
SSH_KEYS = select(ssh_keys.c.public_key) \
    .where(ssh_keys.c.technician_id == bindparam("technician_id")).order_by(ssh_keys.c.id)


@functools.cache
def add_ssh_key_statement(backend: str) -> Executable:
    """An INSERT that leaves a key already registered as it is, in the backend's words (only
    its own dialect is loaded)."""
    if backend == POSTGRESQL:
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    return dialect_insert(ssh_keys).on_conflict_do_nothing()


@functools.cache
def hold_agents_statement(backend: str) -> Executable:
    """An INSERT that makes a node the holder of an agent whoever held it before (two nodes
    may record the same agent at once while it moves), in the backend's words."""
    if backend == POSTGRESQL:
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    statement = dialect_insert(agent_holders)
    return statement.on_conflict_do_update(
        index_elements=[agent_holders.c.session_id],
        set_={"node": statement.excluded.node, "since": statement.excluded.since})



SESSION_BY_ID = select(*SESSION).where(sessions.c.id == bindparam("session_id"))
SESSION_BY_JOIN_HASH = select(*SESSION).where(
    sessions.c.join_token_hash == bindparam("join_token_hash"))
SESSIONS_OF_COMPANY = select(*SESSION) \
    .where(sessions.c.company_id == bindparam("company_id"),
           or_(LIVE, sessions.c.ended_at >= bindparam("since"))) \
    .order_by(sessions.c.created_at.desc())
LIVE_SESSIONS = select(*SESSION).where(LIVE)
ADD_SESSION = insert(sessions)
COMPANY_OF_SESSION = select(sessions.c.company_id).where(sessions.c.id == bindparam("session_id"))
COMPANIES_OF_SESSIONS = select(sessions.c.id, sessions.c.company_id) \
    .where(sessions.c.id.in_(bindparam("session_ids", expanding=True)))
AGENT_CREDENTIAL = select(sessions.c.agent_secret_hash, sessions.c.expires_at) \
    .where(sessions.c.id == bindparam("session_id"), ACTIVE)
AGENT_CREDENTIALS = select(sessions.c.id, sessions.c.agent_secret_hash, sessions.c.expires_at) \
    .where(ACTIVE, sessions.c.agent_secret_hash.is_not(None), sessions.c.expires_at.is_not(None))
# Each a single statement, so of two racing callers (in any process) each counts or wins once.
COUNT_WRONG_CODE = update(sessions).where(sessions.c.id == bindparam("session_id")) \
    .values(code_attempts=sessions.c.code_attempts + 1).returning(*SESSION)
CHANGE_PENDING = update(sessions) \
    .where(sessions.c.id == bindparam("session_id"), PENDING,
           sessions.c.invite_expires_at > bindparam("now")).returning(*SESSION)
END_LIVE = update(sessions).where(sessions.c.id == bindparam("session_id"), LIVE) \
    .values(state=rules.State.ENDED, ended_reason=bindparam("reason"),
            ended_at=bindparam("now")).returning(*SESSION)
DUE = or_(and_(PENDING, sessions.c.invite_expires_at <= bindparam("now")),
          and_(ACTIVE, sessions.c.expires_at <= bindparam("now")))
ANY_DUE = select(sessions.c.id).where(DUE).limit(1)
# SET reads the row as it was: a pending session's invite ran out, an active one's lifetime did.
END_DUE = update(sessions).where(DUE) \
    .values(state=rules.State.ENDED, ended_at=bindparam("now"),
            ended_reason=case((PENDING, rules.EndReason.INVITE_EXPIRED),
                              else_=rules.EndReason.EXPIRED)) \
    .returning(*SESSION)
NEXT_EXPIRY = select(func.min(case((PENDING, sessions.c.invite_expires_at),
                                   else_=sessions.c.expires_at))).where(LIVE)
SET_MAIL_STATUS = update(sessions).where(sessions.c.id == bindparam("session_id")) \
    .values(mail_status=bindparam("status"), mail_detail=bindparam("detail")) \
    .returning(sessions.c.company_id)

ADD_AUDIT = insert(audit)
AUDIT_OF_SESSION = select(*AUDIT).where(audit.c.session_id == bindparam("session_id"),
                                        audit.c.id > bindparam("after")) \
    .order_by(audit.c.id).limit(bindparam("limit"))
AUDIT_COUNT = select(func.count()).select_from(audit).where(
    audit.c.session_id == bindparam("session_id"), audit.c.actor == bindparam("actor"))
LAST_AUDIT_ID = select(func.coalesce(func.max(audit.c.id), 0))
# How a serving relay learns of revocations made by another process (the admin CLI).
ACCESS_CHANGES = select(audit.c.id, audit.c.event, audit.c.company_id, audit.c.detail) \
    .where(audit.c.id > bindparam("after"),
           audit.c.event.in_(["technician_changed", "company_changed"])) \
    .order_by(audit.c.id).limit(bindparam("limit"))
ADD_EVENTS = insert(events)
EVENTS_AFTER = select(*EVENT) \
    .where(events.c.company_id == bindparam("company_id"), events.c.id > bindparam("after")) \
    .order_by(events.c.id).limit(bindparam("limit"))
LAST_EVENT_ID = select(func.coalesce(func.max(events.c.id), 0))
# The cluster: nodes and the agents they hold.
ADD_NODE = insert(nodes)
DROP_NODE = delete(nodes).where(nodes.c.name == bindparam("node"))
NODE_SEEN = update(nodes).where(nodes.c.name == bindparam("node")) \
    .values(seen_at=bindparam("now")).returning(nodes.c.draining)
FRESH_NODES = select(*NODE).where(nodes.c.seen_at >= bindparam("since")).order_by(nodes.c.name)
# A machine's name stands for all its workers ("NAME/w0", "NAME/w1", ...) too.
_NAMED = or_(nodes.c.name == bindparam("node"),
             func.substr(nodes.c.name, 1, bindparam("prefix_length")) == bindparam("prefix"))
DRAIN_NODE = update(nodes).where(_NAMED).values(draining=1)
NODES_NAMED = select(func.count()).select_from(nodes).where(_NAMED)
HOLDER = select(agent_holders.c.node, nodes.c.peer_address, nodes.c.seen_at) \
    .join(nodes, nodes.c.name == agent_holders.c.node) \
    .where(agent_holders.c.session_id == bindparam("session_id"))
HELD_SESSIONS = select(agent_holders.c.session_id) \
    .join(nodes, nodes.c.name == agent_holders.c.node) \
    .where(nodes.c.seen_at >= bindparam("since"))
HELD_AMONG = HELD_SESSIONS.where(
    agent_holders.c.session_id.in_(bindparam("session_ids", expanding=True)))
RELEASE_MINE = delete(agent_holders).where(
    agent_holders.c.session_id.in_(bindparam("session_ids", expanding=True)),
    agent_holders.c.node == bindparam("node"))
RELEASE_NODE = delete(agent_holders).where(agent_holders.c.node == bindparam("node"))
EVENTS_OF_ALL_AFTER = select(events.c.id, events.c.session_id, events.c.kind, events.c.data) \
    .where(events.c.id > bindparam("after")).order_by(events.c.id).limit(bindparam("limit"))
# Held to commit: an event id taken after ours is committed after ours, so a console reading
# "events after id N" never skips one that commits late (PostgreSQL; SQLite has one writer).
EVENT_ORDER = select(func.pg_advisory_xact_lock(ADVISORY_CLASS, EVENT_ORDER_LOCK))
# PostgreSQL tells every relay listening on this channel when events commit (the cluster's
# nodes follow the events table: relay/cluster/nodes.py).
EVENTS_CHANNEL = "adhoc_events"
NOTIFY_EVENTS = text(f"NOTIFY {EVENTS_CHANNEL}")


class Tx:
    """The statements available inside one write transaction (run on the database's side:
    plain calls, no awaiting; see relay/db/engine.py)."""

    def __init__(self, conn: Connection, backend: str) -> None:
        self.conn = conn
        self.backend = backend
        self.wrote_events = False
        self.ended: list[str] = []  # sessions this transaction ends

    def one(self, statement: Executable, params: dict | None = None) -> Row | None:
        return self.conn.execute(statement, params).first()

    def all(self, statement: Executable, params: dict | None = None) -> Sequence[Row]:
        return self.conn.execute(statement, params).all()

    def run(self, statement: Executable, params: dict | list[dict] | None = None) -> int:
        """Execute; with a list of parameter sets, once per set (one round trip where the
        driver can); returns the rows changed."""
        if isinstance(params, list) and not params:
            return 0
        return self.conn.execute(statement, params).rowcount

    def session(self, session_id: str) -> SessionRow | None:
        row = self.one(SESSION_BY_ID, {"session_id": session_id})
        return None if row is None else SessionRow(*row)

    def audit(
        self, at: float, actor: str, event: str, outcome: str, *,
        company_id: int | None = None, session_id: str | None = None, **detail: Any,
    ) -> None:
        self.run(ADD_AUDIT, {
            "at": at, "actor": actor, "company_id": company_id, "session_id": session_id,
            "event": event, "outcome": outcome, "detail": _detail(detail)})

    def event(self, at: float, company_id: int, kind: str, session_id: str | None,
              **data: Any) -> None:
        self.events([{"at": at, "company_id": company_id, "kind": kind,
                      "session_id": session_id, "data": _detail(data)}])

    def events(self, rows: list[dict]) -> None:
        """Insert event rows (at, company_id, kind, session_id, data as JSON text)."""
        if not rows:
            return
        if self.backend == POSTGRESQL and not self.wrote_events:
            self.conn.execute(EVENT_ORDER)
            self.conn.execute(NOTIFY_EVENTS)  # delivered when (if) the transaction commits
        self.run(ADD_EVENTS, rows)
        self.wrote_events = True


class Store:
    """The relay database. Open with `await Store.open(target)`; close with `await store.close()`.

    `target` is a database URL (`postgresql://...`, `sqlite:///...`) or the path of a SQLite
    file."""

    def __init__(self, database: Database, url: URL) -> None:
        self._database = database
        self.url = url
        self.backend = database.backend
        # Active sessions' agent credentials, kept once read (see agent_credential).
        self._credentials: dict[str, tuple[str, float]] = {}
        self._ends = 0  # bumped by every end: a read that raced one must not be kept

    @classmethod
    async def open(cls, target: Path | URL | str) -> Store:
        if isinstance(target, Path):
            url = sqlite_url(target)
        elif isinstance(target, str):
            url = parse_database_url(target)
        else:
            url = target
        database = open_database(url)
        try:
            await migrate(database)
        except DatabaseUnavailable as error:
            await database.dispose()
            raise DatabaseUnavailable(f"{describe(url)}: {error}") from None
        except (exc.DBAPIError, OSError) as error:
            await database.dispose()
            raise DatabaseUnavailable(
                f"cannot open the database {describe(url)}: {_reason(error)}; check that "
                "it runs, that the URL is right and that the relay may use it") from None
        except BaseException:
            await database.dispose()
            raise
        return cls(database, url)

    async def close(self) -> None:
        await self._database.dispose()

    def describe(self) -> str:
        """Which database this is, for messages (no password)."""
        return describe(self.url)

    async def revision(self) -> str | None:
        """The schema's Alembic revision."""
        return await current_revision(self._database)

    def _forget(self, session_ids: list[str]) -> None:
        """Drop ended sessions' credentials, and any read of one that is still in flight."""
        for session_id in session_ids:
            self._credentials.pop(session_id, None)
        self._ends += 1

    async def _write(self, work: Callable[[Tx], T]) -> T:
        """Run `work` in a write transaction, again from the start while the database is busy."""
        def transaction(conn: Connection) -> tuple[T, list[str]]:
            tx = Tx(conn, self.backend)
            return work(tx), tx.ended

        with _reachable():
            result, ended = await retrying(lambda: self._database.write(transaction))
        if ended:
            # Once more after the commit: a credential read between the end and its commit
            # (on another connection) saw the session still active.
            self._forget(ended)
        return result

    async def _one(self, statement: Executable, params: dict | None = None) -> Row | None:
        with _reachable():
            return await self._database.read(lambda conn: conn.execute(statement, params).first())

    async def _all(self, statement: Executable, params: dict | None = None) -> Sequence[Row]:
        with _reachable():
            return await self._database.read(lambda conn: conn.execute(statement, params).all())

    # --- companies -------------------------------------------------------------------------

    async def add_company(self, name: str, plan: str, seats: int, now: float) -> Company:
        def work(tx: Tx) -> Company:
            try:
                row = tx.one(ADD_COMPANY, {"name": name, "plan": plan, "seats": seats,
                                           "created_at": now})
            except exc.IntegrityError:
                raise Conflict(f"a company named {name!r} already exists") from None
            company = Company(*row)
            tx.audit(now, "admin", "company_added", "ok", company_id=company.id,
                     plan=plan, seats=seats)
            return company
        return await self._write(work)

    async def company_by_name(self, name: str) -> Company:
        row = await self._one(COMPANY_BY_NAME, {"name": name})
        if row is None:
            raise NotFound(f"no company named {name!r}")
        return Company(*row)

    async def company(self, company_id: int) -> Company:
        row = await self._one(COMPANY_BY_ID, {"company_id": company_id})
        if row is None:
            raise NotFound(f"no company with id {company_id}")
        return Company(*row)

    async def companies(self) -> list[Company]:
        return [Company(*r) for r in await self._all(ALL_COMPANIES)]

    async def update_company(self, company_id: int, now: float, actor: str, **changes: Any) -> None:
        allowed = {"plan", "seats", "disabled"}
        assert changes and set(changes) <= allowed, changes

        def work(tx: Tx) -> None:
            count = tx.run(update(companies).where(companies.c.id == company_id)
                           .values(**changes))
            if not count:
                raise NotFound(f"no company with id {company_id}")
            if changes.get("disabled"):  # a disabled company's consoles are logged out
                tx.run(REVOKE_COMPANY_TOKENS, {"company_id": company_id})
            tx.audit(now, actor, "company_changed", "ok", company_id=company_id, **changes)
        await self._write(work)

    # --- technicians -----------------------------------------------------------------------

    async def add_technician(
        self, company_id: int, login: str, email: str, password_hash: str, is_admin: bool,
        now: float, actor: str = "admin",
    ) -> Technician:
        def work(tx: Tx) -> Technician:
            try:
                row = tx.one(ADD_TECHNICIAN, {
                    "company_id": company_id, "login": login, "email": email,
                    "password_hash": password_hash, "is_admin": int(is_admin),
                    "created_at": now})
            except exc.IntegrityError:
                raise Conflict(f"a technician with login {login!r} already exists") from None
            tx.audit(now, actor, "technician_added", "ok", company_id=company_id,
                     login=login, admin=is_admin)
            return Technician(*row)
        return await self._write(work)

    async def technician_by_login(self, login: str) -> Technician:
        row = await self._one(TECHNICIAN_BY_LOGIN, {"login": login})
        if row is None:
            raise NotFound(f"no technician with login {login!r}")
        return Technician(*row)

    async def technician(self, technician_id: int) -> Technician:
        row = await self._one(TECHNICIAN_BY_ID, {"technician_id": technician_id})
        if row is None:
            raise NotFound(f"no technician with id {technician_id}")
        return Technician(*row)

    async def technicians(self, company_id: int | None = None) -> list[Technician]:
        if company_id is None:
            rows = await self._all(ALL_TECHNICIANS)
        else:
            rows = await self._all(COMPANY_TECHNICIANS, {"company_id": company_id})
        return [Technician(*r) for r in rows]

    async def update_technician(self, technician_id: int, now: float, actor: str,
                                **changes: Any) -> None:
        allowed = {"password_hash", "disabled", "is_admin", "email"}
        assert changes and set(changes) <= allowed, changes

        def work(tx: Tx) -> None:
            count = tx.run(update(technicians).where(technicians.c.id == technician_id)
                           .values(**changes))
            if not count:
                raise NotFound(f"no technician with id {technician_id}")
            if "password_hash" in changes or changes.get("disabled"):
                tx.run(REVOKE_TOKENS, {"technician_id": technician_id})
            shown = {k: v for k, v in changes.items() if k != "password_hash"}
            if "password_hash" in changes:
                shown["password"] = "reset"
            tx.audit(now, actor, "technician_changed", "ok", technician_id=technician_id,
                     **shown)
        await self._write(work)

    async def add_ssh_key(self, technician_id: int, public_key: str, now: float) -> None:
        await self._write(lambda tx: tx.run(add_ssh_key_statement(self.backend), {
            "technician_id": technician_id, "public_key": public_key, "created_at": now}))

    async def ssh_keys(self, technician_id: int) -> list[str]:
        return [r[0] for r in await self._all(SSH_KEYS, {"technician_id": technician_id})]

    # --- API tokens ------------------------------------------------------------------------

    async def add_token(self, token_hash: str, technician_id: int, now: float,
                        expires_at: float) -> None:
        def work(tx: Tx) -> None:
            tx.run(DROP_EXPIRED_TOKENS, {"now": now})
            tx.run(ADD_TOKEN, {"token_hash": token_hash, "technician_id": technician_id,
                               "created_at": now, "expires_at": expires_at})
        await self._write(work)

    async def technician_for_token(self, token_hash: str, now: float) -> Technician | None:
        row = await self._one(TECHNICIAN_FOR_TOKEN, {"token_hash": token_hash, "now": now})
        return None if row is None else Technician(*row)

    # --- sessions --------------------------------------------------------------------------

    @staticmethod
    def _occupancy(row: Row) -> rules.Occupancy:
        plan, seats, for_tech, for_company = row
        return rules.Occupancy(plan=plan, seats=seats, live_for_technician=for_tech,
                               live_for_company=for_company)

    async def occupancy(self, company_id: int, technician_id: int) -> rules.Occupancy:
        """A snapshot of what counts against the limits (not atomic: create_session decides)."""
        return self._occupancy(await self._one(OCCUPANCY, {"company_id": company_id,
                                                           "technician_id": technician_id}))

    async def create_session(self, row: SessionRow) -> SessionRow:
        """Insert a pending session if the plan and limits allow, atomically."""
        whose = {"company_id": row.company_id, "technician_id": row.technician_id}

        def work(tx: Tx) -> rules.LimitError | None:
            if self.backend == POSTGRESQL:
                # The counts are read by the next statement, which (at READ COMMITTED) sees
                # every create committed before the lock was ours; counting in this statement
                # would count from before the wait.
                tx.one(LOCK_COMPANY, whose)
            occupancy = self._occupancy(tx.one(OCCUPANCY, whose))
            actor = f"technician:{row.technician_id}"
            try:
                rules.check_can_create(occupancy)
            except rules.LimitError as refusal:
                # The refusal is audited (and committed) even though no session is created.
                tx.audit(row.created_at, actor, "session_create", "refused",
                         company_id=row.company_id, reason=refusal.code)
                return refusal
            tx.run(ADD_SESSION, {f.name: getattr(row, f.name) for f in fields(SessionRow)})
            tx.audit(row.created_at, actor, "session_created", "ok",
                     company_id=row.company_id, session_id=row.id,
                     customer_email=row.customer_email)
            tx.event(row.created_at, row.company_id, "created", row.id)
            return None

        refusal = await self._write(work)
        if refusal is not None:
            raise refusal
        return row

    async def session(self, session_id: str) -> SessionRow:
        row = await self._one(SESSION_BY_ID, {"session_id": session_id})
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
        row = await self._one(AGENT_CREDENTIAL, {"session_id": session_id})
        if row is None or row[0] is None or row[1] is None:
            return None
        if ends == self._ends:
            self._credentials[session_id] = (row[0], row[1])
        return row[0], row[1]

    async def load_agent_credentials(self) -> int:
        """Read every active session's agent credential at once (the relay's start, when all
        its agents are about to reconnect); returns how many."""
        ends = self._ends
        rows = await self._all(AGENT_CREDENTIALS)
        if ends == self._ends:
            self._credentials.update((row[0], (row[1], row[2])) for row in rows)
        return len(rows)

    async def session_by_join_hash(self, join_token_hash: str) -> SessionRow:
        row = await self._one(SESSION_BY_JOIN_HASH, {"join_token_hash": join_token_hash})
        if row is None:
            raise NotFound("no such link")
        return SessionRow(*row)

    async def sessions_for_company(self, company_id: int, recent_since: float) -> list[SessionRow]:
        rows = await self._all(SESSIONS_OF_COMPANY, {"company_id": company_id,
                                                     "since": recent_since})
        return [SessionRow(*r) for r in rows]

    async def live_sessions(self) -> list[SessionRow]:
        return [SessionRow(*r) for r in await self._all(LIVE_SESSIONS)]

    async def record_wrong_code(self, session_id: str, now: float, source: str) -> SessionRow:
        """Count a wrong code; the fifth burns the link. Returns the updated row."""
        def work(tx: Tx) -> SessionRow:
            counted = tx.one(COUNT_WRONG_CODE, {"session_id": session_id})
            if counted is None:
                raise NotFound("no such session")
            row = SessionRow(*counted)
            tx.audit(now, f"agent@{source}", "code_attempt", "wrong_code",
                     company_id=row.company_id, session_id=session_id,
                     attempts=row.code_attempts)
            if row.code_attempts >= rules.MAX_CODE_ATTEMPTS and row.state == rules.State.PENDING:
                row = self._end(tx, row.id, rules.EndReason.CODE_ATTEMPTS, now,
                                "relay") or row
            return row
        return await self._write(work)

    async def record_refused_code(self, session_id: str, now: float, source: str,
                                  reason: str) -> None:
        """Audit an attempt on a link that can no longer be activated."""
        def work(tx: Tx) -> None:
            company_id = tx.one(COMPANY_OF_SESSION, {"session_id": session_id})
            tx.audit(now, f"agent@{source}", "code_attempt", "refused",
                     company_id=company_id[0] if company_id else None,
                     session_id=session_id, reason=reason)
        await self._write(work)

    async def activate(self, session_id: str, now: float, expires_at: float, *,
                       agent_secret_hash: str, host_key: str, hostname: str, os: str,
                       os_user: str, ip: str, machine_fp: str | None, features: list[str],
                       source: str) -> SessionRow:
        """pending -> active, only if still pending (so two agents racing: exactly one wins)."""
        return await self._change_pending(
            session_id, now, {
                "state": rules.State.ACTIVE, "activated_at": now, "expires_at": expires_at,
                "agent_secret_hash": agent_secret_hash, "host_key": host_key,
                "hostname": hostname, "os": os, "os_user": os_user, "ip": ip,
                "machine_fp": machine_fp, "features": json.dumps(features)},
            f"agent@{source}", action="activate", refused="activate", done="activated",
            audited=lambda _row: {"hostname": hostname, "os": os, "user": os_user},
            told=lambda _row: {})

    async def reissue_code(self, session_id: str, code_hmac: str, now: float,
                           actor: str) -> SessionRow:
        """Replace a pending session's code; the count of wrong codes on the link is kept."""
        return await self._change_pending(
            session_id, now, {"code_hmac": code_hmac}, actor, action="issue a code for",
            refused="code_reissued", done="code_reissued",
            audited=lambda row: {"attempts": row.code_attempts},
            told=lambda row: {"code_attempts": row.code_attempts})

    async def _change_pending(self, session_id: str, now: float, values: dict[str, Any],
                              actor: str, *, action: str, refused: str, done: str,
                              audited: Callable[[SessionRow], dict[str, Any]],
                              told: Callable[[SessionRow], dict[str, Any]]) -> SessionRow:
        """Set `values` on the session only if it is still pending, in one statement (of two
        racing changes, in this process or another, one wins); audit and announce it as
        `done`, or audit it as `refused` and raise InvalidTransition."""
        def work(tx: Tx) -> tuple[SessionRow | None, bool]:
            try:
                changed = tx.one(CHANGE_PENDING,
                                 {"session_id": session_id, "now": now, **values})
            except exc.IntegrityError:  # the one live session a computer may take part in
                raise Conflict("this computer already runs an Adhoc session") from None
            if changed is None:
                row = tx.session(session_id)
                if row is not None:
                    tx.audit(now, actor, refused, "refused", company_id=row.company_id,
                             session_id=session_id, reason=f"session is {row.state}")
                return row, False
            row = SessionRow(*changed)
            tx.audit(now, actor, done, "ok", company_id=row.company_id,
                     session_id=session_id, **audited(row))
            tx.event(now, row.company_id, done, session_id, **told(row))
            return row, True

        row, changed = await self._write(work)
        if row is None:
            raise NotFound("no such session")
        if not changed:
            raise rules.InvalidTransition(f"cannot {action} a session that is {row.state}")
        return row

    async def end_session(self, session_id: str, reason: str, now: float,
                          actor: str) -> tuple[SessionRow, bool]:
        """End a live session; idempotent. Returns (row, whether this call ended it)."""
        def work(tx: Tx) -> tuple[SessionRow | None, bool]:
            ended = self._end(tx, session_id, reason, now, actor)
            if ended is not None:
                return ended, True
            return tx.session(session_id), False

        row, changed = await self._write(work)
        if row is None:
            raise NotFound("no such session")
        return row, changed

    def _end(self, tx: Tx, session_id: str, reason: str, now: float,
             actor: str) -> SessionRow | None:
        """End the session if it is live (the row as ended), else None: of two racing ends,
        in this process or another, exactly one gets the row."""
        ended = tx.one(END_LIVE, {"session_id": session_id, "reason": reason, "now": now})
        if ended is None:
            return None
        row = SessionRow(*ended)
        self._record_ends(tx, [row], now, actor)
        return row

    def _record_ends(self, tx: Tx, rows: list[SessionRow], now: float,
                     actor: str) -> None:
        tx.ended.extend(row.id for row in rows)
        self._forget(tx.ended)
        tx.run(ADD_AUDIT, [
            {"at": now, "actor": actor, "company_id": row.company_id, "session_id": row.id,
             "event": "ended", "outcome": "ok", "detail": _detail({"reason": row.ended_reason})}
            for row in rows])
        tx.events([
            {"at": now, "company_id": row.company_id, "kind": "ended", "session_id": row.id,
             "data": _detail({"reason": row.ended_reason})} for row in rows])

    async def end_expired(self, now: float) -> list[SessionRow]:
        """End every session whose invite or lifetime has run out; returns those ended."""
        def work(tx: Tx) -> list[SessionRow]:
            rows = [SessionRow(*r) for r in tx.all(END_DUE, {"now": now})]
            if rows:
                rows.sort(key=lambda r: r.created_at)
                self._record_ends(tx, rows, now, "relay")
            return rows

        # Asked before most reads: a write transaction (and, on SQLite, the write lock every
        # relay process shares) only when something is due.
        if await self._one(ANY_DUE, {"now": now}) is None:
            return []
        return await self._write(work)

    async def next_expiry(self) -> float | None:
        row = await self._one(NEXT_EXPIRY)
        return row[0] if row else None

    async def set_mail_status(self, session_id: str, status: str, detail: str | None,
                              now: float) -> None:
        def work(tx: Tx) -> None:
            row = tx.one(SET_MAIL_STATUS, {"session_id": session_id, "status": status,
                                           "detail": detail})
            if row is None:
                return
            tx.audit(now, "relay", "mail", status, company_id=row[0],
                     session_id=session_id, detail=detail)
            tx.event(now, row[0], "mail", session_id, status=status, detail=detail)
        await self._write(work)

    async def record_presence(self, changes: Sequence[Presence], node: str | None = None) -> None:
        """Agents that came or went, in order, in one transaction (one fsync for a batch).
        With `node`, also which relay holds them: an agent that came is held by `node`
        (whoever held it before), one that went is no longer held by `node` (if another node
        took it meanwhile, that one holds it still)."""
        ids = sorted({change.session_id for change in changes})

        def work(tx: Tx) -> None:
            company_of = dict(tx.all(COMPANIES_OF_SESSIONS, {"session_ids": ids}))
            known = [c for c in changes if c.session_id in company_of]
            if not known:
                return
            if node is not None:
                last = {c.session_id: c for c in known}  # where each agent ends up
                came = [c for c in last.values() if c.online]
                went = [sid for sid, c in last.items() if not c.online]
                if came:
                    tx.run(hold_agents_statement(self.backend), [
                        {"session_id": c.session_id, "node": node, "since": c.at}
                        for c in came])
                if went:
                    tx.run(RELEASE_MINE, {"session_ids": went, "node": node})
            kinds = ["online" if c.online else "offline" for c in known]
            tx.run(ADD_AUDIT, [
                {"at": c.at, "actor": "agent", "company_id": company_of[c.session_id],
                 "session_id": c.session_id, "event": kind, "outcome": "ok",
                 "detail": _detail({"ip": c.ip})} for c, kind in zip(known, kinds, strict=True)])
            tx.events([
                {"at": c.at, "company_id": company_of[c.session_id], "kind": kind,
                 "session_id": c.session_id, "data": _detail({})}
                for c, kind in zip(known, kinds, strict=True)])
        await self._write(work)

    async def audit(self, at: float, actor: str, event: str, outcome: str, *,
                    company_id: int | None = None, session_id: str | None = None,
                    **detail: Any) -> None:
        await self._write(lambda tx: tx.audit(at, actor, event, outcome, company_id=company_id,
                                              session_id=session_id, **detail))

    async def record_host_problem(self, at: float, company_id: int, session_id: str,
                                  problem: str | None) -> None:
        """Why an agent cannot hold its SSH connection (None: it can again): an audit row and
        a live event for the consoles, in one transaction."""
        def work(tx: Tx) -> None:
            tx.audit(at, "agent", "connection_problem", "cleared" if problem is None
                     else "failed", company_id=company_id, session_id=session_id,
                     problem=problem)
            tx.event(at, company_id, "host_problem", session_id, problem=problem)
        await self._write(work)

    async def audit_many(self, at: float, actor: str, company_id: int, session_id: str,
                         rows: Sequence[tuple[str, str, dict[str, Any]]]) -> None:
        """Several (event, outcome, detail) rows of one actor and session, in one transaction
        (an agent's batch of reports: one commit, not one each)."""
        if not rows:
            return
        await self._write(lambda tx: tx.run(ADD_AUDIT, [
            {"at": at, "actor": actor, "company_id": company_id, "session_id": session_id,
             "event": event, "outcome": outcome, "detail": _detail(detail)}
            for event, outcome, detail in rows]))

    async def audit_count(self, session_id: str, actor: str) -> int:
        return int((await self._one(AUDIT_COUNT, {"session_id": session_id,
                                                  "actor": actor}))[0])

    async def last_audit_id(self) -> int:
        return int((await self._one(LAST_AUDIT_ID))[0])

    async def access_changes_after(self, after_id: int,
                                   limit: int = 500) -> list[tuple[int, str, int | None, str]]:
        """(id, event, company_id, detail) of technician and company changes after an audit
        row: how a serving relay learns of revocations made by another process."""
        return [tuple(r) for r in await self._all(ACCESS_CHANGES,
                                                  {"after": after_id, "limit": limit})]

    async def audit_for_session(self, session_id: str, after_id: int = 0,
                                limit: int | None = None) -> list[AuditRow]:
        """The session's audit rows after `after_id`, oldest first, at most `limit` (None:
        all)."""
        rows = await self._all(AUDIT_OF_SESSION, {
            "session_id": session_id, "after": after_id,
            "limit": limit if limit is not None and limit >= 0 else 2**62})
        return [AuditRow(*r) for r in rows]

    async def events_after(self, company_id: int, after_id: int,
                           limit: int = 500) -> list[EventRow]:
        rows = await self._all(EVENTS_AFTER, {"company_id": company_id, "after": after_id,
                                              "limit": limit})
        return [EventRow(*r) for r in rows]

    async def last_event_id(self) -> int:
        return int((await self._one(LAST_EVENT_ID))[0])

    async def events_since(self, after_id: int,
                           limit: int = 2000) -> list[tuple[int, str | None, str, str]]:
        """(id, session id, kind, data) of every company's events after `after_id`: how a
        relay follows what the other relays of its cluster did."""
        return [tuple(r) for r in await self._all(EVENTS_OF_ALL_AFTER,
                                                  {"after": after_id, "limit": limit})]

    # --- the cluster ---------------------------------------------------------------------------

    async def register_node(self, name: str, peer_address: str, ssh_address: str | None,
                            http_url: str, now: float) -> None:
        """Record this relay as a node of the cluster. A node of the same name (this relay
        before a restart) is replaced, and the agents it held are no longer its."""
        def work(tx: Tx) -> None:
            tx.run(RELEASE_NODE, {"node": name})
            tx.run(DROP_NODE, {"node": name})
            tx.run(ADD_NODE, {"name": name, "peer_address": peer_address,
                              "ssh_address": ssh_address, "http_url": http_url,
                              "started_at": now, "seen_at": now, "draining": 0})
        await self._write(work)

    async def node_seen(self, name: str, now: float) -> bool | None:
        """A node's heartbeat; whether it is asked to drain (None: its row is gone)."""
        def work(tx: Tx) -> bool | None:
            row = tx.one(NODE_SEEN, {"node": name, "now": now})
            return None if row is None else bool(row[0])
        return await self._write(work)

    async def leave_cluster(self, name: str) -> None:
        """A node stops: it holds no agent any more, and is no longer a node."""
        def work(tx: Tx) -> None:
            tx.run(RELEASE_NODE, {"node": name})
            tx.run(DROP_NODE, {"node": name})
        await self._write(work)

    async def drain_node(self, name: str) -> int:
        """Ask a node (or a machine's workers, NAME/w0...) to drain; how many nodes were
        asked."""
        return await self._write(lambda tx: tx.run(DRAIN_NODE, _named(name)))

    async def nodes_named(self, name: str) -> int:
        """How many nodes the name stands for (itself, or a machine's workers)."""
        return int((await self._one(NODES_NAMED, _named(name)))[0])

    async def all_nodes(self) -> list[NodeRow]:
        return await self.live_nodes(0.0)

    async def live_nodes(self, seen_since: float) -> list[NodeRow]:
        """The nodes whose heartbeat is not older than `seen_since`."""
        return [NodeRow(*r[:-1], bool(r[-1]))
                for r in await self._all(FRESH_NODES, {"since": seen_since})]

    async def holder(self, session_id: str) -> tuple[str, str, float] | None:
        """(node, its peer address, its last heartbeat) of the node holding the session's
        agent, or None."""
        row = await self._one(HOLDER, {"session_id": session_id})
        return None if row is None else (row[0], row[1], row[2])

    async def held_sessions(self, seen_since: float, among: list[str] | None = None) -> set[str]:
        """The sessions (of `among`, or all) whose agent a node seen since `seen_since`
        holds."""
        if among is None:
            return {r[0] for r in await self._all(HELD_SESSIONS, {"since": seen_since})}
        return {r[0] for r in await self._all(HELD_AMONG, {"since": seen_since,
                                                           "session_ids": among})}

    async def listen_for_events(self, wake: Callable[[], None]):
        """Call `wake` as soon as another relay commits events (PostgreSQL NOTIFY); returns
        the coroutine function that stops listening, or None where the database cannot tell
        (SQLite: the caller polls)."""
        return await self._database.listen(EVENTS_CHANNEL, wake)

    def forget_ended(self, session_ids: list[str]) -> None:
        """Sessions another relay ended: their agents' credentials are no longer good."""
        self._forget(session_ids)


def _named(name: str) -> dict[str, Any]:
    return {"node": name, "prefix": f"{name}/w", "prefix_length": len(name) + 2}


@contextlib.contextmanager
def _reachable() -> Iterator[None]:
    """A database that cannot be reached or used is DatabaseUnavailable, with the reason (and
    no password); callers answer "try again" rather than fail with a driver's error."""
    try:
        yield
    except (OSError, exc.DBAPIError) as error:
        if not is_unavailable(error):
            raise
        raise DatabaseUnavailable(f"the relay cannot use its database: {_reason(error)}") \
            from None


def _reason(error: BaseException) -> str:
    """What went wrong, without SQLAlchemy's statement dump or documentation link."""
    cause = getattr(error, "orig", None) or error
    text = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    return text
