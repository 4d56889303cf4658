"""Several relay processes on one database (what `--workers` and a cluster of relays will run):
the schema is migrated once, and limits, a link's code tries and expiry hold across processes.
Each test runs on one SQLite file shared by the processes, and on one PostgreSQL database."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time

import pytest

from relay.db.migrate import head_revision
from relay.store import Store, Tx
from tests.relay.conftest import activate, create, db_rows
from tests.support import PASSWORD, Api, provision_store

ON_BOTH_ENGINES = True  # what this module tests is decided by the store

OPEN_STORE = """
import asyncio, sys
from relay.store import Store, Tx
async def main():
    store = await Store.open(sys.argv[1])
    await store.close()
asyncio.run(main())
"""


def test_relays_starting_at_once_migrate_the_database_once(tmp_path, database) -> None:
    target = database or f"sqlite:///{tmp_path / 'relay.db'}"
    starts = [subprocess.Popen([sys.executable, "-c", OPEN_STORE, target],
                               stderr=subprocess.PIPE, text=True) for _ in range(4)]
    errors = [(p.wait(60), p.stderr.read()) for p in starts]
    for proc in starts:
        proc.stderr.close()
    assert [code for code, _ in errors] == [0] * 4, errors
    assert db_rows(tmp_path, "SELECT version_num FROM alembic_version") == [(head_revision(),)]
    assert db_rows(tmp_path, "SELECT count(*) FROM companies") == [(0,)]


async def test_sixty_creates_over_three_relays_never_exceed_a_limit(start_relay) -> None:
    relays = [start_relay("--login-rate", "1000/1m") for _ in range(3)]
    logins = [f"crowd{i}" for i in range(10)]
    async with Api(relays[0].base_url, "alice") as admin:
        for login in logins:
            added = await admin.client.post("/api/v1/admin/technicians", json={
                "login": login, "email": f"{login}@example.com", "password": PASSWORD})
            assert added.status_code == 201, added.text
    # Acme: plus, 3 seats, company limit 5. Each technician's six tries go to all relays.
    apis = [Api(relays[(i + j) % 3].base_url, login)
            for i, login in enumerate(logins) for j in range(2)]
    async with contextlib.AsyncExitStack() as stack:
        for api in apis:
            await stack.enter_async_context(api)
        answers = await asyncio.gather(*(create(apis[2 * i + j % 2], f"c{i}-{j}@example.com")
                                         for i in range(10) for j in range(6)))
    codes = sorted(r.status_code for r in answers)
    assert codes.count(201) == 3, codes
    assert set(codes) <= {201, 402, 409}, [r.text for r in answers if r.status_code >= 500]
    assert all("locked" not in r.text for r in answers)
    live = db_rows(relays[0].data_dir, "SELECT technician_id FROM sessions "
                                       "WHERE state IN ('pending', 'active')")
    assert len(live) == 3 and len(set(live)) == 3
    refused = db_rows(relays[0].data_dir, "SELECT count(*) FROM audit WHERE event = "
                                          "'session_create' AND outcome = 'refused'")
    assert refused == [(57,)]


async def test_wrong_codes_over_two_relays_each_count_once(start_relay) -> None:
    first, second = (start_relay("--activate-rate", "1000/1m") for _ in range(2))
    async with Api(first.base_url) as api:
        session = (await create(api)).json()
    right = session["security_code"]
    wrong = [f"{(int(right) + n) % 10**6:06d}" for n in range(1, 11)]
    answers = await asyncio.gather(*(activate((first, second)[n % 2].base_url, session, code)
                                     for n, code in enumerate(wrong)))
    assert {r.status_code for r in answers} <= {403, 410}, [r.text for r in answers]
    late = await activate(second.base_url, session)  # the right code, after the link burnt
    assert late.status_code == 410
    tries = [json.loads(d)["attempts"] for (d,) in db_rows(
        first.data_dir, "SELECT detail FROM audit WHERE session_id = ? AND event = "
                        "'code_attempt' AND outcome = 'wrong_code' ORDER BY id", (session["id"],))]
    assert sorted(tries) == list(range(1, len(tries) + 1)) and len(tries) >= 5, tries
    ended = db_rows(first.data_dir, "SELECT detail FROM audit WHERE session_id = ? AND "
                                    "event = 'ended'", (session["id"],))
    assert [json.loads(d)["reason"] for (d,) in ended] == ["code_attempts"]


async def test_expiry_over_two_relays_ends_each_session_once(start_relay) -> None:
    relays = [start_relay("--invite-ttl", "2s") for _ in range(2)]
    ids = []
    for login, relay in (("alice", relays[0]), ("bob", relays[1]), ("carol", relays[0])):
        async with Api(relay.base_url, login) as api:
            ids.append((await create(api)).json()["id"])
    # Both relays' timers (and every request) sweep for expired sessions; ask both until done.
    async with Api(relays[0].base_url, "bob") as one, Api(relays[1].base_url, "bob") as two, \
            asyncio.timeout(30):
        while db_rows(relays[0].data_dir, "SELECT count(*) FROM sessions "
                                          "WHERE state != 'ended'") != [(0,)]:
            await asyncio.gather(one.client.get("/api/v1/sessions"),
                                 two.client.get("/api/v1/sessions"))
            await asyncio.sleep(0.1)
    for session_id in ids:
        audited = db_rows(relays[0].data_dir, "SELECT detail FROM audit WHERE session_id = ? "
                                              "AND event = 'ended'", (session_id,))
        assert [json.loads(d)["reason"] for (d,) in audited] == ["invite_expired"], session_id
        events = db_rows(relays[0].data_dir, "SELECT count(*) FROM events WHERE session_id = ? "
                                             "AND kind = 'ended'", (session_id,))
        assert events == [(1,)]


async def test_event_ids_become_visible_in_order(tmp_path, database) -> None:
    """A console reads "events after id N": an event whose id is taken later must not become
    visible before one taken earlier commits, or the console skips the earlier one for good.
    Two stores stand for two relay processes; the first holds its event uncommitted."""
    if database is None:
        pytest.skip("SQLite has one writer at a time: its ids always commit in order")
    await provision_store(tmp_path, [("Acme", "plus", 5, ["alice"])], database=database)
    first, second, reader = [await Store.open(database) for _ in range(3)]
    try:
        company = await reader.company_by_name("Acme")
        before = await reader.last_event_id()
        async with first._database.engine.connect() as conn:
            await conn.begin()
            await conn.run_sync(lambda c: Tx(c, "postgresql").event(
                time.time(), company.id, "test", None))  # takes id before + 1
            later = asyncio.ensure_future(second._write(
                lambda tx: tx.event(time.time(), company.id, "test", None)))
            async with asyncio.timeout(20):  # the second now waits (or, unordered, commits)
                while not later.done() and not db_rows(tmp_path, "SELECT count(*) FROM "
                                                       "pg_locks WHERE NOT granted")[0][0]:
                    await asyncio.sleep(0.02)
            seen = [e.id for e in await reader.events_after(company.id, before)]
            assert seen == [], seen
            await conn.commit()
        await later
        seen = [e.id for e in await reader.events_after(company.id, before)]
        assert seen == [before + 1, before + 2]
    finally:
        for store in (first, second, reader):
            await store.close()
