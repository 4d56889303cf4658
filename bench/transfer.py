"""SFTP get and put of one large file: relayed vs the same server direct vs OpenSSH sftp.

Run: python -m bench.transfer [--mib 256] [--rounds 2] [--levers shipped,tuned,...]

Contenders, interleaved round by round so background load hits them all alike:
- relayed: asyncssh client -> real relay process -> real `adhoc-host join` agent (its SFTP);
- across two relays: the same, the technician on a second relay of the cluster, which reaches
  the agent through the first (the cross-relay hop; that relay starts with each round);
- direct: asyncssh client -> the agent's inner SSH server on a loopback socket (no relay);
- openssh: OpenSSH `sftp` -> a throwaway local sshd (its sftp-server), OpenSSH defaults;
- openssh -J: OpenSSH `sftp -J` through the relay to the agent (what technicians may also use).
asyncssh transfers use asyncssh's default SFTP block size and request count. The time of an
OpenSSH transfer is the `sftp -b` run minus an empty `sftp -b` session in the same round (so
connection set-up is left out for every contender). Files live in /dev/shm when it exists.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import (
    SESSION_PASSWORD,
    Deployment,
    Levers,
    OpenSSH,
    cross_relay_connection,
    deployment,
    direct_connection,
    direct_server,
    header,
    median,
    openssh_server,
    relayed_connection,
    run_async,
    scratch_dir,
    table,
    technician_process,
    verdict,
)

MIB = 1024 * 1024
TIMEOUT = 300  # per transfer: a stuck transfer fails the run instead of hanging it

VARIANTS: dict[str, Levers] = {
    "shipped": Levers(),
    "gcm": Levers(gcm=True, label="aes128-gcm first on the client legs"),
    "inner2m": Levers(inner_window=2 * MIB, label="inner server window 2 MiB (SHELL_WINDOW)"),
    "legs8m": Levers(agent_window=8 * MIB, agent_packet=256 * 1024, tech_window=8 * MIB,
                     tech_packet=256 * 1024,
                     label="8 MiB / 256 KiB windows on the agent's and technician's legs"),
    "uvloop": Levers(uvloop=True, label="uvloop in relay and agent"),
    "uvloop-relay": Levers(relay_uvloop=True, label="uvloop in the relay only"),
    "wide32": Levers(relay_window=32 * MIB, inner_window=32 * MIB, agent_window=32 * MIB,
                     agent_packet=256 * 1024, tech_window=32 * MIB, tech_packet=256 * 1024,
                     label="32 MiB windows on every leg"),
    "no-ignore": Levers(no_ignore=True, label="no SSH_MSG_IGNORE before each packet"),
    "tuned": Levers(gcm=True, inner_window=2 * MIB, agent_window=8 * MIB,
                    agent_packet=256 * 1024, tech_window=8 * MIB, tech_packet=256 * 1024,
                    label="gcm + inner 2 MiB + 8 MiB legs"),
    "tuned+uvloop": Levers(gcm=True, inner_window=2 * MIB, agent_window=8 * MIB,
                           agent_packet=256 * 1024, tech_window=8 * MIB,
                           tech_packet=256 * 1024, uvloop=True,
                           label="gcm + inner 2 MiB + 8 MiB legs + uvloop"),
}


def make_source(folder: Path, size: int) -> Path:
    path = folder / "source.bin"
    with path.open("wb") as f:
        left = size
        while left:
            chunk = min(left, 8 * MIB)
            f.write(os.urandom(chunk))
            left -= chunk
    return path


def _check(path: Path, size: int) -> None:
    got = path.stat().st_size
    if got != size:
        raise RuntimeError(f"{path} has {got} bytes, expected {size}")


async def asyncssh_transfer(connect, src: Path, work: Path, size: int) -> tuple[float, float]:
    """(get seconds, put seconds) over an asyncssh connection; connect() opens it."""
    async with connect() as conn, conn.start_sftp_client() as sftp:
        got = work / "got.bin"
        start = time.perf_counter()
        await asyncio.wait_for(sftp.get(str(src), str(got)), TIMEOUT)
        get_s = time.perf_counter() - start
        _check(got, size)
        got.unlink()
        put = work / "put.bin"
        start = time.perf_counter()
        await asyncio.wait_for(sftp.put(str(src), str(put)), TIMEOUT)
        put_s = time.perf_counter() - start
        _check(put, size)
        put.unlink()
        return get_s, put_s


def _sftp_batch(args: list[str], target: str, batch: str, env: dict | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(["sftp", "-q", *args, "-b", "-", target], input=batch, text=True,
                   check=True, timeout=TIMEOUT, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def openssh_transfer(args: list[str], target: str, src: Path, work: Path, size: int,
                     env: dict | None = None) -> tuple[float, float]:
    empty = _sftp_batch(args, target, "pwd\n", env)
    got, put = work / "got.bin", work / "put.bin"
    get_s = _sftp_batch(args, target, f'get "{src}" "{got}"\n', env) - empty
    _check(got, size)
    got.unlink()
    put_s = _sftp_batch(args, target, f'put "{src}" "{put}"\n', env) - empty
    _check(put, size)
    put.unlink()
    return get_s, put_s


class JumpConfig:
    """ssh_config and askpass for `sftp -J` through the relay, with nothing from ~/.ssh."""

    def __init__(self, folder: Path, sshd: OpenSSH, dep: Deployment) -> None:
        session_id = dep.session["id"]
        relay_key = " ".join(dep.relay_host_key.split()[:2])
        agent_key = " ".join(dep.session["host_key"].split()[:2])
        known = folder / "jump_known_hosts"
        known.write_text(f"[{dep.relay.ssh_host}]:{dep.relay.ssh_port} {relay_key}\n"
                         f"{session_id} {agent_key}\n")
        askpass = folder / "askpass.sh"
        askpass.write_text(f"#!/bin/sh\necho '{SESSION_PASSWORD}'\n")
        askpass.chmod(0o700)
        self.config = folder / "jump_config"
        self.config.write_text(
            f"Host adhoc-relay\n  HostName {dep.relay.ssh_host}\n  Port {dep.relay.ssh_port}\n"
            f"  User {dep.api.login_name}\n  IdentityFile {sshd.key}\n  IdentitiesOnly yes\n"
            f"  BatchMode yes\n"
            f"Host *\n  UserKnownHostsFile {known}\n  StrictHostKeyChecking yes\n"
            f"  LogLevel ERROR\n"
            f"Host {session_id}\n  User support\n  ProxyJump adhoc-relay\n"
            "  PubkeyAuthentication no\n  PreferredAuthentications password\n")
        self.target = session_id
        self.env = {**os.environ, "SSH_ASKPASS": str(askpass), "SSH_ASKPASS_REQUIRE": "force",
                    "DISPLAY": ":0"}

    def args(self) -> list[str]:
        # sftp -b implies BatchMode, which would refuse the askpass; the first -o wins.
        return ["-o", "BatchMode=no", "-F", str(self.config)]


async def run_variant(name: str, levers: Levers, sshd: OpenSSH, src: Path, work: Path,
                      size: int, rounds: int, with_jump: bool) -> dict[str, list[tuple]]:
    results: dict[str, list[tuple[float, float]]] = {}
    user_key_pub = Path(str(sshd.key) + ".pub")
    async with deployment(levers, ssh_key=user_key_pub) as dep:
        with direct_server(levers) as direct:
            jump = JumpConfig(work, sshd, dep) if with_jump else None
            contenders: dict[str, Callable] = {
                "relayed (asyncssh via relay)": lambda: asyncssh_transfer(
                    lambda: relayed_connection(dep, levers), src, work, size),
                "across two relays": lambda: asyncssh_transfer(
                    lambda: cross_relay_connection(dep, levers), src, work, size),
                "direct (same inner server, no relay)": lambda: asyncssh_transfer(
                    lambda: direct_connection(direct, levers), src, work, size),
                "OpenSSH sftp -> sshd": lambda: asyncio.to_thread(
                    openssh_transfer, sshd.client_args(), f"{sshd.user}@127.0.0.1",
                    src, work, size),
            }
            if jump is not None:
                contenders["OpenSSH sftp -J via relay"] = lambda: asyncio.to_thread(
                    openssh_transfer, jump.args(), jump.target, src, work, size, jump.env)
            for _ in range(rounds):
                for label, run in contenders.items():
                    results.setdefault(label, []).append(await run())
    _report(name, levers, results, size)
    return results


def _report(name: str, levers: Levers, results: dict[str, list[tuple]], size: int) -> None:
    anchor = results["OpenSSH sftp -> sshd"]
    anchor_get = size / median(g for g, _ in anchor) / 1e6
    anchor_put = size / median(p for _, p in anchor) / 1e6
    print(f"-- levers: {name} ({levers.label}); median of {len(anchor)} rounds, MB = 10^6 B")
    rows = []
    for label, samples in results.items():
        get_mb = size / median(g for g, _ in samples) / 1e6
        put_mb = size / median(p for _, p in samples) / 1e6
        rows.append((label, f"{get_mb:.0f}", f"{put_mb:.0f}", f"{get_mb / anchor_get:.2f}x",
                     f"{put_mb / anchor_put:.2f}x"))
    table(("path", "get MB/s", "put MB/s", "get vs OpenSSH", "put vs OpenSSH"), rows)
    relayed = results["relayed (asyncssh via relay)"]
    worst = min(size / median(g for g, _ in relayed) / 1e6 / anchor_get,
                size / median(p for _, p in relayed) / 1e6 / anchor_put)
    print(f"target relayed >= 0.5x OpenSSH (get and put): {verdict(worst >= 0.5)} "
          f"(worse direction {worst:.2f}x)")
    cross = results["across two relays"]
    kept = min(median(g for g, _ in relayed) / median(g for g, _ in cross),
               median(p for _, p in relayed) / median(p for _, p in cross))
    print(f"target the cross-relay hop costs <= 10 % (get and put): {verdict(kept >= 0.9)} "
          f"(worse direction {kept:.2f}x the same-relay path)\n")


async def main_async(args: argparse.Namespace) -> None:
    header(f"SFTP transfer of {args.mib} MiB: technician -> relay -> agent vs anchors",
           "asyncssh", "cryptography")
    from bench.common import openssh_version

    print(f"OpenSSH: {openssh_version()} (client and sshd, their default ciphers)\n")
    size = args.mib * MIB
    work = scratch_dir("adhoc-bench-transfer-")
    try:
        src = make_source(work, size)
        with openssh_server() as sshd:
            for name in args.levers.split(","):
                with technician_process(VARIANTS[name]):
                    await run_variant(name, VARIANTS[name], sshd, src, work, size,
                                      args.rounds, with_jump=not args.no_jump)
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(work)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="file size in MiB (default 256)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default 2)")
    parser.add_argument("--no-jump", action="store_true", help="skip OpenSSH sftp -J via relay")
    run_async(main_async(parse_with_levers(parser)))


def parse_with_levers(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Parse the command line with a checked --levers list of VARIANTS (shared with
    bench.keystroke)."""
    parser.add_argument("--levers", default="shipped",
                        help=f"comma-separated variants: {', '.join(VARIANTS)}")
    args = parser.parse_args()
    for name in args.levers.split(","):
        if name not in VARIANTS:
            parser.error(f"unknown lever variant {name!r}: choose from {', '.join(VARIANTS)}")
    return args


if __name__ == "__main__":
    main()
