"""A network namespace for a program that must not reach this machine's network directly: a
customer's computer behind a proxy, or on another machine.

Inside it there is only its own loopback and one end of a veth pair (`inside`, a 10.x
address); this side holds the other end (`outside`). Nothing routes further, so from inside,
127.0.0.2 is the namespace's own loopback, not this machine's: a relay bound there is out of
reach except through something listening on `outside` (a proxy). Needs root (CAP_NET_ADMIN);
`available()` says why not.
"""

from __future__ import annotations

import ipaddress
import os
import random
import subprocess
from dataclasses import dataclass, field

from tests.workers import share


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


def available() -> str | None:
    """None if namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"adhocprobe{os.getpid()}"
    made = _ip("netns", "add", probe)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    _ip("netns", "del", probe)
    return None


def _free_subnet() -> ipaddress.IPv4Network:
    used = _ip("-4", "-o", "addr").stdout
    for _ in range(100):
        # The third byte from this worker's share: a namespace made beside this one (by
        # another worker) cannot pick the same subnet before either is up.
        third = random.choice(share(range(256)))
        net = ipaddress.ip_network(f"10.199.{third}.{random.randrange(64) * 4}/30")
        if not any(f"inet {address}/" in used for address in net):
            return net
    raise RuntimeError("no free 10.199.x.y/30 for a test namespace")


@dataclass
class Namespace:
    name: str = field(default_factory=lambda: f"adhoc{os.getpid()}x{random.randrange(10**6)}")
    outside: str = ""
    inside: str = ""

    def __enter__(self) -> Namespace:
        net = _free_subnet()
        self.outside, self.inside = (str(host) for host in net.hosts())
        tag = f"{random.randrange(16**8):08x}"
        ours, theirs = f"ah{tag}o", f"ah{tag}i"
        steps = [("netns", "add", self.name),
                 ("link", "add", ours, "type", "veth", "peer", "name", theirs),
                 ("link", "set", theirs, "netns", self.name),
                 ("addr", "add", f"{self.outside}/30", "dev", ours),
                 ("link", "set", ours, "up"),
                 ("-n", self.name, "addr", "add", f"{self.inside}/30", "dev", theirs),
                 ("-n", self.name, "link", "set", theirs, "up"),
                 ("-n", self.name, "link", "set", "lo", "up")]
        for step in steps:
            done = _ip(*step)
            if done.returncode != 0:
                self.__exit__()
                raise RuntimeError(f"ip {' '.join(step)}: {done.stderr.strip()}")
        return self

    def __exit__(self, *exc) -> None:
        _ip("netns", "del", self.name)  # takes its end of the veth pair, and so both ends

    def wrap(self, argv: list[str]) -> list[str]:
        """`argv` run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]
