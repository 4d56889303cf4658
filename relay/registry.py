"""Who is connected right now: agents and their virtual forwards, and every authenticated
SSH connection by the session or technician it speaks for, so that ending a session or
revoking a technician can close them all.

In memory only: a relay restart empties it and the agents reconnect.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class AgentLink:
    """A connected agent: its SSH connection and the virtual forward it registered."""

    session_id: str
    conn: Any  # asyncssh.SSHServerConnection; kept opaque so this module has no SSH import
    ip: str
    since: float
    forward_registered: bool = False
    on_close: list[Callable[[], None]] = field(default_factory=list)
    # Set just before the relay disconnects the agent because its session ended (the reason
    # code), so that technicians spliced to it can be told why their channel goes.
    end_reason: str | None = None


class AgentRegistry:
    def __init__(self) -> None:
        self._links: dict[str, AgentLink] = {}

    def add(self, link: AgentLink) -> AgentLink | None:
        """Register `link`; returns the link it replaced (an older connection of the same agent)."""
        previous = self._links.get(link.session_id)
        self._links[link.session_id] = link
        return previous

    def remove(self, link: AgentLink) -> bool:
        """Forget `link` if it is still the current one for its session."""
        if self._links.get(link.session_id) is link:
            del self._links[link.session_id]
            return True
        return False

    def get(self, session_id: str) -> AgentLink | None:
        return self._links.get(session_id)

    def is_online(self, session_id: str) -> bool:
        link = self._links.get(session_id)
        return bool(link and link.forward_registered)

    def __len__(self) -> int:
        return len(self._links)

    def links(self) -> list[AgentLink]:
        return list(self._links.values())


class Connections:
    """Authenticated SSH connections by who they speak for: an agent's by its session, a
    technician's by technician and company. A connection is added once its authentication
    completes and removed when it is lost."""

    def __init__(self) -> None:
        self._by_session: dict[str, set[Any]] = {}
        self._by_technician: dict[int, set[Any]] = {}
        self._company_of: dict[int, int] = {}

    def add_agent(self, session_id: str, conn: Any) -> None:
        self._by_session.setdefault(session_id, set()).add(conn)

    def remove_agent(self, session_id: str, conn: Any) -> None:
        _discard(self._by_session, session_id, conn)

    def add_technician(self, technician_id: int, company_id: int, conn: Any) -> None:
        self._by_technician.setdefault(technician_id, set()).add(conn)
        self._company_of[technician_id] = company_id

    def remove_technician(self, technician_id: int, conn: Any) -> None:
        if not _discard(self._by_technician, technician_id, conn):
            self._company_of.pop(technician_id, None)

    def of_session(self, session_id: str) -> list[Any]:
        return list(self._by_session.get(session_id, ()))

    def of_technician(self, technician_id: int) -> list[Any]:
        return list(self._by_technician.get(technician_id, ()))

    def technicians(self) -> list[Any]:
        """Every technician's connection."""
        return [conn for conns in self._by_technician.values() for conn in conns]

    def of_company(self, company_id: int) -> list[Any]:
        return [conn for tech, company in self._company_of.items() if company == company_id
                for conn in self._by_technician.get(tech, ())]


def _discard(table: dict, key: Any, conn: Any) -> bool:
    """Remove `conn` from table[key]; whether any connection is left under `key`."""
    held = table.get(key)
    if held is None:
        return False
    held.discard(conn)
    if not held:
        del table[key]
        return False
    return True
