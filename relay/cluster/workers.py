"""`adhoc-relay serve --workers N`: N relay processes on one machine, every core used.

The workers share the listening ports (SO_REUSEPORT: the kernel spreads new connections over
them) and the database (SQLite in WAL mode takes several processes; PostgreSQL as usual). Each
is a node of the cluster (relay/cluster/nodes.py) named after the machine's node name and its
number, with a peer listener of its own on a loopback port, so a technician whose connection
landed on one worker reaches an agent held by another. The parent only starts the workers,
restarts one that dies (its agents come back to the others within their backoff cap, and to
it), and stops them all on SIGTERM or SIGINT.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable

from common.prctl import PR_SET_PDEATHSIG, prctl
from relay.config import RelaySettings
from relay.listeners import listening_socket

log = logging.getLogger("adhoc.relay.workers")

# Waits before restarting a worker that died, longer the more often it has just died.
RESTART_DELAYS = (0.2, 1.0, 2.0, 5.0, 10.0)
# A worker that ran this long before dying is not in a crash loop: its next wait starts over.
STABLE_SECONDS = 30.0
READY_TIMEOUT = 120.0
STOP_TIMEOUT = 15.0
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def reserve_ports(settings: RelaySettings) -> list[socket.socket]:
    """Choose the ports the workers share where the settings say 0, and keep them taken by
    sockets that are bound but never listen (so the kernel gives them no connection); the
    settings then name the real ports."""
    held = []
    wanted = [("http_host", "http_port")]
    if settings.ssh_listen:
        wanted.append(("ssh_host", "ssh_port"))
    for host_field, port_field in wanted:
        if getattr(settings, port_field) != 0:
            continue
        host = getattr(settings, host_field)
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                             socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, 0))
        setattr(settings, port_field, sock.getsockname()[1])
        held.append(sock)
    return held


def worker_settings(settings: RelaySettings, number: int, machine_node: str,
                    ssh_socket: socket.socket | None = None) -> RelaySettings:
    """The settings of worker `number`: the shared ports (its SSH listening socket, if the
    parent keeps one), a node name and peer port of its own."""
    return dataclasses.replace(settings, node=f"{machine_node}/w{number}", reuse_port=True,
                               peer_address=settings.peer_address or ("127.0.0.1", 0),
                               ssh_socket=ssh_socket)


def _say_ready(write_end: int) -> None:
    """A worker tells its parent it accepts connections. A parent that no longer listens
    (it is stopping) is no reason for the worker to fail."""
    with contextlib.suppress(BrokenPipeError):
        os.write(write_end, b"r")
    os.close(write_end)


class Supervisor:
    """Starts `count` workers by forking `serve` (which runs one relay until SIGTERM and calls
    its `ready` once it accepts connections), and keeps them running."""

    def __init__(self, settings: RelaySettings, count: int,
                 serve: Callable[[RelaySettings, Callable[[], None]], int], *,
                 drained_status: int | None = None) -> None:
        self.settings = settings
        self._drained_status = drained_status  # a worker that exits so drained: not restarted
        self.count = count
        self._serve = serve
        self._machine_node = settings.node or \
            f"{socket.gethostname()}:{settings.ssh_port or settings.http_port}"
        self._pids: dict[int, int] = {}  # pid -> worker number
        self._started: dict[int, float] = {}  # worker number -> when it last started
        self._deaths: dict[int, int] = {}  # worker number -> deaths in a row
        # a restarted worker's ready pipe -> (its number, when it was started)
        self._restarting: dict[int, tuple[int, float]] = {}
        # worker number -> its SSH listening socket. The parent keeps it across a restart:
        # the kernel spreads new connections over the port's sockets when they arrive, so
        # while a dead worker's socket stays open, its share of the agents dialling again
        # waits there for its replacement instead of all going to the survivors.
        self._ssh_sockets: dict[int, socket.socket] = {}
        self._stopping = False

    def _fork(self, number: int) -> tuple[int, int]:
        """Start worker `number`; (its pid, a pipe end that becomes readable when it is
        ready or gone)."""
        ssh_socket = self._ssh_socket(number)
        read_end, write_end = os.pipe()
        parent = os.getpid()
        # SIGTERM and SIGINT wait, blocked, until the worker has let go of the parent's
        # handlers (which only mark the parent stopping): one that arrived in between was
        # swallowed, and the worker went on serving after its parent had stopped.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            pid = os.fork()
        except BaseException:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            raise
        if pid == 0:  # the worker
            os.close(read_end)
            for other, sock in self._ssh_sockets.items():
                if other != number:  # only the parent may keep another worker's open
                    sock.close()
            code = 1
            try:
                signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
                # Stopped while starting, a worker just ends; once ready, its relay stops
                # cleanly on SIGTERM (its agents move to the other workers at once).
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
                # A parent killed outright (kill -9, the OOM killer) cannot stop its workers:
                # they stop themselves, and do not hold the ports for a relay started anew.
                prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
                if os.getppid() != parent:  # it died before that was set
                    os.kill(os.getpid(), signal.SIGTERM)
                code = self._serve(worker_settings(self.settings, number, self._machine_node,
                                                   ssh_socket),
                                   lambda: _say_ready(write_end))
            except BaseException:  # never let a worker return into the parent's loop
                logging.getLogger("adhoc.relay").exception("worker %d failed", number)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.close(write_end)
        self._pids[pid] = number
        self._started[number] = time.monotonic()
        return pid, read_end

    def _ssh_socket(self, number: int) -> socket.socket | None:
        """Worker `number`'s SSH listening socket, made if it has none (None if the relay
        has no SSH port, or the socket cannot be made: the worker then says why)."""
        settings = self.settings
        if number not in self._ssh_sockets and settings.ssh_listen:
            with contextlib.suppress(OSError):
                self._ssh_sockets[number] = listening_socket(settings.ssh_host,
                                                             settings.ssh_port,
                                                             reuse_port=True)
        return self._ssh_sockets.get(number)

    def _let_go(self, number: int) -> None:
        """Close worker `number`'s SSH socket: connections no longer wait for it."""
        sock = self._ssh_sockets.pop(number, None)
        if sock is not None:
            sock.close()

    def start(self) -> None:
        """Start every worker and wait until all accept connections."""
        pipes = [self._fork(number)[1] for number in range(self.count)]
        deadline = time.monotonic() + READY_TIMEOUT
        try:
            while pipes:
                readable, _, _ = select.select(pipes, [], [], max(0.0,
                                               deadline - time.monotonic()))
                if not readable:
                    raise RuntimeError("the workers did not start in time")
                for fd in readable:
                    if os.read(fd, 1) != b"r":
                        raise RuntimeError("a worker stopped while starting: see its error "
                                           "above")
                    os.close(fd)
                    pipes.remove(fd)
        except BaseException:
            for fd in pipes:
                os.close(fd)
            self.stop()
            raise

    def supervise(self) -> int:
        """Restart workers that die until SIGTERM or SIGINT; then stop them all."""
        def stop(_signum, _frame) -> None:
            self._stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        while not self._stopping:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                self._hear_restarted(0.1)
                continue
            number = self._pids.pop(pid, None)
            if number is None or self._stopping:
                continue
            if os.WIFEXITED(status) and os.WEXITSTATUS(status) == self._drained_status:
                log.warning("worker %d drained and stopped", number)
                self._let_go(number)
                if not self._pids:
                    print("adhoc-relay: every worker drained; stopped", file=sys.stderr,
                          flush=True)
                    break
                continue
            self._restart(number, status)
        self.stop()
        return 0

    def _restart(self, number: int, status: int) -> None:
        ran = time.monotonic() - self._started.get(number, 0.0)
        deaths = 0 if ran >= STABLE_SECONDS else self._deaths.get(number, 0)
        delay = RESTART_DELAYS[min(deaths, len(RESTART_DELAYS) - 1)]
        self._deaths[number] = deaths + 1
        if delay >= 1.0:  # dying again and again: let its share go to the others meanwhile
            self._let_go(number)
        why = f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) \
            else f"exit status {os.waitstatus_to_exitcode(status)}"
        log.warning("worker %d stopped (%s) after %.0f s; starting it again in %.1f s", number,
                    why, ran, delay)
        print(f"adhoc-relay: worker {number} stopped ({why}); starting it again", file=sys.stderr,
              flush=True)
        time.sleep(delay)
        if not self._stopping:
            _pid, ready = self._fork(number)
            # Kept open until the worker says it is ready: a worker writing to a pipe nobody
            # reads would fail its start (EPIPE) and be restarted again, and again.
            self._restarting[ready] = (number, time.monotonic())

    def _hear_restarted(self, timeout: float) -> None:
        """Wait up to `timeout` for a restarted worker to say it is ready (or to die), and log
        which did."""
        if not self._restarting:
            time.sleep(timeout)
            return
        readable, _, _ = select.select(list(self._restarting), [], [], timeout)
        for fd in readable:
            number, since = self._restarting.pop(fd)
            said = os.read(fd, 1)
            os.close(fd)
            if said == b"r":
                log.warning("worker %d is serving again (ready %.1f s after its start)", number,
                            time.monotonic() - since)

    def stop(self) -> None:
        """SIGTERM to every worker, then SIGKILL to any still running after STOP_TIMEOUT."""
        for fd in self._restarting:
            os.close(fd)
        self._restarting.clear()
        for number in list(self._ssh_sockets):
            self._let_go(number)
        for pid in list(self._pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while self._pids and time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self._pids.clear()
                break
            if pid:
                self._pids.pop(pid, None)
            else:
                time.sleep(0.05)
        for pid in list(self._pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
        self._pids.clear()

    def addresses(self) -> tuple[str, str]:
        """(the HTTP base URL, the SSH address or "off") the workers serve together."""
        return self.settings.base_url(), self.settings.ssh_address() or "off"
