"""A shell on a real pseudo-terminal, owned by the agent (not by an SSH channel)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import pty
import pwd
import re
import signal
import struct
import termios
from collections.abc import Mapping

READ_CHUNK = 64 * 1024
OUTPUT_QUEUE = 16
# During a flood a PTY read gives a couple of KiB (find: 1.9 KiB on average); chunks already
# queued are handed on together, up to this much, so a flood costs a packet per 32 KiB on both
# SSH layers instead of one per read (an idle shell's output still goes at once, alone).
COALESCE = 32 * 1024
# A read that brings at least GATHER_FROM is a flood's (an echo or a prompt is far smaller):
# then what comes within GATHER_SECONDS more goes with it, up to COALESCE, for chunks rarely
# queue up on their own (an agent that keeps up read find's output a chunk at a time, and both
# SSH layers paid a packet per chunk, the console the most). Output that is not a flood still
# goes at once.
GATHER_FROM = 1024
GATHER_SECONDS = 0.003
# Once the shell itself has exited, its last output is read until the PTY has been quiet this
# long, and never for longer than LINGER_AFTER_EXIT: a job it left running in the background
# (`job &`, nohup, setsid) may hold the terminal and print on, and must not keep the channel
# open (sshd closes it when the shell exits; the job is left to its hang-up).
QUIET_AFTER_EXIT = 0.1
LINGER_AFTER_EXIT = 0.5


def login_shell() -> str:
    # For tests and odd setups: a shell that does not read the user's profile.
    override = os.environ.get("ADHOC_HOST_SHELL")
    if override and os.access(override, os.X_OK):
        return override
    try:
        shell = pwd.getpwuid(os.getuid()).pw_shell
    except KeyError:
        shell = ""
    if shell and os.access(shell, os.X_OK) and not shell.endswith(("nologin", "false")):
        return shell
    for candidate in ("/bin/bash", "/bin/sh"):
        if os.access(candidate, os.X_OK):
            return candidate
    return "/bin/sh"


# What a client may set with SendEnv/SetEnv, as sshd's AcceptEnv commonly allows: the locale,
# the terminal's type and colours, the time zone. Anything else is ignored, like sshd does.
ACCEPTED_ENV = re.compile(r"^(LANG|LC_[A-Z_]{1,32}|TERM|COLORTERM|TZ)$")
ACCEPTED_VALUE = re.compile(r"^[\x20-\x7e]{0,256}$")


def accepted_env(sent: Mapping[str | bytes, str | bytes] | None) -> dict[str, str]:
    """The variables of `sent` (a channel's env requests) that a shell gets: accepted names
    with short printable values; the rest is dropped without a word, as sshd does."""
    taken: dict[str, str] = {}
    for key, value in (sent or {}).items():
        name = key.decode(errors="replace") if isinstance(key, bytes) else str(key)
        text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
        if ACCEPTED_ENV.match(name) and ACCEPTED_VALUE.match(text):
            taken[name] = text
    return taken


def shell_environment(term: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A login environment for the agent's user; `extra` (the client's accepted variables,
    SSH_CONNECTION...) is applied last, as sshd applies what the client sent after TERM."""
    try:
        entry = pwd.getpwuid(os.getuid())
        home, user = entry.pw_dir, entry.pw_name
    except KeyError:
        home, user = "/", str(os.getuid())
    env = {
        "TERM": term or "xterm-256color", "HOME": home, "USER": user, "LOGNAME": user,
        "SHELL": login_shell(), "LANG": os.environ.get("LANG", "C.UTF-8"),
        "PATH": os.environ.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:"
                                       "/sbin:/bin"),
        "ADHOC_SESSION": "1",
    }
    env.update(extra or {})
    return env


