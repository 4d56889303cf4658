"""SSH transport settings every leg shares (relay, agent, console): a small contract module.

Measured in bench/ (docs/BENCHMARKS.md): the client's cipher order decides, and asyncssh's
default puts chacha20-poly1305 first, which costs ~0.3 ms per hop per direction; aes128-gcm
halves the relayed keystroke round trip. Larger windows and packets on the outer legs keep
more bytes in flight across the extra hop.
"""

from __future__ import annotations

import asyncio
import ctypes
import inspect
import ipaddress
import socket
import sys
from collections.abc import Callable

import asyncssh

from common.handshake import cheaper_handshakes
from common.packets import faster_gcm_packets

ENCRYPTION = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com",
              "chacha20-poly1305@openssh.com", "aes128-ctr", "aes256-ctr")
# What every SSH server Adhoc runs (the relay's endpoint, the host's inner server) offers, and
# nothing weaker: hybrid post-quantum and X25519 key exchange only (no SHA-1, no finite-field
# groups, whose large exponentiations let an unauthenticated client stall the event loop),
# MACs only encrypt-then-MAC with SHA-2 (AEAD ciphers need none), signatures only SHA-2 (no
# ssh-rsa with SHA-1, no DSA), no compression.
# Ciphers: AES-GCM only. OpenSSH clients take the first cipher of *their own* list that the
# server offers (chacha20-poly1305, then AES-CTR, then AES-GCM): offered chacha20 they took
# it, the slowest in Python; stock sftp/scp downloads through the relay ran at 0.51-0.52x of
# an OpenSSH jump host, 0.66-0.76x with AES-GCM only (docs/BENCHMARKS.md, Stock OpenSSH
# tools). A client without AES-GCM (OpenSSH before 6.2, PuTTY before 0.76, Dropbear builds
# without it) is refused with "no matching cipher". ENCRYPTION, the order Adhoc's own clients
# ask for, keeps the others for servers that lack AES-GCM.
SERVER_ENCRYPTION = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
_KEX_WANTED = ("mlkem768x25519-sha256", "sntrup761x25519-sha512",
               "sntrup761x25519-sha512@openssh.com", "curve25519-sha256",
               "curve25519-sha256@libssh.org")
MAC_ALGS = ("hmac-sha2-256-etm@openssh.com", "hmac-sha2-512-etm@openssh.com")
SIGNATURE_ALGS = ("ssh-ed25519", "sk-ssh-ed25519@openssh.com", "ecdsa-sha2-nistp256",
                  "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
                  "sk-ecdsa-sha2-nistp256@openssh.com", "rsa-sha2-512", "rsa-sha2-256")


def _offered(wanted: tuple[str, ...]) -> tuple[str, ...]:
    """The key exchanges of `wanted` this asyncssh has (the post-quantum ones depend on it)."""
    from asyncssh.kex import get_kex_algs

    have = set(get_kex_algs())
    return tuple(name for name in wanted if name.encode() in have)


KEX_ALGS = _offered(_KEX_WANTED)
SERVER_ALGORITHMS = {"kex_algs": KEX_ALGS, "encryption_algs": SERVER_ENCRYPTION,
                     "mac_algs": MAC_ALGS,
                     "signature_algs": SIGNATURE_ALGS, "compression_algs": None}
OUTER_WINDOW = 8 * 1024 * 1024
OUTER_PACKET = 256 * 1024
# The inner connection (console to agent) crosses the relay as data on an outer channel, one
# outer write per inner packet and the IGNORE before it (CoalescingWriter). An inner packet
# of OUTER_PACKET bytes of data would not fit one outer packet with its header, MAC and that
# IGNORE: each would cross as a full outer packet and a ~100-byte one, twice the per-packet
# work on every hop (relayed SFTP 15 % slower, docs/BENCHMARKS.md). Leave room.
INNER_PACKET = OUTER_PACKET - 4096
# The relay's SSH listener accepts at once and queues connections itself (relay/sshd.py
# Startups); the kernel's queue only has to absorb a burst between two accepts. The kernel caps
# this at net.core.somaxconn (4,096 on current Linux).
LISTEN_BACKLOG = 65535
# Where a technician reaches a host through the relay: the agent's virtual forward
# (<session-id>, INNER_PORT), and the one user its inner SSH server knows.
INNER_PORT = 22
INNER_USER = "support"


