"""Starts a relay, a host agent or a bare inner SSH server with benchmark levers applied.

The levers are monkeypatches the benchmarks try before anyone changes the product's code:
`python -m bench.launch relay|host|console|direct ARGS...` with ADHOC_BENCH_LEVERS (JSON of
bench.common.Levers) in the environment. With no levers it runs the product exactly as shipped.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

import asyncssh

LEVERS_ENV = "ADHOC_BENCH_LEVERS"


def prefer_aes_gcm() -> list[bytes]:
    """Put aes128-gcm first in this process's asyncssh defaults; returns the old order."""
    algs = asyncssh.encryption._default_enc_algs
    before = list(algs)
    first = b"aes128-gcm@openssh.com"
    algs[:] = [first, *(alg for alg in before if alg != first)]
    return before


def restore_encryption(order: list[bytes]) -> None:
    asyncssh.encryption._default_enc_algs[:] = order


def _with_channel_defaults(window: int, packet: int):
    """Wrap asyncssh.create_connection so connections default to this window and packet size."""
    original = asyncssh.create_connection

    async def create_connection(*args, **kwargs):
        kwargs.setdefault("window", window)
        kwargs.setdefault("max_pktsize", packet)
        return await original(*args, **kwargs)

    return create_connection


def send_ignores() -> None:
    """asyncssh as it comes: an empty SSH_MSG_IGNORE before every packet once encrypting,
    which Adhoc's programs skip on AES-GCM (common/transport.py skip_needless_ignores)."""
    from asyncssh.connection import SSHConnection

    import common.transport

    SSHConnection.send_packet = getattr(  # type: ignore[method-assign]
        SSHConnection.send_packet, "original", SSHConnection.send_packet)
    # The programs skip them at start (tune_process): not in this process.
    common.transport.skip_needless_ignores = lambda: False
    packet_copies()  # asyncssh as it comes: its own packet path too


def packet_copies() -> None:
    """asyncssh's own packet path: every copy, a new AES-GCM context per packet (before
    common/packets.py)."""
    from asyncssh.channel import SSHChannel
    from asyncssh.connection import SSHConnection
    from asyncssh.encryption import GCMEncryption

    import common.transport

    send = SSHConnection.send_packet
    if hasattr(send, "slower"):
        SSHConnection.send_packet = send.slower  # type: ignore[method-assign]
    decrypt = GCMEncryption.decrypt_packet
    GCMEncryption.decrypt_packet = getattr(  # type: ignore[method-assign]
        decrypt, "slower", decrypt)
    channel = SSHChannel.send_packet
    SSHChannel.send_packet = getattr(channel, "slower", channel)  # type: ignore[method-assign]
    # The programs take the cheaper path at start (tune_process): not in this process.
    common.transport.faster_gcm_packets = lambda: False


def narrow_command_pipes() -> None:
    """The agent's command pipes (hostagent/command.py) as before: the system's 64 KiB, and
    the output paused after every read from it."""
    import hostagent.command

    hostagent.command.PIPE_SIZE = 64 * 1024  # asyncssh's own high-water mark
    hostagent.command._widen_pipes = lambda transport: None
    hostagent.command._Pipes.pause_past = -1


def wait_for_digests() -> None:
    """The agent's SFTP close waits for its file's SHA-256, as before hostagent/digests.py."""
    from hostagent.digests import Digests

    take = Digests.take

    async def waiting(self, path: bytes, report) -> None:
        await take(self, path, report)
        await self.settle(3600)

    Digests.take = waiting  # type: ignore[method-assign]


def apply(levers: dict) -> None:
    """Apply the levers that concern this process (each process ignores the others')."""
    if levers.get("gcm"):
        prefer_aes_gcm()
    if levers.get("relay_window"):
        import relay.sshd

        relay.sshd.CHANNEL_WINDOW = levers["relay_window"]
        relay.sshd.CHANNEL_PACKET = levers.get("relay_packet") or relay.sshd.CHANNEL_PACKET
    if levers.get("inner_window"):
        import hostagent.server

        hostagent.server.INNER_WINDOW = levers["inner_window"]
    if levers.get("agent_window"):
        asyncssh.create_connection = _with_channel_defaults(
            levers["agent_window"], levers.get("agent_packet") or 32768)
    if levers.get("ignores"):
        send_ignores()
    if levers.get("packet_copies"):
        packet_copies()
    if levers.get("server_ciphers"):
        from common.transport import SERVER_ALGORITHMS

        # The one dict both relay/sshd.py and hostagent/server.py spread into their options.
        SERVER_ALGORITHMS["encryption_algs"] = tuple(levers["server_ciphers"])
    if levers.get("narrow_pipes"):
        narrow_command_pipes()
    if levers.get("digest_wait"):
        wait_for_digests()
    if levers.get("shell_window"):
        import tui.client

        tui.client.SHELL_WINDOW = levers["shell_window"]
    if levers.get("write_at_once"):
        import common.transport

        # Every write counts as small and goes at once, as before bulk writes were joined.
        common.transport.BULK_WRITE = 1 << 62
    if levers.get("uvloop"):
        import uvloop

        uvloop.install()


async def _serve_direct(port_file: str) -> None:
    """The agent's inner SSH server on a plain loopback socket: the same code, no relay."""
    from common.passwords import hash_password
    from hostagent.server import server_options
    from hostagent.state import AgentState, Notices
    from tests.support import SESSION_PASSWORD

    verifier = hash_password(SESSION_PASSWORD)
    state = AgentState(verifier, ("shell", "chat", "files", "dashboard"), Notices())
    key = asyncssh.generate_private_key("ssh-ed25519")
    server = await asyncssh.listen("127.0.0.1", 0, **server_options(state, key))
    port = server.sockets[0].getsockname()[1]
    public = key.export_public_key("openssh").decode().strip()
    tmp = port_file + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"port": port, "host_key": public}, f)
    os.replace(tmp, port_file)
    await server.wait_closed()


def _log_long_collections() -> None:
    import gc
    import time

    started = [0.0]

    def timed(phase: str, info: dict) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            started[0] = time.perf_counter()
        elif (took := time.perf_counter() - started[0]) > 0.2:
            print(f"gc: {time.strftime('%H:%M:%S')} pid {os.getpid()} full collection "
                  f"{took:.2f} s, {info['collected']} collected", file=sys.stderr, flush=True)

    gc.callbacks.append(timed)


def main() -> int:
    kind, args = sys.argv[1], sys.argv[2:]
    levers = json.loads(os.environ.get(LEVERS_ENV) or "{}")
    apply(levers)
    if kind == "relay":
        if os.environ.get("ADHOC_BENCH_GC_LOG"):  # full collections over 0.2 s, to stderr
            _log_long_collections()
        if levers.get("relay_uvloop"):
            import uvloop

            uvloop.install()
        from relay.cli import main as relay_main

        return relay_main(args)
    if kind == "host":
        from hostagent.cli import main as host_main

        return host_main(args)
    if kind == "console":
        from tui.cli import main as console_main

        return console_main(args)
    if kind == "direct":
        from common.transport import tune_process

        tune_process()  # as the agent's own command does
        asyncio.run(_serve_direct(args[0]))
        return 0
    raise SystemExit(f"unknown kind {kind!r}: relay, host, console or direct")


if __name__ == "__main__":
    sys.exit(main())
