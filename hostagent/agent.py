"""The temporary host from link to exit: consent, code, activation, tunnel, expiry, removal."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import asyncssh

from hostagent import join
from hostagent.lifetime import CHECK_INTERVAL, ExpiryClock, InstanceLock, WorkDir
from hostagent.notices import LineNotices, printable
from hostagent.server import AgentState, server_options
from hostagent.tunnel import Tunnel

log = logging.getLogger("adhoc.host")


class Agent:
    def __init__(self, link: join.JoinLink, notices: LineNotices, *,
                 ask_code: Callable[[str], Awaitable[str | None]],
                 confirm: Callable[[dict], Awaitable[bool]],
                 backoff_cap: float = 10.0, check_interval: float = CHECK_INTERVAL) -> None:
        self.link = link
        self.notices = notices
        self.ask_code = ask_code
        self.confirm = confirm
        self.backoff_cap = backoff_cap
        self.check_interval = check_interval
        self.workdir: WorkDir | None = None
        self.lock = InstanceLock()
        self.state: AgentState | None = None
        self.tunnel: Tunnel | None = None

    async def run(self) -> int:
        """0 when the session ran and ended; 1 when it could not start."""
        self.lock.acquire()
        self.workdir = WorkDir()
        try:
            return await self._run()
        finally:
            if self.state is not None:
                self.state.kill_all()
            self.workdir.remove()
            self.lock.release()

    async def _run(self) -> int:
        info = await join.fetch_info(self.link)
        if info.get("state") != "pending":
            raise join.JoinError("this link was already used, has expired or was ended: ask "
                                 "your technician for a new invitation", "link_used")
        self.notices.say(f"{printable(info['technician'])} of {printable(info['company'])} "
                         "asks to give you remote support on this computer.")
        self.notices.say(f"Only continue if you asked {printable(info['company'])} for help.")
        if not await self.confirm(info):
            self.notices.say("Cancelled: nothing was changed on this computer.")
            return 1
        host_key = asyncssh.generate_private_key("ssh-ed25519")
        key_path = self.workdir.path / "host_key"
        host_key.write_private_key(str(key_path))
        public = host_key.export_public_key("openssh").decode().strip()
        activation = await self._activate(public)
        clock = ExpiryClock(activation.expires_at)
        self.notices.say(f"Session active: {printable(activation.technician)} can connect "
                         f"until {activation.expires_at} (about "
                         f"{clock.remaining() / 3600:.0f} h).")
        self.state = AgentState(activation.password_verifier, activation.features,
                                self.notices)
        self.tunnel = Tunnel(
            activation.session_id, activation.agent_secret, activation.ssh_host,
            activation.ssh_port, activation.relay_host_key,
            server_options(self.state, host_key), on_state=self.notices.connection,
            backoff_cap=self.backoff_cap)
        tunnel_task = asyncio.create_task(self.tunnel.run())
        expiry_task = asyncio.create_task(self._watch_expiry(clock))
        done, _ = await asyncio.wait({tunnel_task, expiry_task},
                                     return_when=asyncio.FIRST_COMPLETED)
        self.state.kill_all()
        if expiry_task in done:
            self.tunnel.stop()
            self.notices.say("The session time is over.")
        else:
            expiry_task.cancel()
            end = tunnel_task.result()
            self.notices.say(f"The session ended: {printable(end.reason)}.")
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(tunnel_task, 5)
        self.notices.say("The temporary Adhoc host removed itself. Goodbye.")
        return 0

    async def _activate(self, host_key: str) -> join.Activation:
        last_error: join.JoinError | None = None
        while True:
            code = await self.ask_code("Security code (6 digits, read to you by the technician): ")
            if code is None:
                raise last_error or join.JoinError("no security code given")
            try:
                return await join.activate(self.link, code.strip(), host_key)
            except join.JoinError as exc:
                if exc.final:
                    raise
                last_error = exc
                self.notices.say(printable(str(exc)))

    async def _watch_expiry(self, clock: ExpiryClock) -> None:
        while not clock.expired():  # noqa: ASYNC110 (we poll two clocks on purpose)
            await asyncio.sleep(min(self.check_interval, max(clock.remaining(), 0.05)))
