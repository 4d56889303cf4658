"""Port forwarding to what the customer's computer can reach (`ssh -L`, `-D`, `-W`), each new
destination allowed by the customer first, shown while in use, audited with its bytes.

A technician's `direct-tcpip` channel names a host and port. The customer is asked once per
technician and destination ("[y]es / [n]o / [a]ll this session"); what they allowed stays
allowed for the session. Without someone at the customer's screen to ask (an unattended host)
nothing is forwarded. Every connection is audited when it opens and when it closes (with the
bytes each way), and the customer's status line shows the destinations in use. Remote
forwarding (`-R`), agent and X11 forwarding are refused by the inner server itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import asyncssh
from asyncssh import OPEN_ADMINISTRATIVELY_PROHIBITED, OPEN_CONNECT_FAILED

from hostagent.audit import Event
from hostagent.text import printable

if TYPE_CHECKING:
    from hostagent.state import AgentState

log = logging.getLogger("adhoc.host")

FEATURE = "forward"
ANSWER_TIMEOUT = 120.0  # seconds the customer has to answer before the request is refused
CONNECT_TIMEOUT = 15.0
# Questions of one technician on the customer's screen at a time: a browser behind `ssh -D`
# asks for a dozen hosts at once, and the customer answers one after the other (or "all").
MAX_QUESTIONS = 8

# What the customer may answer (the Notices front end asks), "unattended" when nobody can.
YES, NO, ALL, UNATTENDED, NO_ANSWER = "yes", "no", "all", "unattended", "no answer"
# How a question ends without an answer of its own: the customer allowed that technician
# everything in answer to another question, or the technician stopped waiting (their
# connection closed), so there is nothing left to answer.
COVERED, WITHDRAWN = "covered", "withdrawn"


def destination(host: str, port: int) -> str:
    """host:port as people write it ([::1]:80 for an IPv6 address), printable."""
    shown = printable(host, 255)
    return f"[{shown}]:{port}" if ":" in shown else f"{shown}:{port}"


class ForwardRefused(asyncssh.ChannelOpenError):
    """What the technician's client prints: "channel 2: open failed: ...: <reason>"."""

    def __init__(self, reason: str, code: int = OPEN_ADMINISTRATIVELY_PROHIBITED) -> None:
        super().__init__(code, f"Adhoc: {reason}")


