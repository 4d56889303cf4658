"""THREATS.md: who an SSH connection to the relay speaks for, and for how long. Revocation
cuts live access; a key query gives no identity; an ended session keeps no connection."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncssh
import httpx
import pytest

from common.transport import pinned
from tests.relay.conftest import activate, agent_connection, create, db_write, wait_closed
from tests.support import Api, run_cli

ON_BOTH_ENGINES = True  # what this module tests is decided by the store

NEW_PASSWORD = "Another-long-pass-9"


class _Echo(asyncssh.SSHTCPSession):
    """What a host's inner server would be for these tests: bytes come back as they went."""

    def connection_made(self, chan) -> None:
        self._chan = chan

    def data_received(self, data, datatype) -> None:
        self._chan.write(data)


@contextlib.asynccontextmanager
async def online_host(relay, api: Api) -> AsyncIterator[dict]:
    """A session of `api`'s technician, activated, with an agent online that echoes."""
    session = (await create(api)).json()
    activation = (await activate(relay.base_url, session)).json()
    async with agent_connection(relay, activation, register=False) as agent:
        await agent.create_server(lambda *_: _Echo(), activation["session_id"], 22)
        await api.wait_for(session["id"], lambda v: v["online"])
        yield session


async def relay_key(relay) -> str:
    async with httpx.AsyncClient(base_url=relay.base_url, timeout=30) as client:
        return (await client.get("/api/v1/relay")).json()["host_key"]


async def technician_relay(relay, login: str, secret: str) -> asyncssh.SSHClientConnection:
    return await asyncssh.connect(relay.ssh_host, relay.ssh_port, username=login,
                                  password=secret, known_hosts=pinned(await relay_key(relay)),
                                  client_keys=None, agent_path=None, config=None,
                                  preferred_auth="password")


async def echo_tunnel(conn: asyncssh.SSHClientConnection, session_id: str):
    reader, writer = await conn.open_connection(session_id, 22)
    writer.write(b"ping")
    assert await asyncio.wait_for(reader.readexactly(4), 10) == b"ping"
    return reader, writer


async def assert_cut(conn: asyncssh.SSHClientConnection, reader, session_id: str) -> None:
    """The held connection is closed, its tunnel gone, and no new tunnel opens on it."""
    assert await asyncio.wait_for(reader.read(), 3) == b""  # EOF: the channel is gone
    await wait_closed(conn, 3)
    with pytest.raises((asyncssh.ChannelOpenError, asyncssh.DisconnectError, OSError)):
        await conn.open_connection(session_id, 22)


@pytest.mark.parametrize("how", ["api-disable", "api-reset", "cli-disable", "cli-reset",
                                 "cli-company"])
async def test_revocation_cuts_a_held_connection_and_its_tunnels(relay, how: str) -> None:
    async with Api(relay.base_url, "alice") as alice, Api(relay.base_url, "bob") as bob, \
            online_host(relay, bob) as session:
        conn = await technician_relay(relay, "bob", bob.token)
        reader, _ = await echo_tunnel(conn, session["id"])
        if how == "api-disable":
            response = await alice.client.post("/api/v1/admin/technicians/bob/disable")
            assert response.status_code == 200, response.text
        elif how == "api-reset":
            response = await alice.client.post("/api/v1/admin/technicians/bob/reset-password",
                                               json={"password": NEW_PASSWORD})
            assert response.status_code == 200, response.text
        elif how == "cli-disable":
            run_cli(relay.data_dir, "technician", "disable", "bob")
        elif how == "cli-reset":
            run_cli(relay.data_dir, "technician", "reset-password", "bob", "--password-stdin",
                    stdin=NEW_PASSWORD + "\n")
        else:
            run_cli(relay.data_dir, "company", "disable", "Acme")
        await assert_cut(conn, reader, session["id"])
        # The token the connection used is revoked: it opens no new connection either.
        with pytest.raises(asyncssh.PermissionDenied):
            await technician_relay(relay, "bob", bob.token)
        assert (await bob.client.get("/api/v1/me")).status_code == 401


async def test_every_channel_open_re_reads_technician_and_company(relay) -> None:
    """Changed behind the relay's back (an operator's SQL, no audit row): the next tunnel on
    a held connection is refused all the same."""
    async with Api(relay.base_url, "bob") as bob, online_host(relay, bob) as session:
        conn = await technician_relay(relay, "bob", bob.token)
        await echo_tunnel(conn, session["id"])
        for table, column, value in (("technicians", "login", "bob"),
                                     ("companies", "name", "Acme")):
            db_write(relay.data_dir, f"UPDATE {table} SET disabled = 1 WHERE {column} = ?",
                     (value,))
            with pytest.raises(asyncssh.ChannelOpenError) as refused:
                await conn.open_connection(session["id"], 22)
            assert "revoked" in refused.value.reason
            db_write(relay.data_dir, f"UPDATE {table} SET disabled = 0 WHERE {column} = ?",
                     (value,))
            await echo_tunnel(conn, session["id"])
        conn.close()


