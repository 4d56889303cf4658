"""common/handshake.py: a real asyncssh handshake on loopback, without the work it did for
nothing, and with exactly the outcome it had."""
from __future__ import annotations

import asyncssh
import pytest
from asyncssh import saslprep as saslprep_module
from cryptography.hazmat.primitives.asymmetric import mlkem

from common.handshake import cheaper_handshakes
from common.transport import KEX_ALGS
from tests.sshserver import PasswordServer

pytestmark = pytest.mark.skipif(not hasattr(mlkem, "MLKEM768PrivateKey"),
                                reason="this cryptography has no ML-KEM")

PASSWORD = "3f9c-pass word~!"


async def _login(username: str, password: str, logins: list) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    server = await asyncssh.create_server(lambda: PasswordServer(PASSWORD, logins), "127.0.0.1", 0,
                                          server_host_keys=[key], kex_algs=KEX_ALGS)
    port = server.sockets[0].getsockname()[1]
    try:
        async with asyncssh.connect("127.0.0.1", port, known_hosts=None, username=username,
                                    password=password, client_keys=None,
                                    kex_algs=["mlkem768x25519-sha256"],
                                    preferred_auth="password"):
            pass
    finally:
        server.close()
        await server.wait_closed()


async def test_the_server_makes_no_ml_kem_key_and_the_exchange_still_agrees(monkeypatch) -> None:
    cheaper_handshakes()
    made = []
    original = mlkem.MLKEM768PrivateKey.generate

    def counted():
        made.append(1)
        return original()

    from asyncssh.crypto import pq
    monkeypatch.setitem(pq._pyca_pq_alg_classes, b"mlkem768",
                        (type("Counted", (), {"generate": staticmethod(counted)}),
                         mlkem.MLKEM768PublicKey))
    logins: list = []
    await _login("support", PASSWORD, logins)
    # One key pair in all, the client's: the server only encapsulated to it.
    assert len(made) == 1
    assert logins == [("support", PASSWORD)]


@pytest.mark.parametrize("text", ["s4bc7d9e2f1a0b3c", "alice", "pa ss~word!", "",
                                  "I\u00adX", "\u2168", "caf\u00e9", "a\u00a0b", "\u0627a"])
def test_saslprep_gives_what_it_gave(text: str) -> None:
    cheaper_handshakes()
    from asyncssh import auth, connection

    def outcome(prep):
        try:
            return prep(text)
        except saslprep_module.SASLPrepError as exc:
            return type(exc)
    expected = outcome(saslprep_module.saslprep)
    assert outcome(auth.saslprep) == expected
    assert outcome(connection.saslprep) == expected


@pytest.mark.parametrize("text", ["\x00x", "a\x7fb", "\x1b[31m"])
def test_control_characters_are_still_refused(text: str) -> None:
    cheaper_handshakes()
    from asyncssh import auth
    with pytest.raises(saslprep_module.SASLPrepError):
        auth.saslprep(text)


async def test_a_non_ascii_password_still_logs_in_as_saslprep_maps_it() -> None:
    cheaper_handshakes()
    logins: list = []
    # U+00AD (soft hyphen) maps to nothing: the server sees the password without it.
    await _login("support", PASSWORD[:4] + "\u00ad" + PASSWORD[4:], logins)
    assert logins == [("support", PASSWORD)]
