"""adhoc-console: the technician's console; with no relay configured it runs the bundled one."""

from __future__ import annotations

import argparse
import asyncio
import difflib
import getpass
import ipaddress
import sys
from pathlib import Path
from urllib.parse import urlsplit

import asyncssh

from common.passwords import TECHNICIAN_PASSWORD_MAX
from common.secret import Secret
from common.transport import tune_process
from relay.config import parse_hostport, parse_public_url
from tui import sshconfig
from tui.app import ConsoleApp
from tui.client import RelayClient, RelayError
from tui.config import ConsoleConfig, embedded_data_dir
from tui.failures import explain

PROG = "adhoc-console"


class Refused(Exception):
    """Something the user gave or did that the console cannot go on with: one sentence;
    `status` is the exit status (2: a command line that cannot work)."""

    def __init__(self, sentence: str, *, status: int = 1) -> None:
        super().__init__(sentence)
        self.status = status


class Parser(argparse.ArgumentParser):
    argv: list[str] = []  # the words being parsed, for the error below

    def error(self, message: str) -> None:  # type: ignore[override]
        """argparse's words, or for a mistyped option (--realy) the option it resembles."""
        hint = ""
        for word in Parser.argv:
            if word.startswith("--") and word.split("=", 1)[0] not in self._option_string_actions:
                options = [o for o in self._option_string_actions if o.startswith("--")]
                close = difflib.get_close_matches(word.split("=", 1)[0], options, n=1)
                hint = f"unknown option {word.split('=', 1)[0]}" + (
                    f" (did you mean {close[0]}?)" if close else "")
                break
        self.exit(2, f"{self.prog}: {hint or message}; see {PROG} --help\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog=PROG, description=__doc__)
    parser.add_argument("--relay", metavar="URL",
                        help="the relay to use (default: the one you logged in to, else the "
                             "bundled relay on this computer)")
    parser.add_argument("--session-key", metavar="FILE",
                        help="an SSH public key (e.g. ~/.ssh/id_ed25519.pub) sent with every "
                             "session you create: it logs in to the host as you, for scripts "
                             "(sftp -b, cron)")
    parser.add_argument("--listen", metavar="HOST:PORT",
                        help="where the bundled relay listens (default 127.0.0.1, ports "
                             "8780 and 8722 or free ones, kept once chosen); another "
                             "address lets customers on other computers in")
    parser.add_argument("--public-url", metavar="URL",
                        help="the address customers' computers reach the bundled relay at, "
                             "for their links (default http://<--listen>)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    login = sub.add_parser("login", help="log in to a relay and remember it")
    login.add_argument("url", metavar="URL",
                       help="the relay's URL, e.g. https://relay.example or 127.0.0.1:8780")
    login.add_argument("--login", help="your login name (asked for when missing)")
    login.add_argument("--password-stdin", action="store_true",
                       help="read the password from standard input")
    sub.add_parser("logout", help="forget the stored relay and token")
    config = sub.add_parser(
        "ssh-config", help="OpenSSH config for your company's live sessions (ssh, scp, sftp, "
                           "rsync and sshfs by session id)",
        description="Print a Host block per live session (ProxyJump through the relay, "
                    "HostKeyAlias, keepalive) and the keys to pin; with --write, put them in "
                    "~/.ssh/adhoc/config and ~/.ssh/adhoc/known_hosts and include that from "
                    "~/.ssh/config, so `ssh SESSION` works.")
    config.add_argument("session", nargs="?", metavar="SESSION",
                        help="only this session (its id, or the customer's email)")
    config.add_argument("--write", action="store_true",
                        help="write every live session to ~/.ssh/adhoc/ (run it again when "
                             "sessions change)")
    tunnel = sub.add_parser(
        "tunnel", help="carry OpenSSH to the relay: use as ProxyCommand (see docs/CONSOLE.md)")
    tunnel.add_argument("url", metavar="URL", nargs="?",
                        help="the relay's URL (default: the one you logged in to)")
    tunnel.add_argument("--websocket", action="store_true",
                        help="go over WebSocket even when the relay's SSH port is reachable")
    tunnel.add_argument("-v", "--verbose", action="store_true",
                        help="say on standard error which route is used")
    return parser


def relay_url(text: str) -> str:
    """The relay's base URL from what a person typed: `127.0.0.1:8780` means http:// on a
    loopback address (https:// elsewhere), and a path such as /api/v1 is dropped."""
    text = text.strip()
    try:
        if "://" not in text:
            host = urlsplit(f"//{text}").hostname or ""
            text = ("http://" if _is_local(host) else "https://") + text
        parts = urlsplit(text)
    except ValueError:  # an unbalanced [ or ]
        raise Refused(f"cannot read {text!r} as a relay's address: give one like "
                      "https://relay.example or 127.0.0.1:8780") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Refused(f"{text} is not a relay's address: give one like https://relay.example "
                      "or 127.0.0.1:8780")
    try:
        parts.port  # noqa: B018 - a port that is not a number raises here
    except ValueError:
        raise Refused(f"{text} has a port that is not a number") from None
    return f"{parts.scheme}://{parts.netloc}"


def _is_local(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback or ipaddress.ip_address(host).is_private
    except ValueError:
        return False


def _ask(prompt: str, *, secret: bool = False) -> str:
    """A line from the person at the keyboard; ctrl+c or end of input stops the command."""
    try:
        return getpass.getpass(prompt) if secret else input(prompt)
    except (EOFError, KeyboardInterrupt):
        print(file=sys.stderr)
        raise Refused("stopped: nothing was changed") from None


def _login(args: argparse.Namespace) -> int:
    url = relay_url(args.url)
    name = (args.login or _ask("Login: ")).strip()
    if not name:
        raise Refused("no login name given: nothing was changed")
    if args.password_stdin:
        # A line at most, read no further than a password can be (a file given by mistake).
        typed = sys.stdin.readline(TECHNICIAN_PASSWORD_MAX + 2).rstrip("\r\n")
        if not typed:
            raise Refused("no password on standard input (--password-stdin reads its first "
                          "line): nothing was changed")
        if len(typed) > TECHNICIAN_PASSWORD_MAX:
            raise Refused(f"the first line of standard input is longer than a password can "
                          f"be ({TECHNICIAN_PASSWORD_MAX:,} characters): nothing was changed")
        password = Secret(typed)
    else:
        password = Secret(_ask("Password: ", secret=True))
    return asyncio.run(_store_login(url, name, password))


async def _store_login(url: str, name: str, password: Secret) -> int:
    client = RelayClient(url)
    try:
        await client.login(name, password)
    except RelayError as exc:
        raise Refused(explain(exc).text) from None
    finally:
        await client.aclose()
    config = ConsoleConfig.load()
    config.relay_url, config.login, config.token = url, name, client.token
    config.save()
    print(f"logged in to {config.relay_url} as {name}; token stored in {config.path}")
    return 0


def _session_key(path: str | None) -> str | None:
    """The public key of --session-key, one OpenSSH line; SystemExit with a sentence."""
    if path is None:
        return None
    try:
        key = asyncssh.import_public_key(Path(path).expanduser().read_bytes())
    except OSError as exc:
        raise SystemExit(f"adhoc-console: cannot read {path}: {exc.strerror or exc}") from None
    except (asyncssh.KeyImportError, ValueError):
        raise SystemExit(f"adhoc-console: {path} is not an SSH public key: give the .pub "
                         "file (ssh-keygen -t ed25519 makes one)") from None
    return key.export_public_key("openssh").decode().strip()


def _embedded_notice(embedded) -> str:
    if embedded.attached:
        return (f"Using the bundled relay that another console (process {embedded.owner_pid}) "
                f"runs at {embedded.base_url}; when that console quits, this one runs it.")
    notice = f"Running the bundled relay at {embedded.base_url} (data in {embedded_data_dir()})."
    if urlsplit(embedded.base_url).hostname in ("127.0.0.1", "localhost", "::1"):
        notice += (" Only this computer can join its links: to let a customer's computer in, "
                   "start with --listen ADDRESS:PORT (this computer's address on their "
                   "network) and, behind NAT, --public-url.")
    return notice  # a first run's password is shown in its own dialog (FirstRunModal)


async def _run(args: argparse.Namespace, config: ConsoleConfig) -> int:
    session_key = _session_key(args.session_key)
    embedded = None
    first_run = notice = None
    url = relay_url(args.relay) if args.relay else config.relay_url
    if url is None:
        from tui.embedded import EmbeddedError, start_embedded

        listen = args.listen or config.listen
        public_url = args.public_url or config.public_url
        try:
            public_url = parse_public_url(public_url) if public_url else None
        except ValueError as exc:
            raise Refused(f"--public-url (or public_url in console.toml): {exc}") from None
        try:
            embedded = await start_embedded(
                parse_hostport(listen) if listen else None, public_url)
        except (EmbeddedError, ValueError) as exc:
            raise Refused(str(exc)) from None
        except OSError as exc:
            raise Refused(f"cannot start the bundled relay ({exc.strerror or exc}); check "
                          f"that {embedded_data_dir()} is writable, or log in to a relay "
                          f"with {PROG} login URL") from None
        url, token, login = embedded.base_url, embedded.token, embedded.login
        first_run = embedded.first_run_password
        notice = _embedded_notice(embedded)
    else:
        if args.listen or args.public_url:
            raise Refused(f"--listen and --public-url are for the bundled relay, not for {url}",
                          status=2)
        if not config.token or url != config.relay_url:
            raise Refused(f"not logged in to {url}: run `{PROG} login {url}` first")
        token, login = config.token, config.login or ""
    client = RelayClient(url, token, session_key=session_key)
    try:
        if embedded is None:
            try:
                await client.me()
            except RelayError as exc:
                raise Refused(explain(exc).text) from None
        app = ConsoleApp(client, login, notice=notice, keymap=config.keymap,
                         runs_relay=embedded is not None and not embedded.attached,
                         first_run_password=first_run,
                         take_over=embedded.take_over if embedded and embedded.attached
                         else None)
        await app.run_async()
        if app.return_code:
            return app.return_code
    finally:
        await client.aclose()
        if embedded is not None:
            await embedded.stop()
    return 0


async def _relay_for_ssh_config(args: argparse.Namespace, config: ConsoleConfig
                                ) -> tuple[str, Secret, str | None] | None:
    """(URL, token, login) of the relay to ask: the one logged in to, else the bundled relay
    a console runs now; None when neither (the message is printed)."""
    url = args.relay or config.relay_url
    if url is not None and config.token and url.rstrip("/") == config.relay_url:
        return url, config.token, config.login
    if args.relay is None:
        from tui.embedded import EmbeddedError, running_embedded

        try:
            embedded = await running_embedded()
        except EmbeddedError as exc:
            print(f"adhoc-console: {exc}", file=sys.stderr)
            return None
        if embedded is not None:
            return embedded.base_url, embedded.token, embedded.login
    print("adhoc-console: ssh-config needs a relay: start `adhoc-console` (its bundled relay "
          "runs while it does) and run this again in another terminal, or log in to a relay "
          "of your own with `adhoc-console login URL`", file=sys.stderr)
    return None


async def _ssh_config(args: argparse.Namespace, config: ConsoleConfig) -> int:
    found = await _relay_for_ssh_config(args, config)
    if found is None:
        return 2
    url, token, login = found
    client = RelayClient(url, token)
    try:
        me, info, body = await client.me(), await client.relay_info(), await client.sessions()
    except RelayError as exc:
        print(f"adhoc-console: {explain(exc).text}", file=sys.stderr)
        return 1
    finally:
        await client.aclose()
    try:
        relay = sshconfig.relay_from(info, me.get("login") or login or "", url)
        chosen, notes = sshconfig.entries(body["sessions"])
    except sshconfig.ConfigError as exc:
        print(f"adhoc-console: {exc}", file=sys.stderr)
        return 1
    if args.session:
        wanted = [e for e in chosen if args.session in (e.session_id, e.customer, e.alias)]
        if not wanted:
            print(f"adhoc-console: no active session {args.session!r}: `adhoc-console "
                  "ssh-config` lists every one", file=sys.stderr)
            return 1
    else:
        wanted = chosen
    if args.write:
        try:
            done = sshconfig.write(relay, chosen, notes)
        except sshconfig.ConfigError as exc:
            print(f"adhoc-console: {exc}", file=sys.stderr)
            return 1
        for line in done:
            print(line)
        for entry in wanted:
            print(f"ssh {entry.alias or entry.session_id}    # {entry.customer}")
        return 0
    known = Path.home() / ".ssh" / "adhoc" / "known_hosts"
    print(sshconfig.render(relay, wanted, [] if args.session else notes, known), end="")
    print(f"\n# Keys to pin in {known} (--write does it):")
    for line in sshconfig.known_hosts_lines(relay, wanted).splitlines():
        print(f"#   {line}")
    return 0


def main(argv: list[str] | None = None) -> int:
    Parser.argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(Parser.argv)
    try:
        if args.command == "login":
            return _login(args)
        config = ConsoleConfig.load()
        if args.command == "ssh-config":
            return asyncio.run(_ssh_config(args, config))
        if args.command == "tunnel":
            from tui.tunnel import run

            url = relay_url(args.url) if args.url else config.relay_url
            if not url:
                raise Refused("name the relay's URL (or log in to one first)", status=2)
            return asyncio.run(run(url, websocket_only=args.websocket, verbose=args.verbose))
        if args.command == "logout":
            config.relay_url = config.login = config.token = None
            config.save()
            print("logged out")
            return 0
        tune_process()
        return asyncio.run(_run(args, config))
    except Refused as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        print(f"{PROG}: stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
