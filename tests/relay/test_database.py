"""The relay's database itself: a SQLite file made before Alembic is adopted as it is, a new
database on either engine is exactly the schema of relay/db/tables.py, what is not the relay's
is refused, SQLite's files stay private, and a database URL's password is never shown."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from relay import sessions as rules
from relay.db.engine import DatabaseUnavailable
from relay.db.migrate import BASELINE, HEAD, head_revision
from relay.db.tables import metadata
from relay.db.url import describe, parse_database_url
from relay.store import Conflict, Store
from tests import postgres as pg
from tests.relay.conftest import create, db_rows
from tests.support import Api, add_active_session, run_cli, stop_process, wait_for_ready

ON_BOTH_ENGINES = True  # what this module tests is decided by the store

FIXTURE = Path(__file__).parent / "fixtures" / "relay-v1.sql"
TABLES = ("companies", "technicians", "ssh_keys", "api_tokens", "sessions", "audit", "events")


async def schema_differences(store: Store) -> list:
    """What Alembic's autogenerate would change to make the database match tables.py."""
    def include(obj, name, kind, _reflected, _compare_to) -> bool:
        # An expression index exists on PostgreSQL only (SQLite's NOCASE column does its job).
        return not (kind == "index" and name == "companies_name_nocase"
                    and store.backend == "sqlite")

    def compare(sync) -> list:
        context = MigrationContext.configure(sync, opts={
            "compare_type": True, "include_object": include})
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "autogenerate skipping metadata-specified "
                                              "expression-based index 'companies_name_nocase'")
            return compare_metadata(context, metadata)

    found = await store._database.read(compare)
    if store.backend == "sqlite":
        # SQLite reports a PRIMARY KEY column declared without NOT NULL as nullable (the old
        # schema's `id INTEGER PRIMARY KEY`); the relay never writes a NULL key.
        primary = {(t.name, c.name) for t in metadata.tables.values() for c in t.primary_key}
        found = [d for d in found if not (
            isinstance(d, list) and d[0][0] == "modify_nullable"
            and (d[0][2], d[0][3]) in primary)]
    return found


def old_database(data_dir: Path) -> Path:
    data_dir.mkdir(parents=True)
    path = data_dir / "relay.db"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.executescript(FIXTURE.read_text())
    return path


def every_row(data_dir: Path) -> dict[str, list[tuple]]:
    return {table: db_rows(data_dir, f"SELECT * FROM {table} ORDER BY 1") for table in TABLES}


async def test_a_database_made_before_alembic_is_adopted_with_nothing_lost(tmp_path,
                                                                           monkeypatch) -> None:
    monkeypatch.delenv("ADHOC_DATABASE", raising=False)
    data = tmp_path / "relay"
    path = old_database(data)
    before = every_row(data)
    assert before["sessions"] and before["audit"]

    result = run_cli(data, "init")
    assert "relay initialised" in result.stdout
    after = every_row(data)
    # Revision 0002 adds sessions.technician_key: none for every session made before it.
    assert after.pop("sessions") == [(*row, None) for row in before.pop("sessions")]
    assert after == before
    assert db_rows(data, "SELECT version_num FROM alembic_version") == [(head_revision(),)]
    assert BASELINE == "0001"

    store = await Store.open(path)
    try:
        assert await store.revision() == head_revision()
        assert await schema_differences(store) == []
        # The old rows work with the new code: limits count them, ids go on, triggers hold.
        alice, bob, _carol = await store.technicians()
        with pytest.raises(rules.LimitError):  # alice's session from before is active
            await add_active_session(store, alice, "secret")
        await add_active_session(store, bob, "secret")
        with pytest.raises(Conflict):
            await store.add_company("ACME", "base", 1, 0.0)
        row, ended = await store.end_session("sactivealice0001", rules.EndReason.TECHNICIAN,
                                             1767300000.0, "technician:alice")
        assert ended and row.hostname == "build-01" and row.code_attempts == 1
        assert (await store.audit_for_session("sactivealice0001"))[-1].id == 17
        assert [e.kind for e in await store.events_after(1, 7)][-1] == "ended"
    finally:
        await store.close()
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db_rows(data, "DELETE FROM audit")
    assert db_rows(data, "PRAGMA integrity_check") == [("ok",)]
    run_cli(data, "init")  # and again: nothing to do
    assert db_rows(data, "SELECT version_num FROM alembic_version") == [(head_revision(),)]


async def test_a_new_database_is_exactly_the_tables(tmp_path, database) -> None:
    assert HEAD == head_revision()  # what a start compares with, without loading Alembic
    store = await Store.open(database or tmp_path / "relay.db")
    try:
        assert await store.revision() == head_revision()
        assert await schema_differences(store) == []
    finally:
        await store.close()
    # Opening it again (the next start) changes nothing.
    store = await Store.open(database or tmp_path / "relay.db")
    await store.close()


