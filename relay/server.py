"""Running a relay: open the data dir, sweep expiry, then serve HTTP and SSH in one event loop.

Used by `adhoc-relay serve` and, in-process, by the console's embedded default.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import secrets
import socket
import ssl
from pathlib import Path

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from common.tls import spki_pin
from relay.api import create_app
from relay.cluster.nodes import ClusterNode, default_node_name
from relay.cluster.peers import Peers, load_or_create_cluster_key
from relay.collector import Collector
from relay.config import RelaySettings, format_hostport
from relay.db.url import without_password
from relay.listeners import listening_socket
from relay.mailer import Mailer
from relay.metrics import RelayMetrics, add_health_routes, metrics_app
from relay.openfiles import quiet_accept_failures, raise_open_file_limit
from relay.service import RelayService
from relay.sshd import SSHEntrance, load_or_create_host_key, start_ssh_server
from relay.store import Store
from relay.websocket import add_route

log = logging.getLogger("adhoc.relay")

# Seconds a client has to send a request's headers (see _HeaderDeadline).
HEADER_TIMEOUT = float(os.environ.get("ADHOC_RELAY_HEADER_TIMEOUT", "10"))
# The largest WebSocket message the relay takes: Adhoc's clients send SSH in pieces of at most
# 256 KiB (common/wsbridge.py); uvicorn's default of 16 MiB would let each connection make the
# relay hold that much.
WS_MAX_MESSAGE = 1024 * 1024
# Seconds /readyz waits for the database before it says it is not ready.
READY_TIMEOUT = 2.0
DATABASE_UNAVAILABLE = "database unavailable"  # all /readyz says of any database failure
# Draining (`adhoc-relay drain`): agents are told to move this many at a time, and the relay
# stops when all have gone or after DRAIN_TIMEOUT seconds.
DRAIN_BATCH = 200
DRAIN_TIMEOUT = float(os.environ.get("ADHOC_RELAY_DRAIN_TIMEOUT", "120"))
DISC_BY_APPLICATION = 11


def load_or_create_secret(path: Path) -> bytes:
    """The relay's HMAC key for security codes; created once, mode 0600."""
    if path.exists():
        return bytes.fromhex(path.read_text().strip())
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key.hex())
    return key


async def initialise(settings: RelaySettings) -> None:
    """`adhoc-relay init`: database, SSH host key and secret key; idempotent."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings.data_dir.chmod(0o700)
    store = await Store.open(settings.database_url)
    await store.close()
    load_or_create_host_key(settings.host_key_path)
    load_or_create_secret(settings.secret_key_path)
    load_or_create_cluster_key(settings.cluster_key_path)


class _RequestsCutAtStop(logging.Filter):
    """Stopping the relay cancels the requests still being served (event streams above all);
    uvicorn logs each as "Exception in ASGI application" with a traceback. Expected, so not
    logged: an operator's log shows tracebacks only for what went wrong."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, asyncio.CancelledError)


logging.getLogger("uvicorn.error").addFilter(_RequestsCutAtStop())


