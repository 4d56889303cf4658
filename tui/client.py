"""The console's services: the relay API (httpx + SSE) and SSH to hosts through the relay.

No Textual here: screens call these classes and tests drive them against a real relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import asyncssh
import httpx

from common.passwords import hash_password, session_password_problem
from common.protocol import RELAYS_MAX, SHELL_TAKEN_OVER
from common.proxy import Proxy, ProxySettingError, proxy_for
from common.reach import (
    SEPARATOR,
    Route,
    explain,
    failure,
    http_client,
    open_route,
    origin,
    relay_routes,
)
from common.secret import Secret, reveal
from common.transport import (
    INNER_PORT,
    INNER_USER,
    WideTunnel,
    client_options,
    pinned,
    wait_for_banner,
)

API = "/api/v1"
# Small windows so ctrl+c stops a flood quickly (docs/BENCHMARKS.md, Targets; issue 5).
SHELL_WINDOW = 256 * 1024


RETRY_DELAYS = (0.5, 1, 2, 4, 8, 10)
# Seconds to reach the relay on one route (TCP, proxy, TLS, WebSocket) before the next, and
# for the relay to start the SSH handshake (it queues connections after a restart).
ROUTE_TIMEOUT = 15
BANNER_TIMEOUT = 60
# How long another relay of the cluster has to answer before the console tries the next.
FAIL_OVER_TIMEOUT = 5.0


def retry_delay(attempt: int) -> float:
    """How long to wait before reconnecting the attempt-th time (capped at 10 s)."""
    return RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]


class RelayError(Exception):
    """The relay refused or could not be reached; `detail` is a sentence for the user."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


def _error(response: httpx.Response) -> RelayError:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("detail"), str):
        where = f"{response.url.scheme}://{response.url.netloc.decode(errors='replace')}"
        return RelayError(response.status_code, "error",
                          f"{where} answered HTTP {response.status_code}, not as an Adhoc "
                          "relay does: check the URL, and that the relay behind it is running")
    return RelayError(response.status_code, str(body.get("error", "error")), body["detail"])


@dataclass(frozen=True)
class RelayEvent:
    id: int
    kind: str
    data: dict


CONNECTED = "stream-connected"  # not from the relay: the stream (re)opened


# Methods that may be sent twice: a read, or the idempotent end of a session.
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
# Errors that mean the connection died under the request (a pooled connection the relay had
# closed: "Server disconnected without sending a response"), not that the relay is down.
STALE_CONNECTION = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)
# Idle pooled connections are dropped well before the relay's own keep-alive timeout (5 s in
# uvicorn), so the console seldom reuses one the relay is closing at that moment.
KEEPALIVE_EXPIRY = 2.0