def sha2_signatures_only(key: asyncssh.SSHKey) -> asyncssh.SSHKey:
    """`key`, allowed to verify a client's signature only with SIGNATURE_ALGS: asyncssh checks
    a login's signature with the key object a server accepted, and an RSA key would otherwise
    also take ssh-rsa (SHA-1) signatures."""
    key.all_sig_algorithms = {alg.encode() for alg in SIGNATURE_ALGS} \
        & set(key.all_sig_algorithms)
    return key


def same_key(key: asyncssh.SSHKey, openssh_line: str) -> bool:
    """Whether `key` is the public key of an OpenSSH line ("ssh-ed25519 AAAA... comment")."""
    return key.export_public_key("openssh").split()[:2] == \
        [part.encode() for part in openssh_line.split()[:2]]


def pinned(public_key: str) -> tuple[list, list, list]:
    """asyncssh known_hosts that trust exactly this key (Adhoc pins keys, never learns them)."""
    return ([asyncssh.import_public_key(public_key)], [], [])


def client_options(*, outer: bool = False, sock: socket.socket | None = None) -> dict:
    """Options for an asyncssh client connection on any Adhoc leg; `outer` for a connection
    to the relay itself (not tunnelled through it), which then coalesces its writes, over
    `sock` when it is already connected (see dial)."""
    options = {"encryption_algs": ENCRYPTION, "compression_algs": None,
               "window": OUTER_WINDOW, "max_pktsize": OUTER_PACKET if outer else INNER_PACKET}
    if outer:
        options["tunnel"] = CoalescingTcp(sock)
    return options


async def dial(host: str, port: int) -> socket.socket:
    """A TCP connection to the relay, before any SSH.

    asyncssh prepares all of a connection's options (in a worker thread) before it opens the
    socket, so an agent retrying a relay that is down spent ~0.6 ms of CPU per attempt: with
    thousands of agents on one machine (the fan-in bench) that was both cores while the
    relay restarted. Dialling first makes a refused attempt cost a connect() call."""
    loop = asyncio.get_running_loop()
    failure: OSError = OSError(f"no address for {host}")
    try:  # an address needs no look-up (a thread hop per attempt)
        literal = ipaddress.ip_address(host)
    except ValueError:
        targets = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    else:
        family = socket.AF_INET6 if literal.version == 6 else socket.AF_INET
        targets = [(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port))]
    for family, kind, proto, _, address in targets:
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            failure = exc
            continue
        except BaseException:
            sock.close()
            raise
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    raise failure


async def wait_for_banner(sock: socket.socket, seconds: float) -> None:
    """Until the relay speaks first on a dialled socket (its SSH version line), or TimeoutError.

    A relay busy with other handshakes accepts new connections and leaves them waiting, in
    order, until it has room (relay/sshd.py MAX_STARTUPS); waiting costs neither side CPU.
    Waiting here, with a timeout of its own, keeps a dialler's place in that queue: under the
    handshake's 20 s timeout alone, 1,280 of 10,000 agents returning after a restart gave up
    and dialled again at the back of the queue, and the relay later spent a handshake on each
    abandoned socket."""
    loop = asyncio.get_running_loop()
    spoken = loop.create_future()

    def readable() -> None:
        if not spoken.done():
            spoken.set_result(None)

    loop.add_reader(sock.fileno(), readable)
    try:
        await asyncio.wait_for(spoken, seconds)
    except TimeoutError:
        raise TimeoutError(f"the relay accepted the connection but did not answer within "
                           f"{seconds:g} s") from None
    finally:
        loop.remove_reader(sock.fileno())