class _QuietUvicorn(uvicorn.Server):
    """uvicorn without its signal handlers: the process (or the console) owns signals."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield

    def install_signal_handlers(self) -> None:  # older uvicorn
        pass


class _HeaderDeadline(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline for each request's headers.

    uvicorn times out idle keep-alive connections but never one whose headers are still
    coming: a client sending a byte now and then could hold a connection forever. From the
    connection's start, or from the first byte of each next request, its headers must be
    complete within HEADER_TIMEOUT seconds or the connection is closed."""

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self._arm()

    def _arm(self) -> None:
        self._header_timer = self.loop.call_later(HEADER_TIMEOUT, self._headers_too_slow)

    def _between_requests(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def data_received(self, data: bytes) -> None:
        if self._header_timer is None and self._between_requests():
            self._arm()  # the first bytes of the next request
        super().data_received(data)
        if self._header_timer is not None and not self._between_requests():
            self._header_timer.cancel()  # its headers are in: the request is being served
            self._header_timer = None

    def handle_websocket_upgrade(self, event) -> None:
        # From here the connection is a WebSocket's (SSH over it may idle for minutes), and
        # this protocol never hears from it again: its header deadline must not close it.
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().handle_websocket_upgrade(event)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().connection_lost(exc)

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self._between_requests() and not self.transport.is_closing():
            self.transport.close()


class StartError(Exception):
    """The relay cannot start as configured; the message says why and what to do. A listener
    that could not listen is named (`listener`, "HTTP" or "SSH", and the OSError's `errno`),
    for a program that starts the relay with options of its own to say it in its words."""

    def __init__(self, message: str, *, listener: str | None = None,
                 errno: int | None = None) -> None:
        super().__init__(message)
        self.listener = listener
        self.errno = errno


def listen_problem(errno_: int | None) -> str:
    """Why a listener could not listen, in words (what to change is the caller's to say)."""
    if errno_ == errno.EADDRINUSE:
        return "the address is already in use (another relay or program listens there)"
    if errno_ == errno.EADDRNOTAVAIL:
        return "this computer has no such address"
    if errno_ == errno.EACCES:
        return "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
    return os.strerror(errno_) if errno_ else "it failed"


def _listen_error(what: str, host: str, port: int, flag: str, exc: OSError) -> StartError:
    where = format_hostport(host, port)
    if exc.errno == errno.EADDRINUSE:
        todo = f"stop it, or choose another port with {flag}"
    elif exc.errno == errno.EADDRNOTAVAIL:
        todo = f"choose one of its own with {flag}"
    elif exc.errno == errno.EACCES:
        todo = f"choose a port above 1023 with {flag}"
    else:
        todo = f"check {flag}"
    problem = listen_problem(exc.errno) if exc.errno else str(exc)
    return StartError(f"cannot listen for {what} on {where}: {problem}: {todo}",
                      listener=what, errno=exc.errno)


def _check_tls(settings: RelaySettings) -> None:
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise StartError("give both --tls-cert and --tls-key (the certificate chain and its "
                         "private key), or neither")
    if settings.tls_cert:
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                str(settings.tls_cert), str(settings.tls_key))
        except (OSError, ssl.SSLError) as exc:
            raise StartError(f"cannot use the TLS certificate {settings.tls_cert} with key "
                             f"{settings.tls_key}: {getattr(exc, 'strerror', None) or exc}; "
                             "give PEM files that belong together") from None


def _certificate_pin(settings: RelaySettings) -> str | None:
    if settings.pin_certificate is None:
        return None
    try:
        return spki_pin(settings.pin_certificate.read_bytes())
    except (OSError, ValueError) as exc:
        raise StartError(f"cannot read the certificate to pin, {settings.pin_certificate}: "
                         f"{getattr(exc, 'strerror', None) or exc}; give a PEM or DER "
                         "certificate file") from None


