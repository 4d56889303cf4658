"""The embedded default: the bundled relay in-process, with a local company and admin.

A newcomer runs `adhoc-console` and has a working system: the relay listens on loopback,
keeps its SQLite database in the user data dir, and the console is logged in as the local
admin. On first run the admin's password is shown once (for `ssh -J` or another console).
"""

from __future__ import annotations

import asyncio
import errno
import secrets
import time
from dataclasses import dataclass

from common.passwords import hash_password
from common.secret import Secret
from relay.config import RelaySettings
from relay.server import RelayServer
from relay.store import NotFound
from tui.config import embedded_data_dir

LOCAL_COMPANY = "Local"
LOCAL_ADMIN = "admin"


@dataclass
class Embedded:
    server: RelayServer
    base_url: str
    token: Secret
    login: str
    first_run_password: Secret | None

    async def stop(self) -> None:
        await self.server.stop()


async def start_embedded(http_port: int = 8780, ssh_port: int = 8722) -> Embedded:
    settings = RelaySettings(data_dir=embedded_data_dir(), http_port=http_port,
                             ssh_port=ssh_port)
    server = RelayServer(settings)
    try:
        service = await server.start()
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        # Another relay (or console) holds the default ports: take free ones on loopback.
        await server.stop()
        settings.http_port = settings.ssh_port = 0
        server = RelayServer(settings)
        service = await server.start()
    store = service.store
    password = None
    try:
        tech = await store.technician_by_login(LOCAL_ADMIN)
    except NotFound:
        now = time.time()
        try:
            company = await store.company_by_name(LOCAL_COMPANY)
        except NotFound:
            company = await store.add_company(LOCAL_COMPANY, "premier", 5, now)
        password = Secret(secrets.token_urlsafe(12))
        tech = await store.add_technician(
            company.id, LOCAL_ADMIN, "admin@localhost",
            await asyncio.to_thread(hash_password, password.reveal()), True, now,
            actor="console")
    token = Secret(await service.issue_token(tech))
    return Embedded(server, service.base_url, token, tech.login, password)
