"""Snapshots of the console at 80×24 and 120×40, against a real relay with fixed data.

The sessions are written into the relay's database with fixed ids and times, and the
console's clock is fixed, so every run draws the same screen.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import insert
from textual.widgets import DataTable

from relay.db.tables import sessions
from relay.store import SessionRow, Store
from tests.support import PASSWORD, RelayProcess, provision
from tui.app import ConsoleApp
from tui.client import RelayClient

NOW = datetime(2030, 1, 15, 12, 0, tzinfo=UTC).timestamp()


def _row(session_id: str, technician_id: int, email: str, state: str, **times) -> SessionRow:
    base = dict(
        id=session_id, company_id=1, technician_id=technician_id, customer_email=email,
        note="", password_verifier="x", join_token_hash=f"hash-{session_id}", code_hmac="x",
        code_attempts=0, state=state, ended_reason=None, created_at=NOW - 3600,
        invite_expires_at=NOW + 1200, activated_at=None, expires_at=None, ended_at=None,
        agent_secret_hash=None, host_key=None, hostname=None, os=None, os_user=None, ip=None,
        machine_fp=None, features='["shell", "chat", "files", "dashboard"]',
        mail_status="outbox", mail_detail=None)
    base.update(times)
    return SessionRow(**base)


async def _seed(data_dir: Path) -> None:
    store = await Store.open(data_dir / "relay.db")
    rows = [
        _row("activeaaaaaaaaaa", 1, "dana@example.com", "active", activated_at=NOW - 1800,
             expires_at=NOW + 5 * 3600 + 754, hostname="build-01", os="Linux 6.8",
             os_user="root", mail_status="sent", created_at=NOW - 2000),
        _row("pendingbbbbbbbbb", 2, "erin@example.com", "pending", created_at=NOW - 100),
        _row("endedcccccccccccc"[:16], 1, "sam@example.com", "ended", ended_at=NOW - 60,
             ended_reason="ended_by_technician", created_at=NOW - 9000),
    ]
    await store._write(lambda tx: tx.run(insert(sessions),
                                         [dataclasses.asdict(row) for row in rows]))
    await store.close()


@pytest.fixture
def fixed_relay(tmp_path: Path) -> Iterator[tuple[RelayProcess, str]]:
    data_dir = tmp_path / "relay"
    provision(data_dir, technicians=("alice", "bob"))
    asyncio.run(_seed(data_dir))
    relay = RelayProcess(data_dir)
    relay.start()
    token = httpx.post(f"{relay.base_url}/api/v1/login",
                       json={"login": "alice", "password": PASSWORD}).json()["token"]
    yield relay, token
    relay.stop()


async def _loaded(pilot) -> None:
    table = pilot.app.screen.query_one("#sessions", DataTable)
    for _ in range(200):
        if table.row_count == 3:
            break
        await pilot.pause(0.05)
    pilot.app.screen.query_one("#sessions", DataTable).focus()
    await pilot.pause(0.2)


def _app(relay: RelayProcess, token: str) -> ConsoleApp:
    return ConsoleApp(RelayClient(relay.base_url, token), "alice", clock=lambda: NOW)


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_sessions_list(snap_compare, fixed_relay, size) -> None:
    relay, token = fixed_relay
    assert snap_compare(_app(relay, token), terminal_size=size, run_before=_loaded)


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_new_session_modal(snap_compare, fixed_relay, size) -> None:
    relay, token = fixed_relay

    async def open_modal(pilot) -> None:
        await _loaded(pilot)
        await pilot.press("n")
        # Until the email field has the focus (its cursor is in the picture): the modal is
        # mounted first and focuses the field after, which a busy machine shows apart.
        for _ in range(200):
            if pilot.app.focused is not None and pilot.app.focused.id == "email":
                break
            await pilot.pause(0.05)
        # The cursor blinks every 0.5 s: held on, or a slow picture catches it off.
        pilot.app.focused.cursor_blink = False
        await pilot.pause()

    assert snap_compare(_app(relay, token), terminal_size=size, run_before=open_modal)


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
async def test_the_list_shows_every_id_and_no_stray_glyph(fixed_relay, size) -> None:
    """The session id (for ssh -J) is visible at 80 and at 120 columns, without scrolling
    sideways, and nothing but text and the vertical scroll bar is drawn."""
    from tests.tui.helpers import screen_text

    relay, token = fixed_relay
    app = _app(relay, token)
    async with app.run_test(size=size) as pilot:
        await _loaded(pilot)
        drawn = screen_text(app)
        for session_id in ("activeaaaaaaaaaa", "pendingbbbbbbbbb", "endedccccccccccc"):
            assert session_id in drawn
        table = app.screen.query_one("#sessions", DataTable)
        assert table.virtual_size.width <= table.scrollable_content_region.width
        assert "▏" not in drawn and "▋" not in drawn
        await app.action_quit()
