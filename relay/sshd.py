"""The relay's SSH endpoint: agents register a virtual forward, technicians are spliced to it.

The relay never terminates the inner SSH connection between console and agent: it joins the
technician's `direct-tcpip` channel to a `forwarded-tcpip` channel it opens to the agent and
copies bytes both ways, with flow control. It cannot read or forge what passes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import logging
import os
import random
import re
import socket
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import asyncssh
from asyncssh.constants import MSG_DISCONNECT
from asyncssh.packet import String, UInt32

from common.protocol import RELAYS_HOST
from common.secret import Secret
from common.transport import (
    INNER_PORT,
    OUTER_PACKET,
    OUTER_WINDOW,
    SERVER_ALGORITHMS,
    CoalescingWriter,
    coalescing_protocol,
    same_key,
    sha2_signatures_only,
)
from relay import sessions as rules
from relay.cluster.nodes import NODE_STALE, RelayListSession
from relay.cluster.peers import PEER_USER, PeerUnreachable, same_public_key
from relay.listeners import listening_socket
from relay.openfiles import OUT_OF_FILES, OpenFiles
from relay.registry import AgentLink
from relay.service import RelayService, ServiceError
from relay.sshkeys import key_weakness, load_or_create_key
from relay.stats import Stats
from relay.store import SessionRow, Technician

log = logging.getLogger("adhoc.relay.ssh")

SESSION_ID_RE = re.compile(r"^[a-z2-7]{16}$")
# ADHOC_RELAY_KEEPALIVE (seconds) lets fault tests see a dead link in seconds, not a minute.
# Longer than the agents' 15 s: an agent's keepalive resets the relay's timer, so the relay
# only ever answers and never asks while agents are alive (half the keepalive traffic at
# 10,000 idle agents), yet a silent link is still dropped within 3 x 20 s.
KEEPALIVE_INTERVAL = float(os.environ.get("ADHOC_RELAY_KEEPALIVE", "20"))
KEEPALIVE_COUNT = 3
LOGIN_TIMEOUT = 30
# A client must have finished its key exchange and begun to authenticate this many seconds
# after its handshake started (the relay sent its version line), or it is dropped: a silent or
# slow connection holds a handshake place for seconds, not for the whole LOGIN_TIMEOUT.
KEX_TIMEOUT = float(os.environ.get("ADHOC_RELAY_KEX_TIMEOUT", "10"))
# Like OpenSSH's MaxStartups, a gate on connections still in their handshake. After a relay
# restart every agent dials at the same moment; with no gate 10,000 handshakes crawled along
# together until the agents' 20 s timeout and none finished, and dropping the excess only made
# the agents dial again at once. So past MAX_STARTUPS new connections wait, accepted but not
# yet answered, and are started as handshakes finish; the agents wait for the relay's version
# line with a timeout of their own (common/transport.py wait_for_banner). The queue is the
# relay's, not the kernel's: a full accept queue drops SYNs, and a client whose ACK was dropped
# under SYN cookies waits in silence for a banner that never comes.
# One source (an IPv4 address, or an IPv6 /64: one host has a whole /64) may hold only a small
# share of the handshakes, and waiting sources are started in turn, so silent connections from
# a few hosts cannot shut the door on others; only so many may wait, in all and from one
# source; and past MAX_STARTUPS_DROP's start, new connections are turned away at random, more
# the fuller the gate (OpenSSH's start:rate:full early drop).
MAX_STARTUPS = int(os.environ.get("ADHOC_RELAY_MAX_STARTUPS", "128"))
MAX_STARTUPS_PER_SOURCE = int(os.environ.get("ADHOC_RELAY_MAX_STARTUPS_PER_SOURCE",
                                             str(max(1, MAX_STARTUPS // 8))))
MAX_QUEUED = int(os.environ.get("ADHOC_RELAY_MAX_QUEUED", "16384"))
MAX_QUEUED_PER_SOURCE = int(os.environ.get("ADHOC_RELAY_MAX_QUEUED_PER_SOURCE", "512"))
MAX_STARTUPS_DROP = os.environ.get("ADHOC_RELAY_MAX_STARTUPS_DROP",
                                   f"{MAX_QUEUED // 2}:30:{MAX_QUEUED}")
# The same as the clients' legs (common/transport.py): the splice adds a hop, so more bytes in
# flight pay.
CHANNEL_WINDOW = OUTER_WINDOW
CHANNEL_PACKET = OUTER_PACKET


class _SpliceEnd(asyncssh.SSHTCPSession):
    """One side of a spliced pair of channels: what it receives it writes to its peer."""

    def __init__(self, stats: Stats | None = None) -> None:
        self.chan: asyncssh.SSHTCPChannel | None = None
        self._out: CoalescingWriter | None = None  # writes to chan, joined per loop turn
        self.peer: _SpliceEnd | None = None
        self.stats = stats  # bytes relayed, for the metrics
        self.on_close: Callable[[], None] | None = None
        self._pending: list[bytes] = []
        self._eof_pending = False
        self._pause_pending = False
        self._closed = False
        # Instead of closing this end's channel: True if the whole connection was closed with
        # a reason instead (the technician's end, when the session ended under it).
        self.farewell: Callable[[], bool] = lambda: False

    def connection_made(self, chan: asyncssh.SSHTCPChannel) -> None:
        self.chan = chan
        # What the peer receives in one turn goes on in full packets of this channel's size,
        # not one packet (or two) per packet received; a lone keystroke still goes at once.
        self._out = CoalescingWriter(chan)
        if self._pause_pending:
            chan.pause_reading()
        for data in self._pending:
            self._out.write(data)
        self._pending.clear()
        if self._eof_pending:
            self._out.write_eof()
        if self._closed:
            self._out.close()

    # These run inside the *other* connection's callbacks: an exception escaping here would
    # make asyncssh drop that whole connection (an agent's, with every technician on it)
    # because this channel was already closing. A failure closes just this pair.

    def write(self, data: bytes) -> None:
        if self.chan is None:
            self._pending.append(data)
        elif not self._closed:
            self._guard(self._out.write, data)

    def write_eof(self) -> None:
        if self.chan is None:
            self._eof_pending = True
        elif not self._closed:
            self._guard(self._out.write_eof)

    def pause_reading(self) -> None:
        if self.chan is None:
            self._pause_pending = True
        elif not self._closed:
            self._guard(self.chan.pause_reading)

    def resume_reading(self) -> None:
        if self.chan is None:
            self._pause_pending = False
        elif not self._closed:
            self._guard(self.chan.resume_reading)

    def _guard(self, operation, *args) -> None:
        try:
            operation(*args)
        except (OSError, asyncssh.Error, RuntimeError):
            self.close()

    def data_received(self, data: bytes, datatype) -> None:
        if self.stats is not None:
            self.stats.bytes_relayed += len(data)
        if self.peer:
            self.peer.write(data)

    def eof_received(self) -> bool:
        if self.peer:
            self.peer.write_eof()
        return True

    def pause_writing(self) -> None:
        if self.peer:
            self.peer.pause_reading()

    def resume_writing(self) -> None:
        if self.peer:
            self.peer.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.on_close is not None:
            self.on_close()
        if self.chan is not None and not self.farewell():
            with contextlib.suppress(OSError, asyncssh.Error, RuntimeError):
                self._out.close()  # what it holds first, as a write before close would go
        if self.peer is not None:
            self.peer.close()


def splice_pair(stats: Stats | None = None) -> tuple[_SpliceEnd, _SpliceEnd]:
    a, b = _SpliceEnd(stats), _SpliceEnd(stats)
    a.peer, b.peer = b, a
    return a, b


class _VirtualListener(asyncssh.SSHListener):
    """A remote forward that only exists as a name: nothing listens on a socket."""

    def __init__(self, server: RelaySSHServer, link: AgentLink) -> None:
        self._server = server
        self._link = link
        self._closed = asyncio.Event()

    def get_port(self) -> int:
        return INNER_PORT

    def close(self) -> None:
        if not self._closed.is_set():
            self._closed.set()
            self._server.forward_closed(self._link)

    async def wait_closed(self) -> None:
        await self._closed.wait()


def source_of(address: str) -> str:
    """Whom a connection counts against: its IPv4 address, or its IPv6 /64."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return address