def _set_winsize(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", max(rows, 1), max(cols, 1), 0, 0))


def _make_controlling_tty() -> None:  # runs in the child between fork and exec
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class PtyShell:
    """A login shell on a PTY. Output goes to whatever `on_output` is set to."""

    def __init__(self, term: str, cols: int, rows: int, command: str | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        self.term = term
        self.cols, self.rows = cols, rows
        self.command = command
        self.env = dict(env or {})
        self.process: asyncio.subprocess.Process | None = None
        self._master = -1
        # Unbounded so close() can always post the end; reading pauses at OUTPUT_QUEUE chunks.
        self._output: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._reading = False
        self._ended = False
        self._end_read = False  # read() has taken the end marker with the last output
        self._last_output = 0.0
        self._watch: asyncio.Task | None = None

    async def start(self) -> None:
        master, slave = pty.openpty()
        _set_winsize(slave, self.cols, self.rows)
        argv = [login_shell()]
        argv += ["-c", self.command] if self.command else ["-l"]
        env = shell_environment(self.term, {**self.env, "SSH_TTY": os.ttyname(slave)})
        try:
            self.process = await asyncio.create_subprocess_exec(
                *argv, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=env["HOME"],
                preexec_fn=_make_controlling_tty)
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        os.set_blocking(master, False)
        self._master = master
        self._resume_reading()
        self._watch = asyncio.get_running_loop().create_task(self._end_when_quiet())

    async def _end_when_quiet(self) -> None:
        """After the shell exits, end the output once what it printed last was read: when the
        PTY is quiet, or LINGER_AFTER_EXIT after the exit if a program it left behind prints
        on. What was read by then is still delivered; a slow reader only delays the end."""
        assert self.process is not None
        await self.process.wait()
        loop = asyncio.get_running_loop()
        exited_at = loop.time()
        while not self._ended:
            now = loop.time()
            # Counted from the exit at the earliest: what the shell wrote just before it
            # exited may take a moment to reach this side of the PTY.
            quiet = now - max(self._last_output, exited_at)
            if self._output.empty() and ((self._reading and quiet >= QUIET_AFTER_EXIT)
                                         or now - exited_at >= LINGER_AFTER_EXIT):
                self._pause_reading()
                self._end_output()
                return
            await asyncio.sleep(min(max(QUIET_AFTER_EXIT - quiet, 0.01), QUIET_AFTER_EXIT))

    def _resume_reading(self) -> None:
        if not self._reading and self._master >= 0:
            asyncio.get_running_loop().add_reader(self._master, self._on_readable)
            self._reading = True

    def _pause_reading(self) -> None:
        if self._reading:
            asyncio.get_running_loop().remove_reader(self._master)
            self._reading = False

    def _on_readable(self) -> None:
        try:
            data = os.read(self._master, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:  # EIO: the shell and everything on the PTY has exited
            data = b""
        if not data:
            self._pause_reading()
            self._end_output()
            return
        self._last_output = asyncio.get_running_loop().time()
        self._output.put_nowait(data)
        if self._output.qsize() >= OUTPUT_QUEUE:
            self._pause_reading()  # back-pressure: the reader resumes us

    def _end_output(self) -> None:
        if not self._ended:
            self._ended = True
            self._output.put_nowait(None)

    async def read(self) -> bytes | None:
        """The output read since the last call (at least one chunk, what is queued with it up
        to COALESCE), or None once the shell has exited."""
        if self._end_read:
            return None
        chunks: list[bytes] = []
        size = 0
        data = await self._output.get()
        gathered = False
        while data is not None:
            chunks.append(data)
            size += len(data)
            if size >= COALESCE:
                break
            if self._output.empty():
                if gathered or size < GATHER_FROM or self._ended:
                    break
                gathered = True
                await asyncio.sleep(GATHER_SECONDS)
                if self._output.empty():
                    break
            data = self._output.get_nowait()
        else:
            self._end_read = True
        if not chunks:
            return None
        if not self._ended and self._output.qsize() < OUTPUT_QUEUE:
            self._resume_reading()
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    @property
    def master_fd(self) -> int:
        return self._master

    async def write(self, data: bytes) -> None:
        """Type `data` into the shell, waiting while the PTY's input buffer is full."""
        view = memoryview(data)
        while view and self._master >= 0:
            try:
                written = os.write(self._master, view)
            except BlockingIOError:
                await self._writable()
                continue
            except OSError:
                return
            view = view[written:]

    async def _writable(self) -> None:
        loop = asyncio.get_running_loop()
        ready = loop.create_future()
        loop.add_writer(self._master, ready.set_result, None)
        try:
            await ready
        finally:
            loop.remove_writer(self._master)

    def resize(self, cols: int, rows: int) -> None:
        self.cols, self.rows = cols, rows
        if self._master >= 0:
            with contextlib.suppress(OSError):
                _set_winsize(self._master, cols, rows)

    async def wait(self) -> int:
        assert self.process is not None
        return await self.process.wait()

    def close(self) -> None:
        """Hang up the shell: SIGHUP to its process group, then close the PTY."""
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGHUP)
        self._pause_reading()
        if self._master >= 0:
            os.close(self._master)
            self._master = -1
        self._end_output()
        if self._watch is not None:
            self._watch.cancel()

    def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
        self.close()
