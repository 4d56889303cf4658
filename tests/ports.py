"""Loopback ports a test names before anything listens there, private to its xdist worker.

A port the kernel hands out for `:0` lies in the ephemeral range, where any other process --
another worker's relay binding `:0`, a client's source port -- may take it between the probe
and its use, and a "nothing listens here" port may start answering. These ports come from
below the ephemeral range instead, which the kernel never hands out by itself, and from a
slice of it that belongs to this worker alone (tests/workers.py), so two tests running at
once never pick the same one. Within a worker, successive calls walk the slice, so a test that
asks for two ports gets two different ones.
"""

from __future__ import annotations

import itertools
import random
import socket
from pathlib import Path

from tests.workers import share

SPAN = 12000  # ports below the ephemeral range shared out among the workers


def _slice() -> range:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    return share(range(max(1024, low - SPAN), low))


_ports = None


def _candidates() -> itertools.cycle:
    global _ports
    if _ports is None:
        ports = _slice()
        first = random.randrange(len(ports))
        _ports = itertools.cycle([*ports[first:], *ports[:first]])
    return _ports


def free_port(host: str = "127.0.0.1") -> int:
    """A port on `host` that nothing listens on now, and that no other test running at the
    same time will pick: for a server the test starts there (or restarts on the same port),
    or for a client that must find nobody there."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for port in itertools.islice(_candidates(), 500):
        with socket.socket(family) as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
            return port
    raise AssertionError(f"no free port on {host} in this test worker's range")