class RelayClient:
    def __init__(self, base_url: str, token: str | Secret | None = None,
                 transport: httpx.AsyncBaseTransport | None = None, *,
                 session_key: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = Secret(token) if token is not None else None
        self._transport = transport
        # An SSH public key sent with every session created, to log in to its host as this
        # technician (scripts: sftp -b, cron); `adhoc-console --session-key FILE`.
        self.session_key = session_key
        # The other relays of the cluster (their URLs, as the relay listed them): where the
        # console goes when its relay cannot be reached. A token is good on every one.
        self.relays: list[str] = []
        self._http = self._client_for(self.base_url)

    def _client_for(self, base_url: str) -> httpx.AsyncClient:
        """A client with the proxy and TLS rules of common/reach.py."""
        try:
            return http_client(base_url, base_url=base_url, timeout=httpx.Timeout(20.0),
                               transport=self._transport,
                               limits=httpx.Limits(keepalive_expiry=KEEPALIVE_EXPIRY))
        except ProxySettingError as exc:
            raise RelayError(0, "proxy", f"{exc}, then start the console again") from None

    def _new_http(self) -> httpx.AsyncClient:
        return self._client_for(self.base_url)

    async def _fail_over(self) -> bool:
        """Move to another relay of the cluster that answers; False if none does."""
        for url in self.relays:
            if url.rstrip("/") == self.base_url:
                continue
            try:
                candidate = self._client_for(url.rstrip("/"))
            except RelayError:
                continue
            try:
                response = await candidate.get(API + "/relay", timeout=FAIL_OVER_TIMEOUT)
                if response.status_code == 200:
                    old, self._http = self._http, candidate
                    self.base_url = url.rstrip("/")
                    await old.aclose()
                    return True
            except httpx.HTTPError:
                pass
            await candidate.aclose()
        return False

    async def aclose(self) -> None:
        await self._http.aclose()

    def _origin(self) -> tuple[str, int, Proxy | None]:
        """Where HTTP goes, for explain(): the relay's host and port, and the proxy."""
        scheme, host, port = origin(self.base_url)
        return host, port, proxy_for(scheme, host, port)

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token.reveal()}"} if self.token else {}

    async def _call(self, method: str, path: str, *, idempotent: bool | None = None,
                    **kwargs) -> dict:
        """One request; a request that may be sent twice is sent again once, on a fresh
        connection, when the pooled connection it went out on was closed by the relay."""
        again = method in IDEMPOTENT if idempotent is None else idempotent
        try:
            try:
                response = await self._http.request(method, API + path,
                                                    headers=self._headers(), **kwargs)
            except STALE_CONNECTION:
                if not again:
                    raise
                async with self._new_http() as fresh:
                    response = await fresh.request(method, API + path,
                                                   headers=self._headers(), **kwargs)
        except httpx.HTTPError as exc:
            problem = (f"cannot reach the relay at {self.base_url}: "
                       f"{explain(exc, *self._origin())}")
            if not isinstance(exc, httpx.ConnectError) or not await self._fail_over():
                raise RelayError(0, "unreachable", problem) from None
            try:  # once, on the relay that answered
                response = await self._http.request(method, API + path,
                                                    headers=self._headers(), **kwargs)
            except httpx.HTTPError as again:
                raise RelayError(0, "unreachable", f"cannot reach the relay at "
                                 f"{self.base_url}: {explain(again, *self._origin())}") \
                    from None
        if response.status_code >= 400:
            raise _error(response)
        try:
            return response.json()
        except ValueError:
            raise RelayError(response.status_code, "unreachable",
                             f"{self.base_url} answered, but not as an Adhoc relay does "
                             "(check the URL)") from None

    async def login(self, login: str, password: str | Secret) -> dict:
        body = await self._call("POST", "/login", json={
            "login": login, "password": reveal(password)})
        self.token = Secret(body.pop("token"))
        return body

    async def me(self) -> dict:
        return await self._call("GET", "/me")

    async def relay_info(self) -> dict:
        info = await self._call("GET", "/relay")
        relays = info.get("relays")
        if isinstance(relays, list):
            self.relays = [r["http"] for r in relays[:RELAYS_MAX]
                           if isinstance(r, dict) and isinstance(r.get("http"), str)]
        return info

    async def sessions(self) -> dict:
        return await self._call("GET", "/sessions")

    async def session(self, session_id: str) -> dict:
        return await self._call("GET", f"/sessions/{session_id}")

    async def create_session(self, customer_email: str, password: str | Secret,
                             note: str = "") -> dict:
        """Create a session; the session password never leaves the console: the relay gets
        its argon2id verifier, made here, and hands it to the customer's agent."""
        problem = session_password_problem(reveal(password))
        if problem:  # the relay's own check and words, without sending the password anywhere
            raise RelayError(422, "invalid", problem + ".")
        verifier = await asyncio.to_thread(hash_password, reveal(password))
        body = {"customer_email": customer_email, "password_verifier": verifier, "note": note}
        if self.session_key:
            body["technician_key"] = self.session_key
        return await self._call("POST", "/sessions", json=body)

    async def end_session(self, session_id: str) -> dict:
        return await self._call("POST", f"/sessions/{session_id}/end", idempotent=True)

    async def reissue_code(self, session_id: str) -> dict:
        return await self._call("POST", f"/sessions/{session_id}/code")

    async def audit(self, session_id: str) -> list[dict]:
        return (await self._call("GET", f"/sessions/{session_id}/audit"))["audit"]

    async def events(self, after: int | None) -> AsyncIterator[RelayEvent]:
        """The live event stream from `after` (None: from now), led by a CONNECTED marker.
        Ends when the stream drops."""
        headers = self._headers()
        if after is not None:
            headers["Last-Event-ID"] = str(after)
        timeout = httpx.Timeout(20.0, read=60.0)
        if not self.relays:  # learn the cluster's other relays, to move to one if need be
            with contextlib.suppress(RelayError):
                await self.relay_info()
        try:
            async with self._http.stream("GET", API + "/events", headers=headers,
                                         timeout=timeout) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise _error(response)
                yield RelayEvent(0, CONNECTED, {})
                event_id, kind, data = None, "message", []
                async for line in response.aiter_lines():
                    if line.startswith("id:"):
                        value = line[3:].strip()
                        event_id = int(value) if value.isdigit() else None
                    elif line.startswith("event:"):
                        kind = line[6:].strip()
                    elif line.startswith("data:"):
                        data.append(line[5:].strip())
                    elif line == "" and data:
                        event = _event(event_id, kind, data)
                        if event is not None:
                            yield event
                        event_id, kind, data = None, "message", []
        except httpx.HTTPError as exc:
            # The relay is gone: the next try goes to another relay of the cluster, if any.
            if isinstance(exc, httpx.ConnectError):
                await self._fail_over()
            raise RelayError(0, "unreachable",
                             f"lost the relay's event stream ({exc or type(exc).__name__})"
                             ) from None


