"""Bulk file transfer through the relay with the console's transport settings.

A 32 MiB download and upload must arrive intact, and the relay must move them without
faulting in fresh memory for every packet: before the allocator was tuned
(common/transport.py tune_allocator) the relay took ~2,700 page faults per relayed MB, which
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


async def test_relayed_data_crosses_in_whole_packets(relay, agents, tmp_path: Path) -> None:
    """Each inner SSH packet, with the IGNORE asyncssh sends before it, crosses the relay as one
    outer packet. Inner packets as large as the outer ones each crossed as a full packet and
    a ~100-byte one: twice the per-packet work on every hop, 15 % off relayed transfers."""
    source = tmp_path / "source.bin"
    source.write_bytes(os.urandom(8 * MIB))
    async with Api(relay.base_url) as api:
        view, _agent = await start_session(api, agents, tmp_path)
        async with technician_ssh(relay, api, view) as inner, \
                inner.start_sftp_client() as sftp:
            remote = str(tmp_path / "on-host.bin")
            await sftp.put(str(source), remote)
            chunks: list[int] = []
            deliver = inner.data_received

            def counting(data: bytes, datatype=None) -> None:
                chunks.append(len(data))
                deliver(data, datatype)

            inner.data_received = counting  # what each outer packet hands the inner connection
            await sftp.get(remote, str(tmp_path / "back.bin"))
    assert (tmp_path / "back.bin").read_bytes() == source.read_bytes()
    # A handful of small packets are SFTP's own replies (open, stat, close); split packets
    # would add one per large one.
    small = [size for size in chunks if size < 1024]
    large = [size for size in chunks if size >= 64 * 1024]
    assert sum(chunks) > 8 * MIB
    assert len(small) < len(large) / 4, \
        f"{len(small)} outer packets carried under 1 KiB, against {len(large)} large ones"
