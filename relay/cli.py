"""adhoc-relay: initialise, serve, and administer companies and technicians from the shell.

The servers (uvicorn, FastAPI, asyncssh) are imported only by the commands that need them, so
the admin commands start quickly.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from common.passwords import hash_password, technician_password_problem
from common.secret import Secret
from common.transport import tune_process
from relay import wheelhouse
from relay.config import (
    RelaySettings,
    default_data_dir,
    parse_duration,
    parse_hostport,
    parse_public_url,
    parse_rate,
)
from relay.db.engine import DatabaseUnavailable
from relay.db.url import SQLITE, backend, describe, parse_database_url
from relay.service import check_email, check_login_name
from relay.sessions import Plan
from relay.store import Conflict, NotFound, Store


class UsageError(Exception):
    """A mistake in what the operator typed; printed as one line, exit status 2."""


def _plan(value: str) -> str:
    try:
        return Plan(value.lower()).value
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"unknown plan {value!r}: choose trial, base, plus or premier") from None


def _seats(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 100000:
        raise argparse.ArgumentTypeError(
            f"seats must be a whole number from 1 to 100000, not {value!r} (to stop a "
            "company, use `company disable`)")
    return int(value)


def _duration(value: str):
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _rate(value: str):
    try:
        return parse_rate(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _smtp(value: str) -> str:
    from relay.mailer import SmtpTarget

    try:
        SmtpTarget.parse(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def _mail_from(value: str) -> str:
    from email.utils import parseaddr

    if "@" not in parseaddr(value)[1]:
        raise argparse.ArgumentTypeError(f"{value!r} has no email address: use the form "
                                         "'Name <adhoc@example.com>'")
    return value


def _attempts(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 100:
        raise argparse.ArgumentTypeError(f"attempts must be a whole number from 1 to 100, "
                                         f"not {value!r}")
    return int(value)


def _proxy(value: str) -> str:
    import ipaddress

    try:
        return str(ipaddress.ip_network(value.strip(), strict=False))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an IP address or network: use e.g. "
                                         "127.0.0.1 or 10.0.0.0/8") from None


def _database(value: str):
    # ArgumentTypeError: argparse then shows only this message, never the URL (and its password).
    try:
        return parse_database_url(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _hostport(value: str):
    try:
        return parse_hostport(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _public_url(value: str):
    try:
        return parse_public_url(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _ssh_listen(value: str):
    """--ssh HOST:PORT, or `off` for SSH over WebSocket on the HTTP listener only."""
    if value.strip().lower() == "off":
        return None
    return _hostport(value)


def _workers(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 256:
        raise argparse.ArgumentTypeError(f"cannot run {value!r} workers: give a number from 1 "
                                         "to 256, e.g. the number of cores")
    return int(value)


def _node_name(value: str) -> str:
    """--node NAME: printable, no spaces, at most 100 characters."""
    if not value or len(value) > 100 or not value.isprintable() or " " in value:
        raise argparse.ArgumentTypeError(
            f"cannot use {value[:100]!r} as a node name: give 1-100 printable characters "
            "without spaces, e.g. relay-2")
    return value


def _metrics_address(value: str):
    """--metrics HOST:PORT, or PORT alone for loopback."""
    return _hostport(value if ":" in value else f"127.0.0.1:{value}")


def build_parser() -> argparse.ArgumentParser:
    data_dir_help = (f"where the relay keeps its database and keys "
                     f"(default {default_data_dir()})")
    database_help = ("postgresql://USER:PASSWORD@HOST:PORT/NAME (several relays may share it) or "
                     "sqlite:////path/relay.db; default: relay.db in the data dir, or "
                     "$ADHOC_DATABASE (which keeps a password out of the process list)")
    parser = argparse.ArgumentParser(prog="adhoc-relay", description=__doc__)
    parser.add_argument("--data-dir", type=Path, default=None, help=data_dir_help)
    parser.add_argument("--database", metavar="URL", type=_database, default=None,
                        help=database_help)
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    # --data-dir is understood after the command too (`adhoc-relay init --data-dir X`).
    after = argparse.ArgumentParser(add_help=False)
    after.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS, help=data_dir_help)
    after.add_argument("--database", metavar="URL", type=_database, default=argparse.SUPPRESS,
                       help=database_help)
    sub = _Subcommands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"),
                       after)

    sub.add_parser("init", help="create the database, SSH host key and secret key")
    wheelhouse.add_command(sub)

    serve = sub.add_parser("serve", help="run the relay (HTTP API and SSH endpoint)")
    serve.add_argument("--http", type=_hostport, default=("127.0.0.1", 8780),
                       metavar="HOST:PORT", help="HTTP API address (default 127.0.0.1:8780)")
    serve.add_argument("--ssh", type=_ssh_listen, default=("127.0.0.1", 8722),
                       metavar="HOST:PORT|off",
                       help="SSH endpoint address (default 127.0.0.1:8722); `off`: SSH only "
                            "over WebSocket on the HTTP listener (one public port)")
    serve.add_argument("--public-url", type=_public_url,
                       help="the URL customers and consoles use to reach the HTTP API "
                            "(default: http://<--http>)")
    serve.add_argument("--ssh-public", metavar="HOST:PORT",
                       help="the SSH address agents and technicians dial (default: --ssh)")
    serve.add_argument("--session-lifetime", type=_duration, default=parse_duration("24h"),
                       help="how long a session lasts after activation (default 24h)")
    serve.add_argument("--invite-ttl", type=_duration, default=parse_duration("30m"),
                       help="how long an invitation link can be activated (default 30m)")
    serve.add_argument("--smtp", metavar="URL", type=_smtp,
                       help="smtp://user:pass@host:port or smtps://...; without it invitations "
                            "go to the outbox in the data dir")
    serve.add_argument("--mail-from", default="Adhoc <adhoc@localhost>", type=_mail_from,
                       help="the From: of invitation emails")
    serve.add_argument("--mail-attempts", type=_attempts, default=5,
                       help="how many times an invitation is tried before it is marked failed "
                            "(default 5)")
    serve.add_argument("--mail-retry-delay", type=_duration, default=parse_duration("2s"),
                       help="the first retry waits up to this long, doubling each time "
                            "(default 2s)")
    serve.add_argument("--login-rate", type=_rate, default=parse_rate("20/1m"),
                       metavar="COUNT/DURATION",
                       help="failed logins allowed per source address (default 20/1m)")
    serve.add_argument("--activate-rate", type=_rate, default=parse_rate("20/1m"),
                       metavar="COUNT/DURATION",
                       help="activation attempts allowed per source address (default 20/1m)")
    serve.add_argument("--trusted-proxy", type=_proxy, action="append", default=[],
                       metavar="ADDR",
                       help="a reverse proxy (address or network) whose X-Forwarded-For the "
                            "relay believes; repeatable. Without it no proxy header is trusted")
    serve.add_argument("--tls-cert", type=Path, metavar="FILE",
                       help="serve HTTPS itself with this PEM certificate chain (with "
                            "--tls-key), for a relay without a TLS reverse proxy")
    serve.add_argument("--tls-key", type=Path, metavar="FILE",
                       help="the private key of --tls-cert (PEM)")
    serve.add_argument("--pin-certificate", type=Path, metavar="FILE",
                       help="name this certificate's public key in join links, so agents "
                            "accept no other (the certificate your TLS proxy serves, or "
                            "--tls-cert's); keep the key when renewing it")
    serve.add_argument("--workers", type=_workers, default=1, metavar="N",
                       help="run N relay processes sharing the ports and the database, one "
                            "per core (default 1); see docs/ADMIN.md")
    serve.add_argument("--node", metavar="NAME", type=_node_name,
                       help="this relay's name in the cluster (default: host name and SSH "
                            "port); see docs/ADMIN.md")
    serve.add_argument("--peer-address", type=_hostport, metavar="HOST:PORT",
                       help="where the other relays of the cluster reach this one (default: "
                            "its SSH address)")
    serve.add_argument("--metrics", type=_metrics_address, metavar="[HOST:]PORT",
                       help="serve /metrics (Prometheus), /healthz and /readyz on a listener "
                            "of their own (loopback unless HOST is given); default off")

    sub.add_parser("nodes", help="list the relays of the cluster on this database")
    drain = sub.add_parser("drain", help="make a relay stop accepting, move its agents to the "
                                         "others, and stop")
    drain.add_argument("node", help="its node name (see `adhoc-relay nodes`); a machine's "
                                    "name drains all its workers")
    drain.add_argument("--wait", type=_duration, default=parse_duration("180s"),
                       help="how long to wait for it to stop (default 180s)")
    drain.add_argument("--no-wait", action="store_true", help="ask, and return at once")

    company = _Subcommands(sub.add_parser("company", help="manage companies").add_subparsers(
        dest="action", required=True, metavar="ACTION"), after)
    add = company.add_parser("add", help="add a company")
    add.add_argument("name")
    add.add_argument("--plan", type=_plan, required=True, help="trial, base, plus or premier")
    add.add_argument("--seats", type=_seats, required=True)
    company.add_parser("list", help="list companies")
    for action, helptext in (("set-plan", "change the plan"), ("set-seats", "change the seats"),
                             ("disable", "disable the company"), ("enable", "enable it again")):
        p = company.add_parser(action, help=helptext)
        p.add_argument("name")
        if action == "set-plan":
            p.add_argument("plan", type=_plan)
        if action == "set-seats":
            p.add_argument("seats", type=_seats)

    tech = _Subcommands(sub.add_parser("technician", help="manage technicians").add_subparsers(
        dest="action", required=True, metavar="ACTION"), after)
    add = tech.add_parser("add", help="add a technician")
    add.add_argument("login", help="login name, also the SSH user name ([a-z0-9._-]+)")
    add.add_argument("--email", required=True)
    add.add_argument("--company", required=True)
    add.add_argument("--admin", action="store_true", help="may administer the company")
    add.add_argument("--password-stdin", action="store_true",
                     help="read the password from standard input (else asked for)")
    add.add_argument("--ssh-key", type=Path, action="append", default=[],
                     help="an OpenSSH public key file for `ssh -J` (repeatable)")
    lst = tech.add_parser("list", help="list technicians")
    lst.add_argument("--company")
    for action, helptext in (("disable", "disable a technician and revoke their logins"),
                             ("enable", "enable a technician again"),
                             ("reset-password", "set a new password and revoke their logins"),
                             ("add-key", "register an SSH public key")):
        p = tech.add_parser(action, help=helptext)
        p.add_argument("login")
        if action == "reset-password":
            p.add_argument("--password-stdin", action="store_true")
        if action == "add-key":
            p.add_argument("key_file", type=Path)
    return parser


class _Subcommands:
    """argparse sub-commands that all take the options of `parent` (after the command)."""

    def __init__(self, action, parent: argparse.ArgumentParser) -> None:
        self._action = action
        self._parent = parent

    def add_parser(self, name: str, **kwargs) -> argparse.ArgumentParser:
        return self._action.add_parser(name, parents=[self._parent], **kwargs)


def _read_password(from_stdin: bool) -> Secret:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        if not sys.stdin.isatty():
            raise UsageError("no terminal to ask for the password on: send it on standard "
                             "input with --password-stdin")
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise UsageError("the passwords differ: run the command again")
    problem = technician_password_problem(password)
    if problem:
        raise UsageError(f"{problem}, then run the command again")
    return Secret(password)


def _read_public_key(path: Path) -> str:
    from relay.sshkeys import read_public_key

    try:
        return read_public_key(path.read_bytes())
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise UsageError(f"{path}: {exc}") from None


def _require_database(settings: RelaySettings) -> None:
    """Admin commands work on an initialised relay: a mistyped data dir must not get a new
    database of its own. (A PostgreSQL database is created by its administrator.)"""
    url = settings.database_url
    if backend(url) == SQLITE and not Path(url.database or "").exists():
        where = f"in {settings.data_dir}" if settings.database is None else f"at {url.database}"
        raise UsageError(f"no relay database {where}: run `adhoc-relay --data-dir "
                         f"{settings.data_dir} init` first")


async def _admin(settings: RelaySettings, args: argparse.Namespace) -> int:
    store = await Store.open(settings.database_url)
    now = time.time()
    try:
        if args.command == "company":
            return await _company(store, args, now)
        if args.command in ("nodes", "drain"):
            return await _cluster(store, args, now)
        return await _technician(store, args, now)
    except (NotFound, Conflict) as exc:
        raise UsageError(str(exc)) from None
    finally:
        await store.close()


async def _cluster(store: Store, args: argparse.Namespace, now: float) -> int:
    """`adhoc-relay nodes` and `adhoc-relay drain NODE` (docs/ADMIN.md, the cluster)."""
    from relay.cluster.nodes import NODE_STALE
    if args.command == "nodes":
        nodes = await store.all_nodes()
        if not nodes:
            print("no relay is running on this database")
        for node in nodes:
            state = "draining" if node.draining else \
                ("running" if now - node.seen_at < NODE_STALE else
                 "not seen lately: dead? (`adhoc-relay drain` it to forget it)")
            print(f"{node.name}\t{state}\tpeers {node.peer_address}\tssh "
                  f"{node.ssh_address or 'off'}\t{node.http_url}")
        return 0
    named = [n for n in await store.all_nodes()
             if n.name == args.node or n.name.startswith(f"{args.node}/w")]
    if named and all(now - n.seen_at >= NODE_STALE for n in named):
        for node in named:  # dead (killed, crashed): nothing to drain, only a row to forget
            await store.leave_cluster(node.name)
        print(f"{args.node}: not running (not seen for {now - max(n.seen_at for n in named):.0f}"
              " s): removed from the cluster's list")
        return 0
    asked = await store.drain_node(args.node)
    if not asked:
        raise UsageError(f"no relay named {args.node!r} runs on this database: "
                         "`adhoc-relay nodes` lists them")
    print(f"{args.node}: draining ({asked} relay process(es)): no new connections, its agents "
          "move to the other relays")
    if args.no_wait:
        return 0
    deadline = time.monotonic() + args.wait.total_seconds()
    while await store.nodes_named(args.node):
        if time.monotonic() > deadline:
            print(f"adhoc-relay: {args.node} is still draining after "
                  f"{args.wait.total_seconds():.0f} s: see its log, or stop it with SIGTERM",
                  file=sys.stderr)
            return 1
        await asyncio.sleep(0.2)
    print(f"{args.node}: drained and stopped")
    return 0


async def _company(store: Store, args: argparse.Namespace, now: float) -> int:
    if args.action == "add":
        company = await store.add_company(args.name, args.plan, args.seats, now)
        print(f"company {company.name!r} added: plan {company.plan}, {company.seats} seats")
    elif args.action == "list":
        companies = await store.companies()
        if not companies:
            print("no companies yet: add one with `adhoc-relay company add NAME --plan PLAN "
                  "--seats N`")
        for c in companies:
            state = " (disabled)" if c.disabled else ""
            print(f"{c.name}\t{c.plan}\t{c.seats} seats{state}")
    else:
        company = await store.company_by_name(args.name)
        changes = {"set-plan": lambda: {"plan": args.plan},
                   "set-seats": lambda: {"seats": args.seats},
                   "disable": lambda: {"disabled": 1},
                   "enable": lambda: {"disabled": 0}}[args.action]()
        await store.update_company(company.id, now, "admin", **changes)
        print(f"company {company.name!r}: {args.action} done")
    return 0


async def _technician(store: Store, args: argparse.Namespace, now: float) -> int:
    if args.action == "add":
        email = check_email(args.email)
        company = await store.company_by_name(args.company)
        keys = args.keys
        tech = await store.add_technician(company.id, args.login, email,
                                          await asyncio.to_thread(hash_password,
                                                                  args.password.reveal()),
                                          args.admin, now)
        for key in keys:
            await store.add_ssh_key(tech.id, key, now)
        print(f"technician {tech.login!r} added to {company.name!r}"
              + (f" with {len(keys)} SSH key(s)" if keys else ""))
    elif args.action == "list":
        company_id = (await store.company_by_name(args.company)).id if args.company else None
        names = {c.id: c.name for c in await store.companies()}
        technicians = await store.technicians(company_id)
        if not technicians:
            print("no technicians yet: add one with `adhoc-relay technician add LOGIN --email "
                  "E --company C`")
            return 0
        print("LOGIN\tEMAIL\tCOMPANY\tFLAGS")
        for t in technicians:
            flags = ",".join(f for f, on in (("admin", t.is_admin), ("disabled", t.disabled))
                             if on)
            print(f"{t.login}\t{t.email}\t{names.get(t.company_id, '?')}\t{flags}")
    else:
        tech = await store.technician_by_login(args.login)
        if args.action == "add-key":
            await store.add_ssh_key(tech.id, _read_public_key(args.key_file), now)
        elif args.action == "reset-password":
            await store.update_technician(tech.id, now, "admin", password_hash=await
                                          asyncio.to_thread(hash_password,
                                                            args.password.reveal()))
        else:
            await store.update_technician(tech.id, now, "admin",
                                          disabled=int(args.action == "disable"))
        print(f"technician {tech.login!r}: {args.action} done")
    return 0


def settings_from_args(args: argparse.Namespace) -> RelaySettings:
    settings = RelaySettings()
    if args.data_dir is not None:
        settings.data_dir = args.data_dir.expanduser().resolve()
    settings.database = args.database
    if settings.database is None and os.environ.get("ADHOC_DATABASE", "").strip():
        try:
            settings.database = parse_database_url(os.environ["ADHOC_DATABASE"])
        except ValueError as exc:
            raise UsageError(f"ADHOC_DATABASE: {exc}") from None
    if args.command == "serve":
        settings.http_host, settings.http_port = args.http
        if args.ssh is None:
            settings.ssh_listen = False
        else:
            settings.ssh_host, settings.ssh_port = args.ssh
        settings.tls_cert, settings.tls_key = args.tls_cert, args.tls_key
        settings.pin_certificate = args.pin_certificate
        if args.metrics is not None:
            settings.metrics_host, settings.metrics_port = args.metrics
        settings.public_url = args.public_url
        settings.ssh_public = args.ssh_public
        settings.session_lifetime = args.session_lifetime
        settings.invite_ttl = args.invite_ttl
        settings.smtp_url = args.smtp
        settings.mail_from = args.mail_from
        settings.mail_attempts = args.mail_attempts
        settings.mail_retry_delay = args.mail_retry_delay
        settings.login_rate = args.login_rate
        settings.activate_rate = args.activate_rate
        settings.trusted_proxies = tuple(args.trusted_proxy)
        settings.node = args.node
        settings.peer_address = args.peer_address
    return settings


async def _serve(settings: RelaySettings, ready: Callable[[], object] | None = None) -> int:
    from relay.collector import freeze_startup
    from relay.server import RelayServer

    server = RelayServer(settings)
    service = await server.start()
    freeze_startup()
    if ready is not None:  # a worker: its parent says when all are ready
        ready()
    else:
        # One parseable line for scripts and tests that start the relay on port 0.
        metrics = f" metrics={settings.metrics_host}:{server.metrics_port}" \
            if server.metrics_port else ""
        print(f"adhoc-relay ready http={service.base_url} ssh={service.ssh_address or 'off'}"
              f"{metrics} node={service.cluster.name if service.cluster else '-'}", flush=True)
    # SIGTERM stops the relay cleanly: it leaves the cluster and its agents move at once.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, server.finished.set)
    try:
        await server.finished.wait()
    finally:
        await server.stop()
    if server.drained:
        print("adhoc-relay: drained; stopped", file=sys.stderr, flush=True)
        return DRAINED if ready is not None else 0
    return 0


# The exit status of a worker that drained: its parent does not start it again.
DRAINED = 3


def _serve_worker(settings: RelaySettings, ready: Callable[[], object]) -> int:
    from relay.server import StartError

    try:
        return asyncio.run(_serve(settings, ready))
    except StartError as exc:
        print(f"adhoc-relay: {exc}", file=sys.stderr)
        return 1


def _serve_workers(settings: RelaySettings, count: int) -> int:
    """`serve --workers N` (relay/cluster/workers.py)."""
    from relay.cluster.workers import Supervisor, reserve_ports

    if settings.metrics_port is not None:
        raise UsageError("--metrics cannot be shared by workers: run one relay per metrics "
                         "port (without --workers), or scrape the workers' nodes by hand")
    held = reserve_ports(settings)
    supervisor = Supervisor(settings, count, _serve_worker, drained_status=DRAINED)
    try:
        supervisor.start()
    except RuntimeError as exc:
        print(f"adhoc-relay: {exc}", file=sys.stderr)
        return 1
    http, ssh = supervisor.addresses()
    print(f"adhoc-relay ready http={http} ssh={ssh} workers={count}", flush=True)
    try:
        return supervisor.supervise()
    finally:
        for sock in held:
            sock.close()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.database is not None and args.database.password:
        print("adhoc-relay: warning: the database password on the command line can be read by "
              "every local user in the process list: set ADHOC_DATABASE or use ~/.pgpass",
              file=sys.stderr)
    try:
        settings = settings_from_args(args)
        if args.command == "wheelhouse":
            return wheelhouse.run(settings.data_dir, args)
        if args.command == "init":
            from relay.server import initialise

            asyncio.run(initialise(settings))
            print(f"relay initialised in {settings.data_dir}, database "
                  f"{describe(settings.database_url)}")
            return 0
        if args.command == "serve":
            from relay.server import StartError

            tune_process()
            if args.workers > 1:
                return _serve_workers(settings, args.workers)
            try:
                return asyncio.run(_serve(settings))
            except KeyboardInterrupt:
                return 0
            except StartError as exc:
                print(f"adhoc-relay: {exc}", file=sys.stderr)
                return 1
        _require_database(settings)
        if args.command == "technician" and args.action in ("add", "reset-password"):
            # Asked before the event loop starts, so Ctrl+C at the prompt stops at once.
            if args.action == "add":
                try:
                    check_login_name(args.login)
                    check_email(args.email)
                except ValueError as exc:
                    raise UsageError(str(exc)) from None
                args.keys = [_read_public_key(p) for p in args.ssh_key]
            args.password = _read_password(args.password_stdin)
        return asyncio.run(_admin(settings, args))
    except UsageError as exc:
        print(f"adhoc-relay: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nadhoc-relay: cancelled; nothing was changed", file=sys.stderr)
        return 130
    except EOFError:
        print("\nadhoc-relay: no input (end of file at the prompt); nothing was changed",
              file=sys.stderr)
        return 2
    except DatabaseUnavailable as exc:
        print(f"adhoc-relay: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"adhoc-relay: {exc.strerror or exc}: check the address and the data dir "
              "permissions", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
