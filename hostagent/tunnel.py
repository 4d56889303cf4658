"""The agent's outer connection to the relay: pinned host key, keepalive, reconnect with backoff.

Inside each outer connection it registers the virtual forward `(<session-id>, 22)` and serves
the inner SSH server on it. The loop stops for good when the relay says the session ended, or
refuses the agent's credentials (revoked, expired): retrying cannot help then.

Each attempt tries the routes in turn (common/reach.py: the relay's SSH port, then SSH over
WebSocket on its HTTPS address), the one that worked last first, and says which it uses; when
none works, why each failed. The routes include every relay of the cluster: the agent learns
them at activation and again on each connection (common/protocol.py RELAYS_HOST), so when its
relay dies it moves to another within the backoff cap.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
from collections.abc import Callable
from dataclasses import dataclass

import asyncssh

from common.protocol import RELAYS_HOST
from common.reach import SEPARATOR, Route, cluster_routes, failure, open_route
from common.secret import Secret
from common.transport import (
    INNER_PORT,
    WideTunnel,
    client_options,
    pinned,
    wait_for_banner,
)

log = logging.getLogger("adhoc.host")

# ADHOC_HOST_KEEPALIVE (seconds) lets fault tests see a dead link in seconds, not a minute.
KEEPALIVE_INTERVAL = float(os.environ.get("ADHOC_HOST_KEEPALIVE", "15"))
KEEPALIVE_COUNT = 3
BACKOFF_BASE = 0.5
BACKOFF_CAP = 10.0
CONNECT_TIMEOUT = 20
# How long a dialled connection may wait for the relay to start its handshake: a relay that is
# catching up after a restart (10,000 agents take it ~25 s) keeps the rest in its accept queue.
QUEUE_TIMEOUT = 90
# How long the relay may take to list the cluster's relays, and the most it may say.
RELAYS_TIMEOUT = 10
RELAYS_BYTES = 64 * 1024


def backoff_delay(attempt: int, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP,
                  rng: Callable[[float, float], float] = random.uniform) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base * 2**attempt)]."""
    return rng(0.0, min(cap, base * 2 ** min(attempt, 30)))


@dataclass
class TunnelEnd:
    """Why the tunnel stopped for good."""

    reason: str
    code: str | None = None  # the relay's reason code ("ended_by_technician", "expired")


class RoutesFailed(OSError):
    """No route reached the relay; the message says why for each."""


async def _read_to_end(reader: asyncssh.SSHReader, limit: int) -> bytes:
    """What `reader` sends until its end, if no more than `limit` bytes (ValueError else)."""
    data = b""
    while chunk := await reader.read(limit):
        data += chunk
        if len(data) > limit:
            raise ValueError(f"more than {limit} bytes")
    return data


class _OuterClient(asyncssh.SSHClient):
    def __init__(self) -> None:
        self.lost: Exception | None = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc


