"""The temporary host from link to exit: consent, code, activation, tunnel, expiry, removal."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import asyncssh

from common.reach import cluster_routes, relay_routes
from common.secret import Secret
from hostagent import join
from hostagent.audit import AuditQueue
from hostagent.lifetime import (
    CHECK_INTERVAL,
    ExpiryClock,
    InstanceLock,
    WorkDir,
    watch_expiry,
)
from hostagent.notices import STATUS_REFRESH, KeyReader, LineNotices
from hostagent.problems import ProblemReporter
from hostagent.server import server_options
from hostagent.shells import DETACHED_TIMEOUT
from hostagent.state import AgentState
from hostagent.text import local_time, printable, why_ended
from hostagent.tunnel import BACKOFF_CAP, Tunnel

log = logging.getLogger("adhoc.host")

AUDIT_FLUSH = 3.0
DIGESTS_SETTLE = 2.0
CODE_PROMPT = "Security code (6 digits, read to you by the technician): "


def _background_failure(_loop: asyncio.AbstractEventLoop, context: dict) -> None:
    """A background task failed where nothing awaited it: said in one line of the log
    (shown with -v; its traceback only at debug level, as main() does, since an error's
    text may carry what the customer's window must not show), never as a traceback in the
    middle of the customer's window."""
    error = context.get("exception")
    log.info("a background step failed: %s%s", context.get("message", ""),
             f" ({type(error).__name__})" if error else "")
    log.debug("the background step's failure", exc_info=error)


@dataclass
class AgentOptions:
    backoff_cap: float = BACKOFF_CAP
    check_interval: tuple[float, float] = CHECK_INTERVAL
    detached_timeout: float = DETACHED_TIMEOUT
    keys: bool = False  # read single keys from an interactive terminal
    ask_again: bool = True  # the code comes from a prompt that can ask again after a typo
    end_signals: tuple[int, ...] = field(
        default=(signal.SIGINT, signal.SIGTERM, signal.SIGHUP))


class Agent:
    def __init__(self, link: join.JoinLink, notices: LineNotices, *,
                 ask_code: Callable[[str], Awaitable[str | Secret | None]],
                 confirm: Callable[[dict], Awaitable[bool]],
                 options: AgentOptions | None = None) -> None:
        self.link = link
        self.notices = notices
        self.ask_code = ask_code
        self.confirm = confirm
        self.options = options or AgentOptions()
        self.workdir: WorkDir | None = None
        self.lock = InstanceLock()
        self.state: AgentState | None = None
        self.tunnel: Tunnel | None = None
        self.audit: AuditQueue | None = None
        self.phase = "joining"  # then "active", then "ending"
        self.interrupted = False
        self.problems: ProblemReporter | None = None
        self._end_requested = asyncio.Event()
        self._end_why = "you ended it"

    async def run(self) -> int:
        """0 when the session ran and ended; 1 when it could not start; 130 when the customer
        interrupted it before it started (or while it was ending)."""
        self.lock.acquire()
        self.workdir = WorkDir()
        loop = asyncio.get_running_loop()
        main = asyncio.current_task()
        assert main is not None
        for sig in self.options.end_signals:
            loop.add_signal_handler(sig, self._signalled, main)
        loop.set_exception_handler(_background_failure)
        try:
            return await self._run()
        except asyncio.CancelledError:
            if not self.interrupted:
                raise
            self._remove()
            if self.phase == "joining":
                self.notices.end_prompt_line()
                self.notices.say("Interrupted: nothing was changed on this computer.")
            else:
                self.notices.say("Interrupted: the temporary Adhoc host removed itself.")
            self.notices.finish()
            return 130
        finally:
            for sig in self.options.end_signals:
                loop.remove_signal_handler(sig)
            self._remove()

    def _signalled(self, main: asyncio.Task) -> None:
        """ctrl+c, a closed terminal or a kill: during the session it ends the session;
        before it (at a prompt) or while it ends, the host stops at once."""
        if self.phase == "active":
            self.request_end("you interrupted the host")
            return
        self.interrupted = True
        main.cancel()

    def _remove(self) -> None:
        if self.state is not None:
            self.state.kill_all()
        if self.workdir is not None:
            self.workdir.remove()
        self.lock.release()

    def request_end(self, why: str = "you ended it") -> None:
        self._end_why = why
        self._end_requested.set()

    def _write_host_key(self, key: asyncssh.SSHKey) -> None:
        """The inner server's private key, readable by this user only."""
        assert self.workdir is not None
        path = self.workdir.path / "host_key"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.export_private_key())

    async def _run(self) -> int:
        assert self.workdir is not None
        info = await join.fetch_info(self.link)
        if info.get("state") != "pending":
            raise join.JoinError("this link was already used, has expired or was ended: ask "
                                 "your technician for a new invitation", "link_used")
        company = printable(info["company"])
        who = printable(info["technician"])
        email = printable(info.get("technician_email") or "")
        self.notices.say(f"{who}{f' <{email}>' if email else ''} of {company} asks to give "
                         "you remote support on this computer.")
        self.notices.say(f"Only continue if you asked {company} for help. Never continue "
                         "because someone called or wrote to you unasked.")
        if not await self.confirm(info):
            self.notices.say("Cancelled: nothing was changed on this computer.")
            return 1
        host_key = asyncssh.generate_private_key("ssh-ed25519")
        self._write_host_key(host_key)
        public = host_key.export_public_key("openssh").decode().strip()
        activation = await self._activate(public)
        self.phase = "active"
        clock = ExpiryClock(activation.expires_at)
        self.notices.say(f"Session active: {printable(activation.technician)} can connect "
                         f"until {local_time(clock.expires_at)} (about "
                         f"{clock.remaining() / 3600:.0f} h).")
        self.notices.fingerprint = host_key.get_fingerprint("sha256")
        self.notices.say(f"This computer's key is {self.notices.fingerprint}: your technician "
                         "sees the same in the console and may ask you to read it out.")
        self.audit = AuditQueue(self.link.base_url, activation.session_id,
                                activation.agent_secret, client=self.link.client)
        self.problems = ProblemReporter(self.link.base_url, activation.session_id,
                                        activation.agent_secret, client=self.link.client)
        self.audit.start()
        self.state = AgentState(activation.password_verifier, activation.features,
                                self.notices, self.audit.add,
                                detached_timeout=self.options.detached_timeout,
                                technician=activation.technician,
                                technician_key=activation.technician_key)
        self.notices.state = self.state
        self.notices.time_left = clock.remaining
        routes = cluster_routes(relay_routes(activation.ssh, self.link.base_url,
                                             pin=self.link.pin),
                                list(activation.relays), pin=self.link.pin)
        self.tunnel = Tunnel(
            activation.session_id, activation.agent_secret, routes[0].host, routes[0].port,
            activation.relay_host_key, server_options(self.state, host_key),
            on_state=self._connection, backoff_cap=self.options.backoff_cap, routes=routes,
            pin=self.link.pin)
        keys = self._start_keys()
        tunnel_task = asyncio.create_task(self.tunnel.run())
        expiry_task = asyncio.create_task(watch_expiry(clock, self.options.check_interval))
        end_task = asyncio.create_task(self._end_requested.wait())
        ticker = asyncio.create_task(self._tick())
        try:
            done, _ = await asyncio.wait({tunnel_task, expiry_task, end_task},
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.phase = "ending"
            if keys is not None:
                keys.stop()
            ticker.cancel()
            self.notices.finish()  # lines only from here: no status line for what is over
            # Connected technicians are told why first (over the tunnel, while it is up)...
            self.state.goodbye("the customer ended it" if end_task.done() else
                               "its time is over" if expiry_task.done() else
                               "the customer's computer stopped it")
            # ...then, whatever ended it: no shell, command or process of the session
            # outlives this.
            self.state.kill_all()
        if end_task in done:
            return await self._end_by_customer(activation, tunnel_task, expiry_task)
        if expiry_task in done:
            self.tunnel.stop()
            self.notices.say("The session time is over.")
        else:
            expiry_task.cancel()
            end = tunnel_task.result()
            why = why_ended(end.code, activation.technician, activation.company) if end.code \
                else printable(end.reason)
            self.notices.say(f"The session ended: {why}.")
        end_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(tunnel_task, 5)
        # Digests still being taken stopped with kill_all: their reports go with the rest.
        await self.state.digests.settle(DIGESTS_SETTLE)
        if not (expiry_task in done and self.notices.link != "connected"):
            await self.audit.flush(AUDIT_FLUSH)
        await self.audit.stop()
        if self.problems is not None:
            await self.problems.stop()
        self._remove()
        self.notices.say("The temporary Adhoc host removed itself. Goodbye.")
        self.notices.finish()
        return 0

    async def _end_by_customer(self, activation: join.Activation, tunnel_task: asyncio.Task,
                               expiry_task: asyncio.Task) -> int:
        """At once, online or not: shells are gone already; remove, then tell the relay."""
        assert self.tunnel is not None and self.audit is not None
        self.tunnel.stop()
        tunnel_task.cancel()
        expiry_task.cancel()
        self._remove()
        self.notices.say(f"The session ended: {self._end_why}.")
        told = await join.end_session(self.link, activation.session_id,
                                      activation.agent_secret)
        if not told:
            self.notices.say("The relay could not be told (offline?): the technician sees "
                             "this computer offline until the session expires.")
        await self.audit.stop()
        if self.problems is not None:
            await self.problems.stop()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(tunnel_task, 2)
        self.notices.say("The temporary Adhoc host removed itself. Goodbye.")
        self.notices.finish()
        return 0

    def _connection(self, state: str, detail: str) -> None:
        """The tunnel's state on the customer's screen; a failure also to the relay over HTTP
        (the technician's console shows it), and cleared there once connected."""
        self.notices.connection(state, detail)
        if self.problems is not None and self.tunnel is not None:
            if state == "connected" or self.tunnel.problem:
                self.problems.report(self.tunnel.problem)

    def _start_keys(self) -> KeyReader | None:
        if not self.options.keys:
            return None
        assert self.state is not None
        state = self.state

        def chat(text: str) -> None:
            message = state.chat.post("customer", text)
            if message is not None:
                self.notices.say(f"You say: {printable(message['text'], 2000)}")

        reader = KeyReader(self.notices, on_end=self.request_end, on_chat=chat,
                           on_unlock=state.unlock_logins)
        try:
            reader.start()
        except (OSError, ValueError) as exc:  # not a terminal after all
            log.info("no key input: %s", exc)
            return None
        self.notices.interactive = True
        self.notices.redraw()
        return reader

    async def _tick(self) -> None:
        """Keep the time left on the status line current; collect ended orphans."""
        while True:
            await asyncio.sleep(STATUS_REFRESH)
            self.notices.redraw()
            if self.state is not None:
                self.state.reaper.reap()

    async def _activate(self, host_key: str) -> join.Activation:
        while True:
            typed = await self.ask_code(CODE_PROMPT)
            if typed is None:
                raise join.JoinError("no security code was given: nothing was changed on this "
                                     "computer; run the command again when your technician "
                                     "can read you the code", "no_code")
            try:
                return await join.activate(self.link, join.normalise_code(typed), host_key)
            except join.JoinError as exc:
                if exc.final or not self.options.ask_again:
                    raise
                message = str(exc)
                self.notices.say(message[:1].upper() + message[1:])


def install_dir() -> str | None:
    return os.environ.get("ADHOC_HOST_INSTALL_DIR")