class RelayServer:
    def __init__(self, settings: RelaySettings) -> None:
        self.settings = settings
        self.service: RelayService | None = None
        self.metrics: RelayMetrics | None = None
        self._store: Store | None = None
        self._servers: list[_QuietUvicorn] = []
        self._ssh: SSHEntrance | None = None
        self._peer_ssh: SSHEntrance | None = None  # the node's own peer listener, if any
        self.node: ClusterNode | None = None
        # Set when the relay should stop: SIGTERM, or a drain that is done.
        self.finished = asyncio.Event()
        self.drained = False
        self._serving: list[asyncio.Task] = []  # the HTTP servers'
        self._tasks: list[asyncio.Task] = []  # background work, cancelled at stop
        self.collector: Collector | None = None
        self.metrics_port: int | None = None
        self._database_problem: str | None = None  # what readiness last logged of it

    @property
    def http_port(self) -> int:
        assert self.service and self.service.http_port
        return self.service.http_port

    @property
    def ssh_port(self) -> int:
        assert self.service and self.service.ssh_port
        return self.service.ssh_port

    async def start(self) -> RelayService:
        """Start serving; on any failure everything begun is stopped again (a half-started
        relay would keep the process alive) and the error raised."""
        try:
            return await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> RelayService:
        settings = self.settings
        _check_tls(settings)
        pin = _certificate_pin(settings)
        raise_open_file_limit()
        quiet_accept_failures(asyncio.get_running_loop())
        await initialise(settings)
        self._store = store = await Store.open(settings.database_url)
        host_key = load_or_create_host_key(settings.host_key_path)
        secret = load_or_create_secret(settings.secret_key_path)
        mailer = Mailer(settings.smtp_url, settings.outbox_dir, settings.mail_from,
                        attempts=settings.mail_attempts,
                        base_delay=settings.mail_retry_delay.total_seconds())
        service = RelayService(settings, store, secret,
                               host_key.export_public_key("openssh").decode().strip(),
                               mailer=mailer)
        service.certificate_pin = pin
        self.service = service
        await service.prepare()
        # Sessions that expired while the relay was down end before anything is accepted.
        ended = await service.expire_due()
        if ended:
            log.info("ended %d sessions that expired while the relay was down", len(ended))
        # Their agents are about to reconnect all at once: one read instead of one each.
        await store.load_agent_credentials()

        try:
            self._ssh = await start_ssh_server(service, settings.ssh_host, settings.ssh_port,
                                               host_key, listen=settings.ssh_listen,
                                               reuse_port=settings.reuse_port,
                                               sock=settings.ssh_socket)
        except OSError as exc:
            raise _listen_error("SSH", settings.ssh_host, settings.ssh_port, "--ssh",
                                exc) from None
        service.ssh_port = self._ssh.port
        try:
            sock = listening_socket(settings.http_host, settings.http_port,
                                    reuse_port=settings.reuse_port, backlog=512)
        except OSError as exc:
            raise _listen_error("HTTP", settings.http_host, settings.http_port, "--http",
                                exc) from None
        service.http_port = sock.getsockname()[1]
        self.metrics = RelayMetrics(service, self._ssh.startups)
        startups = self._ssh.startups
        self.collector = Collector(lambda: startups.in_flight + startups.waiting)
        self.collector.start()
        app = create_app(service)
        add_route(app, self._ssh)
        add_health_routes(app, self.readiness_problems)
        # Proxy headers (X-Forwarded-For) only from the proxies the operator named: otherwise
        # anyone could choose the address that rate limits and the audit see.
        trusted = list(settings.trusted_proxies)
        tls = {"ssl_certfile": str(settings.tls_cert),
               "ssl_keyfile": str(settings.tls_key)} if settings.tls_cert else {}
        await self._serve(self.metrics.middleware(app), sock, http=_HeaderDeadline,
                          proxy_headers=bool(trusted), forwarded_allow_ips=trusted or None,
                          ws_max_size=WS_MAX_MESSAGE, **tls)
        if settings.metrics_port is not None:
            try:
                metrics_sock = listening_socket(settings.metrics_host, settings.metrics_port,
                                                backlog=512)
            except OSError as exc:
                raise _listen_error("metrics", settings.metrics_host, settings.metrics_port,
                                    "--metrics", exc) from None
            self.metrics_port = metrics_sock.getsockname()[1]
            await self._serve(metrics_app(self.metrics, self.readiness_problems), metrics_sock,
                              http=_HeaderDeadline)
        service.wheels.refresh()
        if settings.prepare_wheels:
            service.wheels.start()
        await self._join_cluster(service, host_key)
        self._tasks.append(asyncio.create_task(service.run_expiry_timer()))
        self._tasks.append(asyncio.create_task(service.run_revocation_watch()))
        log.info("relay: HTTP %s, SSH %s, data %s, database %s, mail %s", service.base_url,
                 service.ssh_address or "over WebSocket only", settings.data_dir,
                 store.describe(),
                 mailer.smtp_description())
        return service

    async def _join_cluster(self, service: RelayService, host_key) -> None:
        """Become a node of the cluster on this database (a cluster of one, alone on it):
        listen for the other nodes, record this node, and follow theirs."""
        settings = self.settings
        service.cluster_key = load_or_create_cluster_key(settings.cluster_key_path)
        service.peers = Peers(service.cluster_key, service.relay_host_key)
        peer = settings.peer_address
        if peer is None and service.ssh_port is not None:
            peer_address = service.ssh_address or format_hostport(settings.ssh_host,
                                                                  service.ssh_port)
        else:
            host, port = peer or ("127.0.0.1", 0)
            try:
                self._peer_ssh = await start_ssh_server(service, host, port, host_key,
                                                        peer_only=True)
            except OSError as exc:
                raise _listen_error("the other relays", host, port, "--peer-address",
                                    exc) from None
            peer_address = format_hostport(host, self._peer_ssh.port)
        name = settings.node or default_node_name(service.ssh_port, service.http_port)
        self.node = ClusterNode(service, name, peer_address, on_drain=self._drain)
        service.cluster = self.node
        service.presence.node = name
        await self.node.join()
        self._tasks.append(asyncio.create_task(self.node.run()))

    async def _drain(self) -> None:
        """`adhoc-relay drain`: stop accepting, tell agents and consoles to move to another
        relay, and stop when none is left (or after DRAIN_TIMEOUT)."""
        service = self.service
        assert service is not None
        log.warning("relay: draining: no new connections; %d agent(s) asked to move",
                    len(service.agents))
        if self._ssh is not None:
            self._ssh.close()  # the peer listener stays: others reach our agents until they go
        for server in self._servers:
            server.should_exit = True
        why = "the relay is draining: connect to another relay of the cluster"
        links = service.agents.links()
        for start in range(0, len(links), DRAIN_BATCH):
            for link in links[start:start + DRAIN_BATCH]:
                link.conn.disconnect(DISC_BY_APPLICATION, why)
            await asyncio.sleep(0.05)  # a batch at a time: the others take them in turn
        for conn in service.connections.technicians():
            conn.disconnect(DISC_BY_APPLICATION, why)
        for _ in range(int(DRAIN_TIMEOUT * 10)):  # until they are gone, checked each 0.1 s
            if not (len(service.agents) or service.connections.technicians()):
                break
            await asyncio.sleep(0.1)
        log.warning("relay: drained (%d agent(s) left); stopping", len(service.agents))
        self.drained = True
        self.finished.set()

    async def _serve(self, app, sock: socket.socket, **options) -> None:
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=1, **options)
        server = _QuietUvicorn(config)
        self._servers.append(server)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        self._serving.append(task)
        while not server.started:
            if task.done():
                task.result()
                raise StartError("the HTTP server stopped while starting")
            await asyncio.sleep(0.01)

    async def readiness_problems(self) -> list[str]:
        """Why the relay is not ready to serve, if it is not: the database does not answer,
        or a listener is down."""
        problems = []
        if self.service is None:
            return ["starting"]
        store = self.service.store
        try:
            await asyncio.wait_for(store.last_event_id(), READY_TIMEOUT)
        except Exception as exc:  # any failure means not ready
            # Whoever probes gets a fixed sentence: an error's words can name tables, paths or
            # the database's address. The operator finds them in the log, once per change.
            problems.append(DATABASE_UNAVAILABLE)
            detail = without_password(f"{type(exc).__name__}: {exc or 'no answer'}", store.url)
            if detail != self._database_problem:
                log.warning("readiness: the database %s does not answer: %s",
                            store.describe(), detail)
            self._database_problem = detail
        else:
            if self._database_problem is not None:
                log.info("readiness: the database %s answers again", store.describe())
            self._database_problem = None
        if any(not server.started or server.should_exit for server in self._servers):
            problems.append("HTTP listener stopped")
        if self._ssh is None or self._ssh.gate.closed:
            problems.append("SSH server stopped")
        return problems

    async def stop(self) -> None:
        if self.service is not None:
            self.service.bus.close()  # consoles' event streams end (they reconnect elsewhere)
        if self.collector is not None:
            await self.collector.stop()
            self.collector = None
        for server in self._servers:
            server.should_exit = True
            server.force_exit = True
        for entrance in (self._ssh, self._peer_ssh):
            if entrance is not None:
                entrance.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(entrance.wait_closed(), 2)
        for task in self._tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.gather(*self._serving, *self._tasks,
                                                  return_exceptions=True), 3)
        if self.node is not None:
            await self.node.leave()
            self.node = None
        if self.service is not None and self.service.peers is not None:
            await self.service.peers.close()
        if self.service is not None:
            await self.service.wheels.stop()
            await self.service.close()
        if self._store is not None:
            await self._store.close()
            self._store = None

    async def serve_forever(self) -> None:
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop()
