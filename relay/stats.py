"""Counts the relay keeps as it works (logins, tunnels, bytes relayed, mail in flight): plain
numbers in memory, read by relay/metrics.py when Prometheus scrapes. Nothing here exports."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Stats:
    # (route "http" or "ssh", who "technician" or "agent", outcome "ok", "failed", ...) -> n
    logins: Counter = field(default_factory=Counter)
    tunnels_open: int = 0
    tunnels_opened: int = 0
    bytes_relayed: int = 0

    def login(self, route: str, who: str, outcome: str) -> None:
        self.logins[(route, who, outcome)] += 1

    def tunnel_opened(self) -> None:
        self.tunnels_open += 1
        self.tunnels_opened += 1

    def tunnel_closed(self) -> None:
        self.tunnels_open -= 1