def parse_early_drop(text: str) -> tuple[int, int, int]:
    """OpenSSH's MaxStartups "start:rate:full" (rate in percent)."""
    start, rate, full = (int(part) for part in text.split(":"))
    if not (0 <= start <= full and 0 <= rate <= 100):
        raise ValueError(f"cannot read {text!r} as start:rate:full")
    return start, rate, full


class Startups:
    """Connections that have not authenticated yet: which wait, which are in their handshake,
    and which are turned away at once."""

    def __init__(self, limit: int = MAX_STARTUPS, per_source: int = MAX_STARTUPS_PER_SOURCE,
                 queue: int = MAX_QUEUED, queue_per_source: int = MAX_QUEUED_PER_SOURCE,
                 early_drop: tuple[int, int, int] | None = None,
                 chance: Callable[[], float] = random.random) -> None:
        self.limit = limit
        self.per_source = per_source
        self.queue = queue
        self.queue_per_source = queue_per_source
        self.early_drop = early_drop or parse_early_drop(MAX_STARTUPS_DROP)
        self._chance = chance
        self.in_flight = 0
        self.dropped = 0
        self.on_room: Callable[[], None] = lambda: None  # a handshake ended
        self._by_source: dict[str, int] = {}
        # source -> its waiting connections in arrival order; sources in the order they are
        # served (one served goes to the back)
        self._waiting: OrderedDict[str, collections.deque[object]] = OrderedDict()
        self._count = 0
        self._last_logged = 0.0

    @property
    def waiting(self) -> int:
        return self._count

    def _drop_early(self) -> bool:
        """OpenSSH's random early drop on everything not yet authenticated."""
        start, rate, full = self.early_drop
        pending = self.in_flight + self._count
        if pending < start:
            return False
        if pending >= full:
            return True
        probability = (rate + (100 - rate) * (pending - start) / max(1, full - start)) / 100
        return self._chance() < probability

    def offer(self, address: str, item: object) -> bool:
        """Queue a new connection from `address`; False if it must be turned away."""
        source = source_of(address)
        mine = len(self._waiting.get(source, ()))
        if self._count >= self.queue or mine >= self.queue_per_source or self._drop_early():
            self.dropped += 1
            now = time.monotonic()
            if now - self._last_logged >= 5:
                self._last_logged = now
                log.warning("ssh: %d connections waiting for a handshake, %d in one (%d from "
                            "%s): turning new ones away (%d so far)", self._count,
                            self.in_flight, mine, source, self.dropped)
            return False
        self._waiting.setdefault(source, collections.deque()).append(item)
        self._count += 1
        return True

    def take(self) -> tuple[str, object] | None:
        """The next waiting connection that may start its handshake now, if any.

        Sources take turns; one that already holds its share of handshakes is passed over,
        so one host cannot keep the others waiting. There are at most limit/per_source such
        sources: the scan is short."""
        if self.in_flight >= self.limit:
            return None
        for source, items in self._waiting.items():
            mine = self._by_source.get(source, 0)
            if mine < self.per_source:
                item = items.popleft()
                if items:
                    self._waiting.move_to_end(source)
                else:
                    del self._waiting[source]
                self._count -= 1
                self.in_flight += 1
                self._by_source[source] = mine + 1
                return source, item
        return None

    def drain(self) -> list[tuple[str, object]]:
        """Every waiting connection, no longer queued (the listener is closing)."""
        waiting = [(source, item) for source, items in self._waiting.items() for item in items]
        self._waiting.clear()
        self._count = 0
        return waiting

    def done(self, address: str) -> None:
        """A handshake ended (authenticated, or gone)."""
        source = source_of(address)
        self.in_flight -= 1
        left = self._by_source.pop(source) - 1
        if left:
            self._by_source[source] = left
        self.on_room()


