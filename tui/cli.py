"""adhoc-console: the technician's console; with no relay configured it runs the bundled one."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from urllib.parse import urlsplit

from common.transport import tune_allocator
from relay.config import parse_hostport
from tui.app import ConsoleApp
from tui.client import RelayClient, RelayError
from tui.config import ConsoleConfig, embedded_data_dir


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adhoc-console", description=__doc__)
    parser.add_argument("--relay", metavar="URL",
                        help="the relay to use (default: the one you logged in to, else the "
                             "bundled relay on this computer)")
    parser.add_argument("--listen", metavar="HOST:PORT",
                        help="where the bundled relay listens (default 127.0.0.1, ports "
                             "8780 and 8722 or free ones, kept once chosen); another "
                             "address lets customers on other computers in")
    parser.add_argument("--public-url", metavar="URL",
                        help="the address customers' computers reach the bundled relay at, "
                             "for their links (default http://<--listen>)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    login = sub.add_parser("login", help="log in to a relay and remember it")
    login.add_argument("url", metavar="URL", help="the relay's URL, e.g. https://relay.example")
    login.add_argument("--login", help="your login name (asked for when missing)")
    login.add_argument("--password-stdin", action="store_true",
                       help="read the password from standard input")
    sub.add_parser("logout", help="forget the stored relay and token")
    tunnel = sub.add_parser(
        "tunnel", help="carry OpenSSH to the relay: use as ProxyCommand (see docs/CONSOLE.md)")
    tunnel.add_argument("url", metavar="URL", nargs="?",
                        help="the relay's URL (default: the one you logged in to)")
    tunnel.add_argument("--websocket", action="store_true",
                        help="go over WebSocket even when the relay's SSH port is reachable")
    tunnel.add_argument("-v", "--verbose", action="store_true",
                        help="say on standard error which route is used")
    return parser


def _login(args: argparse.Namespace) -> int:
    name = args.login or input("Login: ").strip()
    password = sys.stdin.readline().rstrip("\n") if args.password_stdin else \
        getpass.getpass("Password: ")
    return asyncio.run(_store_login(args.url, name, password))


async def _store_login(url: str, name: str, password: str) -> int:
    client = RelayClient(url)
    try:
        body = await client.login(name, password)
    except RelayError as exc:
        print(f"adhoc-console: {exc.detail}", file=sys.stderr)
        return 1
    finally:
        await client.aclose()
    config = ConsoleConfig.load()
    config.relay_url, config.login, config.token = url.rstrip("/"), name, body["token"]
    config.save()
    print(f"logged in to {config.relay_url} as {name}; token stored in {config.path}")
    return 0


def _embedded_notice(embedded) -> str:
    if embedded.attached:
        return (f"Using the bundled relay that another console (process {embedded.owner_pid}) "
                f"runs at {embedded.base_url}: it stops when that console quits.")
    notice = f"Running the bundled relay at {embedded.base_url} (data in {embedded_data_dir()})."
    if urlsplit(embedded.base_url).hostname in ("127.0.0.1", "localhost", "::1"):
        notice += (" Only this computer can join its links: to let a customer's computer in, "
                   "start with --listen ADDRESS:PORT (this computer's address on their "
                   "network) and, behind NAT, --public-url.")
    if embedded.first_run_password:
        notice += (f" First run: created company 'Local' and admin '{embedded.login}' with "
                   f"password {embedded.first_run_password} — note it now, it is shown only "
                   "once.")
    return notice


async def _run(args: argparse.Namespace, config: ConsoleConfig) -> int:
    embedded = None
    notice = None
    url = args.relay or config.relay_url
    if url is None:
        from tui.embedded import EmbeddedError, start_embedded

        listen = args.listen or config.listen
        try:
            embedded = await start_embedded(
                parse_hostport(listen) if listen else None,
                args.public_url or config.public_url)
        except (EmbeddedError, ValueError) as exc:
            print(f"adhoc-console: {exc}", file=sys.stderr)
            return 1
        url, token, login = embedded.base_url, embedded.token, embedded.login
        notice = _embedded_notice(embedded)
    else:
        if args.listen or args.public_url:
            print("adhoc-console: --listen and --public-url are for the bundled relay, not "
                  f"for {url}", file=sys.stderr)
            return 2
        if not config.token or (args.relay and args.relay.rstrip("/") != config.relay_url):
            print(f"adhoc-console: not logged in to {url}: run `adhoc-console login {url}` "
                  "first", file=sys.stderr)
            return 2
        token, login = config.token, config.login or ""
    client = RelayClient(url, token)
    try:
        if embedded is None:
            try:
                await client.me()
            except RelayError as exc:
                print(f"adhoc-console: {exc.detail}", file=sys.stderr)
                return 1
        app = ConsoleApp(client, login, notice=notice, keymap=config.keymap,
                         runs_relay=embedded is not None and not embedded.attached)
        await app.run_async()
    finally:
        await client.aclose()
        if embedded is not None:
            await embedded.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "login":
        return _login(args)
    config = ConsoleConfig.load()
    if args.command == "tunnel":
        from tui.tunnel import run

        url = args.url or config.relay_url
        if not url:
            print("adhoc-console tunnel: name the relay's URL (or log in to one first)",
                  file=sys.stderr)
            return 2
        return asyncio.run(run(url, websocket_only=args.websocket, verbose=args.verbose))
    if args.command == "logout":
        config.relay_url = config.login = config.token = None
        config.save()
        print("logged out")
        return 0
    tune_allocator()
    return asyncio.run(_run(args, config))


if __name__ == "__main__":
    sys.exit(main())