@dataclass(eq=False)
class _Connection:
    """One forwarded connection: its counters, and the customer's status while it is open."""

    forwards: Forwards
    who: str
    host: str
    port: int
    bytes_in: int = 0  # from the destination to the technician
    bytes_out: int = 0  # from the technician to the destination
    forwarder: asyncssh.SSHForwarder | None = None
    _doing: contextlib.AbstractContextManager | None = field(default=None, repr=False)
    _closed: bool = False

    def opened(self) -> None:
        self._doing = self.forwards.state.doing(self.who,
                                                f"forward {destination(self.host, self.port)}")
        self._doing.__enter__()
        self.forwards.live.add(self)
        self.forwards.state.audit(Event.FORWARD_OPENED, self.who,
                                  {"host": self.host, "port": self.port})

    def closed(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.forwards.live.discard(self)
        if self._doing is not None:
            self._doing.__exit__(None, None, None)
        self.forwards.state.audit(Event.FORWARD_CLOSED, self.who, {
            "host": self.host, "port": self.port, "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out})


class _Counted(asyncssh.SSHForwarder):
    """asyncssh's forwarder (flow control both ways), counting what it passes on."""

    def __init__(self, connection: _Connection, inbound: bool,
                 peer: asyncssh.SSHForwarder | None = None) -> None:
        super().__init__(peer)
        self._connection = connection
        self._inbound = inbound

    def data_received(self, data: bytes, datatype: int | None = None) -> None:
        if self._inbound:
            self._connection.bytes_in += len(data)
        else:
            self._connection.bytes_out += len(data)
        super().data_received(data, datatype)

    def close(self) -> None:
        super().close()
        self._connection.closed()


class Forwards:
    """The session's forwards: the customer's answers so far and the connections open."""

    def __init__(self, state: AgentState) -> None:
        self.state = state
        self.allowed: set[tuple[str, str, int]] = set()  # (who, host, port)
        self.allowed_all: set[str] = set()  # technicians the customer allowed everything
        self._asking: dict[tuple[str, str, int], asyncio.Future[str]] = {}
        self._waiting: dict[tuple[str, str, int], int] = {}  # channels waiting per question
        self.live: set[_Connection] = set()

    def refused(self, who: str, host: str, port: int, why: str, reason: str,
                code: int = OPEN_ADMINISTRATIVELY_PROHIBITED) -> ForwardRefused:
        self.state.audit(Event.FORWARD_REFUSED, who, {"host": host, "port": port, "why": why,
                                                      "outcome": "refused"})
        return ForwardRefused(reason, code)

    async def open(self, who: str, host: str, port: int,
                   gone: asyncio.Event | None = None) -> asyncssh.SSHForwarder:
        """The session for a technician's channel to host:port, once allowed and connected;
        ForwardRefused (the channel-open failure the technician reads) otherwise. `gone` is
        set when the technician's connection closes: asyncssh does not cancel a channel open
        then, and a question nobody waits for is taken off the customer's screen. Any other
        exception here would make asyncssh close the technician's whole connection."""
        try:
            return await self._open(who, host, port, gone)
        except asyncssh.ChannelOpenError:
            raise
        except Exception:
            log.exception("forward to %s failed", destination(host, port))
            raise ForwardRefused("the forward failed on the customer's computer",
                                 OPEN_CONNECT_FAILED) from None

    async def _open(self, who: str, host: str, port: int,
                    gone: asyncio.Event | None) -> asyncssh.SSHForwarder:
        where = destination(host, port)
        if not self.state.allows(FEATURE):
            raise self.refused(who, host, port, "plan",
                               "port forwarding is not included in this session's plan")
        if self.state.ended:
            raise self.refused(who, host, port, "ended", "the session is ending")
        if not host or len(host) > 255 or not 0 < port < 65536:
            raise self.refused(who, host, port, "invalid",
                               f"{where} is not a host and port that can be reached")
        if who not in self.allowed_all and (who, host, port) not in self.allowed:
            answer = await self._ask(who, host, port, gone)
            if answer == YES:
                self.allowed.add((who, host, port))
            elif answer in (ALL, COVERED):
                pass  # _answered recorded it, before any waiter resumed
            elif answer == WITHDRAWN:
                raise self.refused(who, host, port, "withdrawn",
                                   "the connection closed before the customer answered")
            elif answer == UNATTENDED:
                raise self.refused(who, host, port, "unattended",
                                   f"nobody at the customer's computer can allow reaching "
                                   f"{where} (the host runs unattended)")
            elif answer == NO_ANSWER:
                raise self.refused(who, host, port, "no answer",
                                   f"the customer did not answer whether you may reach {where}")
            else:
                raise self.refused(who, host, port, "customer",
                                   f"the customer did not allow you to reach {where}")
        if self.state.ended:
            raise self.refused(who, host, port, "ended", "the session is ending")
        return await self._connect(who, host, port)

    async def _ask(self, who: str, host: str, port: int, gone: asyncio.Event | None) -> str:
        """The customer's answer; one question per technician and destination at a time, at
        most MAX_QUESTIONS of a technician at once, taken back when nobody waits for it."""
        key = (who, host, port)
        asking = self._asking.get(key)
        if asking is None:
            pending = sum(1 for (asker, _, _), question in self._asking.items()
                          if asker == who and not question.done())
            if pending >= MAX_QUESTIONS:
                raise self.refused(
                    who, host, port, "too many questions",
                    f"the customer has {pending} questions of yours to answer already; "
                    f"try {destination(host, port)} again once they have answered")
            self.state.audit(Event.FORWARD_REQUESTED, who, {"host": host, "port": port})
            asking = self.state.notices.ask_forward(who, destination(host, port))
            self._asking[key] = asking
            asking.add_done_callback(lambda done: self._answered(key, done))
        self._waiting[key] = self._waiting.get(key, 0) + 1
        watch = [asyncio.ensure_future(asyncio.shield(asking))]
        if gone is not None:
            watch.append(asyncio.ensure_future(gone.wait()))
        try:
            await asyncio.wait(watch, timeout=ANSWER_TIMEOUT,
                               return_when=asyncio.FIRST_COMPLETED)
            if asking.done():
                return asking.result()
            if gone is not None and gone.is_set():
                return WITHDRAWN
            asking.set_result(NO_ANSWER)
            return NO_ANSWER
        finally:
            for waiter in watch:
                waiter.cancel()
            self._waiting[key] -= 1
            if not self._waiting[key]:
                del self._waiting[key]
                if not asking.done():  # the last one waiting went: nothing left to answer
                    asking.set_result(WITHDRAWN)

    def _answered(self, key: tuple[str, str, int], asking: asyncio.Future[str]) -> None:
        """A question ended; "all" answers the technician's other questions with it."""
        self._asking.pop(key, None)
        if asking.cancelled() or asking.result() != ALL:
            return
        self.allowed_all.add(key[0])
        for (who, _, _), other in list(self._asking.items()):
            if who == key[0] and not other.done():
                other.set_result(COVERED)

    async def _connect(self, who: str, host: str, port: int) -> asyncssh.SSHForwarder:
        connection = _Connection(self, who, host, port)
        loop = asyncio.get_running_loop()
        try:
            _, peer = await asyncio.wait_for(
                loop.create_connection(lambda: _Counted(connection, inbound=True), host, port),
                CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            # asyncio's own words name the address again ("Connect call failed (...)"):
            # the system's for the error number read as people expect ("Connection refused").
            errno = getattr(exc, "errno", None)
            plain = os.strerror(errno) if isinstance(errno, int) and errno > 0 \
                and not isinstance(exc, socket.gaierror) else None
            why = plain or getattr(exc, "strerror", None) or str(exc) or "timed out"
            raise self.refused(who, host, port, f"unreachable: {why}"[:200],
                               f"{destination(host, port)} cannot be reached from the "
                               f"customer's computer: {printable(why, 200)}",
                               OPEN_CONNECT_FAILED) from None
        if self.state.ended:
            peer.close()
            raise self.refused(who, host, port, "ended", "the session is ending")
        connection.opened()
        connection.forwarder = _Counted(connection, inbound=False, peer=peer)
        return connection.forwarder

    def close_all(self) -> None:
        """The session ended: every forwarded connection goes, and every question too."""
        for asking in list(self._asking.values()):
            if not asking.done():
                asking.set_result(NO)
        for connection in list(self.live):
            if connection.forwarder is not None:
                connection.forwarder.close()  # both ends, then audited as closed
            connection.closed()
