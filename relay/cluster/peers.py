"""Relay-to-relay SSH: the cluster key, the connections a relay opens to the other nodes, and a
technician's channel spliced through one to the node that holds the agent.

Every node of a cluster starts from a copy of the first node's data dir, so all hold the same
relay host key (which the peer connection pins) and the same cluster key (which the peer
accepts for the one user PEER_USER, and for nothing but opening a channel to an agent it
holds). A technician's credentials never cross: the technician's own relay authorises the
channel and audits it; the holding relay only splices.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import asyncssh

from common.transport import INNER_PORT, client_options, pinned
from relay.sshkeys import load_or_create_key

log = logging.getLogger("adhoc.relay.cluster")

# The user name a relay logs in to another relay as; "@" is never part of a technician's login
# (relay/usecases/shared.py LOGIN_RE) nor of a session id.
PEER_USER = "@cluster"
PEER_CONNECT_TIMEOUT = 5.0
PEER_KEEPALIVE = 10.0


def load_or_create_cluster_key(path: Path) -> asyncssh.SSHKey:
    """The key relays of one cluster log in to each other with; created once, mode 0600."""
    return load_or_create_key(path)


def same_public_key(offered: asyncssh.SSHKey, ours: asyncssh.SSHKey) -> bool:
    return offered.public_data == ours.public_data


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class PeerUnreachable(Exception):
    """The node holding the agent cannot be reached (it died, or is stopping)."""


class Peers:
    """One SSH connection to each other node, opened when a technician first needs it and
    kept while it lives."""

    def __init__(self, cluster_key: asyncssh.SSHKey, relay_host_key: str) -> None:
        self._key = cluster_key
        self._known_hosts = pinned(relay_host_key)
        self._conns: dict[str, asyncssh.SSHClientConnection] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def connection(self, address: str) -> asyncssh.SSHClientConnection:
        lock = self._locks.setdefault(address, asyncio.Lock())
        async with lock:
            conn = self._conns.get(address)
            if conn is not None and not conn.is_closed():
                return conn
            host, port = split_address(address)
            try:
                conn = await asyncio.wait_for(asyncssh.connect(
                    host, port, username=PEER_USER, client_keys=[self._key],
                    known_hosts=self._known_hosts, agent_path=None, config=None,
                    preferred_auth="publickey", keepalive_interval=PEER_KEEPALIVE,
                    keepalive_count_max=3, **client_options(outer=True)),
                    PEER_CONNECT_TIMEOUT)  # outer: to another relay, writes joined as the console's
            except (OSError, asyncssh.Error, TimeoutError) as exc:
                raise PeerUnreachable(f"{address}: {exc or 'timed out'}") from None
            self._conns[address] = conn
            return conn

    async def open_to_agent(self, address: str, session_id: str, login: str, orig_port: int,
                            session_factory, **channel) -> None:
        """Open a channel through the node at `address` to the agent it holds, as `login`
        (the name the agent shows its customer)."""
        conn = await self.connection(address)
        try:
            await conn.create_connection(session_factory, session_id, INNER_PORT, login,
                                         orig_port, **channel)
        except asyncssh.ChannelOpenError:
            raise  # the peer's answer (it does not hold the agent): the caller words it
        except (OSError, asyncssh.Error) as exc:
            raise PeerUnreachable(f"{address}: {exc}") from None

    async def close(self) -> None:
        conns, self._conns = list(self._conns.values()), {}
        for conn in conns:
            conn.close()
        for conn in conns:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.wait_closed(), 2)
