"""adhoc-host: the temporary host a customer runs to receive support from a technician."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import threading

from common.secret import Secret
from common.transport import tune_process
from hostagent import join
from hostagent.agent import Agent, AgentOptions, install_dir
from hostagent.lifetime import AlreadyRunning, LockUnsafe, check_interval, remove_install_dir
from hostagent.notices import LineNotices
from hostagent.shells import DETACHED_TIMEOUT
from hostagent.text import printable
from hostagent.tunnel import BACKOFF_CAP

CODE_ENV = "ADHOC_JOIN_CODE"
LINK_ENV = "ADHOC_JOIN_URL"
NO_CODE_OPTION = (
    "adhoc-host: --code is not accepted: every user of this computer could read the code in "
    f"the list of processes. Type it at the prompt, or for unattended use put it in {CODE_ENV} "
    "or give it on standard input with --code-stdin.")

EPILOG = f"""\
The link and the code are secrets until the session starts: anyone on this computer can read
a program's arguments, so give them another way on a shared computer. The link may come from
the environment variable {LINK_ENV}, or from the first line of standard input with JOIN_URL
"-". The code is asked for at a prompt; for unattended use it may come from the environment
variable {CODE_ENV}, or from the next line of standard input with --code-stdin.
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line and exit status 2, as argparse does
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="adhoc-host", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser)
    j = sub.add_parser("join", help="join a support session from the invitation link",
                       description="Join a support session from the invitation link.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    j.add_argument("join_url", metavar="JOIN_URL", nargs="?",
                   help=f"the link from the invitation email; '-' reads it from standard "
                        f"input; left out, it is taken from {LINK_ENV}")
    j.add_argument("--code-stdin", action="store_true",
                   help="read the 6-digit security code from standard input (for unattended "
                        f"use; or put it in {CODE_ENV})")
    j.add_argument("--code", help=argparse.SUPPRESS)
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
            with contextlib.suppress(OSError, ValueError):
                if sys.stdout.isatty():
                    print()  # ctrl+d left the cursor on the prompt's line
        loop.call_soon_threadsafe(lambda: answer.done() or answer.set_result(value))

    threading.Thread(target=read, name="adhoc-host-prompt", daemon=True).start()
    return await answer


class UsageError(Exception):
    pass


def _stdin_line(what: str) -> str:
    if sys.stdin.isatty():  # someone is typing it: say what is wanted
        print(f"The {what}: ", end="", flush=True)
    line = sys.stdin.readline()
    if not line.strip():
        raise UsageError(f"no {what} on standard input: give it as the first line")
    return line.strip()


def _link_and_code(args: argparse.Namespace) -> tuple[str, Secret | None]:
    """Where the link and (for unattended use) the code come from; neither from argv's
    secrets, except the link when the customer typed it there themselves."""
    if args.code is not None:
        raise UsageError(NO_CODE_OPTION.removeprefix("adhoc-host: "))
    env_link = os.environ.pop(LINK_ENV, None)
    env_code = os.environ.pop(CODE_ENV, None)
    if args.join_url and env_link:
        raise UsageError(f"the join link is given twice (as JOIN_URL and in {LINK_ENV}): "
                         "give it once")
    if args.code_stdin and env_code:
        raise UsageError(f"the code is given twice (with --code-stdin and in {CODE_ENV}): "
                         "give it once")
    if args.join_url == "-":
        url = _stdin_line("join link")
    elif args.join_url:
        url = args.join_url
    elif env_link:
        url = env_link
    else:
        raise UsageError("give the join link from the invitation email: adhoc-host join LINK, "
                         f"or in {LINK_ENV}, or '-' to read it from standard input")
    if args.code_stdin:
        code: Secret | None = Secret(_stdin_line("security code"))
    else:
        code = Secret(env_code) if env_code is not None else None
    return url, code


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # httpx logs every request's URL, and the join link's URL is a secret.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if os.geteuid() != 0 and not args.allow_unprivileged:
        print("adhoc-host: administrator rights are needed to receive support: run it with "
              "sudo, or add --allow-unprivileged to share only your own account",
              file=sys.stderr)
        return 2
    try:
        url, given = _link_and_code(args)
        link = join.JoinLink.parse(url)
        if given is not None:
            given = join.normalise_code(given)  # refused here: no try is spent
    except (UsageError, join.JoinError) as exc:
        print(f"adhoc-host: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nadhoc-host: interrupted: nothing was changed on this computer",
              file=sys.stderr)
        return 130
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    codes = [given] if given is not None else []

    async def ask_code(prompt: str) -> str | Secret | None:
        if given is not None:
            return codes.pop() if codes else None
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
        keys=interactive, ask_again=given is None)
    agent = Agent(link, LineNotices(), ask_code=ask_code, confirm=confirm, options=options)
    tune_process()
    try:
        return asyncio.run(agent.run())
    except (join.JoinError, AlreadyRunning, LockUnsafe) as exc:
        print(f"adhoc-host: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        done = "nothing was changed on this computer" if agent.phase == "joining" else \
            "the temporary Adhoc host removed itself"
        print(f"\nadhoc-host: interrupted: {done}", file=sys.stderr)
        return 130
    except Exception as exc:  # the customer gets a sentence, never a traceback
        logging.getLogger("adhoc.host").debug("unexpected error", exc_info=True)
        reason = str(exc).replace(link.token.reveal(), "…")
        print(f"adhoc-host: an unexpected error stopped the host ({type(exc).__name__}: "
              f"{printable(reason)}); nothing of it is left on this computer. Run the "
              "command again, with -v to see more.", file=sys.stderr)
        return 1
    finally:
        # Installed by the join link's script: the folder holding this program goes too.
        remove_install_dir(install_dir())


if __name__ == "__main__":
    sys.exit(main())