class _PeerNamed:
    """A connection's transport that reports `peer` as its peer: a WebSocket's SSH arrives
    on one end of a socket pair, whose own peer address means nothing."""

    def __init__(self, transport, peer: tuple[str, int]) -> None:
        self._transport = transport
        self._peer = peer

    def get_extra_info(self, name: str, default=None):
        if name == "peername":
            return self._peer
        return self._transport.get_extra_info(name, default)

    def __getattr__(self, name: str):
        return getattr(self._transport, name)


class _PeerNamedProtocol:
    def __init__(self, protocol, peer: tuple[str, int]) -> None:
        self._protocol = protocol
        self._peer = peer

    def connection_made(self, transport) -> None:
        self._protocol.connection_made(_PeerNamed(transport, self._peer))

    def __getattr__(self, name: str):
        return getattr(self._protocol, name)


class _GatedServer:
    """The relay's SSH entrance. It accepts every connection at once and starts handshakes
    only while there is room (Startups): the rest wait, costing a socket each, in arrival
    order. Connections come from its listening socket (none with `--ssh off`) and from
    WebSockets on the HTTP listener (adopt), through the same gate."""

    def __init__(self, sock: socket.socket | None, startups: Startups,
                 protocol_factory) -> None:
        self.sockets = [sock] if sock is not None else []
        self._startups = startups
        self._factory = protocol_factory
        self._loop = asyncio.get_running_loop()
        self._starting: set[asyncio.Task] = set()
        self._closed = False
        self.open_files = OpenFiles()
        startups.on_room = self._start_waiting
        self._task = self._loop.create_task(self._accept_forever()) if sock else None

    async def _accept_forever(self) -> None:
        sock = self.sockets[0]
        while True:
            try:
                conn, addr = await self._loop.sock_accept(sock)
            except OSError as exc:
                if exc.errno in OUT_OF_FILES:
                    # At the limit: close what waits (its client tries again, maybe on
                    # another worker or relay) rather than leave it waiting for a banner.
                    while self.open_files.shed_one(sock):
                        pass
                else:
                    log.warning("ssh: accept failed: %s", exc)
                await asyncio.sleep(0.1)  # wait, do not spin
                continue
            if self.open_files.too_many(conn):
                conn.close()
                continue
            if self._startups.offer(addr[0], (conn, None)):
                self._start_waiting()
            else:
                conn.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def adopt(self, conn: socket.socket, peer: tuple[str, int]) -> bool:
        """Take a connection that arrived another way (a WebSocket's end of a socket pair)
        from `peer`; False if the gate turns it away (the caller closes it)."""
        if self._closed or self.open_files.too_many(conn) or \
                not self._startups.offer(peer[0], (conn, peer)):
            return False
        self._start_waiting()
        return True

    def _start_waiting(self) -> None:
        while (taken := self._startups.take()) is not None:
            source, (conn, peer) = taken
            task = self._loop.create_task(self._start(source, conn, peer))
            self._starting.add(task)
            task.add_done_callback(self._starting.discard)

    async def _start(self, source: str, conn: socket.socket,
                     peer: tuple[str, int] | None) -> None:
        factory = self._factory if peer is None else \
            (lambda: _PeerNamedProtocol(self._factory(), peer))
        try:
            await self._loop.connect_accepted_socket(factory, conn)
        except OSError:
            conn.close()
            self._startups.done(source)

    def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
        for sock in self.sockets:
            sock.close()
        self._startups.on_room = lambda: None
        for _, (conn, _peer) in self._startups.drain():
            conn.close()
        self.open_files.close()

    async def wait_closed(self) -> None:
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class _GatedListener:
    """asyncssh's `tunnel=` for the relay's own entrance (see _GatedServer): a listening
    socket on `listen_host:listen_port`, or none when `listen` is off."""

    def __init__(self, startups: Startups, listen: bool = True,
                 reuse_port: bool = False, sock: socket.socket | None = None) -> None:
        self._startups = startups
        self._listen = listen
        self._reuse_port = reuse_port  # shared with the other workers (--workers)
        self._sock = sock  # already listening (a worker's, kept by its parent)
        self.server: _GatedServer | None = None

    async def create_server(self, session_factory, listen_host: str, listen_port: int):
        sock = None
        if self._sock is not None:
            sock = self._sock
            sock.setblocking(False)
        elif self._listen:
            sock = listening_socket(listen_host or "", listen_port, reuse_port=self._reuse_port)
        self.server = _GatedServer(sock, self._startups,
                                   coalescing_protocol(lambda: _without_config_reload(
                                       session_factory("", 0))))
        return self.server


