"""SFTP get and put of one large file: relayed vs the same server direct vs OpenSSH sftp.

Run: python -m bench.transfer [--mib 256] [--rounds 2] [--levers shipped,tuned,...]
     python -m bench.transfer --tools sftp,scp,rsync [--mib 256] [--rounds 3] [--levers ...]

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

With --tools: stock OpenSSH `sftp`, `scp` (its default SFTP mode) and `rsync -e ssh`, default
settings, each way, through the relay to the agent against the same tools through an OpenSSH
jump host (a throwaway sshd allowing forwarding, `ProxyJump`) to a throwaway sshd target: the
tool a technician would pick instead. Both paths log in with keys (the relay: the technician's
key; the host: the key sent with the session). Each transfer's time is its run minus the same
tool moving a one-byte file in the same round; anchor and contender alternate which goes
first, round by round.
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
    openssh_version,
    relayed_connection,
    run_async,
    scratch_dir,
    settle,
    table,
    technician_process,
    verdict,
)

MIB = 1024 * 1024
# Seconds of a quiet machine before each transfer: none pays for what the last left running.
SETTLE = 1.0
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
    "ignores": Levers(ignores=True, label="asyncssh's SSH_MSG_IGNORE before each packet, as "
                                          "before (shipped skips it on AES-GCM)"),
    "tuned": Levers(gcm=True, inner_window=2 * MIB, agent_window=8 * MIB,
                    agent_packet=256 * 1024, tech_window=8 * MIB, tech_packet=256 * 1024,
                    label="gcm + inner 2 MiB + 8 MiB legs"),
    "tuned+uvloop": Levers(gcm=True, inner_window=2 * MIB, agent_window=8 * MIB,
                           agent_packet=256 * 1024, tech_window=8 * MIB,
                           tech_packet=256 * 1024, uvloop=True,
                           label="gcm + inner 2 MiB + 8 MiB legs + uvloop"),
    "chacha": Levers(server_ciphers=("aes128-gcm@openssh.com", "aes256-gcm@openssh.com",
                                     "chacha20-poly1305@openssh.com", "aes128-ctr",
                                     "aes256-ctr"),
                     label="as before issue 15: relay and agent also offer chacha20 and "
                           "AES-CTR (OpenSSH clients take chacha20)"),
    "pipes": Levers(narrow_pipes=True,
                    label="agent: a command's pipes of 64 KiB, its output paused after every "
                          "read (before; rsync's and scp -O's exec channel)"),
    "shell1m": Levers(shell_window=MIB, label="the console's shell window 1 MiB (SHELL_WINDOW)"),
    "shell2m": Levers(shell_window=2 * MIB,
                      label="the console's shell window 2 MiB (SHELL_WINDOW)"),
    "at-once": Levers(write_at_once=True,
                      label="every write sent at once (before bulk writes were joined per turn)"),
    "ctr": Levers(server_ciphers=("aes128-gcm@openssh.com", "aes256-gcm@openssh.com",
                                  "aes128-ctr", "aes256-ctr"),
                  label="AES-GCM and AES-CTR offered (OpenSSH clients take aes128-ctr with "
                        "hmac-sha2-256-etm)"),
    "digest-wait": Levers(digest_wait=True,
                          label="the agent's SFTP close waits for the file's SHA-256 (before)"),
    "copies": Levers(packet_copies=True,
                     label="asyncssh's own packet path: every copy, an AES-GCM context per "
                           "packet (before common/packets.py)"),
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


# --- stock OpenSSH tools: through the relay vs through an OpenSSH jump host -------------------

TOOLS = ("sftp", "scp", "rsync")


def _jump_config(folder: Path, jump: OpenSSH, target: OpenSSH) -> Path:
    """ssh_config reaching `target` as host "h" through `jump` (ProxyJump), keys pinned."""
    known = folder / "jump_anchor_known_hosts"
    known.write_text(f"[127.0.0.1]:{jump.port} {jump.host_public_key}\n"
                     f"[127.0.0.1]:{target.port} {target.host_public_key}\n")
    config = folder / "jump_anchor_config"
    config.write_text(
        f"Host jump\n  HostName 127.0.0.1\n  Port {jump.port}\n  User {jump.user}\n"
        f"  IdentityFile {jump.key}\n"
        f"Host h\n  HostName 127.0.0.1\n  Port {target.port}\n  User {target.user}\n"
        f"  IdentityFile {target.key}\n  ProxyJump jump\n"
        f"Host *\n  IdentitiesOnly yes\n  BatchMode yes\n  UserKnownHostsFile {known}\n"
        "  StrictHostKeyChecking yes\n  LogLevel ERROR\n")
    return config


def _tool_command(tool: str, config: Path, direction: str, source: Path, dest: Path) -> tuple:
    """(argv, stdin) of `tool` moving `source` to `dest` ("get": from h, "put": to h)."""
    if tool == "sftp":
        verb = "get" if direction == "get" else "put"
        return ["sftp", "-q", "-F", str(config), "-b", "-", "h"], f'{verb} "{source}" "{dest}"\n'
    remote_source = f"h:{source}" if direction == "get" else str(source)
    remote_dest = str(dest) if direction == "get" else f"h:{dest}"
    if tool == "scp":
        return ["scp", "-q", "-F", str(config), remote_source, remote_dest], None
    return ["rsync", "-e", f"ssh -F {config}", remote_source, remote_dest], None


def tool_seconds(tool: str, config: Path, direction: str, source: Path, work: Path,
                 size: int, tiny: Path) -> float:
    """Seconds `tool` takes to move `source` one way, less its run with a one-byte file."""
    times = []
    for src, expected in ((tiny, 1), (source, size)):
        dest = work / f"{tool}-{direction}.bin"
        argv, stdin = _tool_command(tool, config, direction, src, dest)
        start = time.perf_counter()
        subprocess.run(argv, input=stdin, text=True, check=True, timeout=TIMEOUT,
                       stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
        _check(dest, expected)
        dest.unlink()
    return times[1] - times[0]


async def run_tools(variants: dict[str, Levers], tools: list[str], src: Path, work: Path,
                    size: int, rounds: int) -> dict[tuple[str, str, str], list[float]]:
    """Every tool, both ways, through the jump-host anchor and through a relay per variant
    (all running at once), interleaved within each round; seconds by (tool, direction,
    path)."""
    from tests.openssh import RelayPath, make_key

    keys = work / "keys"
    keys.mkdir()
    inner_key = make_key(keys / "inner_key")
    tiny = work / "tiny.bin"
    tiny.write_bytes(b"x")
    results: dict[tuple[str, str, str], list[float]] = {}
    async with contextlib.AsyncExitStack() as stack:
        jump = stack.enter_context(openssh_server(jump=True))
        target = stack.enter_context(openssh_server())
        paths = {ANCHOR: _jump_config(keys, jump, target)}
        for name, levers in variants.items():
            dep = await stack.enter_async_context(deployment(
                levers, technician_key=Path(f"{inner_key}.pub").read_text()))
            paths[name] = RelayPath(keys / name, dep.relay, dep.api.login_name, dep.session,
                                    " ".join(dep.relay_host_key.split()[:2]),
                                    inner_key=inner_key).config
        names = list(paths)
        for round_no in range(rounds):
            order = names[round_no % len(names):] + names[:round_no % len(names)]
            for tool in tools:
                for direction in ("get", "put"):
                    for path in order:
                        await asyncio.to_thread(settle, SETTLE)
                        seconds = await asyncio.to_thread(
                            tool_seconds, tool, paths[path], direction, src, work, size, tiny)
                        results.setdefault((tool, direction, path), []).append(seconds)
    _report_tools(variants, tools, results, size)
    return results


ANCHOR = "OpenSSH jump host"


def _report_tools(variants: dict[str, Levers], tools: list[str],
                  results: dict[tuple[str, str, str], list[float]], size: int) -> None:
    runs = len(next(iter(results.values())))
    for name, levers in variants.items():
        print(f"-- {name}: {levers.label}")
    print(f"median of {runs} interleaved rounds, MB = 10^6 B; ratio = via relay / via jump host")
    rows = []
    worst = {name: float("inf") for name in variants}
    for tool in tools:
        for direction in ("get", "put"):
            anchor = size / median(results[(tool, direction, ANCHOR)]) / 1e6
            row = [f"{tool} {direction}", f"{anchor:.0f}"]
            for name in variants:
                ours = size / median(results[(tool, direction, name)]) / 1e6
                worst[name] = min(worst[name], ours / anchor)
                row += [f"{ours:.0f}", f"{ours / anchor:.2f}x"]
            rows.append(row)
    columns = ["tool", f"{ANCHOR} MB/s"]
    for name in variants:
        columns += [f"{name} MB/s", f"{name} ratio"]
    table(columns, rows)
    for name in variants:
        print(f"{name}: target stock tools via relay >= 1.0x via jump host (every row): "
              f"{verdict(worst[name] >= 1.0)} (worst row {worst[name]:.2f}x)")
    print()


async def main_async(args: argparse.Namespace) -> None:
    header(f"SFTP transfer of {args.mib} MiB: technician -> relay -> agent vs anchors",
           "asyncssh", "cryptography")
    print(f"OpenSSH: {openssh_version()} (client and sshd, their default ciphers)\n")
    size = args.mib * MIB
    work = scratch_dir("adhoc-bench-transfer-")
    try:
        src = make_source(work, size)
        if args.tools:
            await run_tools({name: VARIANTS[name] for name in args.levers.split(",")},
                            args.tools.split(","), src, work, size, args.rounds)
            return
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
    parser.add_argument("--tools", metavar="LIST",
                        help=f"instead: stock OpenSSH tools ({','.join(TOOLS)}) via the relay "
                             "against the same tools via an OpenSSH jump host")
    args = parse_with_levers(parser)
    if args.tools and not set(args.tools.split(",")) <= set(TOOLS):
        parser.error(f"--tools takes a comma-separated list of {', '.join(TOOLS)}")
    run_async(main_async(args))


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
