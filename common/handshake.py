"""Cheaper SSH handshakes: two pieces of work asyncssh does on every connection for nothing.

A relay takes back thousands of agents at once when a worker or a relay dies; each reconnect
is a full SSH handshake on both ends, and on a busy machine their CPU is what decides how
soon all are back (docs/BENCHMARKS.md, Cluster). Profiled there, two costs did nothing:

- **An ML-KEM key made by the server and never used.** In mlkem768x25519 the client makes
  the key pair and the server only encapsulates to the client's public key; asyncssh made a
  private key for both roles: ~5 % of a relay worker's CPU while agents came back.
- **SASLprep of user names and passwords that are plain ASCII.** RFC 4013 maps and forbids
  only control and non-ASCII characters, so printable ASCII (every session id and agent
  secret, most technicians' names) comes out unchanged; asyncssh still walked ten stringprep
  tables per character: ~5 % of a relay worker's CPU.

Each patch is applied only where asyncssh has the shape it was written against; elsewhere
nothing changes and the handshake costs what it did.
"""

from __future__ import annotations

import inspect


def defer_unused_kem_keys() -> bool:
    """Make asyncssh's PyCA ML-KEM shim create its private key when first needed (the
    client's get_public or decaps), not for a server that only encapsulates. Returns whether
    it took."""
    try:
        from asyncssh.crypto import pq
    except ImportError:
        return False
    shim = getattr(pq, "_PyCAKEM", None)
    classes = getattr(pq, "_pyca_pq_alg_classes", None)
    if shim is None or not isinstance(classes, dict):
        return False
    if getattr(shim, "defers_its_key", False):
        return True
    try:
        source = inspect.getsource(shim)
    except (OSError, TypeError):
        return False
    # The shape this was written against: the key made in __init__, read as self._priv_key.
    if "self._priv_key = self._priv_cls.generate()" not in source or \
            "_priv_key" in shim.__dict__:
        return False
    base_init = shim.__mro__[1].__init__

    def __init__(self, alg_name: bytes) -> None:
        base_init(self, alg_name)
        try:
            self._priv_cls, self._pub_cls = classes[alg_name]
        except KeyError:
            raise ValueError("Unknown PQ algorithm " + alg_name.decode()) from None

    def _priv_key(self):
        key = self.__dict__.get("_deferred_priv_key")
        if key is None:
            key = self.__dict__["_deferred_priv_key"] = self._priv_cls.generate()
        return key

    shim.__init__ = __init__
    shim._priv_key = property(_priv_key)
    shim.defers_its_key = True
    return True


def _printable_ascii_unchanged(saslprep):
    def fast_saslprep(s: str) -> str:
        if s.isascii() and s.isprintable():
            return s  # RFC 4013 maps and forbids nothing in printable ASCII
        return saslprep(s)

    fast_saslprep.original = saslprep  # type: ignore[attr-defined]
    return fast_saslprep


def skip_ascii_saslprep() -> bool:
    """Let asyncssh's SASLprep return printable ASCII as it is, without its table walk.
    Returns whether it took."""
    try:
        from asyncssh import auth, connection
    except ImportError:
        return False
    took = False
    for module in (auth, connection):
        current = getattr(module, "saslprep", None)
        if current is None:
            continue
        if not hasattr(current, "original"):
            module.saslprep = _printable_ascii_unchanged(current)
        took = True
    return took


def cheaper_handshakes() -> None:
    """Both, once per process (relay, agent, console)."""
    defer_unused_kem_keys()
    skip_ascii_saslprep()