def _event(event_id: int | None, kind: str, data: list[str]) -> RelayEvent | None:
    """One event as the stream sent it, or None for one that is not an object of JSON."""
    try:
        value = json.loads("\n".join(data))
    except ValueError:
        return None
    return RelayEvent(event_id or 0, kind, value) if isinstance(value, dict) else None


def host_key_fingerprint(host_key: str | None) -> str | None:
    """The host key's fingerprint as OpenSSH prints it (SHA256:…), for the technician to
    compare with the one on the customer's screen; None when there is no valid key."""
    if not host_key:
        return None
    try:
        return asyncssh.import_public_key(host_key).get_fingerprint("sha256")
    except (asyncssh.KeyImportError, ValueError):
        return None


# Why a shell channel closed, when another connection (another console) took the shell.
SHELL_TAKEN = "taken over by another connection"


class ShellSession(asyncssh.SSHClientSession):
    """A remote PTY channel whose output goes to a callback (the terminal pane)."""

    def __init__(self, on_output: Callable[[bytes], None], on_closed: Callable[[str], None]):
        self._on_output = on_output
        self._on_closed = on_closed
        self.chan: asyncssh.SSHClientChannel | None = None
        self._taken = False

    def connection_made(self, chan: asyncssh.SSHClientChannel) -> None:
        self.chan = chan

    def data_received(self, data: bytes, datatype) -> None:
        if datatype == asyncssh.EXTENDED_DATA_STDERR and SHELL_TAKEN_OVER in data:
            self._taken = True
        self._on_output(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_closed(str(exc) if exc else SHELL_TAKEN if self._taken else "the shell ended")


class ShellChannel:
    def __init__(self, chan: asyncssh.SSHClientChannel, session: ShellSession) -> None:
        self.chan = chan
        self.session = session

    def send(self, data: bytes) -> None:
        with contextlib.suppress(Exception):
            self.chan.write(data)

    def resize(self, cols: int, rows: int) -> None:
        with contextlib.suppress(Exception):
            self.chan.change_terminal_size(cols, rows)

    def pause(self) -> None:
        with contextlib.suppress(Exception):
            self.chan.pause_reading()

    def resume(self) -> None:
        with contextlib.suppress(Exception):
            self.chan.resume_reading()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.chan.close()


class JsonLines:
    """A subsystem channel speaking one JSON object per line (dashboard, chat)."""

    MAX_LINE = 1024 * 1024

    def __init__(self, writer: asyncssh.SSHWriter, reader: asyncssh.SSHReader,
                 errors: asyncssh.SSHReader,
                 conn: asyncssh.SSHClientConnection | None = None) -> None:
        self._writer, self._reader, self._errors = writer, reader, errors
        self._conn = conn
        self.lost: str | None = None  # why the connection under the channel died, if it did

    async def read(self) -> dict | None:
        """The next object, or None when the channel ended: the host closed it, or the
        connection under it was lost (then `lost` says why)."""
        while True:
            try:
                line = await self._reader.readline()
            except (asyncssh.Error, OSError) as exc:
                self.lost = str(getattr(exc, "reason", "") or exc or "connection lost")
                return None
            if not line:
                if self._conn is not None and self._conn.is_closed():
                    self.lost = "connection lost"
                return None
            if len(line) > self.MAX_LINE:
                continue
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value

    async def refusal(self) -> str:
        """What the host wrote on stderr when it refused or closed the channel."""
        with contextlib.suppress(Exception):
            return (await asyncio.wait_for(self._errors.read(4096), 2)).strip()
        return ""

    def send(self, value: dict) -> None:
        with contextlib.suppress(Exception):
            self._writer.write(json.dumps(value) + "\n")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._writer.channel.close()


def technician_options(*, outer: bool = False, sock=None, **options) -> dict:
    """The console's asyncssh client settings; `options` override them. Keepalive on every
    leg, 15 s x 3; ADHOC_CONSOLE_KEEPALIVE (seconds) lets fault tests see a dead link in
    seconds, as ADHOC_HOST_KEEPALIVE and ADHOC_RELAY_KEEPALIVE do."""
    keepalive = float(os.environ.get("ADHOC_CONSOLE_KEEPALIVE", "15"))
    return {"client_keys": None, "agent_path": None, "config": None,
            "preferred_auth": "password", "keepalive_interval": keepalive,
            "keepalive_count_max": 3, **client_options(outer=outer, sock=sock), **options}


async def connect_relay(host: str, port: int, login: str, token: str | Secret, relay_key: str,
                        sock=None, **options) -> asyncssh.SSHClientConnection:
    """The technician's SSH connection to the relay, pinned to its key, with the console's
    transport settings; `options` override them (the bench tries levers this way). Over
    `sock` when it is already connected (a route, common/reach.py)."""
    return await asyncssh.connect(host, port, username=login, password=reveal(token),
                                  known_hosts=pinned(relay_key),
                                  **technician_options(outer=True, sock=sock, **options))


async def open_relay(routes: list[Route], login: str, token: str | Secret, relay_key: str,
                     **options) -> tuple[asyncssh.SSHClientConnection, Route]:
    """The technician's SSH connection to the relay on the first route that works (its SSH
    port, then SSH over WebSocket), and that route. Raises RelayError saying why each route
    failed; a refused login ends the attempt at once. Another host key is one route's
    failure ("not the relay"): what answered is told nothing, and the pane keeps trying."""
    failures = []
    for route in routes:
        try:
            sock = await asyncio.wait_for(open_route(route), ROUTE_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            failures.append(failure(exc, route))
            continue
        try:
            await wait_for_banner(sock, BANNER_TIMEOUT)
            conn = await connect_relay(route.host, route.port, login, token, relay_key,
                                       sock=sock, **options)
        except asyncssh.PermissionDenied as exc:
            sock.close()  # revoked or expired: no retry helps (tui/failures.py)
            raise RelayError(401, "unauthorized", f"the relay refused the SSH login ({route}): "
                             f"{exc.reason}") from None
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            sock.close()
            failures.append(failure(exc, route))
            continue
        except BaseException:  # cancelled (the pane closed, the console quit) mid-attempt
            sock.close()
            raise
        return conn, route
    raise RelayError(0, "unreachable",
                     "cannot open SSH to the relay: " + SEPARATOR.join(failures))


async def connect_host(relay: asyncssh.SSHClientConnection, session_id: str, host_key: str,
                       password: str | Secret, **options) -> asyncssh.SSHClientConnection:
    """The technician's inner connection to a session's host, through `relay`, pinned to the
    host key the relay reported at activation."""
    return await asyncssh.connect(session_id, INNER_PORT, tunnel=WideTunnel(relay),
                                  username=INNER_USER, password=reveal(password),
                                  known_hosts=pinned(host_key), **technician_options(**options))


class HostConnector:
    """One SSH connection to the relay, and one inner connection per host, opened on demand."""

    def __init__(self, client: RelayClient, login: str) -> None:
        self.client = client
        self.login = login
        self._relay: asyncssh.SSHClientConnection | None = None
        self._hosts: dict[str, asyncssh.SSHClientConnection] = {}
        self._lock = asyncio.Lock()
        # session id -> ("127.0.0.1:8080", "192.168.1.1:80", listener) of its open forwards
        self.forwards: dict[str, list[tuple[str, str, asyncssh.SSHListener]]] = {}
        self.route: Route | None = None  # how the SSH connection to the relay goes

    async def _relay_conn(self) -> asyncssh.SSHClientConnection:
        if self._relay is not None and not self._relay.is_closed():
            return self._relay
        info = await self.client.relay_info()
        try:
            routes = relay_routes(info.get("ssh"), self.client.base_url)
        except ProxySettingError as exc:
            raise RelayError(0, "proxy", str(exc)) from None
        if self.route is not None:  # what worked last goes first
            routes.sort(key=lambda route: route.kind != self.route.kind)
        self._relay, self.route = await open_relay(routes, self.login, self.client.token,
                                                   info["host_key"])
        return self._relay

    async def host(self, session: dict, password: Secret) -> asyncssh.SSHClientConnection:
        """The inner connection to a session's host, pinned to the key the relay reported."""
        async with self._lock:
            conn = self._hosts.get(session["id"])
            if conn is not None and not conn.is_closed():
                return conn
            if not session.get("host_key"):
                raise RelayError(0, "not_active", "the customer has not activated this session")
            relay = await self._relay_conn()
            try:
                conn = await connect_host(relay, session["id"], session["host_key"], password)
            except asyncssh.PermissionDenied:
                raise RelayError(403, "wrong_password",
                                 "the host refused the session password: check it and try "
                                 "again") from None
            except asyncssh.ChannelOpenError as exc:
                raise RelayError(0, "offline", f"cannot reach the host: {exc.reason}") from None
            except (OSError, asyncssh.Error) as exc:
                raise RelayError(0, "unreachable", f"cannot reach the host: {exc}") from None
            self._hosts[session["id"]] = conn
            return conn

    def forget(self, session_id: str) -> None:
        self.forwards.pop(session_id, None)  # they close with the connection
        conn = self._hosts.pop(session_id, None)
        if conn is not None:
            conn.close()

    async def forward_local_port(self, session: dict, password: Secret, local_port: int,
                                 host: str, port: int) -> str:
        """Listen on 127.0.0.1:local_port (0: any free one) and carry each connection to
        host:port through the session's host (`ssh -L`); the local address. The customer is
        asked on their screen when a connection first goes to a destination."""
        conn = await self.host(session, password)
        try:
            listener = await conn.forward_local_port("127.0.0.1", local_port, host, port)
        except OSError as exc:
            raise RelayError(0, "local_port", f"cannot listen on 127.0.0.1:{local_port}: "
                             f"{exc.strerror or exc}; choose another local port") from None
        local = f"127.0.0.1:{listener.get_port()}"
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.forwards.setdefault(session["id"], []).append((local, where, listener))
        return local

    def open_forwards(self, session_id: str) -> list[str]:
        """"127.0.0.1:8080 → 192.168.1.1:80" for each forward still open to the session."""
        conn = self._hosts.get(session_id)
        if conn is None or conn.is_closed():
            self.forwards.pop(session_id, None)
            return []
        return [f"{local} → {where}" for local, where, _ in self.forwards.get(session_id, [])]

    async def open_shell(self, session: dict, password: Secret, *, cols: int, rows: int,
                         shell_id: str, on_output: Callable[[bytes], None],
                         on_closed: Callable[[str], None]) -> ShellChannel:
        conn = await self.host(session, password)
        try:
            chan, shell = await conn.create_session(
                lambda: ShellSession(on_output, on_closed), term_type="xterm-256color",
                term_size=(cols, rows), env={"ADHOC_SHELL_ID": shell_id}, encoding=None,
                window=SHELL_WINDOW)
        except (asyncssh.Error, OSError) as exc:
            self.forget(session["id"])
            raise RelayError(0, "offline", f"cannot open a shell "
                             f"({getattr(exc, 'reason', '') or exc})") from None
        return ShellChannel(chan, shell)

    async def open_lines(self, session: dict, password: Secret, subsystem: str) -> JsonLines:
        conn = await self.host(session, password)
        try:
            writer, reader, errors = await conn.open_session(subsystem=subsystem,
                                                             encoding="utf-8", errors="replace")
        except (asyncssh.Error, OSError) as exc:
            self.forget(session["id"])
            raise RelayError(0, "offline", f"cannot open the {subsystem} "
                             f"({getattr(exc, 'reason', '') or exc})") from None
        return JsonLines(writer, reader, errors, conn)

    async def close(self) -> None:
        for conn in self._hosts.values():
            conn.close()
        self._hosts.clear()
        if self._relay is not None:
            self._relay.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._relay.wait_closed(), 2)