async def test_what_is_not_the_relays_is_refused_with_a_clear_message(tmp_path, database,
                                                                      monkeypatch) -> None:
    data = tmp_path / "relay"
    data.mkdir()
    if database is None:
        with contextlib.closing(sqlite3.connect(data / "relay.db")) as db:
            db.execute("CREATE TABLE invoices(id INTEGER PRIMARY KEY)")
    else:
        db_rows(data, "CREATE TABLE invoices(id integer primary key)")
    result = run_cli(data, "init", check=False)
    assert result.returncode == 1
    assert "not an Adhoc relay's (invoices): give the relay a database of its own" in \
        result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1

    # A database a newer relay has migrated is left alone.
    db_rows(data, "DROP TABLE invoices")
    run_cli(data, "init")
    db_rows(data, "UPDATE alembic_version SET version_num = '9999'")
    result = run_cli(data, "company", "list", check=False)
    assert result.returncode == 1
    assert "schema revision 9999, which this relay does not know" in result.stderr
    assert "Traceback" not in result.stderr


async def test_sqlite_files_are_readable_by_their_owner_only(tmp_path) -> None:
    data = tmp_path / "relay"
    old = os.umask(0o022)
    try:
        store = await Store.open(data / "relay.db")
        try:
            await store.add_company("Acme", "plus", 1, 0.0)
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in data.iterdir()}
        finally:
            await store.close()
    finally:
        os.umask(old)
    assert set(modes) >= {"relay.db", "relay.db-wal", "relay.db-shm"}, modes
    assert all(mode == 0o600 for mode in modes.values()), modes


def test_bad_database_urls_are_refused_without_showing_the_password(tmp_path,
                                                                    monkeypatch) -> None:
    monkeypatch.delenv("ADHOC_DATABASE", raising=False)
    secret = "Sw0rdfish-not-shown"
    for url, says in (
        (f"mysql://adhoc:{secret}@db.example.com/adhoc", "'mysql' is not supported"),
        (f"postgresql://adhoc:{secret}@db.example.com:port/adhoc", "cannot read"),
        (f"postgresql://adhoc:{secret}@db.example.com", "names no database"),
        ("sqlite://", "needs a file"),
        (f"postgresql://adhoc:{secret}@/adhoc?host=/run/postgresql&bogus=1",
         "option bogus is not one the relay passes on: use host, passfile, port"),
        ("not a url", "cannot read"),
    ):
        result = run_cli(tmp_path, "--database", url, "init", check=False)
        assert result.returncode == 2, (url, result.stderr)
        assert says in result.stderr, result.stderr
        assert "option" in says or "postgresql://USER:PASSWORD@HOST" in result.stderr
        assert secret not in result.stdout + result.stderr
        monkeypatch.setenv("ADHOC_DATABASE", url)
        result = run_cli(tmp_path, "company", "list", check=False)
        assert result.returncode == 2 and result.stderr.startswith("adhoc-relay: ADHOC_DATABASE")
        assert secret not in result.stdout + result.stderr
        monkeypatch.delenv("ADHOC_DATABASE")


def test_database_urls_in_the_forms_operators_write_them() -> None:
    forms = {
        "postgresql://adhoc:pw@db.example.com/adhoc?sslmode=require":
            ("postgresql+asyncpg", "db.example.com", "adhoc", {"ssl": "require"}),
        "postgres://adhoc@/adhoc?host=/var/run/postgresql":
            ("postgresql+asyncpg", None, "adhoc", {"host": "/var/run/postgresql"}),
        "postgresql+asyncpg://adhoc:pw@db:6432/relay":
            ("postgresql+asyncpg", "db", "relay", {}),
        "sqlite:////var/lib/adhoc/relay.db":
            ("sqlite+pysqlite", None, "/var/lib/adhoc/relay.db", {}),
    }
    for text, (driver, host, name, query) in forms.items():
        url = parse_database_url(text)
        assert (url.drivername, url.host, url.database, dict(url.query)) == \
            (driver, host, name, query), text
        assert "pw" not in describe(url) and "pw" not in repr(url) and "pw" not in str(url)