class Tunnel:
    def __init__(self, session_id: str, secret: Secret | str, host: str, port: int,
                 relay_host_key: str, inner_options: dict, *,
                 on_state: Callable[[str, str], None] | None = None,
                 keepalive_interval: float = KEEPALIVE_INTERVAL,
                 backoff_cap: float = BACKOFF_CAP, routes: list[Route] | None = None,
                 pin: str | None = None) -> None:
        """`routes` to the relay in the order to try; without them, SSH to host:port. `pin`:
        the relay certificate's pin, for the WebSocket routes to other relays."""
        self.session_id = session_id
        self._secret = Secret(secret)
        self.routes = list(routes) if routes else [Route("ssh", host, port)]
        self.route: Route | None = None  # the route in use
        self.problem: str | None = None  # why the last attempt reached no route, if it did
        self._known_hosts = pinned(relay_host_key)
        self._inner_options = inner_options
        self._on_state = on_state or (lambda state, detail: None)
        self._keepalive = keepalive_interval
        self._backoff_cap = backoff_cap
        self._conn: asyncssh.SSHClientConnection | None = None
        self._stopping = False
        self._pin = pin

    def stop(self) -> None:
        self._stopping = True
        if self._conn is not None:
            self._conn.close()

    async def _connect(self) -> tuple[asyncssh.SSHClientConnection, _OuterClient]:
        """The first route that gets to an authenticated SSH connection. The relay refusing
        the credentials ends the attempt on any route. Another host key is one route's
        failure: whatever answered is not the relay (a network that redirects connections,
        someone posing as it) and is told nothing, and the relay may be reached by another
        route, or later."""
        failures = []
        for route in self.routes:
            self._on_state("connecting", str(route))
            try:
                connected = await self._connect_by(route)
            except asyncssh.PermissionDenied:
                raise
            except (OSError, asyncssh.Error, TimeoutError) as exc:
                failures.append(failure(exc, route))
                continue
            if route is not self.routes[0]:  # what worked goes first next time
                self.routes.remove(route)
                self.routes.insert(0, route)
            self.route = route
            return connected
        raise RoutesFailed(SEPARATOR.join(failures))

    async def _connect_by(self, route: Route) -> tuple[asyncssh.SSHClientConnection,
                                                       _OuterClient]:
        # TCP first: a relay that is down costs a refused connect, not an SSH set-up.
        sock = await asyncio.wait_for(open_route(route), CONNECT_TIMEOUT)
        try:
            await wait_for_banner(sock, QUEUE_TIMEOUT)
            return await asyncssh.create_connection(
                _OuterClient, route.host, route.port, username=self.session_id,
                password=self._secret.reveal(), known_hosts=self._known_hosts, client_keys=None,
                agent_path=None, preferred_auth="password", config=None,
                keepalive_interval=self._keepalive, keepalive_count_max=KEEPALIVE_COUNT,
                connect_timeout=CONNECT_TIMEOUT, **client_options(outer=True, sock=sock))
        except BaseException:
            sock.close()
            raise

    async def _learn_relays(self, conn: asyncssh.SSHClientConnection) -> None:
        """Ask the relay for every relay of its cluster and add the routes to them. A relay
        that does not answer (an older one) leaves the routes as they are."""
        try:
            reader, writer = await asyncio.wait_for(conn.open_connection(RELAYS_HOST, 0),
                                                    RELAYS_TIMEOUT)
            try:
                data = await asyncio.wait_for(_read_to_end(reader, RELAYS_BYTES),
                                              RELAYS_TIMEOUT)
            finally:
                writer.close()
            relays = json.loads(data)["relays"]
        except (OSError, asyncssh.Error, TimeoutError, ValueError, KeyError, TypeError,
                AssertionError) as exc:
            # AssertionError: asyncssh's own, when the connection closed under the request
            # (seen when a busy relay dropped agents just connected).
            log.debug("the relay did not list its cluster: %r", exc)
            return
        before = len(self.routes)
        self.routes = cluster_routes(self.routes, relays, pin=self._pin)
        if len(self.routes) > before:
            log.info("the relay's cluster: %d more route(s)", len(self.routes) - before)

    async def run(self) -> TunnelEnd:
        attempt = 0
        while not self._stopping:
            try:
                conn, client = await self._connect()
            except asyncssh.PermissionDenied:
                return TunnelEnd("the relay no longer accepts this session (ended or expired)")
            except (OSError, asyncssh.Error, TimeoutError) as exc:
                delay = backoff_delay(attempt, cap=self._backoff_cap)
                attempt += 1
                self.problem = str(exc) or "timed out"
                log.info("relay unreachable, next try in %.1f s: %s", delay, self.problem)
                self._on_state("reconnecting", self.problem)
                await asyncio.sleep(delay)
                continue
            self.problem = None
            self._conn = conn
            try:
                server = await asyncssh.listen(self.session_id, INNER_PORT, tunnel=WideTunnel(conn),
                                               **self._inner_options)
            except (asyncssh.ChannelListenError, asyncssh.Error, OSError) as exc:
                conn.close()
                await conn.wait_closed()
                self._conn = None
                # Connected but not reachable: this backs off like a relay that is down (the
                # backoff starts again only once a forward is accepted).
                delay = backoff_delay(attempt, cap=self._backoff_cap)
                attempt += 1
                problem = f"the relay refused the forward: {exc}"
                log.info("%s; next try in %.1f s", problem, delay)
                self._on_state("reconnecting", problem)
                await asyncio.sleep(delay)
                continue
            attempt = 0  # the relay took the forward: the host is reachable again
            self._on_state("connected", str(self.route))
            learning = asyncio.create_task(self._learn_relays(conn))
            await conn.wait_closed()
            learning.cancel()
            server.close()
            self._conn = None
            lost = client.lost
            if isinstance(lost, asyncssh.DisconnectError) and \
                    lost.reason.startswith("session ended"):
                code = lost.reason.removeprefix("session ended").lstrip(": ").strip()
                return TunnelEnd(lost.reason, code=code or None)
            if self._stopping:
                break
            self._on_state("reconnecting", f"connection lost: {lost or 'closed by the relay'}")
            await asyncio.sleep(backoff_delay(attempt, cap=self._backoff_cap))
            attempt += 1
        return TunnelEnd("stopped")
