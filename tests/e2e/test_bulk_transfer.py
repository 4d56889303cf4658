"""Bulk file transfer through the relay with the console's transport settings.

A 32 MiB download and upload must arrive intact, and the relay must move them without
faulting in fresh memory for every packet: before the allocator was tuned
(relay/transport.py tune_allocator) the relay took ~2,700 page faults per relayed MB, which
made it the slowest part of every transfer (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import pytest

from tests.support import Api, start_session, technician_ssh

MIB = 1024 * 1024
SIZE = 32 * MIB
# Tuned, the relay takes single-digit faults per MB; untuned, thousands.
MAX_RELAY_FAULTS_PER_MB = 200

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="reads page-fault counts from /proc")


def minor_faults(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[7])  # minflt, field 10 of proc(5)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_bulk_transfer_is_intact_and_reuses_relay_memory(relay, agents, tmp_path: Path
                                                               ) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(os.urandom(SIZE))
    async with Api(relay.base_url) as api:
        view, _agent = await start_session(api, agents, tmp_path)
        async with technician_ssh(relay, api, view) as inner, \
                inner.start_sftp_client() as sftp:
            remote = str(tmp_path / "on-host.bin")
            back = tmp_path / "back.bin"
            await sftp.put(str(source), remote)  # warm-up: the first MBs set the heap up
            before = minor_faults(relay.proc.pid)
            await sftp.get(remote, str(back))
            await sftp.put(str(source), remote)
            faults = minor_faults(relay.proc.pid) - before
    assert sha256(back) == sha256(source) == sha256(Path(remote))
    per_mb = faults / (2 * SIZE / MIB)
    assert per_mb < MAX_RELAY_FAULTS_PER_MB, \
        f"the relay took {per_mb:.0f} page faults per relayed MB (tuned: single digits)"