async def _unchanged_config() -> None:
    return None


def _without_config_reload(conn: asyncssh.SSHServerConnection) -> asyncssh.SSHServerConnection:
    """asyncssh rebuilds every server option at each login, in a worker thread, to apply
    sshd_config Match blocks for the user (and looks up this host's FQDN for GSS): about a
    tenth of the relay's CPU in a reconnect storm. The relay reads no config file and uses
    no GSS, so the rebuilt options would be the ones it already has."""
    conn.reload_config = _unchanged_config
    return conn


class RelaySSHServer(asyncssh.SSHServer):
    """One SSH connection to the relay: an agent (user name = session id, password = its
    secret) or a technician (login with a token, password or registered key), never both.

    Who a connection is gets decided only when authentication completes. Until then each
    attempt leaves at most one candidate, replaced by the next attempt and cleared when the
    user name changes: asyncssh asks validate_public_key about a key the client merely
    offers (no proof of the private key yet), and a client may try several users and
    methods in turn."""

    def __init__(self, service: RelayService, startups: Startups,
                 peer_only: bool = False) -> None:
        self.service = service
        self.startups = startups
        self.peer_only = peer_only  # a node's own peer listener: other relays only
        self.peer = False  # another relay of the cluster (relay/cluster/peers.py)
        self.conn: asyncssh.SSHServerConnection | None = None
        self.peer_ip = "unknown"
        self.technician: Technician | None = None
        self.agent_session: str | None = None
        self.link: AgentLink | None = None
        self._starting = False
        self._lost = False
        self._attempt = 0
        # (user name, "agent" or "technician", session id or Technician) of the last attempt
        self._candidate: tuple[str, str, object] | None = None
        self._splices: set[_SpliceEnd] = set()  # a technician's channels to agents

    # --- connection and authentication -----------------------------------------------------

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        peer = conn.get_extra_info("peername")
        self.peer_ip = peer[0] if peer else "unknown"
        self._starting = True  # admitted by the listener (_GatedServer)
        self._kex_timer = asyncio.get_running_loop().call_later(KEX_TIMEOUT, self._kex_too_slow)

    def _kex_too_slow(self) -> None:
        """No key exchange and first auth request within KEX_TIMEOUT: give the place back."""
        log.info("ssh: %s did not finish its key exchange within %g s; dropped", self.peer_ip,
                 KEX_TIMEOUT)
        if self.conn is not None:
            self.conn.abort()

    def _started(self) -> None:
        if self._starting:
            self._starting = False
            self.startups.done(self.peer_ip)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._kex_timer.cancel()
        self._started()
        if self.link is not None:
            self.forward_closed(self.link)
        if self.agent_session is not None:
            self.service.connections.remove_agent(self.agent_session, self.conn)
        if self.technician is not None:
            self.service.connections.remove_technician(self.technician.id, self.conn)

    def _new_attempt(self) -> int:
        self._attempt += 1
        self._candidate = None
        return self._attempt

    def _propose(self, attempt: int, username: str, kind: str, who: object) -> bool:
        """Keep `who` as the candidate if no later attempt has begun; the result to return."""
        if attempt != self._attempt:
            return False
        self._candidate = (username, kind, who)
        return True

    def begin_auth(self, username: str) -> bool:
        self._kex_timer.cancel()  # key exchange done: LOGIN_TIMEOUT applies from here
        self._new_attempt()  # a new user name: nothing from the previous one carries over
        return True

    def password_auth_supported(self) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    async def validate_password(self, username: str, typed: str) -> bool:
        attempt = self._new_attempt()
        password = Secret(typed)  # an agent secret, a technician's password or API token
        if self.peer_only or username == PEER_USER:
            return False
        if SESSION_ID_RE.match(username):
            if await self.service.agent_may_connect(username, password):
                return self._propose(attempt, username, "agent", username)
        tech = await self.service.technician_for_ssh_password(username, password, self.peer_ip)
        if tech is not None:
            return self._propose(attempt, username, "technician", tech)
        self.service.stats.login("ssh", "agent" if SESSION_ID_RE.match(username)
                                 else "technician", "failed")
        return False

    async def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        attempt = self._new_attempt()
        if key_weakness(key) is not None:
            return False
        if self.peer_only or username == PEER_USER:
            # Another relay of the cluster: the cluster key, for that one user only.
            ours = self.service.cluster_key
            if username == PEER_USER and ours is not None and same_public_key(key, ours):
                return self._propose(attempt, username, "peer", None)
            return False
        sha2_signatures_only(key)
        try:
            tech = await self.service.store.technician_by_login(username)
        except Exception:
            return False
        if tech.disabled or (await self.service.store.company(tech.company_id)).disabled:
            return False
        for line in await self.service.store.ssh_keys(tech.id):
            if same_key(key, line):
                return self._propose(attempt, username, "technician", tech)
        return False

    def auth_completed(self) -> None:
        self._started()
        candidate, self._candidate = self._candidate, None
        username = self.conn.get_extra_info("username") if self.conn else None
        if candidate is None or candidate[0] != username:
            log.warning("ssh: authentication completed from %s with no matching candidate; "
                        "closing", self.peer_ip)
            if self.conn is not None:
                self.conn.close()
            return
        _, kind, who = candidate
        self.service.stats.login("ssh", kind, "ok")
        if kind == "peer":
            self.peer = True
            log.info("ssh: relay peer authenticated from %s", self.peer_ip)
        elif kind == "agent":
            self.agent_session = str(who)
            self.service.connections.add_agent(self.agent_session, self.conn)
            log.info("ssh: agent %s authenticated from %s", self.agent_session, self.peer_ip)
        else:
            assert isinstance(who, Technician)
            self.technician = who
            self.service.connections.add_technician(who.id, who.company_id, self.conn)
            log.info("ssh: technician %s authenticated from %s", who.login, self.peer_ip)

    # --- agents ----------------------------------------------------------------------------

    async def server_requested(self, listen_host: str, listen_port: int):
        session_id = self.agent_session
        if session_id is None or listen_host.lower() != session_id \
                or listen_port != INNER_PORT:
            log.warning("ssh: refused forward %s:%s from %s", listen_host, listen_port,
                        self.peer_ip)
            return False
        # The session may have ended since the agent logged in: an ended session's agent
        # must never come back online.
        if not await self.service.agent_session_active(session_id) or self._lost:
            log.info("ssh: refused forward for %s: the session is not active", session_id)
            return False
        link = AgentLink(session_id, self.conn, self.peer_ip, self.service.clock())
        link.forward_registered = True
        previous = self.service.agents.add(link)
        if previous is not None and previous.conn is not self.conn:
            # The same agent (it knew the secret) came back before we noticed the old link die.
            previous.conn.close()
        self.link = link
        self.service.agent_presence(link.session_id, True, self.peer_ip)
        return _VirtualListener(self, link)

    def forward_closed(self, link: AgentLink) -> None:
        if self.service.agents.remove(link):
            self.service.agent_presence(link.session_id, False, link.ip)
        if self.link is link:
            self.link = None

    # --- technicians -----------------------------------------------------------------------

    def session_requested(self) -> bool:
        return False  # the relay offers no shell of its own: only tunnels to agents

    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str,
                             orig_port: int):
        if self.peer:
            chan = self.conn.create_tcp_channel(window=CHANNEL_WINDOW,
                                                max_pktsize=CHANNEL_PACKET)
            return chan, self._open_for_peer(dest_host.lower(), dest_port, orig_host, orig_port)
        if self.agent_session is not None and dest_host == RELAYS_HOST:
            return RelayListSession(self.service.relay_addresses())
        if self.technician is None:
            return False
        chan = self.conn.create_tcp_channel(window=CHANNEL_WINDOW, max_pktsize=CHANNEL_PACKET)
        return chan, self._open_tunnel(dest_host.lower(), dest_port, orig_host, orig_port)

    async def _open_tunnel(self, session_id: str, port: int, orig_host: str,
                           orig_port: int) -> asyncssh.SSHTCPSession:
        tech = self.technician
        assert tech is not None
        try:
            row = await self.service.may_tunnel(tech, session_id) if port == INNER_PORT \
                else None
        except ServiceError as exc:
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                                            exc.detail) from None
        active = row is not None and row.state == rules.State.ACTIVE
        link = self.service.agents.get(session_id) if active else None
        if active and link is None:  # held by another relay of the cluster?
            routed = await self._route_to_holder(session_id, tech.login, orig_port)
            if routed is not None:
                await self.service.audit_event(session_id, f"technician:{tech.login}",
                                               "tunnel", "ok", ip=self.peer_ip)
                return routed
        if row is None or link is None:
            outcome = "not_found" if row is None else "offline" \
                if row.state == rules.State.ACTIVE else "not_active"
            if row is not None:
                await self.service.audit_event(session_id, f"technician:{tech.login}",
                                               "tunnel", outcome, ip=self.peer_ip)
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED,
                                            unreachable(session_id, row))
        technician_end = await self._splice_to_agent(link, session_id, tech.login, orig_port)
        await self.service.audit_event(session_id, f"technician:{tech.login}", "tunnel", "ok",
                                       ip=self.peer_ip)
        return technician_end

    async def _splice_to_agent(self, link: AgentLink, session_id: str, login: str,
                               orig_port: int) -> _SpliceEnd:
        technician_end, agent_end = splice_pair(self.service.stats)
        technician_end.farewell = lambda: self._session_ended_under(session_id, link)
        await link.conn.create_connection(
            lambda: agent_end, session_id, INNER_PORT, login, orig_port,
            window=CHANNEL_WINDOW, max_pktsize=CHANNEL_PACKET)
        self.service.stats.tunnel_opened()
        self._splices.add(technician_end)
        technician_end.on_close = lambda: self._splice_closed(technician_end)
        return technician_end

    # --- the cluster -----------------------------------------------------------------------

    async def _route_to_holder(self, session_id: str, login: str,
                               orig_port: int) -> _SpliceEnd | None:
        """A technician's channel to an agent another node holds: spliced to a channel that
        node opens to the agent (relay/cluster/peers.py); None if no live node holds it."""
        service = self.service
        if service.cluster is None or service.peers is None:
            return None
        held = await service.store.holder(session_id)
        if held is None or held[0] == service.cluster.name \
                or held[2] < service.clock() - NODE_STALE:
            return None
        technician_end, peer_end = splice_pair(service.stats)
        try:
            await service.peers.open_to_agent(held[1], session_id, login, orig_port,
                                              lambda: peer_end, window=CHANNEL_WINDOW,
                                              max_pktsize=CHANNEL_PACKET)
        except (PeerUnreachable, asyncssh.ChannelOpenError) as exc:
            log.info("ssh: cannot reach %s's agent through node %s: %s", session_id, held[0],
                     getattr(exc, "reason", None) or exc)
            return None
        service.stats.tunnel_opened()
        technician_end.on_close = service.stats.tunnel_closed
        return technician_end

    async def _open_for_peer(self, session_id: str, port: int, login: str,
                             orig_port: int) -> asyncssh.SSHTCPSession:
        """Another node's channel for a technician it authorised: to the agent held here."""
        link = self.service.agents.get(session_id) if port == INNER_PORT else None
        if link is None:
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED,
                                            "the agent is not connected to this relay")
        return await self._splice_to_agent(link, session_id, login, orig_port)
    def _splice_closed(self, technician_end: _SpliceEnd) -> None:
        self._splices.discard(technician_end)
        self.service.stats.tunnel_closed()

    def _session_ended_under(self, session_id: str, link: AgentLink) -> bool:
        """The session of a channel ended while it was open: when that was all this
        technician's connection carried (`ssh -J` opens one per host), close the connection
        with the reason, which OpenSSH prints; otherwise just the channel goes."""
        if link.end_reason is None or self._splices or self.conn is None or self.peer:
            return False  # a peer relay's connection carries others' channels: never hung up
        say_and_hang_up(self.conn, f"Adhoc: session {session_id} has ended "
                        f"({rules.describe_end(link.end_reason, self.service.clock())})")
        return True


