"""Every process a technician starts ends with the session, however it was started.

Shells and commands run in sessions of their own, and a program can leave those (`nohup`,
`setsid`, a double fork, a daemon). On Linux the agent makes itself a child subreaper
(prctl PR_SET_CHILD_SUBREAPER): a process whose parent exits is then re-parented to the agent
instead of to init, so every process a technician started stays a descendant of the agent, and
walking the descendants finds them all -- without root, and in containers where the agent
cannot make a cgroup of its own. Elsewhere the agent also looks for processes in the sessions
and process groups its shells and commands made.

At the end everything found is stopped first (SIGSTOP, so nothing forks while the agent looks
again) and then killed (SIGKILL). Orphans that end during the session are reaped as they go,
so they do not linger as zombies; processes asyncio started itself are left to asyncio.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time

import psutil

from common.prctl import PR_SET_CHILD_SUBREAPER, prctl

log = logging.getLogger("adhoc.host")

SWEEPS = 8  # rounds of "stop what is found, look again" before the kill


def become_subreaper() -> bool:
    """Make orphaned descendants this process's children (Linux); whether that worked."""
    return prctl(PR_SET_CHILD_SUBREAPER, 1)


class Reaper:
    """The processes the session started: the leaders it knows, and everything below them."""

    def __init__(self, subreaper: bool | None = None) -> None:
        self.subreaper = become_subreaper() if subreaper is None else subreaper
        self._me = os.getpid()
        self._started = time.time()
        self._leaders: set[int] = set()  # sessions and groups our shells and commands made
        self._asyncio_children: set[int] = set()  # asyncio waits for these itself

    def started(self, pid: int) -> None:
        """A shell or command was started as `pid`, leading a session of its own."""
        self._leaders.add(pid)
        self._asyncio_children.add(pid)

    def exited(self, pid: int) -> None:
        self._asyncio_children.discard(pid)

    def _found(self) -> dict[int, psutil.Process]:
        found: dict[int, psutil.Process] = {}
        with contextlib.suppress(psutil.Error):
            for proc in psutil.Process(self._me).children(recursive=True):
                found[proc.pid] = proc
        if not self.subreaper and self._leaders:
            # Without a subreaper, orphans went to init: find them by session or group.
            for proc in psutil.process_iter():
                if proc.pid in found or proc.pid == self._me:
                    continue
                with contextlib.suppress(OSError, psutil.Error):
                    if ((os.getsid(proc.pid) in self._leaders
                         or os.getpgid(proc.pid) in self._leaders)
                            and proc.create_time() >= self._started - 1):
                        found[proc.pid] = proc
        return found

    def end_all(self) -> int:
        """Stop and kill every process the session started; how many there were."""
        stopped: dict[int, psutil.Process] = {}
        for _ in range(SWEEPS):
            fresh = {pid: p for pid, p in self._found().items() if pid not in stopped}
            if not fresh:
                break
            for proc in fresh.values():
                with contextlib.suppress(psutil.Error):
                    proc.send_signal(signal.SIGSTOP)
            stopped.update(fresh)
        for proc in stopped.values():
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGKILL)
        if stopped:
            log.info("ended %d processes of the session", len(stopped))
        self.reap()
        return len(stopped)

    def reap(self) -> None:
        """Collect the exit status of adopted orphans that ended (not asyncio's own)."""
        with contextlib.suppress(psutil.Error):
            for proc in psutil.Process(self._me).children():
                if proc.pid in self._asyncio_children:
                    continue
                with contextlib.suppress(ChildProcessError, OSError):
                    os.waitpid(proc.pid, os.WNOHANG)
