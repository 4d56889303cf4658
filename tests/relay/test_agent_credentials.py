"""The agent credentials the relay keeps in memory (relay/store.py agent_credential): every
agent login reads one, so the relay keeps them once read; an ended session's must never
outlive its end, even when the read and the end cross."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.util import await_only

from relay import sessions as rules
from relay.store import Store
from tests.support import add_active_session, provision_store


@pytest.fixture
async def store(tmp_path: Path, database: str | None) -> AsyncIterator[Store]:
    await provision_store(tmp_path, [("Acme", "plus", 5, ["alice", "bob", "carol"])],
                          database=database)
    opened = await Store.open(database or tmp_path / "relay.db")
    yield opened
    await opened.close()


async def test_a_kept_credential_goes_when_the_session_ends(store: Store) -> None:
    alice, bob, _ = await store.technicians()
    first = await add_active_session(store, alice, "secret-one")
    second = await add_active_session(store, bob, "secret-two")
    assert await store.load_agent_credentials() == 2

    kept = await store.agent_credential(first)
    assert kept is not None and kept[0] == rules.token_hash("secret-one")
    assert kept[1] == (await store.session(first)).expires_at

    await store.end_session(first, rules.EndReason.TECHNICIAN, 0.0, "technician:alice")
    assert await store.agent_credential(first) is None
    assert await store.agent_credential(second) is not None
    assert await store.agent_credential("s-no-such-session") is None
    assert await store.load_agent_credentials() == 1


async def test_expiry_ends_what_was_kept(store: Store) -> None:
    alice, _, _ = await store.technicians()
    session_id = await add_active_session(store, alice, "secret", lifetime=-1)
    assert await store.agent_credential(session_id) is not None  # run out, not yet ended
    ended = await store.end_expired(time.time())
    assert [row.id for row in ended] == [session_id]
    assert await store.agent_credential(session_id) is None


async def test_a_read_that_crosses_an_end_is_not_kept(store: Store, monkeypatch) -> None:
    alice, _, _ = await store.technicians()
    session_id = await add_active_session(store, alice, "secret")
    real_one = store._one

    async def read_then_end(statement, params=None):
        row = await real_one(statement, params)
        # The session ends after the read, before the credential is kept.
        if "agent_secret_hash" in str(statement):
            await store.end_session(session_id, rules.EndReason.TECHNICIAN, 0.0, "admin")
        return row

    monkeypatch.setattr(store, "_one", read_then_end)
    crossed = await store.agent_credential(session_id)
    assert crossed is not None  # what the read saw: the login in flight may still pass
    monkeypatch.setattr(store, "_one", real_one)
    assert await store.agent_credential(session_id) is None  # the next one may not


async def test_a_read_during_an_uncommitted_end_is_not_kept(store: Store, engine: str,
                                                          monkeypatch) -> None:
    """Reads and writes use different connections: a login's read can run while an end is
    written but not yet committed, and see the session still active."""
    alice, _, _ = await store.technicians()
    session_id = await add_active_session(store, alice, "secret")
    loop = asyncio.get_running_loop()
    seen: list = []
    record_ends = store._record_ends

    def end_then_read(tx, rows, now, actor) -> None:
        record_ends(tx, rows, now, actor)
        # The end is written, not committed: a login reads now, on another connection.
        read = store.agent_credential(session_id)
        if engine == "sqlite":  # the write runs on the store's writer thread
            seen.append(asyncio.run_coroutine_threadsafe(read, loop).result(10))
        else:  # the write runs in SQLAlchemy's greenlet on the event loop
            seen.append(await_only(read))

    monkeypatch.setattr(store, "_record_ends", end_then_read)
    await store.end_session(session_id, rules.EndReason.TECHNICIAN, time.time(), "admin")
    assert seen and seen[0] is not None  # what was committed then: that login may pass
    assert await store.agent_credential(session_id) is None
