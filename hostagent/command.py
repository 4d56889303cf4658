"""A command run without a PTY (`ssh host cmd`): its output to the channel, its process group
hung up when the channel goes, and never waited for beyond its own exit.

The command runs in a session of its own (`sh -c`, start_new_session). When it exits, what it
printed is passed on until the pipes are closed or quiet: a background program it left behind
(`nohup x &`, `setsid x &`) may hold them open for as long as it runs, and must not keep the
channel -- or, at the end of the session, the agent -- waiting. Such programs end with the
session (hostagent/reaper.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal

import asyncssh

from hostagent.reaper import Reaper
from hostagent.shell import login_shell, shell_environment

QUIET_AFTER_EXIT = 0.5  # output after the command exited ends once the pipes are this quiet
HANGUP_GRACE = 2.0  # SIGHUP to the group when the channel goes, SIGKILL this much later
# A bulk command (`rsync --server --sender`, `scp -O -f`, `tar c`) fills a pipe of the
# system's default 64 KiB with each write: the agent then paid a read, a pause and a resume
# per 60 KiB it sent (docs/BENCHMARKS.md, Stock OpenSSH tools). Its stdin and stdout pipes get
# this much instead (Linux; 256 pages each, of the 16,384 a user may have before the system
# gives new pipes less), and reading from stdout pauses only once this much waits for the
# channel.
PIPE_SIZE = 1024 * 1024


class _Pipes(asyncio.SubprocessProtocol):
    """The command's stdout and stderr to the channel, at the channel's pace."""

    pause_past = PIPE_SIZE  # reading pauses once the channel holds more than this unsent

    def __init__(self, process: asyncssh.SSHServerProcess) -> None:
        self._sinks = {1: process.stdout, 2: process.stderr}
        self.transport: asyncio.SubprocessTransport | None = None
        self.exited = asyncio.Event()
        self.closed = {1: asyncio.Event(), 2: asyncio.Event()}
        self.channel_gone = asyncio.Event()
        self.last_output = 0.0
        self.draining = 0
        self.writable = asyncio.Event()
        self.writable.set()
        self._close_on_exit = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.SubprocessTransport)
        self.transport = transport

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        self.last_output = asyncio.get_running_loop().time()
        sink = self._sinks[fd]
        try:
            sink.write(data)
        except (OSError, asyncssh.Error):
            self.channel_gone.set()
            return
        if sink.channel.get_write_buffer_size() <= self.pause_past:
            return  # the channel takes it as it comes: read on, no pause
        pipe = self.transport.get_pipe_transport(fd) if self.transport else None
        if isinstance(pipe, asyncio.ReadTransport):
            pipe.pause_reading()
            self.draining += 1
            asyncio.get_running_loop().create_task(self._drain(sink, pipe))

    async def _drain(self, sink: asyncssh.SSHWriter, pipe: asyncio.ReadTransport) -> None:
        try:
            await sink.drain()
        except (OSError, asyncssh.Error):
            self.channel_gone.set()
        finally:
            self.draining -= 1
            if not pipe.is_closing():
                pipe.resume_reading()

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd in self.closed:
            self.closed[fd].set()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def process_exited(self) -> None:
        self.exited.set()
        self._close_if_due()

    def close_when_exited(self) -> None:
        """Close the transport now if the command has exited, else when it does."""
        self._close_on_exit = True
        self._close_if_due()

    def _close_if_due(self) -> None:
        if self._close_on_exit and self.exited.is_set() and self.transport is not None:
            self.transport.close()

    def done_printing(self) -> bool:
        return all(event.is_set() for event in self.closed.values())


async def _copy_input(process: asyncssh.SSHServerProcess, pipes: _Pipes, pgid: int) -> None:
    assert pipes.transport is not None
    stdin = pipes.transport.get_pipe_transport(0)
    assert isinstance(stdin, asyncio.WriteTransport)
    with contextlib.suppress(OSError, asyncssh.Error):
        while True:
            try:
                data = await process.stdin.read(64 * 1024)
            except asyncssh.SignalReceived as received:
                # The client's signal request (`process.send_signal`) goes to the whole group.
                with contextlib.suppress(KeyError):
                    _signal_group(pgid, signal.Signals[f"SIG{received.signal}"])
                continue
            except (asyncssh.BreakReceived, asyncssh.TerminalSizeChanged):
                continue
            if not data or stdin.is_closing():
                break
            stdin.write(data)
            await pipes.writable.wait()
    if not stdin.is_closing():
        stdin.close()


async def _wait_quiet(pipes: _Pipes) -> None:
    """After the exit: until the pipes close, or nothing came for QUIET_AFTER_EXIT while
    nothing was waiting to reach the channel."""
    loop = asyncio.get_running_loop()
    while not pipes.done_printing() and not pipes.channel_gone.is_set():
        quiet = loop.time() - pipes.last_output
        if not pipes.draining and quiet >= QUIET_AFTER_EXIT:
            return
        await asyncio.sleep(max(QUIET_AFTER_EXIT - quiet, 0.05))


def _widen_pipes(transport: asyncio.SubprocessTransport) -> None:
    """Give the command's stdin and stdout pipes PIPE_SIZE where the system allows it."""
    for fd in (0, 1):
        pipe = transport.get_pipe_transport(fd)
        end = pipe.get_extra_info("pipe") if pipe is not None else None
        with contextlib.suppress(OSError, AttributeError, ValueError):
            fcntl.fcntl(end.fileno(), fcntl.F_SETPIPE_SZ, PIPE_SIZE)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def run_command(process: asyncssh.SSHServerProcess, command: str,
                      reaper: Reaper | None = None, env: dict[str, str] | None = None) -> int:
    """Run `command` in the login shell for this channel, with `env` added to the login
    environment; its exit status."""
    loop = asyncio.get_running_loop()
    env = shell_environment("dumb", env)
    try:
        transport, pipes = await loop.subprocess_exec(
            lambda: _Pipes(process), login_shell(), "-c", command,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env, cwd=env["HOME"], start_new_session=True)
    except OSError as exc:  # too long for the system (E2BIG), no shell, no home folder
        process.stderr.write(f"cannot run the command: {exc.strerror or exc}\n".encode())
        return 126
    _widen_pipes(transport)
    process.channel.set_write_buffer_limits(high=PIPE_SIZE)
    pid = transport.get_pid()
    if reaper is not None:
        reaper.started(pid)
    typing = loop.create_task(_copy_input(process, pipes, pid))
    gone = loop.create_task(process.channel.wait_closed())
    exited = loop.create_task(pipes.exited.wait())
    lost = loop.create_task(pipes.channel_gone.wait())
    quiet: asyncio.Task | None = None
    try:
        await asyncio.wait({exited, gone, lost}, return_when=asyncio.FIRST_COMPLETED)
        if exited.done():
            quiet = loop.create_task(_wait_quiet(pipes))
            await asyncio.wait({gone, quiet}, return_when=asyncio.FIRST_COMPLETED)
        else:
            # The technician went while it ran: hang up its group, as a terminal would.
            _signal_group(pid, signal.SIGHUP)
            loop.call_later(HANGUP_GRACE, _signal_group, pid, signal.SIGKILL)
    finally:
        for task in (typing, gone, exited, lost, quiet):
            if task is not None:
                task.cancel()
        # Closing our ends of the pipes is all that is left: nothing waits for whoever else
        # holds them. The transport itself closes once the command has exited: closed
        # before, asyncio reaps a command that just died of the hang-up under its own
        # watcher, which then logs "Unknown child process" on the customer's terminal.
        for fd in (0, 1, 2):
            pipe = transport.get_pipe_transport(fd)
            if pipe is not None:
                pipe.close()
        pipes.close_when_exited()
        if reaper is not None and pipes.exited.is_set():
            reaper.exited(pid)
    status = transport.get_returncode()
    return status if status is not None and status >= 0 else 255
