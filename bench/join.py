"""Agent join: from `adhoc-host join <link>` (code in ADHOC_JOIN_CODE) to the session active and
the host online.

Run: python -m bench.join [--rounds 10]

The target (docs/BENCHMARKS.md, Targets): the agent joins (link to active) in ≤ 3 s once
installed. Each round the technician creates a session through the API, as the console does;
then the customer's agent starts as a real process with the program already installed
(`adhoc-host join <link> --yes`, the code in ADHOC_JOIN_CODE, through bench.launch with no
levers: the product as shipped), and the relay's API is polled every 20 ms until the session
is active (the code was accepted) and until the host is online (its tunnel is up: the
technician can open a shell). The anchor, in the same round:
OpenSSH `ssh` logging in to a throwaway local sshd and running `true`, from process start to
exit, the set-up users compare a connection to. Between rounds the session is ended, and the
agent exits and removes itself as after any session.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import (
    SHIPPED,
    Api,
    BenchRelay,
    header,
    median,
    openssh_server,
    openssh_version,
    provision_relay,
    run_async,
    start_agent,
    stop_process,
    table,
    verdict,
)

POLL = 0.02
TARGET = 3.0


async def one_join(api: Api, workdir: Path) -> tuple[float, float]:
    """Seconds from starting the agent until the session is active, and until it is online."""
    session = await api.create_session()
    started = time.monotonic()
    agent = start_agent(session, workdir, SHIPPED)
    active = online = None
    try:
        deadline = started + 60
        while online is None:
            view = await api.session(session["id"])
            now = time.monotonic()
            if active is None and view["state"] == "active":
                active = now - started
            if view.get("online"):
                online = now - started
            if now > deadline:
                raise RuntimeError(f"the agent did not come online in 60 s: "
                                   f"{(workdir / 'agent.log').read_text()[-2000:]}")
            await asyncio.sleep(POLL)
        ended = await api.client.post(f"/api/v1/sessions/{session['id']}/end")
        ended.raise_for_status()
        try:
            agent.wait(30)  # it removes itself once told the session ended
        except subprocess.TimeoutExpired:
            pass
    finally:
        stop_process(agent)
    assert active is not None
    return active, online


def ssh_login(args: list[str], target: str) -> float:
    started = time.monotonic()
    subprocess.run(["ssh", *args, target, "true"], check=True, stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, timeout=30)
    return time.monotonic() - started


async def main_async(args: argparse.Namespace) -> None:
    header("Agent join: link to active and online", "asyncssh", "httpx")
    print(f"OpenSSH: {openssh_version()}; {args.rounds} rounds, API polled every "
          f"{POLL * 1000:.0f} ms\n")
    folder = Path(tempfile.mkdtemp(prefix="adhoc-bench-join-"))
    relay = BenchRelay(folder / "relay")
    try:
        provision_relay(folder / "relay")
        relay.start()
        joins: list[tuple[float, float]] = []
        logins: list[float] = []
        with openssh_server() as sshd:
            async with Api(relay.base_url) as api:
                for n in range(args.rounds):
                    workdir = folder / f"round{n}"
                    workdir.mkdir()
                    joins.append(await one_join(api, workdir))
                    logins.append(ssh_login(sshd.client_args(), f"{sshd.user}@127.0.0.1"))
    finally:
        relay.stop()
        shutil.rmtree(folder, ignore_errors=True)
    active = [a for a, _ in joins]
    online = [o for _, o in joins]
    anchor = median(logins)
    rows = [("agent start → session active", f"{median(active):.2f}", f"{max(active):.2f}",
             f"{median(active) / anchor:.1f}x"),
            ("agent start → host online", f"{median(online):.2f}", f"{max(online):.2f}",
             f"{median(online) / anchor:.1f}x"),
            ("OpenSSH ssh login + `true` → sshd", f"{anchor:.2f}", f"{max(logins):.2f}",
             "1.0x")]
    table(("path", "median s", "max s", "median vs OpenSSH"), rows)
    print(f"target link to active ≤ {TARGET:.0f} s: {verdict(max(active) <= TARGET)} "
          f"(median {median(active):.2f} s, max {max(active):.2f} s); online by "
          f"{max(online):.2f} s at worst\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="joins to time (default 10)")
    run_async(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
