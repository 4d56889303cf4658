"""What every inner connection of one session shares: the grant, the verifier, the shells, who
does what, and what the customer is told (the Notices interface the terminal front end fills in).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import Counter
from collections.abc import Callable
from typing import Protocol

from hostagent.audit import Event
from hostagent.chat import ChatHub
from hostagent.digests import Digests
from hostagent.forwards import UNATTENDED, Forwards
from hostagent.guard import PasswordGuard
from hostagent.reaper import Reaper
from hostagent.shells import DETACHED_TIMEOUT, ShellRegistry

Audit = Callable[[Event, str, dict], None]


class Goodbye(Protocol):
    """A technician's inner connection, told when the session ends under it."""

    def goodbye(self, why: str) -> None: ...


class Notices:
    """What the agent tells the customer; the terminal front end implements it."""

    def technician_connected(self, who: str) -> None: ...
    def technician_disconnected(self, who: str) -> None: ...
    def activity(self, who: str, what: str) -> None:
        """`who` did `what`; `what` is already printable (hostagent/text.py made it so)."""
    def auth_failed(self, who: str, failures: int) -> None: ...
    def logins_locked(self, failures: int) -> None: ...
    def logins_unlocked(self, refused: int) -> None: ...
    def chat(self, message: dict) -> None: ...
    def changed(self) -> None: ...

    def ask_forward(self, who: str, where: str) -> asyncio.Future[str]:
        """Ask the customer whether `who` may reach `where` (host:port, printable) through
        this computer: "yes", "no" or "all" (everything, for this technician and session);
        "unattended" at once when nobody can answer, as here."""
        answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        answer.set_result(UNATTENDED)
        return answer


class AgentState:
    """What every inner connection shares: the grant, the verifier, the shells, who does what."""

    def __init__(self, password_verifier: str, features: tuple[str, ...], notices: Notices,
                 audit: Audit | None = None, *,
                 detached_timeout: float = DETACHED_TIMEOUT,
                 technician: str | None = None, technician_key: str | None = None) -> None:
        self.features = features
        # Who created the session, and the public key they sent with it (may log in as them).
        self.technician = technician
        self.technician_key = technician_key
        self.notices = notices
        self.audit: Audit = audit or (lambda event, who, detail: None)
        self.guard = PasswordGuard(password_verifier)
        self.reaper = Reaper()
        self.shells = ShellRegistry(detached_timeout, self.reaper)
        self.chat = ChatHub(notices.chat)
        self.forwards = Forwards(self)
        self.connected: Counter[str] = Counter()
        self.connections: set[Goodbye] = set()  # logged-in inner connections
        self._doing: dict[int, tuple[str, str]] = {}
        self._ids = itertools.count()
        self.ended = False
        self.digests = Digests(lambda: not self.ended)

    def allows(self, feature: str) -> bool:
        return feature in self.features

    def refusal(self, who: str, what: str) -> bytes:
        """Audit that `who` asked for `what` the plan does not include; what their client
        shows them (on stderr, where OpenSSH users read it)."""
        self.audit(Event.REFUSED, who, {"what": what, "outcome": "refused"})
        return f"{what} is not included in this session's plan\r\n".encode()

    @contextlib.contextmanager
    def doing(self, who: str, what: str):
        """Count `who` as doing `what` (shell, files, dashboard, chat) while the block runs."""
        key = next(self._ids)
        self._doing[key] = (who, what)
        self.notices.changed()
        try:
            yield
        finally:
            self._doing.pop(key, None)
            self.notices.changed()

    def who_does_what(self) -> dict[str, list[str]]:
        """{"alice": ["shell", "files"]} for every connected technician."""
        out: dict[str, list[str]] = {who: [] for who, n in self.connected.items() if n > 0}
        for who, what in self._doing.values():
            kinds = out.setdefault(who, [])
            if what not in kinds:
                kinds.append(what)
        return out

    def unlock_logins(self) -> bool:
        """The customer allows logins again after a lockout; whether they were locked."""
        if not self.guard.locked:
            return False
        refused = self.guard.unlock()
        self.notices.logins_unlocked(refused)
        self.audit(Event.LOGINS_UNLOCKED, "customer", {"refused": refused})
        return True

    def goodbye(self, why: str) -> None:
        """Tell every connected technician that the session ended and why ("the customer
        ended it"), then disconnect them."""
        for conn in list(self.connections):
            conn.goodbye(why)
        self.connections.clear()

    def kill_all(self) -> int:
        """End every shell, command and process the session started; how many processes."""
        self.ended = True
        self.forwards.close_all()
        self.shells.kill_all()
        self.guard.close()
        return self.reaper.end_all()