def skip_needless_ignores() -> bool:
    """Stop asyncssh sending an empty SSH_MSG_IGNORE before every packet on connections whose
    cipher is AEAD (AES-GCM, chacha20-poly1305), in this process. Returns whether it took.

    The IGNORE is a defence for CBC ciphers (a predictable IV), which Adhoc never negotiates:
    with AES-GCM it only doubles the packets every leg encrypts, sends and decrypts. Dropping it
    raised stock sftp/scp downloads through the relay from 0.64x/0.61x to 0.77x/0.82x of an
    OpenSSH jump host in one run (docs/BENCHMARKS.md, Stock OpenSSH tools). asyncssh has no
    option for it, so its SSHConnection.send_packet is wrapped, only where it has the shape
    this was written against; elsewhere nothing changes.
    """
    from asyncssh.connection import MSG_IGNORE, SSHConnection
    from asyncssh.encryption import ChachaEncryption, GCMEncryption

    original = SSHConnection.send_packet
    if getattr(original, "skips_needless_ignores", False):
        return True
    try:
        params = list(inspect.signature(original).parameters)
    except (TypeError, ValueError):
        return False
    if params != ["self", "pkttype", "args", "handler"]:
        return False
    empty = b"\0\0\0\0"  # String(b"")
    aead = (GCMEncryption, ChachaEncryption)

    def send_packet(self, pkttype: int, *args: bytes, handler=None) -> None:
        if (pkttype == MSG_IGNORE and args == (empty,) and handler is None
                and isinstance(getattr(self, "_send_encryption", None), aead)):
            return
        original(self, pkttype, *args, handler=handler)

    send_packet.skips_needless_ignores = True  # type: ignore[attr-defined]
    send_packet.original = original  # type: ignore[attr-defined]  # bench/ compares with it
    SSHConnection.send_packet = send_packet  # type: ignore[method-assign]
    return True


# glibc's mallopt parameters. By default buffers of 128 KiB and up are mmap'd and unmapped
# one by one, and the top of the heap is trimmed eagerly; an SSH leg moving 256 KiB packets
# then pays a page fault for every 4 KiB it copies: the relay took ~2,700 faults and 11 ms of
# CPU per relayed MB, against 7 faults and under 3 ms with these (docs/BENCHMARKS.md).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 8 * 1024 * 1024  # above the 4 MiB SFTP blocks, below glibc's 32 MiB limit
TRIM_THRESHOLD = 16 * 1024 * 1024  # at most this much freed heap kept for reuse


