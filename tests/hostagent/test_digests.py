"""A transfer's SHA-256 is taken after the technician's client has its reply.

Real relay, real agent, asyncssh's SFTP client: closing a file never waits for the agent to
read the whole file again, a file that never ends (a device) or of which only a part was read
is not hashed at all, and a digest cut short by the session's end is still in the audit.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

from tests.hostagent.helpers import inner_connection
from tests.hostagent.test_features import audit_events
from tests.support import Api, start_session

# Sparse: no disk used, but hashing it would take the agent minutes.
HUGE = 1 << 40


async def test_closing_a_download_does_not_wait_for_its_digest(start_relay, agents,
                                                               tmp_path: Path) -> None:
    huge = tmp_path / "disk.img"
    with huge.open("wb") as f:
        f.truncate(HUGE)
    small = tmp_path / "notes.txt"
    small.write_bytes(b"taken, then renamed at once\n" * 1000)
    relay = start_relay()
    async with Api(relay.base_url) as api:
        view, agent = await start_session(api, agents, tmp_path)
        async with inner_connection(relay, api, view) as inner, \
                inner.start_sftp_client() as sftp:
            # Before: the close waited for a digest of the whole terabyte (and for ever on a
            # device): the client hung.
            for path in (huge, Path("/dev/zero")):
                remote = await sftp.open(str(path), "rb")
                assert await remote.read(4096) == bytes(4096)
                async with asyncio.timeout(15):
                    await remote.close()
            await agent.wait_for_line(f"copied {huge} to their computer")
            # A write is hashed whatever its size: this one still is when the session ends.
            remote = await sftp.open(str(huge), "r+b")
            await remote.write(b"boot")
            async with asyncio.timeout(15):
                await remote.close()
            # What is hashed is what the close left, even renamed at once.
            await sftp.get(str(small), str(tmp_path / "back.txt"))
            await sftp.rename(str(small), str(tmp_path / "moved.txt"))
        ended = await api.client.post(f"/api/v1/sessions/{view['id']}/end")
        assert ended.status_code == 200
        assert await asyncio.to_thread(agent.wait_exit, 30) == 0
        rows = await audit_events(
            api, view["id"], {"file_read", "file_written"},
            until=lambda rows: sum(r["event"] == "file_read" for r in rows) == 3)
    reads = {r["detail"]["agent"]["path"]: r["detail"]["agent"] for r in rows
             if r["event"] == "file_read"}
    # A few bytes of a disk image: no digest (it would read the terabyte for nothing).
    assert reads[str(huge)]["error"] == \
        f"part of the file was read (4096 of {HUGE} bytes): no digest"
    assert reads[str(huge)]["transferred"] == 4096
    assert reads["/dev/zero"]["error"] == "not a regular file: no digest"
    assert reads[str(small)]["sha256"] == hashlib.sha256(
        (tmp_path / "moved.txt").read_bytes()).hexdigest()
    assert reads[str(small)]["size"] == os.path.getsize(tmp_path / "moved.txt")
    written = next(r["detail"]["agent"] for r in rows if r["event"] == "file_written")
    assert (written["path"], written["transferred"]) == (str(huge), 4)
    assert written["error"] == "the session ended before the digest was taken"
