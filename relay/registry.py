"""Which agents are connected right now, and the handle to reach each one.

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