def tune_allocator() -> bool:
    """Let this process reuse heap memory for packet buffers (glibc only; elsewhere a no-op).

    Called once at start by every Adhoc program that moves bulk data (relay, agent, console).
    Returns whether the settings took.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and \
        bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def tune_process() -> None:
    """What every Adhoc program that moves SSH traffic (relay, agent, console) sets up once
    at start: the allocator, no needless IGNORE packets, fewer copies per packet, no needless
    handshake work."""
    tune_allocator()
    skip_needless_ignores()
    faster_gcm_packets()
    cheaper_handshakes()


# Writes of at least this much are bulk (a file, a flood): they are held until the end of the
# event loop's turn and go out joined with the turn's others, in full packets, at most
# HOLD_LIMIT at a time. A smaller write goes at once unless bulk is held before it.
BULK_WRITE = 4096
HOLD_LIMIT = OUTER_PACKET


class CoalescingWriter:
    """Joins the bulk writes of one event loop turn to a channel (or socket transport), so a
    stream crosses in as few packets as the receiver's packet size allows.

    asyncssh sends a packet per write, and no write is ever joined with the next: an SFTP
    reply of 32 KiB and its 13-byte header crossed as two packets on every hop, and the
    32,781 bytes, written on to an OpenSSH client that takes 32 KiB packets, as three
    (docs/BENCHMARKS.md, Stock OpenSSH tools). Bulk writes are therefore held until the end
    of the turn (or HOLD_LIMIT). Small ones (keys, echoes, replies) go at once, in order: held
    until the end of the turn, a keystroke paid an extra loop turn per hop and the relayed
    round trip was 7 % slower (docs/BENCHMARKS.md).
    """

    def __init__(self, chan, handshaking: Callable[[], bool] | None = None) -> None:
        self._chan = chan
        self._pending: list[bytes] = []
        self._held = 0
        self._flush_scheduled = False
        self._loop = asyncio.get_running_loop()
        # While this says True, small writes are held to the end of the turn too: nobody
        # types during an SSH handshake, and the packets it sends in one turn (the key
        # exchange reply, NEWKEYS, EXT_INFO) then cross in one write instead of one each.
        self._handshaking = handshaking

    def write(self, data: bytes) -> None:
        if not self._pending and len(data) < BULK_WRITE and not self._in_handshake():
            self._send(data)
            return
        self._pending.append(data)
        self._held += len(data)
        if self._held >= HOLD_LIMIT:
            self._flush()
        elif not self._flush_scheduled:  # one end-of-turn flush serves a whole turn's writes
            self._flush_scheduled = True
            self._loop.call_soon(self._end_of_turn)

    def _in_handshake(self) -> bool:
        if self._handshaking is None:
            return False
        if self._handshaking():
            return True
        self._handshaking = None  # for good
        return False

    def _end_of_turn(self) -> None:
        self._flush_scheduled = False
        self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        self._held = 0
        self._send(data)

    def _send(self, data: bytes) -> None:
        try:
            self._chan.write(data)
        except ConnectionError:
            pass  # the channel closed under us: the connection is being torn down

    def write_eof(self) -> None:
        self._flush()
        self._chan.write_eof()

    def close(self) -> None:
        self._flush()
        self._chan.close()

    def __getattr__(self, name: str):
        return getattr(self._chan, name)


class _CoalescedSession:
    """Hands a connection a coalescing transport; passes everything else through.

    Works both as an SSH channel session (a tunnelled inner connection) and as an asyncio
    protocol (an outer connection on a TCP socket).
    """

    def __init__(self, conn) -> None:
        self.conn = conn

    def connection_made(self, chan: asyncssh.SSHTCPChannel) -> None:
        self.conn.connection_made(CoalescingWriter(chan, self._handshaking))

    def _handshaking(self) -> bool:
        """Until the connection has authenticated (asyncssh's own flag; without it, never)."""
        return not getattr(self.conn, "_auth_complete", True)

    def __getattr__(self, name: str):
        return getattr(self.conn, name)


class WideTunnel:
    """An outer connection to pass as asyncssh's `tunnel=`, with the outer window and packet.

    Given a connection itself, asyncssh opens the tunnelled channel with its fixed defaults
    (2 MiB window, 32 KiB packets) whatever the connection was made with; the inner SSH
    connection then crosses the relay in 32 KiB pieces. asyncssh accepts any object with these
    two methods as a tunnel. The inner connection's writes are also coalesced (see
    CoalescingWriter).
    """

    def __init__(self, conn: asyncssh.SSHClientConnection) -> None:
        self.conn = conn

    async def create_connection(self, session_factory, remote_host: str, remote_port: int):
        chan, session = await self.conn.create_connection(
            lambda: _CoalescedSession(session_factory()), remote_host, remote_port,
            window=OUTER_WINDOW, max_pktsize=OUTER_PACKET)
        return chan, session.conn

    async def create_server(self, session_factory, listen_host: str, listen_port: int):
        return await self.conn.create_server(
            lambda orig_host, orig_port: _CoalescedSession(session_factory(orig_host, orig_port)),
            listen_host, listen_port, window=OUTER_WINDOW, max_pktsize=OUTER_PACKET)


def coalescing_protocol(session_factory):
    """An asyncio protocol factory whose SSH connections coalesce their writes."""
    return lambda: _CoalescedSession(session_factory())


class CoalescingTcp:
    """asyncssh's `tunnel=` for a plain TCP connection whose SSH connection coalesces its
    writes (see CoalescingWriter): the console's and the agent's connections to the relay.
    The relay's listener does the same through coalescing_protocol (relay/sshd.py)."""

    def __init__(self, sock: socket.socket | None = None) -> None:
        self._sock = sock  # already connected (dial), used once

    async def create_connection(self, session_factory, remote_host: str, remote_port: int):
        sock, self._sock = self._sock, None
        where = {"sock": sock} if sock is not None else {"host": remote_host, "port": remote_port}
        transport, session = await asyncio.get_running_loop().create_connection(
            coalescing_protocol(session_factory), **where)
        return transport, session.conn
