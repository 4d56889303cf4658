"""The session password at the door of every inner connection: checked one at a time, slower
after each wrong one, and refused altogether after too many until the customer allows logins
again.

Each check is an argon2 hash (tens of MiB of memory for a fraction of a second), so many
parallel connections must not mean many parallel checks: they run on one thread, in turn, and
only a few logins may wait for their turn at once (the rest are turned away unchecked). The
pause after a wrong password is shared by every connection, so guessing on twenty connections
is no faster than on one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import time
from collections.abc import Awaitable, Callable
from enum import Enum

from common.passwords import verify_password
from common.secret import Secret

LOCK_AFTER = 10  # wrong passwords in a row before logins stop
WAITING_LIMIT = 32  # logins that may wait for their check at once
# The pause after the first wrong password; it doubles after each, up to 16 times as long
# (0.5 s to 8 s). ADHOC_HOST_LOGIN_PAUSE lets tests reach the lockout in seconds.
PAUSE_BASE = float(os.environ.get("ADHOC_HOST_LOGIN_PAUSE", "0.5"))
PAUSE_CAP = 16 * PAUSE_BASE

LOCKED_MESSAGE = ("Adhoc: this computer stopped accepting the session password after {count} "
                  "wrong tries; ask the customer to press u in the Adhoc window to allow logins "
                  "again.")
# Inner connections that have not logged in yet; more are hung up at once (each holds memory
# until it logs in or its login times out).
PENDING_LIMIT = 64
WRONG_MESSAGE = ("Adhoc: wrong session password; after {left} more wrong {tries} this "
                 "computer stops accepting it.")
WRONG_USER_MESSAGE = ("Adhoc: there is no user {user} here: log in as {inner} "
                      "({inner}@<session-id>) with the session password.")
BUSY_MESSAGE = ("Adhoc: too many logins are waiting for their password check on this "
                "computer; try again in a minute.")


class Verdict(Enum):
    RIGHT = "right"
    WRONG = "wrong"
    LOCKED = "locked"  # refused unchecked: logins are stopped
    BUSY = "busy"  # refused unchecked: too many logins wait already


class PasswordGuard:
    def __init__(self, verifier: str, *, lock_after: int = LOCK_AFTER,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[object]] = asyncio.sleep) -> None:
        self._verifier = verifier
        self.lock_after = lock_after
        self._clock, self._sleep = clock, sleep
        self._turn = asyncio.Lock()
        # One thread: a check abandoned by its connection still finishes before the next.
        self._checker = concurrent.futures.ThreadPoolExecutor(1, "adhoc-host-password")
        self._waiting = 0
        self.pending = 0  # connections that have not logged in yet
        self._not_before = 0.0
        self.failures = 0  # wrong in a row, since the last right one or unlock
        self.total_failures = 0
        self.locked = False
        self.refused_while_locked = 0

    def admit(self) -> bool:
        """A new connection, not logged in yet: whether there is room for it."""
        if self.pending >= PENDING_LIMIT:
            return False
        self.pending += 1
        return True

    def settled(self) -> None:
        """An admitted connection logged in, or went."""
        self.pending = max(0, self.pending - 1)

    def pause(self) -> float:
        """How long the next check waits after the wrong passwords so far."""
        if not self.failures:
            return 0.0
        return min(PAUSE_BASE * 2 ** (self.failures - 1), PAUSE_CAP)

    async def check(self, password: Secret) -> Verdict:
        if self.locked:
            self.refused_while_locked += 1
            return Verdict.LOCKED
        if self._waiting >= WAITING_LIMIT:
            return Verdict.BUSY
        self._waiting += 1
        try:
            async with self._turn:
                wait = self._not_before - self._clock()
                if wait > 0:
                    await self._sleep(wait)
                if self.locked:
                    self.refused_while_locked += 1
                    return Verdict.LOCKED
                loop = asyncio.get_running_loop()
                right = await loop.run_in_executor(self._checker, verify_password,
                                                   self._verifier, password.reveal())
                if right:
                    self.failures = 0
                    self._not_before = 0.0
                    return Verdict.RIGHT
                self.failures += 1
                self.total_failures += 1
                self._not_before = self._clock() + self.pause()
                if self.failures >= self.lock_after:
                    self.locked = True
                return Verdict.WRONG
        finally:
            self._waiting -= 1

    def unlock(self) -> int:
        """Allow logins again (the customer's choice); how many were refused meanwhile."""
        refused = self.refused_while_locked
        self.locked = False
        self.failures = 0
        self.refused_while_locked = 0
        self._not_before = 0.0
        return refused

    def close(self) -> None:
        self._checker.shutdown(wait=False, cancel_futures=True)
