"""common/packets.py: bulk data both ways over a real asyncssh connection on loopback, through
several rekeys, arrives intact, with one AES-GCM context per key instead of one per packet."""
from __future__ import annotations

import os

import asyncssh
import pytest
from asyncssh.crypto import cipher as asyncssh_cipher
from cryptography.hazmat.primitives.ciphers import aead

from common.transport import tune_process
from tests.sshserver import PasswordServer

PASSWORD = "packets-pass"
SIZE = 4 * 1024 * 1024


async def _echo(process: asyncssh.SSHServerProcess) -> None:
    data = await process.stdin.readexactly(SIZE)
    process.stdout.write(data[::-1])
    process.exit(0)


async def _round_trip(cipher: str, payload: bytes) -> bytes:
    key = asyncssh.generate_private_key("ssh-ed25519")
    # A rekey every 1 MiB: the cheaper path must hand over to asyncssh's and back.
    server = await asyncssh.create_server(
        lambda: PasswordServer(PASSWORD, []), "127.0.0.1", 0, server_host_keys=[key],
        process_factory=_echo, encoding=None, encryption_algs=[cipher], rekey_bytes=1 << 20)
    port = server.sockets[0].getsockname()[1]
    try:
        async with asyncssh.connect("127.0.0.1", port, known_hosts=None, username="support",
                                    password=PASSWORD, client_keys=None,
                                    encryption_algs=[cipher], rekey_bytes=1 << 20) as conn:
            result = await conn.run("echo", input=payload, encoding=None, check=True)
            return result.stdout
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("cipher", ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com",
                                    "chacha20-poly1305@openssh.com"])
async def test_bulk_data_both_ways_through_rekeys_arrives_intact(cipher: str) -> None:
    tune_process()
    payload = os.urandom(SIZE)
    assert await _round_trip(cipher, payload) == payload[::-1]


async def test_one_aes_gcm_context_per_key_not_per_packet(monkeypatch) -> None:
    tune_process()
    made = []

    real = aead.AESGCM

    def Counted(key: bytes):
        made.append(bytes(key))
        return real(key)

    monkeypatch.setattr(asyncssh_cipher, "AESGCM", Counted)
    monkeypatch.setattr(aead, "AESGCM", Counted)
    payload = os.urandom(SIZE)
    assert await _round_trip("aes128-gcm@openssh.com", payload) == payload[::-1]
    keys = set(made)
    # Rekeys every MiB: new keys each time, both directions, both ends (2 without them).
    assert len(keys) >= 16, len(keys)
    # asyncssh alone made a context for every packet: 646 here. Now one per key, and
    # asyncssh's own path for the packets of the login and of each key exchange.
    assert len(made) < 200, len(made)
