"""The relay's schema as SQLAlchemy tables: one source for SQLite and PostgreSQL.

A new database is created from these tables; an existing one is brought to them by the Alembic
revisions in relay/db/migrations. The SQLite rendering of the first revision is exactly the
schema the relay created before it used SQLAlchemy (PRAGMA user_version 1), so such a database
is adopted as it is. Timestamps are seconds since the epoch (double precision); flags are 0/1
integers; JSON is kept as text.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    DDL,
    REAL,
    BigInteger,
    CheckConstraint,
    Column,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    event,
    func,
    text,
)

metadata = MetaData()


class StoredText(TypeDecorator):
    """Text as both engines can keep it. PostgreSQL refuses a NUL character in text (SQLite
    keeps it), and no field of the relay's has a use for one, while hostile input (a login
    name, a host's name, an agent's report) may carry one: it is kept as U+FFFD on both, so
    the write (and its audit row) succeeds and both engines hold the same."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        if isinstance(value, str) and "\x00" in value:
            return value.replace("\x00", "\ufffd")
        return value


# Double precision on PostgreSQL; REAL (which is double precision) on SQLite, as before.
Timestamp = Double().with_variant(REAL(), "sqlite")
# 64-bit ids on PostgreSQL for the tables that only grow; SQLite's AUTOINCREMENT needs INTEGER.
GrowingId = BigInteger().with_variant(Integer(), "sqlite")
# Company names are unique and looked up ignoring ASCII case: a NOCASE column on SQLite, a
# unique index on lower(name) on PostgreSQL (see companies_name_nocase).
CompanyName = StoredText().with_variant(StoredText(collation="NOCASE"), "sqlite")

LIVE_STATES_SQL = "state IN ('pending', 'active')"

companies = Table(
    "companies", metadata,
    Column("id", Integer, primary_key=True),
    Column("name", CompanyName, nullable=False, unique=True),
    Column("plan", StoredText, CheckConstraint("plan IN ('trial', 'base', 'plus', 'premier')"),
           nullable=False),
    Column("seats", Integer, CheckConstraint("seats >= 0"), nullable=False),
    Column("disabled", Integer, nullable=False, server_default=text("0")),
    Column("created_at", Timestamp, nullable=False),
)
Index("companies_name_nocase", func.lower(companies.c.name), unique=True).ddl_if(
    dialect="postgresql")

technicians = Table(
    "technicians", metadata,
    Column("id", Integer, primary_key=True),
    Column("company_id", Integer, ForeignKey("companies.id"), nullable=False),
    Column("login", StoredText, nullable=False, unique=True),
    Column("email", StoredText, nullable=False),
    Column("password_hash", StoredText, nullable=False),
    Column("is_admin", Integer, nullable=False, server_default=text("0")),
    Column("disabled", Integer, nullable=False, server_default=text("0")),
    Column("created_at", Timestamp, nullable=False),
)

