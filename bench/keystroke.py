"""Keystroke latency: one byte echoed through a remote PTY, relayed vs direct vs OpenSSH.

Run: python -m bench.keystroke [--trips 1000] [--levers shipped,...]

Each contender runs `stty raw -echo; exec cat` on a PTY and the bench times one byte out to
its echo, `--trips` times, in interleaved rounds of 100 so background load hits all alike:
- relayed: asyncssh client -> real relay process -> real `adhoc-host join` agent;
- across two relays: the same, the technician on a second relay of the cluster, which
  reaches the agent through the first (relay-to-relay SSH): the cross-relay hop's cost;
- direct: asyncssh client -> the agent's inner SSH server on a loopback socket (no relay);
- asyncssh -> sshd: the same client against a throwaway OpenSSH sshd;
- OpenSSH ssh -> sshd: OpenSSH's `ssh -tt` (driven through pipes) against that sshd;
- OpenSSH ssh -J via relay: stock `ssh -J` through the relay to the agent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from bench.common import (
    Levers,
    OpenSSH,
    cross_relay_connection,
    deployment,
    direct_connection,
    direct_server,
    header,
    openssh_server,
    openssh_version,
    percentile,
    relayed_connection,
    run_async,
    scratch_dir,
    table,
    technician_process,
    verdict,
)
from bench.transfer import VARIANTS, JumpConfig, parse_with_levers

COMMAND = "stty raw -echo; exec cat"
ROUND = 100
READ_TIMEOUT = 5.0

Trip = Callable[[], Awaitable[float]]


class Echo:
    """Times one byte to its echo over a writer/reader pair."""

    def __init__(self, write: Callable[[bytes], None], read: Callable[[int], Awaitable[bytes]]):
        self._write = write
        self._read = read

    async def ready(self) -> None:
        """Wait until the remote `cat` answers (stty has run), then drop anything queued."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            self._write(b"r")
            with contextlib.suppress(TimeoutError):
                if await asyncio.wait_for(self._read(4096), 1.0):
                    break
        await asyncio.sleep(0.3)
        with contextlib.suppress(TimeoutError):
            while await asyncio.wait_for(self._read(4096), 0.2):
                pass

    async def trip(self) -> float:
        start = time.perf_counter()
        self._write(b"k")
        got = b""
        while not got:
            got = await asyncio.wait_for(self._read(64), READ_TIMEOUT)
            if not got:
                raise RuntimeError("the remote end closed during the benchmark")
        return time.perf_counter() - start


@contextlib.asynccontextmanager
async def asyncssh_echo(connect) -> AsyncIterator[Echo]:
    async with connect() as conn:
        process = await conn.create_process(COMMAND, term_type="xterm", term_size=(80, 24),
                                            encoding=None)
        echo = Echo(process.stdin.write, process.stdout.read)
        await echo.ready()
        try:
            yield echo
        finally:
            process.close()


@contextlib.asynccontextmanager
async def openssh_echo(args: list[str], target: str, env: dict | None = None
                       ) -> AsyncIterator[Echo]:
    proc = await asyncio.create_subprocess_exec(
        "ssh", "-tt", *args, target, COMMAND, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env=env)
    assert proc.stdin is not None and proc.stdout is not None
    echo = Echo(proc.stdin.write, proc.stdout.read)
    try:
        await echo.ready()
        yield echo
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


@contextlib.asynccontextmanager
async def asyncssh_to_sshd(sshd: OpenSSH, levers: Levers):
    conn = await sshd.asyncssh_connection(levers)
    try:
        yield conn
    finally:
        conn.close()
        await conn.wait_closed()


async def run_variant(name: str, levers: Levers, sshd: OpenSSH, trips: int, work: Path,
                      with_jump: bool) -> None:
    samples: dict[str, list[float]] = {}
    async with contextlib.AsyncExitStack() as stack:
        dep = await stack.enter_async_context(deployment(levers, ssh_key=Path(f"{sshd.key}.pub")))
        direct = stack.enter_context(direct_server(levers))
        echoes = {
            "relayed (asyncssh via relay)": await stack.enter_async_context(
                asyncssh_echo(lambda: relayed_connection(dep, levers))),
            "across two relays": await stack.enter_async_context(
                asyncssh_echo(lambda: cross_relay_connection(dep, levers))),
            "direct (same inner server, no relay)": await stack.enter_async_context(
                asyncssh_echo(lambda: direct_connection(direct, levers))),
            "asyncssh -> sshd": await stack.enter_async_context(
                asyncssh_echo(lambda: asyncssh_to_sshd(sshd, levers))),
            "OpenSSH ssh -> sshd": await stack.enter_async_context(
                openssh_echo(sshd.client_args(), f"{sshd.user}@127.0.0.1")),
        }
        if with_jump:
            jump = JumpConfig(work, sshd, dep)
            echoes["OpenSSH ssh -J via relay"] = await stack.enter_async_context(
                openssh_echo(jump.args(), jump.target, jump.env))
        done = 0
        while done < trips:
            count = min(ROUND, trips - done)
            for label, echo in echoes.items():
                bucket = samples.setdefault(label, [])
                for _ in range(count):
                    bucket.append(await echo.trip())
            done += count
    direct_p50 = percentile(samples["direct (same inner server, no relay)"], 50)
    openssh_p50 = percentile(samples["OpenSSH ssh -> sshd"], 50)
    print(f"-- levers: {name} ({levers.label}); {trips} round trips each, in rounds of {ROUND}")
    rows = []
    for label, values in samples.items():
        p50, p99 = percentile(values, 50), percentile(values, 99)
        rows.append((label, f"{p50 * 1e3:.3f}", f"{p99 * 1e3:.3f}",
                     f"{p50 / direct_p50:.2f}x", f"{p50 / openssh_p50:.2f}x"))
    table(("path", "p50 ms", "p99 ms", "p50 vs direct", "p50 vs OpenSSH"), rows)
    relayed = samples["relayed (asyncssh via relay)"]
    ratio = percentile(relayed, 50) / direct_p50
    ratio99 = percentile(relayed, 99) / percentile(
        samples["direct (same inner server, no relay)"], 99)
    print(f"target relayed <= 2x direct: {verdict(ratio <= 2)} (p50 {ratio:.2f}x, "
          f"p99 {ratio99:.2f}x)")
    hop = percentile(samples["across two relays"], 50) - percentile(relayed, 50)
    print(f"target cross-relay hop <= 0.3 ms p50: {verdict(hop <= 0.0003)} "
          f"({hop * 1e3:+.3f} ms)\n")


async def main_async(args: argparse.Namespace) -> None:
    header("Keystroke round trip through a PTY", "asyncssh", "cryptography")
    print(f"OpenSSH: {openssh_version()}; command on the PTY: {COMMAND}\n")
    work = scratch_dir("adhoc-bench-keys-")
    try:
        with openssh_server() as sshd:
            for name in args.levers.split(","):
                with technician_process(VARIANTS[name]):
                    await run_variant(name, VARIANTS[name], sshd, args.trips, work,
                                      with_jump=not args.no_jump)
    finally:
        for path in work.iterdir():
            path.unlink()
        os.rmdir(work)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trips", type=int, default=1000, help="round trips per contender")
    parser.add_argument("--no-jump", action="store_true", help="skip OpenSSH ssh -J via relay")
    run_async(main_async(parse_with_levers(parser)))


if __name__ == "__main__":
    main()