class _PublicKeyOnly(asyncssh.SSHKeyPair):
    """An attacker's key pair: the victim's public key, signed for with a key of their own."""

    def __init__(self, signer: asyncssh.SSHKey, public: asyncssh.SSHKey) -> None:
        super().__init__(public.algorithm, public.algorithm, public.sig_algorithms,
                         public.sig_algorithms, public.public_data, None)
        self._signer = signer

    def sign(self, data: bytes) -> bytes:
        return self._signer.sign(data, self.sig_algorithm)


async def test_a_key_query_then_an_agent_login_gives_no_technician_rights(relay) -> None:
    victim_key = asyncssh.generate_private_key("ssh-ed25519")
    key_file = relay.data_dir / "alice.pub"
    key_file.write_bytes(victim_key.export_public_key())
    run_cli(relay.data_dir, "technician", "add-key", "alice", str(key_file))
    attacker_key = asyncssh.generate_private_key("ssh-ed25519")
    offered = _PublicKeyOnly(attacker_key, victim_key.convert_to_public())

    async with Api(relay.base_url, "alice") as alice, Api(relay.base_url, "carol") as carol, \
            online_host(relay, alice) as acme_session:
        # The attacker is a customer of another company: they hold an agent secret.
        theirs = (await create(carol)).json()
        activation = (await activate(relay.base_url, theirs)).json()
        attacker_session = activation["session_id"]

        class QueryThenSwitch(asyncssh.SSHClient):
            def connection_made(self, conn) -> None:
                self.conn = conn

            def public_key_auth_requested(self):
                first, self.queried = not getattr(self, "queried", False), True
                return [offered] if first else None

            def password_auth_requested(self):
                self.conn._username = attacker_session  # change user name mid-auth
                return activation["agent_secret"]

        conn, _ = await asyncssh.create_connection(
            QueryThenSwitch, relay.ssh_host, relay.ssh_port, username="alice",
            known_hosts=pinned(activation["relay_host_key"]), client_keys=None,
            agent_path=None, config=None, preferred_auth="publickey,password")
        try:
            # It logged in as the agent it had the secret of, and as nothing more.
            with pytest.raises(asyncssh.ChannelOpenError):
                await conn.open_connection(acme_session["id"], 22)
            await conn.create_server(lambda *_: False, attacker_session, 22)  # agent only
        finally:
            conn.close()
        audit = (await alice.client.get(
            f"/api/v1/sessions/{acme_session['id']}/audit")).json()["audit"]
        assert not [row for row in audit if row["event"] == "tunnel"]


async def test_a_public_key_that_only_matches_is_no_login(relay) -> None:
    """Offering a technician's public key without its private key logs nobody in."""
    victim_key = asyncssh.generate_private_key("ssh-ed25519")
    key_file = relay.data_dir / "alice.pub"
    key_file.write_bytes(victim_key.export_public_key())
    run_cli(relay.data_dir, "technician", "add-key", "alice", str(key_file))
    offered = _PublicKeyOnly(asyncssh.generate_private_key("ssh-ed25519"),
                             victim_key.convert_to_public())
    info_key = await relay_key(relay)
    with pytest.raises(asyncssh.PermissionDenied):
        await asyncssh.connect(relay.ssh_host, relay.ssh_port, username="alice",
                               known_hosts=pinned(info_key), client_keys=[offered],
                               agent_path=None, config=None, preferred_auth="publickey")
    # With the private key it is a login.
    async with asyncssh.connect(relay.ssh_host, relay.ssh_port, username="alice",
                                known_hosts=pinned(info_key), client_keys=[victim_key],
                                agent_path=None, config=None, preferred_auth="publickey"):
        pass


async def test_an_ended_session_keeps_no_agent_connection(relay) -> None:
    """Even one that authenticated and never registered its forward: it is closed at the
    end, and can never bring the ended session online."""
    async with Api(relay.base_url, "alice") as alice:
        session = (await create(alice)).json()
        activation = (await activate(relay.base_url, session)).json()
        async with agent_connection(relay, activation, register=False) as quiet:
            response = await alice.client.post(f"/api/v1/sessions/{session['id']}/end")
            assert response.status_code == 200
            await wait_closed(quiet, 5)
            assert "session ended" in str(quiet.agent.lost_because)
            with pytest.raises((asyncssh.Error, asyncssh.ChannelListenError, OSError)):
                await quiet.create_server(lambda *_: False, activation["session_id"], 22)
        view = await alice.session(session["id"])
        assert view["state"] == "ended" and not view["online"]
        with pytest.raises(asyncssh.PermissionDenied):
            async with agent_connection(relay, activation, register=False):
                pass