def say_and_hang_up(conn: asyncssh.SSHServerConnection, reason: str) -> None:
    """Disconnect with `reason` before any channel closes. asyncssh's disconnect() closes the
    channels first, and OpenSSH's `ssh -W` (a ProxyJump) exits on its channel's close without
    reading the disconnect message queued right behind it."""
    conn.send_packet(MSG_DISCONNECT, UInt32(asyncssh.DISC_SERVICE_NOT_AVAILABLE),
                     String(reason), String("en-US"))
    conn.abort()


def unreachable(session_id: str, row: SessionRow | None) -> str:
    """Why a technician's channel to a session cannot open: the sentence OpenSSH users read
    ("channel 0: open failed: connect failed: ...")."""
    if row is None:
        return (f"Adhoc: no such session ({session_id}) in your company: check the id in the "
                "console")
    if row.state == rules.State.PENDING:
        return (f"Adhoc: session {session_id} is not active yet: the customer has not "
                "entered the security code")
    if row.state == rules.State.ENDED:
        return (f"Adhoc: session {session_id} has ended "
                f"({rules.describe_end(row.ended_reason, row.ended_at)}): create a new one")
    return (f"Adhoc: the customer's computer for session {session_id} is offline: it comes "
            "back by itself when its network does")


def load_or_create_host_key(path: Path) -> asyncssh.SSHKey:
    return load_or_create_key(path)


