"""What the agent serves inside the tunnel, by plan: dashboard, chat, SFTP with audit.

The client is a raw asyncssh connection, not the console: the agent itself must refuse what
the plan does not grant.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import asyncssh
import pytest

from tests.hostagent.helpers import inner_connection, read_until
from tests.support import Api, start_session


async def audit_events(api: Api, session_id: str, wanted: set[str], timeout: float = 15,
                       until: Callable[[list[dict]], bool] = lambda _rows: True) -> list[dict]:
    """The session's audit rows once every event in `wanted` is there and `until(rows)` holds
    (the agent reports in batches: a second row of an event already seen comes later)."""
    async with asyncio.timeout(timeout):
        while True:
            response = await api.client.get(f"/api/v1/sessions/{session_id}/audit")
            rows = response.json()["audit"]
            if wanted <= {row["event"] for row in rows} and until(rows):
                return rows
            await asyncio.sleep(0.2)


async def test_base_plan_refuses_files_and_dashboard_but_chats(start_relay, agents,
                                                               tmp_path: Path) -> None:
    relay = start_relay()
    async with Api(relay.base_url, login="bert") as api:
        view, agent = await start_session(api, agents, tmp_path)
        async with inner_connection(relay, api, view) as inner:
            with pytest.raises((asyncssh.SFTPError, asyncssh.ChannelOpenError)):
                async with inner.start_sftp_client():
                    pass
            dashboard = await inner.create_process(subsystem="dashboard", encoding=None)
            await dashboard.wait_closed()
            assert dashboard.exit_status == 1
            assert b"dashboard is not included in this session's plan" in \
                await dashboard.stderr.read()

            chat = await inner.create_process(subsystem="chat", encoding=None)
            chat.stdin.write(json.dumps({"text": "Hello from bert", "from": "customer"})
                             .encode() + b"\n")
            echoed = json.loads((await read_until(chat.stdout, b"\n")).splitlines()[0])
            assert echoed["text"] == "Hello from bert"
            assert echoed["from"] == "bert"  # the agent says who spoke, not the client
            await agent.wait_for_line("Technician bert says: Hello from bert")
            chat.close()

            result = await inner.run("echo shell-ok", check=True)
            assert result.stdout.strip() == "shell-ok"
        rows = await audit_events(api, view["id"], {"refused", "technician_connected"})
        refused = {row["detail"]["agent"].get("what") for row in rows
                   if row["event"] == "refused"}
        # SFTP is refused in the SSH handshake itself (no sftp subsystem is offered at all).
        assert "dashboard" in refused


async def test_plus_plan_dashboard_streams_and_files_are_audited(start_relay, agents,
                                                                 tmp_path: Path) -> None:
    relay = start_relay()
    async with Api(relay.base_url) as api:
        view, agent = await start_session(api, agents, tmp_path)
        async with inner_connection(relay, api, view) as inner:
            dashboard = await inner.create_process(subsystem="dashboard", encoding=None)
            dashboard.stdin.write(b'{"interval": 1}\n')
            samples = []
            async with asyncio.timeout(20):
                while len(samples) < 2:
                    samples.append(json.loads(await dashboard.stdout.readline()))
            sample = samples[-1]
            for key in ("at", "hostname", "os", "uptime", "cpu", "memory", "swap", "load",
                        "disks", "net", "processes", "failed_units", "journal"):
                assert key in sample, key
            assert sample["cpu"]["count"] >= 1 and len(sample["cpu"]["per_cpu"]) >= 1
            assert sample["memory"]["total"] > 0 and len(sample["load"]) == 3
            assert 0 < len(sample["processes"]) <= 15
            assert {"pid", "name", "user", "cpu", "memory"} <= set(sample["processes"][0])
            assert isinstance(sample["failed_units"], list)
            assert isinstance(sample["journal"], list)
            await agent.wait_for_line("Technician alice opened the dashboard")
            dashboard.close()

            payload = os.urandom(300 * 1024 + 5)
            source = tmp_path / "upload.bin"
            source.write_bytes(payload)
            remote = tmp_path / "on-host" / "copy.bin"
            async with inner.start_sftp_client() as sftp:
                await sftp.mkdir(str(remote.parent))
                await sftp.put(str(source), str(remote))
                await sftp.get(str(remote), str(tmp_path / "back.bin"))
                await sftp.rename(str(remote), str(remote.with_name("renamed.bin")))
                await sftp.remove(str(remote.with_name("renamed.bin")))
            await agent.wait_for_line(f"Technician alice wrote {remote}")
        digest = hashlib.sha256(payload).hexdigest()
        rows = await audit_events(api, view["id"], {
            "file_written", "file_read", "file_renamed", "file_removed", "folder_created",
            "dashboard_opened", "files_opened", "technician_disconnected"})
        # The agent's word, marked as such: its fields under "agent".
        written = next(r for r in rows if r["event"] == "file_written")["detail"]["agent"]
        assert written["path"] == str(remote)
        assert written["size"] == len(payload)
        assert written["sha256"] == digest
        read = next(r for r in rows if r["event"] == "file_read")["detail"]["agent"]
        assert (read["path"], read["sha256"]) == (str(remote), digest)
        files = [r for r in rows if r["event"].startswith("file")]
        assert all(r["reported_by"] == "agent" and r["actor"] == "agent-report"
                   and r["detail"]["agent"]["technician"] == "alice" for r in files)
