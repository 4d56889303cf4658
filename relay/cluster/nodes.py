"""This relay as a node of the cluster: its name and addresses in the database, its heartbeat,
and what it learns there of the other nodes' work.

A node registers itself at start (name, peer address, public SSH and HTTP addresses), beats
every HEARTBEAT seconds and leaves at a clean stop; one not seen for NODE_STALE seconds is dead
(it was killed): the agents it held count as offline and move on their own. Every node follows
the events table, so that what another node did reaches this one within FOLLOW seconds (on
PostgreSQL at once: the database notifies every node, LISTEN/NOTIFY):
- any new event wakes this node's live event streams (consoles see every node's events);
- an agent that came or went anywhere changes whether its session shows online;
- a session ended anywhere (by a technician, the customer or expiry on any node) closes its
  agent's connection here if this node holds it, and forgets its credential.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable

import asyncssh

from relay.store import NodeRow

log = logging.getLogger("adhoc.relay.cluster")

HEARTBEAT = float(os.environ.get("ADHOC_RELAY_HEARTBEAT", "2"))
NODE_STALE = HEARTBEAT * 5
FOLLOW = float(os.environ.get("ADHOC_RELAY_FOLLOW", "0.25"))
# On PostgreSQL the database says when events commit (LISTEN/NOTIFY); the node still reads
# this often in case a notification was lost with its connection.
FOLLOW_NOTIFIED = float(os.environ.get("ADHOC_RELAY_FOLLOW_NOTIFIED", "2"))


def default_node_name(ssh_port: int | None, http_port: int | None) -> str:
    """The host name and the SSH port (the HTTP port with `--ssh off`)."""
    return f"{socket.gethostname()}:{ssh_port or http_port}"


class ClusterNode:
    def __init__(self, service, name: str, peer_address: str, *,
                 on_drain: Callable[[], Awaitable[None]] | None = None) -> None:
        self.service = service
        self.name = name
        self.peer_address = peer_address
        self.others: list[NodeRow] = []  # every live node, this one included
        self.draining = False
        self._on_drain = on_drain
        self._last_event = 0
        self._wake = asyncio.Event()
        self._stop_listening = None

    async def join(self) -> None:
        service = self.service
        self._last_event = await service.store.last_event_id()
        await service.store.register_node(self.name, self.peer_address, service.ssh_address,
                                          service.base_url, service.clock())
        service.cluster_online = await service.store.held_sessions(
            service.clock() - NODE_STALE)
        await self._refresh_nodes()
        try:
            self._stop_listening = await service.store.listen_for_events(self._wake.set)
        except Exception as exc:  # polling alone still works
            log.warning("cluster: cannot listen for other relays' events (%s); polling", exc)
        log.info("cluster: node %s joined, peers reach it at %s; %d live node(s)", self.name,
                 self.peer_address, len(self.others))

    async def leave(self) -> None:
        if self._stop_listening is not None:
            stop, self._stop_listening = self._stop_listening, None
            try:
                await stop()
            except Exception:
                log.warning("cluster: could not stop listening for events")
        try:
            await self.service.store.leave_cluster(self.name)
        except Exception:  # the database may be what is failing; the heartbeat stops anyway
            log.warning("cluster: node %s could not record that it left", self.name)

    async def _refresh_nodes(self) -> None:
        since = self.service.clock() - NODE_STALE
        before = {node.name for node in self.others}
        self.others = await self.service.store.live_nodes(since)
        if before - {node.name for node in self.others}:
            # A node died or left: the agents it held are offline until they come back.
            self.service.cluster_online = await self.service.store.held_sessions(since)
            self.service.bus.notify()

    def relays(self) -> list[dict]:
        """Every live node that takes agents: where agents and consoles reach it."""
        seen, found = set(), []
        for node in self.others:
            if node.draining or (node.ssh_address, node.http_url) in seen:
                continue  # workers of one machine share their addresses
            seen.add((node.ssh_address, node.http_url))
            found.append({"ssh": node.ssh_address, "http": node.http_url})
        return found

    async def run(self) -> None:
        """Beat and follow until cancelled."""
        loop = asyncio.get_running_loop()
        next_beat = 0.0
        failing = False  # said once, with its traceback, until the database answers again
        while True:
            interval = FOLLOW if self._stop_listening is None else FOLLOW_NOTIFIED
            try:
                if loop.time() >= next_beat:
                    next_beat = loop.time() + HEARTBEAT
                    await self._beat()
                await self._follow()
            except asyncio.CancelledError:
                raise
            except Exception:
                if failing:
                    log.debug("cluster: following the database failed again", exc_info=True)
                else:
                    failing = True
                    log.exception("cluster: following the database failed; trying again every "
                                  "%.2g s (said again only once it works)",
                                  min(interval, HEARTBEAT))
            else:
                if failing:
                    failing = False
                    log.warning("cluster: following the database works again")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), min(interval, HEARTBEAT))
            self._wake.clear()

    async def _beat(self) -> None:
        service = self.service
        draining = await service.store.node_seen(self.name, service.clock())
        if draining is None:  # the row went (a node of this name restarted elsewhere?)
            await service.store.register_node(self.name, self.peer_address,
                                              service.ssh_address, service.base_url,
                                              service.clock())
        elif draining and not self.draining:
            self.draining = True
            log.info("cluster: node %s asked to drain", self.name)
            if self._on_drain is not None:
                service.spawn(self._on_drain())
        await self._refresh_nodes()

    async def _follow(self) -> None:
        service = self.service
        rows = await service.store.events_since(self._last_event)
        if not rows:
            return
        self._last_event = rows[-1][0]
        moved = set()
        for _id, session_id, kind, data in rows:
            if session_id is None:
                continue
            if kind in ("online", "offline"):
                moved.add(session_id)
            elif kind == "ended":
                service.cluster_online.discard(session_id)
                service.store.forget_ended([session_id])
                reason = json.loads(data or "{}").get("reason") or "ended"
                service.disconnect_agent(session_id, reason)
        if moved:
            held = await service.store.held_sessions(service.clock() - NODE_STALE,
                                                     among=sorted(moved))
            service.cluster_online.difference_update(moved - held)
            service.cluster_online.update(held)
        service.bus.notify()


class RelayListSession(asyncssh.SSHTCPSession):
    """The answer to an agent asking for every relay's address (a channel to
    common.protocol.RELAYS_HOST)."""

    def __init__(self, relays: list[dict]) -> None:
        self._payload = json.dumps({"relays": relays}).encode() + b"\n"

    def connection_made(self, chan: asyncssh.SSHTCPChannel) -> None:
        chan.write(self._payload)
        chan.write_eof()

    def eof_received(self) -> bool:
        return False  # close the channel
