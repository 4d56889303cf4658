"""What every use case stands on: the relay's state, its background work, finding a session
for a technician, ending a session, and ending sessions as they expire.

Knows the rules, the store, the mailer and the agent registry; knows nothing of HTTP or SSH
wire formats.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from common.passwords import dummy_hash
from relay import sessions as rules
from relay.config import RelaySettings
from relay.events import EventBus
from relay.presence import PresenceLog
from relay.registry import AgentRegistry, Connections
from relay.stats import Stats
from relay.store import NotFound, SessionRow, Store, Technician
from relay.usecases.shared import (
    DISC_SERVICE_NOT_AVAILABLE,
    KeyedLocks,
    RateLimiter,
    not_found,
)
from relay.wheelhouse import Preparation

log = logging.getLogger("adhoc.relay")


class ServiceBase:
    def __init__(self, settings: RelaySettings, store: Store, secret_key: bytes,
                 relay_host_key: str, *, clock: Callable[[], float] = time.time,
                 mailer=None) -> None:
        self.settings = settings
        self.store = store
        self.secret_key = secret_key
        self.relay_host_key = relay_host_key
        self.clock = clock
        self.mailer = mailer
        self.bus = EventBus()
        self.agents = AgentRegistry()
        self.connections = Connections()
        self.presence = PresenceLog(store, self.bus.notify)
        self.http_port: int | None = None
        self.ssh_port: int | None = None
        self.stats = Stats()
        # session id -> (why its agent cannot connect, since when), as the agent last said
        # over HTTP; cleared when it comes online. In memory: a restart forgets it.
        self.host_problems: dict[str, tuple[str, float]] = {}
        # The host's wheels, built in the background where the relay does that itself.
        self.wheels = Preparation(settings.data_dir)
        # The public key a join link names (common/tls.py), for agents to pin; None: no pin.
        self.certificate_pin: str | None = None
        # The cluster (relay/cluster/): this relay as a node, its connections to the other
        # nodes, and the sessions whose agent any node holds (followed from the database).
        self.cluster = None
        self.peers = None
        self.cluster_key = None  # what the other nodes log in with (asyncssh.SSHKey)
        self.cluster_online: set[str] = set()
        self._background: set[asyncio.Task] = set()
        self._expiry_wakeup = asyncio.Event()
        self._create_locks = KeyedLocks()  # by technician id
        self.login_limiter = RateLimiter(settings.login_rate)
        self.activate_limiter = RateLimiter(settings.activate_rate)

    async def prepare(self) -> None:
        """Work done once before serving, so that no request pays for it (or times it)."""
        await asyncio.to_thread(dummy_hash)

    # --- addresses -------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return self.settings.base_url(self.http_port)

    @property
    def ssh_address(self) -> str | None:
        return self.settings.ssh_address(self.ssh_port)

    def relay_addresses(self) -> list[dict]:
        """Every relay of the cluster that takes agents and consoles: {"ssh", "http"} each."""
        if self.cluster is None:
            return [{"ssh": self.ssh_address, "http": self.base_url}]
        return self.cluster.relays() or [{"ssh": self.ssh_address, "http": self.base_url}]

    def link_url(self, token: str) -> str:
        """The join link's address, without the certificate pin (the base of its files)."""
        return f"{self.base_url}/join/{token}"

    def join_url(self, token: str) -> str:
        """The join link a customer gets: with the certificate pin as its fragment, which
        browsers and curl never send, for the agent to check the relay's key against."""
        pin = f"#sha256={self.certificate_pin}" if self.certificate_pin else ""
        return self.link_url(token) + pin

    def install_command(self, token: str) -> str:
        """The one-liner: no `-f`, so a refused link's script (the relay's words and exit 1)
        reaches sh; the script asks for administrator rights itself (sudo, or root as is)."""
        pin = f" --pinnedpubkey 'sha256//{self.certificate_pin}'" if self.certificate_pin \
            else ""
        return f"curl -sSL{pin} {self.link_url(token)}/install.sh | sh"

    # --- background work -------------------------------------------------------------------

    def spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def close(self) -> None:
        await self.presence.drain()
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    def _changed(self) -> None:
        self.bus.notify()
        self._expiry_wakeup.set()

    # --- finding and ending sessions -------------------------------------------------------

    async def session_for(self, tech: Technician, session_id: str) -> SessionRow:
        """The session if it belongs to the technician's company; 404 otherwise."""
        await self.expire_due()
        try:
            row = await self.store.session(session_id.lower())
        except NotFound:
            raise not_found() from None
        if row.company_id != tech.company_id:
            raise not_found()
        return row

    async def _end(self, session_id: str, reason: str, actor: str) -> SessionRow:
        row, changed = await self.store.end_session(session_id, reason, self.clock(), actor)
        if changed:
            self._changed()
            self.disconnect_agent(session_id, reason)
        return row

    def disconnect_agent(self, session_id: str, reason: str) -> None:
        """The session ended: close every connection authenticated for it (the one holding
        its forward, and any that logged in with its secret but never registered one), and
        forget what its agent last said about its network."""
        self.host_problems.pop(session_id, None)
        conns = set(self.connections.of_session(session_id))
        link = self.agents.get(session_id)
        if link is not None:
            link.end_reason = reason
            conns.add(link.conn)
        for conn in conns:
            # Not 11 ("by application"): asyncssh hides the reason of that code from the
            # client, and the agent needs "session ended" to stop rather than reconnect.
            conn.disconnect(DISC_SERVICE_NOT_AVAILABLE, f"session ended: {reason}")

    # --- expiry ----------------------------------------------------------------------------

    async def expire_due(self) -> list[SessionRow]:
        ended = await self.store.end_expired(self.clock())
        for row in ended:
            self.disconnect_agent(row.id, row.ended_reason or rules.EndReason.EXPIRED)
        if ended:
            self.bus.notify()
        return ended

    async def run_expiry_timer(self) -> None:
        """End sessions as they expire: sleep until the next expiry or a change, then sweep."""
        while True:
            try:
                await self.expire_due()
                next_at = await self.store.next_expiry()
            except Exception:
                # A failing sweep (disk full, say) must not stop the timer for good.
                log.exception("expiry sweep failed; trying again shortly")
                next_at = self.clock() + 5
            delay = 60.0 if next_at is None else min(60.0, max(0.05, next_at - self.clock()))
            self._expiry_wakeup.clear()
            try:
                await asyncio.wait_for(self._expiry_wakeup.wait(), delay)
            except TimeoutError:
                pass
