"""Bring a database to the relay's schema: create it, adopt a pre-Alembic one, or upgrade it.

Runs the Alembic revisions shipped in this package programmatically (no alembic.ini), inside
one write transaction: SQLite's write lock or a PostgreSQL advisory lock makes relays that start
at once on one database migrate it exactly once. A database already at the newest revision
costs one read and no lock. What a database holds decides the step:

- no tables: create them from relay/db/tables.py and stamp the newest revision;
- an `alembic_version` table: upgrade to the newest revision;
- a SQLite database made before Alembic (PRAGMA user_version 1, no `alembic_version`): stamp
  the baseline revision, which is that very schema, then upgrade; nothing is copied or lost;
- anything else (tables of another program, a newer relay's revision): refuse with a message.

To change the schema, change relay/db/tables.py and add a revision that makes the same change
to an existing database (both engines), e.g. with
`command.revision(alembic_config(), "what changes", rev_id="0002")` from alembic; then
tests/relay/test_database.py checks that an upgraded database and a new one both match the
tables.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, inspect, text

from relay.db.engine import Database, DatabaseUnavailable, retrying
from relay.db.tables import metadata
from relay.db.url import POSTGRESQL, SQLITE

if TYPE_CHECKING:  # Alembic is imported only when there is something to do (9 MiB of RSS)
    from alembic.config import Config

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
BASELINE = "0001"
HEAD = "0003"  # the newest revision in migrations/versions (tests/relay/test_database.py checks)
LEGACY_SQLITE_VERSION = 1  # PRAGMA user_version of the schema the baseline stands for
# The tables of that schema (later revisions add others).
BASELINE_TABLES = {"companies", "technicians", "ssh_keys", "api_tokens", "sessions", "audit",
                   "events"}
# pg_advisory_xact_lock(ADVISORY_CLASS, n): the relay's own lock keys.
ADVISORY_CLASS = 0x41_64_68_63  # "Adhc"
MIGRATION_LOCK = 1


def alembic_config(connection: Connection | None = None) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest revision as Alembic reads it from the scripts (HEAD should say the same)."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


async def migrate(database: Database) -> str:
    """Bring the database to the newest revision; returns it. A database already there costs
    one read and takes no lock (every relay start asks)."""
    if await database.read(_revision) == HEAD:
        return HEAD
    return await retrying(lambda: database.write(_migrate_locked))


async def current_revision(database: Database) -> str | None:
    return await database.read(_revision)


def _migrate_locked(connection: Connection) -> str:
    if connection.dialect.name == POSTGRESQL:
        connection.execute(text("SELECT pg_advisory_xact_lock(:cls, :key)"),
                           {"cls": ADVISORY_CLASS, "key": MIGRATION_LOCK})
    return _migrate(connection)


def _revision(connection: Connection) -> str | None:
    if not inspect(connection).has_table("alembic_version"):
        return None
    return connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()


def _migrate(connection: Connection) -> str:
    from alembic import command
    from alembic.script import ScriptDirectory

    config = alembic_config(connection)
    tables = set(inspect(connection).get_table_names())
    if "alembic_version" in tables:
        current = _revision(connection)
        known = {script.revision for script in ScriptDirectory.from_config(config).walk_revisions()}
        if current is not None and current not in known:
            raise DatabaseUnavailable(
                f"the database is at schema revision {current}, which this relay does not "
                "know: it was made by a newer Adhoc; run that version or restore a backup")
        command.upgrade(config, "head")
    elif not tables:
        metadata.create_all(connection)
        command.stamp(config, "head")
    elif _is_legacy_sqlite(connection, tables):
        command.stamp(config, BASELINE)
        command.upgrade(config, "head")
    else:
        shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
        raise DatabaseUnavailable(
            f"the database already holds tables that are not an Adhoc relay's ({shown}): "
            "give the relay a database of its own")
    return HEAD


def _is_legacy_sqlite(connection: Connection, tables: set[str]) -> bool:
    if connection.dialect.name != SQLITE:
        return False
    version = connection.exec_driver_sql("PRAGMA user_version").scalar()
    return version == LEGACY_SQLITE_VERSION and BASELINE_TABLES <= tables