ssh_keys = Table(
    "ssh_keys", metadata,
    Column("id", Integer, primary_key=True),
    Column("technician_id", Integer, ForeignKey("technicians.id"), nullable=False),
    Column("public_key", StoredText, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    UniqueConstraint("technician_id", "public_key"),
)

api_tokens = Table(
    "api_tokens", metadata,
    Column("token_hash", StoredText, primary_key=True),
    Column("technician_id", Integer, ForeignKey("technicians.id"), nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("expires_at", Timestamp, nullable=False),
)

sessions = Table(
    "sessions", metadata,
    Column("id", StoredText, primary_key=True),
    Column("company_id", Integer, ForeignKey("companies.id"), nullable=False),
    Column("technician_id", Integer, ForeignKey("technicians.id"), nullable=False),
    Column("customer_email", StoredText, nullable=False),
    Column("note", StoredText, nullable=False, server_default=text("''")),
    Column("password_verifier", StoredText, nullable=False),
    Column("join_token_hash", StoredText, nullable=False, unique=True),
    Column("code_hmac", StoredText, nullable=False),
    Column("code_attempts", Integer, nullable=False, server_default=text("0")),
    Column("state", StoredText, CheckConstraint("state IN ('pending', 'active', 'ended')"),
           nullable=False),
    Column("ended_reason", StoredText),
    Column("created_at", Timestamp, nullable=False),
    Column("invite_expires_at", Timestamp, nullable=False),
    Column("activated_at", Timestamp),
    Column("expires_at", Timestamp),
    Column("ended_at", Timestamp),
    Column("agent_secret_hash", StoredText),
    Column("host_key", StoredText),
    Column("hostname", StoredText),
    Column("os", StoredText),
    Column("os_user", StoredText),
    Column("ip", StoredText),
    Column("machine_fp", StoredText),
    Column("features", StoredText, nullable=False, server_default=text("'[]'")),
    Column("mail_status", StoredText, nullable=False, server_default=text("'queued'")),
    Column("mail_detail", StoredText),
    # An SSH public key the creating technician may log in to the host with (issue 15).
    Column("technician_key", StoredText),
)
# The limits' backstop: a technician has one live session, a computer takes part in one.
_LIVE = text(LIVE_STATES_SQL)
_LIVE_MACHINE = text(f"{LIVE_STATES_SQL} AND machine_fp IS NOT NULL")
Index("sessions_one_live_per_technician", sessions.c.technician_id, unique=True,
      sqlite_where=_LIVE, postgresql_where=_LIVE)
Index("sessions_one_live_per_machine", sessions.c.machine_fp, unique=True,
      sqlite_where=_LIVE_MACHINE, postgresql_where=_LIVE_MACHINE)
Index("sessions_by_company", sessions.c.company_id, sessions.c.state)
Index("sessions_by_expiry", sessions.c.state, sessions.c.expires_at)

audit = Table(
    "audit", metadata,
    Column("id", GrowingId, primary_key=True),
    Column("at", Timestamp, nullable=False),
    Column("actor", StoredText, nullable=False),
    Column("company_id", Integer),
    Column("session_id", StoredText),
    Column("event", StoredText, nullable=False),
    Column("outcome", StoredText, nullable=False),
    Column("detail", StoredText, nullable=False, server_default=text("'{}'")),
    sqlite_autoincrement=True,
)
Index("audit_by_session", audit.c.session_id, audit.c.id)

events = Table(
    "events", metadata,
    Column("id", GrowingId, primary_key=True),
    Column("at", Timestamp, nullable=False),
    Column("company_id", Integer, nullable=False),
    Column("session_id", StoredText),
    Column("kind", StoredText, nullable=False),
    Column("data", StoredText, nullable=False, server_default=text("'{}'")),
    sqlite_autoincrement=True,
)
Index("events_by_company", events.c.company_id, events.c.id)

# The cluster (relay/cluster/): the relays sharing this database, and which one holds each
# agent's connection, so a technician on any relay reaches an agent held by another.
nodes = Table(
    "nodes", metadata,
    Column("name", StoredText, primary_key=True),
    Column("peer_address", StoredText, nullable=False),  # where other relays reach it
    Column("ssh_address", StoredText),  # where agents and consoles reach it (None: WebSocket)
    Column("http_url", StoredText, nullable=False),
    Column("started_at", Timestamp, nullable=False),
    Column("seen_at", Timestamp, nullable=False),  # its last heartbeat
    Column("draining", Integer, nullable=False, server_default=text("0")),
)

agent_holders = Table(
    "agent_holders", metadata,
    Column("session_id", StoredText, ForeignKey("sessions.id"), primary_key=True),
    Column("node", StoredText, nullable=False),
    Column("since", Timestamp, nullable=False),
)
Index("agent_holders_by_node", agent_holders.c.node)

APPEND_ONLY = "the audit log is append-only"

# The audit log refuses UPDATE and DELETE (and, on PostgreSQL, TRUNCATE) from anyone, the
# relay included.
AUDIT_TRIGGERS: dict[str, list[str]] = {
    "sqlite": [
        "CREATE TRIGGER audit_is_append_only_update BEFORE UPDATE ON audit "
        f"BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY}'); END",
        "CREATE TRIGGER audit_is_append_only_delete BEFORE DELETE ON audit "
        f"BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY}'); END",
    ],
    "postgresql": [
        "CREATE FUNCTION audit_is_append_only() RETURNS trigger LANGUAGE plpgsql AS "
        f"$$ BEGIN RAISE EXCEPTION '{APPEND_ONLY}' USING ERRCODE = 'insufficient_privilege'; "
        "END $$",
        "CREATE TRIGGER audit_is_append_only_change BEFORE UPDATE OR DELETE ON audit "
        "FOR EACH ROW EXECUTE FUNCTION audit_is_append_only()",
        "CREATE TRIGGER audit_is_append_only_truncate BEFORE TRUNCATE ON audit "
        "FOR EACH STATEMENT EXECUTE FUNCTION audit_is_append_only()",
    ],
}

for _dialect, _statements in AUDIT_TRIGGERS.items():
    for _statement in _statements:
        event.listen(audit, "after_create", DDL(_statement).execute_if(dialect=_dialect))
