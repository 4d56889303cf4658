"""adhoc-host: the temporary host a customer runs to receive support from a technician."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import threading

from common.transport import tune_allocator
from hostagent import join
from hostagent.agent import Agent, AgentOptions, install_dir
from hostagent.lifetime import AlreadyRunning, check_interval, remove_install_dir
from hostagent.notices import LineNotices
from hostagent.shells import DETACHED_TIMEOUT
from hostagent.tunnel import BACKOFF_CAP


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adhoc-host", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    j = sub.add_parser("join", help="join a support session from the invitation link")
    j.add_argument("join_url", metavar="JOIN_URL", help="the link from the invitation email")
    j.add_argument("--code", help="the 6-digit security code (asked for when missing)")
    j.add_argument("--yes", action="store_true",
                   help="do not ask for confirmation (for unattended use)")
    j.add_argument("--allow-unprivileged", action="store_true",
                   help="run without administrator rights (the technician gets your user's "
                        "rights only)")
    j.add_argument("-v", "--verbose", action="store_true")
    return parser


def _env_seconds(name: str, default: float) -> float:
    """Hidden knobs for tests and odd networks; not part of the documented interface."""
    value = os.environ.get(name)
    try:
        return max(0.05, float(value)) if value else default
    except ValueError:
        return default


async def _ask(prompt: str) -> str | None:
    """input() on a daemon thread, so ctrl+c at a prompt does not wait for the line."""
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[str | None] = loop.create_future()

    def read() -> None:
        try:
            value: str | None = input(prompt)
        except (EOFError, OSError, ValueError):
            value = None
        loop.call_soon_threadsafe(lambda: answer.done() or answer.set_result(value))

    threading.Thread(target=read, name="adhoc-host-prompt", daemon=True).start()
    return await answer


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    notices = LineNotices()
    if os.geteuid() != 0 and not args.allow_unprivileged:
        print("adhoc-host: administrator rights are needed to receive support: run it with "
              "sudo, or add --allow-unprivileged to share only your own account",
              file=sys.stderr)
        return 2
    try:
        link = join.JoinLink.parse(args.join_url)
    except join.JoinError as exc:
        print(f"adhoc-host: {exc}", file=sys.stderr)
        return 2

    given = [args.code] if args.code else []

    async def ask_code(prompt: str) -> str | None:
        if args.code:
            return given.pop() if given else None
        return await _ask(prompt)

    async def confirm(info: dict) -> bool:
        if args.yes:
            return True
        answer = await _ask("Continue? [y/N] ")
        return (answer or "").strip().lower() in ("y", "yes")

    options = AgentOptions(
        backoff_cap=_env_seconds("ADHOC_HOST_BACKOFF_CAP", BACKOFF_CAP),
        check_interval=check_interval(),
        detached_timeout=_env_seconds("ADHOC_HOST_SHELL_DETACH_TIMEOUT", DETACHED_TIMEOUT),
        keys=interactive)
    agent = Agent(link, notices, ask_code=ask_code, confirm=confirm, options=options)
    tune_allocator()
    try:
        return asyncio.run(agent.run())
    except join.JoinError as exc:
        print(f"adhoc-host: {exc}", file=sys.stderr)
        return 1
    except AlreadyRunning as exc:
        print(f"adhoc-host: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nadhoc-host: interrupted before the session started: nothing was changed",
              file=sys.stderr)
        return 130
    finally:
        # Installed by the join link's script: the folder holding this program goes too.
        remove_install_dir(install_dir())


if __name__ == "__main__":
    sys.exit(main())
