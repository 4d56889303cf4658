"""The SSH server the agent runs inside the relay tunnel: auth, PTY shells, SFTP, dashboard, chat.

The technician's console (or stock `ssh -J`) talks to this server end to end; the relay only
carries the bytes. Plan features are enforced here, whatever the client asks for. The contract
of each channel kind is in docs/PROTOCOL.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging

import asyncssh
from asyncssh import DISC_NO_MORE_AUTH_METHODS_AVAILABLE, DISC_SERVICE_NOT_AVAILABLE

from common.protocol import SHELL_TAKEN_OVER
from common.secret import Secret
from common.transport import (
    INNER_PACKET,
    INNER_PORT,
    INNER_USER,
    SERVER_ALGORITHMS,
    same_key,
    sha2_signatures_only,
)
from hostagent.audit import Event
from hostagent.chat import serve_chat
from hostagent.command import run_command
from hostagent.dashboard import serve_dashboard
from hostagent.files import make_sftp_factory
from hostagent.guard import (
    BUSY_MESSAGE,
    LOCKED_MESSAGE,
    WRONG_MESSAGE,
    WRONG_USER_MESSAGE,
    Verdict,
)
from hostagent.shell import accepted_env
from hostagent.shells import SHELL_ID_ENV, SHELL_ID_RE, Attachment, ShellLimit
from hostagent.state import AgentState
from hostagent.text import audited_command, printable, shown_command

log = logging.getLogger("adhoc.host")

REMOTE_FORWARD_REFUSED = ("Adhoc: remote forwarding (-R, port {port}) is not available: "
                          "nothing on the customer's computer may connect back to you. "
                          "Use -L or -D to reach what it can reach.")

# The window this server grants limits what the technician can send it (keys, uploads); it
# does not slow ctrl+c on a flood of output, which the console's own window bounds. Uploads
# cross three hops, so the window is what keeps SFTP writes in flight: 2 MiB held relayed puts
# to ~90 MB/s, 8 MiB and 256 KiB packets reach ~120 (bench/transfer.py, docs/BENCHMARKS.md).
INNER_WINDOW = 8 * 1024 * 1024


def connection_env(conn: asyncssh.SSHServerConnection) -> dict[str, str]:
    """SSH_CONNECTION and SSH_CLIENT as sshd sets them, from where this computer sees the
    technician's connection come from: the relay's address and port on the agent's connection
    to it, then this computer's address on that connection, and port 22."""
    outer = conn.get_extra_info("connection")  # the relay connection this one is tunnelled in
    source = outer if outer is not None else conn
    relay = source.get_extra_info("peername") or ("127.0.0.1", 0)
    local = source.get_extra_info("sockname") or ("127.0.0.1", INNER_PORT)
    client = _address(relay[0])
    port = relay[1] if isinstance(relay[1], int) else 0
    return {"SSH_CONNECTION": f"{client} {port} {_address(local[0])} {INNER_PORT}",
            "SSH_CLIENT": f"{client} {port} {INNER_PORT}"}


def _address(value: object) -> str:
    try:
        return str(ipaddress.ip_address(str(value).split("%")[0]))
    except ValueError:
        return "127.0.0.1"  # a tunnel's name, not an address


