"""The SSH server the agent runs inside the relay tunnel: auth, PTY shells, SFTP, dashboard, chat.

The technician's console (or stock `ssh -J`) talks to this server end to end; the relay only
carries the bytes. Plan features are enforced here, whatever the client asks for. The contract
of each channel kind is in docs/PROTOCOL.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncssh
from asyncssh import DISC_NO_MORE_AUTH_METHODS_AVAILABLE

from common.secret import Secret
from common.transport import INNER_PACKET, INNER_USER, SERVER_ALGORITHMS
from hostagent.audit import Event
from hostagent.chat import serve_chat
from hostagent.command import run_command
from hostagent.dashboard import serve_dashboard
from hostagent.files import make_sftp_factory
from hostagent.guard import BUSY_MESSAGE, LOCKED_MESSAGE, WRONG_MESSAGE, Verdict
from hostagent.shells import SHELL_ID_ENV, SHELL_ID_RE, Attachment, ShellLimit
from hostagent.state import AgentState
from hostagent.text import audited_command, shown_command

log = logging.getLogger("adhoc.host")

# The window this server grants limits what the technician can send it (keys, uploads); it
# does not slow ctrl+c on a flood of output, which the console's own window bounds. Uploads
# cross three hops, so the window is what keeps SFTP writes in flight: 2 MiB held relayed puts
# to ~90 MB/s, 8 MiB and 256 KiB packets reach ~120 (bench/transfer.py, docs/BENCHMARKS.md).
INNER_WINDOW = 8 * 1024 * 1024


class InnerServer(asyncssh.SSHServer):
    def __init__(self, state: AgentState) -> None:
        self.state = state
        self.who = "technician"
        self.authenticated = False
        self._admitted = False
        self._conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        # The relay puts the technician's login into the forwarded channel's origin.
        peer = conn.get_extra_info("remote_peername")
        if peer and isinstance(peer[0], str) and peer[0]:
            self.who = peer[0][:64]
        self._admitted = self.state.guard.admit()
        if not self._admitted:
            asyncio.get_running_loop().call_soon(conn.close)  # too many not logged in yet

    def auth_completed(self) -> None:
        if self._admitted:
            self._admitted = False
            self.state.guard.settled()

    def connection_lost(self, exc: Exception | None) -> None:
        self.auth_completed()
        if self.authenticated:
            self.state.connected[self.who] -= 1
            self.state.notices.technician_disconnected(self.who)
            self.state.notices.changed()
            self.state.audit(Event.TECHNICIAN_DISCONNECTED, self.who, {})

    def begin_auth(self, username: str) -> bool:
        if self.state.guard.locked:
            self._turn_away(LOCKED_MESSAGE.format(count=self.state.guard.lock_after))
        return True

    def password_auth_supported(self) -> bool:
        return not self.state.ended

    async def validate_password(self, username: str, password: str) -> bool:
        if self.state.ended:
            return False
        secret = Secret(password)
        if username != INNER_USER:
            return False
        verdict = await self.state.guard.check(secret)
        if verdict is Verdict.RIGHT:
            self.authenticated = True
            self.state.connected[self.who] += 1
            self.state.notices.technician_connected(self.who)
            self.state.notices.changed()
            self.state.audit(Event.TECHNICIAN_CONNECTED, self.who, {})
            return True
        guard = self.state.guard
        if verdict is Verdict.WRONG:
            self.state.notices.auth_failed(self.who, guard.total_failures)
            self.state.audit(Event.SESSION_PASSWORD, self.who,
                             {"outcome": "wrong", "failures": guard.total_failures})
            if guard.locked:
                self.state.notices.logins_locked(guard.failures)
                self.state.audit(Event.LOGINS_LOCKED, self.who,
                                 {"outcome": "locked", "failures": guard.failures})
                self.state.notices.changed()
                self._turn_away(LOCKED_MESSAGE.format(count=guard.lock_after))
            elif self._conn is not None:
                left = guard.lock_after - guard.failures
                with contextlib.suppress(OSError):
                    self._conn.send_auth_banner(WRONG_MESSAGE.format(
                        left=left, tries="try" if left == 1 else "tries") + "\r\n")
        elif verdict is Verdict.LOCKED:
            self._turn_away(LOCKED_MESSAGE.format(count=guard.lock_after))
        else:
            self._turn_away(BUSY_MESSAGE)
        return False

    def _turn_away(self, message: str) -> None:
        """Say why in the login banner (OpenSSH prints it) and in the disconnect reason (what
        asyncssh clients raise), then hang up: no more tries on this connection."""
        conn, self._conn = self._conn, None  # once per connection
        if conn is None:
            return
        try:
            conn.send_auth_banner(message + "\r\n")
        except OSError:
            return
        conn.disconnect(DISC_NO_MORE_AUTH_METHODS_AVAILABLE, message)

    async def run_process(self, process: asyncssh.SSHServerProcess) -> None:
        """Serve one session channel: a PTY shell, a command, or a subsystem."""
        try:
            if self.state.ended:
                process.exit(1)
                return
            await self._serve(process)
        except (asyncssh.BreakReceived, asyncssh.SignalReceived, asyncssh.TerminalSizeChanged,
                BrokenPipeError, ConnectionError, asyncssh.DisconnectError):
            process.exit(255)

    def _refuse(self, process: asyncssh.SSHServerProcess, what: str) -> None:
        self.state.audit(Event.REFUSED, self.who, {"what": what, "outcome": "refused"})
        process.stderr.write(f"{what} is not included in this session's plan\r\n".encode())
        process.exit(1)

    async def _serve(self, process: asyncssh.SSHServerProcess) -> None:
        subsystem = process.subsystem
        if subsystem == "dashboard":
            if not self.state.allows("dashboard"):
                self._refuse(process, "dashboard")
                return
            self.state.notices.activity(self.who, "opened the dashboard")
            self.state.audit(Event.DASHBOARD_OPENED, self.who, {})
            with self.state.doing(self.who, "dashboard"):
                await serve_dashboard(process)
            return
        if subsystem == "chat":
            if not self.state.allows("chat"):
                self._refuse(process, "chat")
                return
            with self.state.doing(self.who, "chat"):
                await serve_chat(process, self.state.chat, self.who)
            return
        if subsystem:
            # Without "files" asyncssh refuses the sftp subsystem request before we see it.
            self._refuse(process, subsystem[:64])
            return
        if not self.state.allows("shell"):
            self._refuse(process, "remote shell")
            return
        if process.term_type:
            await self._pty_shell(process, process.term_type)
        else:
            await self._command(process)

    async def _pty_shell(self, process: asyncssh.SSHServerProcess, term: str) -> None:
        cols, rows, _, _ = process.term_size
        cols, rows = cols or 80, rows or 24
        shell_id = _env(process, SHELL_ID_ENV)
        if shell_id is not None and not SHELL_ID_RE.match(shell_id):
            process.stderr.write(f"{SHELL_ID_ENV} must be 1-64 of A-Z, a-z, 0-9, _ and -\r\n"
                                 .encode())
            process.exit(1)
            return
        shells = self.state.shells
        shell = shells.live(shell_id) if shell_id is not None else None
        reattach = shell is not None
        if reattach:
            what = "returned to a shell"
        elif process.command:
            what = f"runs in a terminal: {shown_command(process.command)}"
        else:
            what = "opened a shell"
        # Consent: the customer's screen names the technician before the first shell byte.
        self.state.notices.activity(self.who, what)
        detail: dict = {"shell_id": shell_id} if shell_id else {}
        if process.command and not reattach:
            detail.update(audited_command(process.command))
        self.state.audit(Event.SHELL_REATTACHED if reattach else Event.SHELL_OPENED, self.who,
                         detail)
        if shell is None:
            try:
                shell = await shells.start(shell_id, term, cols, rows, process.command)
            except ShellLimit as exc:
                process.stderr.write(f"{exc}\r\n".encode())
                process.exit(1)
                return
            except OSError as exc:  # too long for the system (E2BIG), no shell, no PTY left
                process.stderr.write(f"cannot start the shell: {exc.strerror or exc}\r\n"
                                     .encode())
                process.exit(126)
                return
        attachment = Attachment(process.stdout.write, process.stdout.drain)
        if reattach:
            process.stdout.write(shell.repaint())
            if (shell.pty.cols, shell.pty.rows) != (cols, rows):
                shell.resize(cols, rows)
        shell.attach(attachment)
        if reattach:
            shell.nudge()

        async def pump_input() -> None:
            while True:
                try:
                    data = await process.stdin.read(64 * 1024)
                except asyncssh.TerminalSizeChanged as change:
                    shell.resize(change.width, change.height)
                    continue
                if not data:
                    return
                await shell.pty.write(data)

        typing = asyncio.create_task(pump_input())
        exited = asyncio.create_task(shell.exited.wait())
        taken = asyncio.create_task(attachment.taken.wait())
        try:
            with self.state.doing(self.who, "shell"):
                await asyncio.wait({typing, exited, taken}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (typing, exited, taken):
                task.cancel()
            shell.detach(attachment, shells.detached_timeout)
        if taken.done() and not taken.cancelled():
            process.stderr.write(b"\r\n[this shell was taken over by another connection]\r\n")
            process.exit(0)
        elif shell.exited.is_set():
            status = shell.status if shell.status is not None else 255
            self.state.audit(Event.SHELL_CLOSED, self.who, detail)
            process.exit(status if status >= 0 else 255)
        else:
            process.exit(0)

    async def _command(self, process: asyncssh.SSHServerProcess) -> None:
        command = process.command or ""
        if not command:
            process.stderr.write(b"ask for a terminal (ssh -t) to get an interactive shell\n")
            process.exit(1)
            return
        self.state.notices.activity(self.who, f"runs: {shown_command(command)}")
        self.state.audit(Event.COMMAND, self.who, audited_command(command))
        with self.state.doing(self.who, "shell"):
            status = await run_command(process, command, self.state.reaper)
        process.exit(status)


def _env(process: asyncssh.SSHServerProcess, name: str) -> str | None:
    env = process.env or {}
    for key, value in env.items():
        if (key.decode(errors="replace") if isinstance(key, bytes) else key) == name:
            return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
    return None


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
        **SERVER_ALGORITHMS,  # the algorithm lists (kex, ciphers, MACs, signatures, no zlib)
        "line_editor": False,
        "encoding": None,
        "window": INNER_WINDOW,
        "max_pktsize": INNER_PACKET,
        "keepalive_interval": 15,
        "keepalive_count_max": 3,
        "login_timeout": 60,
        "agent_forwarding": False,
        "x11_forwarding": False,
        "gss_host": None,  # no GSS: also spares a look-up of this host's FQDN per connection
    }
