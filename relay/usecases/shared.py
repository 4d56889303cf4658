"""What the use cases share: the refusal type, per-address rate limits, time and input checks.

Every refusal is a `ServiceError` with an API error code and a sentence that says what to do
next; the HTTP API and the SSH endpoint turn it into their own wire form.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import time
import unicodedata
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Hashable
from datetime import UTC, datetime

from relay.config import Rate
from relay.sessions import MAX_EMAIL_CHARS

DISC_SERVICE_NOT_AVAILABLE = 7  # RFC 4253 11.1; the same number as asyncssh's constant

TOKEN_LIFETIME = 30 * 86400
RECENT_ENDED = 7 * 86400
LOGIN_RE = re.compile(r"^[a-z0-9._-]{1,64}$")
EMAIL_RE = re.compile(r"^[^@\s<>\"',;]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?"
                      r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?)+$")


# What a customer is told of a link that no longer works (the join page, install.sh, the agent).
LINK_USED = ("this link was already used, has expired or was ended: ask your technician for a "
             "new invitation")


class ServiceError(Exception):
    def __init__(self, status: int, code: str, detail: str, *,
                 retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.retry_after = retry_after


class KeyedLocks:
    """One lock per key (a technician, a join link), kept only while someone holds it or
    waits for it, so the map never grows with keys no longer in use."""

    def __init__(self) -> None:
        self._locks: dict[Hashable, tuple[asyncio.Lock, list[int]]] = {}  # key -> lock, [users]

    @contextlib.asynccontextmanager
    async def hold(self, key: Hashable) -> AsyncIterator[None]:
        lock, users = self._locks.setdefault(key, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._locks[key]

    def __len__(self) -> int:
        return len(self._locks)


class RateLimiter:
    """A token bucket per source address, in memory and bounded in size.

    `count` requests may come at once; after that one more each `per / count` seconds.
    """

    MAX_SOURCES = 10_000

    def __init__(self, rate: Rate, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(rate.count)
        self.refill_per_second = rate.count / rate.per.total_seconds()
        self.clock = clock
        # source -> (tokens, last update, refused since the last allowed request)
        self._buckets: OrderedDict[str, tuple[float, float, bool]] = OrderedDict()

    def take(self, source: str, cost: int = 1) -> tuple[float, bool]:
        """(0, False) when allowed; else (seconds to wait, whether this is the first refusal
        since the source was last allowed, which is the one worth auditing). `cost` requests
        are taken at once, or none."""
        now = self.clock()
        tokens, last, refused = self._buckets.pop(source, (self.capacity, now, False))
        tokens = min(self.capacity, tokens + (now - last) * self.refill_per_second)
        if tokens >= cost:
            self._buckets[source] = (tokens - cost, now, False)
            wait, first = 0.0, False
        else:
            self._buckets[source] = (tokens, now, True)
            wait, first = (cost - tokens) / self.refill_per_second, not refused
        while len(self._buckets) > self.MAX_SOURCES:
            self._buckets.popitem(last=False)
        return wait, first

    def refund(self, source: str) -> None:
        """Give back the request a successful login took: only failures use up the limit."""
        entry = self._buckets.get(source)
        if entry is not None:
            tokens, last, refused = entry
            self._buckets[source] = (min(self.capacity, tokens + 1), last, refused)


def rate_limited(wait: float, what: str) -> ServiceError:
    seconds = max(1, math.ceil(wait))
    return ServiceError(429, "rate_limited",
                        f"too many {what} attempts from your address: wait {seconds} s and try "
                        "again", retry_after=seconds)


def forbidden() -> ServiceError:
    return ServiceError(403, "forbidden", "only a company administrator can do this: ask one "
                                          "of your administrators")


def not_found(what: str = "session") -> ServiceError:
    return ServiceError(404, "not_found", f"no such {what}: check the id, or list the sessions "
                                          "you can see")


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def check_login_name(login: str) -> str:
    if not LOGIN_RE.match(login):
        raise ValueError(f"login {login!r} is not valid: use 1-64 of a-z, 0-9, '.', '_' and '-'")
    return login


def check_email(email: str) -> str:
    email = email.strip()
    if any(unicodedata.category(c)[0] == "C" or unicodedata.category(c) in ("Zl", "Zp")
           for c in email):
        # Control, format (bidi overrides, zero-width) and unassigned characters: shown on a
        # technician's terminal they could rewrite what it displays.
        raise ValueError(f"{email!r} has control or invisible characters: type the address "
                         "again as plain text, in the form name@example.com")
    if len(email) > MAX_EMAIL_CHARS or not EMAIL_RE.match(email):
        raise ValueError(f"{email!r} is not an email address: use the form name@example.com")
    return email
