"""The SSH server the agent runs inside the relay tunnel: auth, PTY shells, commands, SFTP.

The technician's console (or stock `ssh -J`) talks to this server end to end; the relay only
carries the bytes. Plan features are enforced here, whatever the client asks for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import asyncssh
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from hostagent.shell import PtyShell, login_shell, shell_environment

log = logging.getLogger("adhoc.host")

INNER_USER = "support"
MAX_AUTH_FAILURES = 10
# Small windows so ctrl+c stops a flood quickly; large enough for full-speed file transfer
# (SFTP runs many requests in parallel, so its throughput does not hinge on this window).
SHELL_WINDOW = 256 * 1024


class Notices:
    """What the agent tells the customer; the terminal front end implements it."""

    def technician_connected(self, who: str) -> None: ...
    def technician_disconnected(self, who: str) -> None: ...
    def activity(self, who: str, what: str) -> None: ...
    def auth_failed(self, who: str, failures: int) -> None: ...


class _Hasher:
    hasher = PasswordHasher()

    @classmethod
    def verify(cls, verifier: str, password: str) -> bool:
        try:
            return cls.hasher.verify(verifier, password)
        except (VerificationError, InvalidHashError):
            return False


class AgentState:
    """What every inner connection shares: the grant, the verifier, the notices."""

    def __init__(self, password_verifier: str, features: tuple[str, ...], notices: Notices,
                 audit: Callable[[str, str, dict], None] | None = None) -> None:
        self.password_verifier = password_verifier
        self.features = features
        self.notices = notices
        self.audit = audit or (lambda event, who, detail: None)
        self.auth_failures = 0
        self.shells: set[PtyShell] = set()
        self.ended = False

    def allows(self, feature: str) -> bool:
        return feature in self.features

    def kill_all(self) -> None:
        self.ended = True
        for shell in list(self.shells):
            shell.kill()
        self.shells.clear()


class InnerServer(asyncssh.SSHServer):
    def __init__(self, state: AgentState) -> None:
        self.state = state
        self.who = "technician"
        self.authenticated = False

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        # The relay puts the technician's login into the forwarded channel's origin.
        peer = conn.get_extra_info("remote_peername")
        if peer and isinstance(peer[0], str) and peer[0]:
            self.who = peer[0][:64]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.authenticated:
            self.state.notices.technician_disconnected(self.who)
            self.state.audit("technician_disconnected", self.who, {})

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return not self.state.ended

    async def validate_password(self, username: str, password: str) -> bool:
        if self.state.ended:
            return False
        ok = username == INNER_USER and await asyncio.to_thread(
            _Hasher.verify, self.state.password_verifier, password)
        if ok:
            self.authenticated = True
            self.state.notices.technician_connected(self.who)
            self.state.audit("technician_connected", self.who, {})
            return True
        self.state.auth_failures += 1
        failures = self.state.auth_failures
        self.state.notices.auth_failed(self.who, failures)
        self.state.audit("session_password", self.who, {"outcome": "wrong", "failures": failures})
        # Each failure costs the guesser more time; after many the agent stops listening to them.
        await asyncio.sleep(min(0.25 * 2 ** min(failures, 6), 8.0))
        return False

    async def run_process(self, process: asyncssh.SSHServerProcess) -> None:
        """Serve one session channel: a PTY shell, a command, or a refused subsystem."""
        try:
            if self.state.ended:
                process.exit(1)
                return
            await self._serve(process)
        except (asyncssh.BreakReceived, asyncssh.SignalReceived, asyncssh.TerminalSizeChanged,
                BrokenPipeError, ConnectionError, asyncssh.DisconnectError):
            process.exit(255)

    async def _serve(self, process: asyncssh.SSHServerProcess) -> None:
        if process.subsystem:
            # sftp reaches here only when the plan does not grant files (see make_sftp).
            what = "file manager" if process.subsystem == "sftp" else process.subsystem
            self.state.audit("refused", self.who, {"what": what})
            process.stderr.write(f"{what} is not included in this session's plan\r\n".encode())
            process.exit(1)
            return
        if not self.state.allows("shell"):
            process.stderr.write(b"remote shell is not included in this session's plan\r\n")
            process.exit(1)
            return
        term = process.term_type
        if term:
            await self._pty_shell(process, term)
        else:
            await self._command(process)

    async def _pty_shell(self, process: asyncssh.SSHServerProcess, term: str) -> None:
        cols, rows, _, _ = process.term_size
        what = f"runs: {process.command}" if process.command else "opened a shell"
        # Consent: the customer's screen names the technician before the first shell byte.
        self.state.notices.activity(self.who, what)
        self.state.audit("shell_opened", self.who, {"command": process.command} if
                         process.command else {})
        shell = PtyShell(term, cols or 80, rows or 24, process.command)
        await shell.start()
        self.state.shells.add(shell)

        async def pump_output() -> None:
            while (data := await shell.read()) is not None:
                process.stdout.write(data)
                await process.stdout.drain()

        async def pump_input() -> None:
            while True:
                try:
                    data = await process.stdin.read(64 * 1024)
                except asyncssh.TerminalSizeChanged as change:
                    shell.resize(change.width, change.height)
                    continue
                if not data:
                    return
                await shell.write(data)

        output = asyncio.create_task(pump_output())
        typing = asyncio.create_task(pump_input())
        status = 255
        try:
            await asyncio.wait({output, typing}, return_when=asyncio.FIRST_COMPLETED)
            if not output.done():
                shell.close()  # the technician's side closed: hang up the shell
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(output, 2)
            with contextlib.suppress(TimeoutError):
                status = await asyncio.wait_for(shell.wait(), 5)
        finally:
            typing.cancel()
            output.cancel()
            shell.kill()
            self.state.shells.discard(shell)
            self.state.audit("shell_closed", self.who, {})
        process.exit(status if status >= 0 else 255)

    async def _command(self, process: asyncssh.SSHServerProcess) -> None:
        command = process.command or ""
        if not command:
            process.stderr.write(b"ask for a terminal (ssh -t) to get an interactive shell\n")
            process.exit(1)
            return
        self.state.notices.activity(self.who, f"runs: {command}")
        self.state.audit("command", self.who, {"command": command[:500]})
        env = shell_environment("dumb")
        proc = await asyncio.create_subprocess_exec(
            login_shell(), "-c", command, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
            cwd=env["HOME"], start_new_session=True)

        async def copy_out(source: asyncio.StreamReader, sink) -> None:
            while data := await source.read(64 * 1024):
                sink.write(data)
                await sink.drain()

        async def copy_in() -> None:
            assert proc.stdin is not None
            with contextlib.suppress(ConnectionError, BrokenPipeError):
                while data := await process.stdin.read(64 * 1024):
                    proc.stdin.write(data)
                    await proc.stdin.drain()
                proc.stdin.close()

        typing = asyncio.create_task(copy_in())
        try:
            await asyncio.gather(copy_out(proc.stdout, process.stdout),
                                 copy_out(proc.stderr, process.stderr))
            status = await proc.wait()
        finally:
            typing.cancel()
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        process.exit(status if status >= 0 else 255)


def make_sftp_factory(state: AgentState, who_of: Callable[[asyncssh.SSHServerChannel], str]):
    """SFTP only when the plan grants files; every session is noticed and audited."""
    if not state.allows("files"):
        return None

    class AuditedSFTP(asyncssh.SFTPServer):
        def __init__(self, chan: asyncssh.SSHServerChannel) -> None:
            super().__init__(chan)
            who = who_of(chan)
            state.notices.activity(who, "opened the file manager")
            state.audit("files_opened", who, {})

    return AuditedSFTP


def _owner(conn: asyncssh.SSHServerConnection) -> InnerServer:
    server = conn.get_owner()
    assert isinstance(server, InnerServer)
    return server


async def _process_factory(process: asyncssh.SSHServerProcess) -> None:
    await _owner(process.get_extra_info("connection")).run_process(process)


def server_options(state: AgentState, host_key: asyncssh.SSHKey) -> dict:
    def who_of(chan: asyncssh.SSHServerChannel) -> str:
        return _owner(chan.get_connection()).who

    sftp = make_sftp_factory(state, who_of)
    return {
        "server_factory": lambda: InnerServer(state),
        "process_factory": _process_factory,
        "server_host_keys": [host_key],
        "sftp_factory": sftp if sftp is not None else False,
        "allow_scp": False,
        "line_editor": False,
        "encoding": None,
        "window": SHELL_WINDOW,
        "keepalive_interval": 15,
        "keepalive_count_max": 3,
        "login_timeout": 60,
        "agent_forwarding": False,
        "x11_forwarding": False,
    }