class InnerServer(asyncssh.SSHServer):
    def __init__(self, state: AgentState) -> None:
        self.state = state
        self.who = "technician"
        self.authenticated = False
        self._admitted = False
        self._conn: asyncssh.SSHServerConnection | None = None
        self.env: dict[str, str] = {}
        # A client that asks again with the password just refused (OpenSSH with an askpass
        # program, or a script) is not guessing: refused at once, not counted again.
        self._refused: Secret | None = None
        self._processes: set[asyncssh.SSHServerProcess] = set()
        self._notes: list[str] = []  # said on the next session channel's stderr
        self._gone = asyncio.Event()  # set when the connection closes (forwards.py waits on it)
        self._method = "password"  # how the login that completes was made

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        # The relay puts the technician's login into the forwarded channel's origin.
        peer = conn.get_extra_info("remote_peername")
        if peer and isinstance(peer[0], str) and peer[0]:
            self.who = peer[0][:64]
        self.env = connection_env(conn)
        self._admitted = self.state.guard.admit()
        if not self._admitted:
            asyncio.get_running_loop().call_soon(conn.close)  # too many not logged in yet

    def _settle(self) -> None:
        if self._admitted:
            self._admitted = False
            self.state.guard.settled()

    def auth_completed(self) -> None:
        """Logged in, by password or key: only now is the technician counted, shown to the
        customer and audited (a key is also asked about before it is used)."""
        self._settle()
        self.authenticated = True
        self.state.connections.add(self)
        self.state.connected[self.who] += 1
        self.state.notices.technician_connected(self.who)
        self.state.notices.changed()
        self.state.audit(Event.TECHNICIAN_CONNECTED, self.who, {"method": self._method})

    def connection_lost(self, exc: Exception | None) -> None:
        self._gone.set()
        self._settle()
        self.state.connections.discard(self)
        if self.authenticated:
            self.state.connected[self.who] -= 1
            self.state.notices.technician_disconnected(self.who)
            self.state.notices.changed()
            self.state.audit(Event.TECHNICIAN_DISCONNECTED, self.who, {})

    def begin_auth(self, username: str) -> bool:
        if username != INNER_USER:
            # Not a wrong password: no try is spent, and the client is told what to type.
            self._turn_away(WRONG_USER_MESSAGE.format(user=printable(username, 64),
                                                      inner=INNER_USER))
        elif self.state.guard.locked and not self.public_key_auth_supported():
            self._turn_away(LOCKED_MESSAGE.format(count=self.state.guard.lock_after))
        return True

    def password_auth_supported(self) -> bool:
        return not self.state.ended

    def public_key_auth_supported(self) -> bool:
        return self.state.technician_key is not None and not self.state.ended

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        """The key the session's technician sent with it at create time, for that technician
        only (by the relay's word, as for everything about who connects): their scripts log
        in without the password. Guessing does not apply, so a lockout does not stop it."""
        if self.state.ended or username != INNER_USER or self.state.technician_key is None \
                or self.who != self.state.technician \
                or not same_key(key, self.state.technician_key):
            return False
        sha2_signatures_only(key)
        self._method = "publickey"
        return True

    async def validate_password(self, username: str, password: str) -> bool:
        if self.state.ended:
            return False
        secret = Secret(password)
        if username != INNER_USER:
            return False  # turned away in begin_auth already
        if self._refused is not None and secret == self._refused:
            return False
        verdict = await self.state.guard.check(secret)
        if verdict is Verdict.RIGHT:
            self._method = "password"
            return True  # auth_completed follows
        guard = self.state.guard
        if verdict is Verdict.WRONG:
            self._refused = secret
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

    # --- forwarding ------------------------------------------------------------------------

    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str,
                             orig_port: int):
        """`ssh -L`, `-D`, `-W`: to what the customer's computer can reach, once the customer
        allowed it (hostagent/forwards.py); refusals say why in the channel-open failure."""
        if not self.authenticated:
            return False
        return self.state.forwards.open(self.who, dest_host, dest_port, self._gone)

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        """`ssh -R`: refused. A global request's refusal carries no words (OpenSSH prints
        "remote port forwarding failed"), so the next session channel's stderr says why."""
        if self.authenticated:
            self.state.audit(Event.REFUSED, self.who,
                             {"what": "remote forwarding", "outcome": "refused"})
        self._notes.append(REMOTE_FORWARD_REFUSED.format(port=listen_port))
        return False

    async def run_process(self, process: asyncssh.SSHServerProcess) -> None:
        """Serve one session channel: a PTY shell, a command, or a subsystem."""
        self._processes.add(process)
        notes, self._notes = self._notes, []
        for note in notes:
            with contextlib.suppress(OSError, asyncssh.Error):
                process.stderr.write(f"{note}\r\n".encode())
        try:
            if self.state.ended:
                process.exit(1)
                return
            await self._serve(process)
        except (asyncssh.BreakReceived, asyncssh.SignalReceived, asyncssh.TerminalSizeChanged,
                BrokenPipeError, ConnectionError, asyncssh.DisconnectError):
            process.exit(255)
        finally:
            self._processes.discard(process)

    def goodbye(self, why: str) -> None:
        """The session is ending while this technician is connected: say so on every open
        channel's stderr (what an OpenSSH user reads) and in the reason of the disconnect
        (what the console reads), before the shells are killed under them."""
        text = f"Adhoc: the session ended: {why}."
        for process in list(self._processes):
            with contextlib.suppress(OSError, asyncssh.Error):
                process.stderr.write(f"\r\n{text}\r\n".encode())
                process.exit(255)  # what sshd's client reports for a connection cut
        if self._conn is not None:
            with contextlib.suppress(OSError, asyncssh.Error):
                self._conn.disconnect(DISC_SERVICE_NOT_AVAILABLE, text)

    def _refuse(self, process: asyncssh.SSHServerProcess, what: str) -> None:
        process.stderr.write(self.state.refusal(self.who, what))
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
        if subsystem:  # sftp is files.py's, granted or refused there
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
                shell = await shells.start(shell_id, term, cols, rows, process.command,
                                           self._session_env(process))
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
                    return  # end of input is not the end of a terminal session (as in sshd)
                await shell.pty.write(data)

        typing = asyncio.create_task(pump_input())
        exited = asyncio.create_task(shell.exited.wait())
        taken = asyncio.create_task(attachment.taken.wait())
        gone = asyncio.create_task(process.channel.wait_closed())
        try:
            with self.state.doing(self.who, "shell"):
                await asyncio.wait({exited, taken, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (typing, exited, taken, gone):
                task.cancel()
            shell.detach(attachment, shells.detached_timeout)
        if taken.done() and not taken.cancelled():
            process.stderr.write(b"\r\n" + SHELL_TAKEN_OVER + b"\r\n")
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
            status = await run_command(process, command, self.state.reaper,
                                       self._session_env(process))
        process.exit(status)

    def _session_env(self, process: asyncssh.SSHServerProcess) -> dict[str, str]:
        """What a shell or command gets from this channel: the variables the client sent that
        are accepted, and SSH_CONNECTION / SSH_CLIENT."""
        return {**accepted_env(process.env), **self.env}


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
        "sftp_factory": sftp,
        "allow_scp": False,
        **SERVER_ALGORITHMS,  # the algorithm lists (kex, ciphers, MACs, signatures, no zlib)
        "line_editor": False,
        "encoding": None,
        "window": INNER_WINDOW,
        "max_pktsize": INNER_PACKET,
        "keepalive_interval": 15,
        "keepalive_count_max": 3,
        "login_timeout": 60,
        # Password only: keyboard-interactive would be the same password asked again, and
        # OpenSSH tries each method in turn (one mistyped password spent six tries).
        "kbdint_auth": False,
        "agent_forwarding": False,
        "x11_forwarding": False,
        "gss_host": None,  # no GSS: also spares a look-up of this host's FQDN per connection
    }
