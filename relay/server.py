"""Running a relay: open the data dir, sweep expiry, then serve HTTP and SSH in one event loop.

Used by `adhoc-relay serve` and, in-process, by the console's embedded default.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from pathlib import Path

import asyncssh
import uvicorn

from relay.api import create_app
from relay.config import RelaySettings
from relay.mailer import Mailer
from relay.service import RelayService
from relay.sshd import load_or_create_host_key, start_ssh_server
from relay.store import Store

log = logging.getLogger("adhoc.relay")

# Each agent holds one connection, so one open file. Many systems start processes with a soft
# limit of 1,024 (systemd's default for services) under a far higher hard limit: lift it.
OPEN_FILES_WANTED = 1 << 20
OPEN_FILES_ENOUGH = 16384


def raise_open_file_limit(wanted: int = OPEN_FILES_WANTED) -> int | None:
    """Lift this process's soft limit on open files as far as its hard limit allows, up to
    `wanted`; returns the limit now in force (None where there is no such limit)."""
    try:
        import resource
    except ImportError:  # not a POSIX system
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("relay: could not raise the open-file limit from %d: %s", soft, exc)
    if soft != resource.RLIM_INFINITY and soft < OPEN_FILES_ENOUGH:
        log.warning("relay: open-file limit %d holds fewer than %d agents; raise it "
                    "(LimitNOFILE= under systemd, ulimit -n otherwise)", soft, soft - 100)
    return soft


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


class _QuietUvicorn(uvicorn.Server):
    """uvicorn without its signal handlers: the process (or the console) owns signals."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield

    def install_signal_handlers(self) -> None:  # older uvicorn
        pass


class RelayServer:
    def __init__(self, settings: RelaySettings) -> None:
        self.settings = settings
        self.service: RelayService | None = None
        self._uvicorn: _QuietUvicorn | None = None
        self._ssh: asyncssh.SSHAcceptor | None = None
        self._tasks: list[asyncio.Task] = []
        self._http_socket: socket.socket | None = None

    @property
    def http_port(self) -> int:
        assert self.service and self.service.http_port
        return self.service.http_port

    @property
    def ssh_port(self) -> int:
        assert self.service and self.service.ssh_port
        return self.service.ssh_port

    async def start(self) -> RelayService:
        settings = self.settings
        raise_open_file_limit()
        await initialise(settings)
        store = await Store.open(settings.database_url)
        host_key = load_or_create_host_key(settings.host_key_path)
        secret = load_or_create_secret(settings.secret_key_path)
        mailer = Mailer(settings.smtp_url, settings.outbox_dir, settings.mail_from,
                        attempts=settings.mail_attempts,
                        base_delay=settings.mail_retry_delay.total_seconds())
        service = RelayService(settings, store, secret,
                               host_key.export_public_key("openssh").decode().strip(),
                               mailer=mailer)
        self.service = service
        await service.prepare()
        # Sessions that expired while the relay was down end before anything is accepted.
        ended = await service.expire_due()
        if ended:
            log.info("ended %d sessions that expired while the relay was down", len(ended))
        # Their agents are about to reconnect all at once: one read instead of one each.
        await store.load_agent_credentials()

        self._ssh = await start_ssh_server(service, settings.ssh_host, settings.ssh_port,
                                           host_key)
        service.ssh_port = self._ssh.sockets[0].getsockname()[1]

        family = socket.AF_INET6 if ":" in settings.http_host else socket.AF_INET
        # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted connections only when the
        # socket says it is TCP; without it every response waited ~40 ms for a delayed ACK.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((settings.http_host, settings.http_port))
        sock.listen(512)
        sock.setblocking(False)
        self._http_socket = sock
        service.http_port = sock.getsockname()[1]
        config = uvicorn.Config(create_app(service), log_level="warning", access_log=False,
                                lifespan="off", timeout_graceful_shutdown=1)
        self._uvicorn = _QuietUvicorn(config)
        self._tasks.append(asyncio.create_task(self._uvicorn.serve(sockets=[sock])))
        while not self._uvicorn.started:
            if self._tasks[0].done():
                self._tasks[0].result()
            await asyncio.sleep(0.01)
        self._tasks.append(asyncio.create_task(service.run_expiry_timer()))
        log.info("relay: HTTP %s, SSH %s, data %s, database %s, mail %s", service.base_url,
                 service.ssh_address, settings.data_dir, store.describe(),
                 mailer.smtp_description())
        return service

    async def stop(self) -> None:
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
            self._uvicorn.force_exit = True
        if self._ssh is not None:
            self._ssh.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ssh.wait_closed(), 2)
        for task in self._tasks:
            if task is not self._tasks[0]:
                task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.gather(*self._tasks, return_exceptions=True), 3)
        if self.service is not None:
            await self.service.close()
            await self.service.store.close()

    async def serve_forever(self) -> None:
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop()