def test_an_unreachable_database_says_so_without_the_password(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("ADHOC_DATABASE", raising=False)
    secret = "Sw0rdfish-not-shown"
    result = run_cli(tmp_path, "--database", f"postgresql://adhoc:{secret}@127.0.0.1:1/adhoc",
                     "init", check=False)
    assert result.returncode == 1
    assert "cannot open the database postgresql://adhoc:***@127.0.0.1:1/adhoc" in \
        result.stderr
    assert "check that it runs, that the URL is right" in result.stderr
    assert "on the command line can be read by every local user" in result.stderr
    assert secret not in result.stdout + result.stderr and "Traceback" not in result.stderr


def test_a_wrong_postgresql_password_is_refused_and_not_shown(tmp_path, postgres,
                                                              monkeypatch) -> None:
    if postgres is None:
        pytest.skip("PostgreSQL is not installed")
    name = postgres.new_database()
    wrong = "Wrong-pg-password-88"
    url = postgres.url(name).replace(pg.RELAY_PASSWORD, wrong)
    monkeypatch.setenv("ADHOC_DATABASE", url)
    result = run_cli(tmp_path, "init", check=False)
    assert result.returncode == 1 and "password authentication failed" in result.stderr
    assert wrong not in result.stdout + result.stderr and "***" in result.stderr
    assert "warning" not in result.stderr  # the environment is the place for it


def test_the_relay_names_its_database_but_never_its_password(data_dir, engine) -> None:
    with (data_dir / "relay.log").open("wb") as log_file:
        relay = subprocess.Popen(
            [sys.executable, "-m", "relay.cli", "--data-dir", str(data_dir), "-v", "serve",
             "--http", "127.0.0.1:0", "--ssh", "127.0.0.1:0"],
            stdout=subprocess.PIPE, stderr=log_file, text=True)
    try:
        wait_for_ready(relay, data_dir / "relay.log", 30)
    finally:
        stop_process(relay)
    log = (data_dir / "relay.log").read_text()
    init = run_cli(data_dir, "init").stdout
    if engine == "postgresql":
        shown = "database postgresql://adhoc:***@/adhoc_"
    else:
        shown = f"database sqlite:///{data_dir}/relay.db"
    assert shown in log and shown in init, (log, init)
    assert pg.RELAY_PASSWORD not in log + init


async def test_opening_a_database_that_fails_leaks_no_engine(tmp_path) -> None:
    (tmp_path / "relay.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(DatabaseUnavailable, match="cannot open the database sqlite:///"):
        await Store.open(tmp_path / "relay.db")


async def test_a_restarted_postgresql_server_costs_no_request(relay, engine, postgres) -> None:
    if engine != "postgresql":
        pytest.skip("SQLite has no server to restart")
    async with Api(relay.base_url) as api:
        session = (await create(api)).json()
        for _ in range(3):  # connections in the relay's pool, all of them cut by the restart
            assert (await api.client.get("/api/v1/sessions")).status_code == 200
        postgres.restart()
        assert (await api.client.get("/api/v1/sessions")).status_code == 200
        assert (await api.client.post(f"/api/v1/sessions/{session['id']}/end")).json()[
            "state"] == "ended"


async def test_a_database_that_is_down_is_a_clear_503_then_back(relay, engine, postgres) -> None:
    if engine != "postgresql":
        pytest.skip("SQLite has no server to stop")
    async with Api(relay.base_url) as api:
        assert (await api.client.get("/api/v1/sessions")).status_code == 200
        with postgres.down():
            for method, path in (("GET", "/api/v1/sessions"), ("POST", "/api/v1/sessions"),
                                 ("GET", "/api/v1/me")):
                body = {"customer_email": "customer@example.com", "password": "Horse-battery-9"}
                response = await api.client.request(method, path,
                                                    json=body if method == "POST" else None)
                assert response.status_code == 503, (path, response.text)
                assert response.json() == {
                    "error": "unavailable",
                    "detail": "the relay cannot reach its database just now: try again in a "
                              "moment"}
                assert response.headers["Retry-After"] == "5"
        assert (await create(api)).status_code == 201
    log = (relay.data_dir / "relay.log").read_text()
    assert "the relay cannot use its database" in log
    assert "Exception in ASGI application" not in log  # what an unanswered request logs


def test_a_relay_on_sqlite_loads_neither_alembic_nor_the_postgresql_driver(tmp_path) -> None:
    """What a relay process imports is memory in every process (with --workers, in each):
    a SQLite database already at the newest revision needs neither."""
    script = """
import asyncio, sys
from pathlib import Path
from relay.store import Store

async def main():
    store = await Store.open(Path(sys.argv[1]))
    await store.add_ssh_key((await store.add_technician(
        (await store.add_company("Acme", "plus", 1, 0.0)).id, "alice", "a@example.com", "-",
        False, 0.0)).id, "ssh-ed25519 AAAA", 0.0)
    await store.close()
    store = await Store.open(Path(sys.argv[1]))  # a start on an existing database
    await store.close()
asyncio.run(main())
loaded = sorted(name for name in sys.modules if name.split(".")[0] in ("alembic", "asyncpg")
                or name.startswith("sqlalchemy.ext.asyncio"))
print(loaded)
"""
    first = subprocess.run([sys.executable, "-c", script, str(tmp_path / "relay.db")],
                           capture_output=True, text=True, timeout=60, check=True)
    assert "alembic" in first.stdout  # the first start created the schema
    again = subprocess.run([sys.executable, "-c", script.replace('"Acme"', '"Beta"').replace(
        '"alice"', '"bob"'), str(tmp_path / "relay.db")],
                           capture_output=True, text=True, timeout=60, check=True)
    assert again.stdout.strip() == "[]", again.stdout


def test_the_migrations_ship_inside_the_package() -> None:
    """An installed wheel carries the Alembic scripts: they are modules of packages that
    setuptools finds (checked by hand with pip wheel: init and adoption ran from the wheel)."""
    import setuptools

    root = Path(__file__).resolve().parents[2]
    packages = set(setuptools.find_packages(root, include=["relay*"]))
    scripts = root / "relay" / "db" / "migrations"
    for script in scripts.rglob("*.py"):
        package = ".".join(script.parent.relative_to(root).parts)
        assert package in packages, f"{script} is in no package: a wheel would leave it out"
    assert (scripts / "versions" / "0001_baseline.py").exists()