@dataclass
class SSHEntrance:
    """The relay's SSH server: its port (None with `--ssh off`) and the way in for
    connections that arrive over WebSocket (adopt), both through one gate."""

    acceptor: asyncssh.SSHAcceptor
    gate: _GatedServer
    startups: Startups

    @property
    def port(self) -> int | None:
        return self.gate.sockets[0].getsockname()[1] if self.gate.sockets else None

    def adopt(self, conn: socket.socket, peer: tuple[str, int]) -> bool:
        return self.gate.adopt(conn, peer)

    def close(self) -> None:
        self.acceptor.close()

    async def wait_closed(self) -> None:
        await self.acceptor.wait_closed()


async def start_ssh_server(service: RelayService, host: str, port: int,
                           host_key: asyncssh.SSHKey, *, listen: bool = True,
                           peer_only: bool = False, reuse_port: bool = False,
                           sock: socket.socket | None = None) -> SSHEntrance:
    """The relay's SSH server, listening on host:port unless `listen` is off (then it takes
    connections over WebSocket only), or on `sock` (listening already); with `peer_only`, for
    the other relays of the cluster only."""
    startups = Startups()
    listener = _GatedListener(startups, listen, reuse_port, sock)
    acceptor = await asyncssh.create_server(
        lambda: RelaySSHServer(service, startups, peer_only), host, port, tunnel=listener,
        server_host_keys=[host_key],
        keepalive_interval=KEEPALIVE_INTERVAL, keepalive_count_max=KEEPALIVE_COUNT,
        login_timeout=LOGIN_TIMEOUT, **SERVER_ALGORITHMS,
        allow_scp=False, agent_forwarding=False, x11_forwarding=False)
    assert listener.server is not None
    return SSHEntrance(acceptor, listener.server, startups)
