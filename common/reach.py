"""How a program reaches the relay, and why it could not, in words a customer can pass on.

HTTP goes to the relay's URL through the proxy the environment names (common/proxy.py), with
TLS checked against the system's store and the link's pin (common/tls.py). SSH has two routes:
the relay's SSH port, and SSH over a WebSocket on the relay's own HTTP(S) origin
(`/api/v1/ssh`), which passes wherever the web does (one public port, TLS reverse proxies,
proxies that only allow 443). Agents and the console try the SSH port first, then the
WebSocket, and say which one they use.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import asyncssh
import httpx

from common.protocol import RELAYS_MAX
from common.proxy import Proxy, ProxyError, ProxySettingError, connect_via, proxy_for
from common.tls import PinMismatch, client_context
from common.transport import dial
from common.wsbridge import WEBSOCKET_PATH, bridge

# A WebSocket message from the relay is at most this large (the relay sends 256 KiB).
MAX_MESSAGE = 4 * 1024 * 1024
_bridges: set[asyncio.Task] = set()


@dataclass(frozen=True)
class Route:
    """One way to the relay's SSH server."""

    kind: str  # "ssh" (its SSH port) or "websocket" (SSH over a WebSocket)
    host: str
    port: int
    url: str | None = None  # the WebSocket's URL (wss://… or ws://…)
    proxy: Proxy | None = None
    pin: str | None = None

    def __str__(self) -> str:
        where = f"SSH to {_hostport(self.host, self.port)}" if self.kind == "ssh" \
            else f"SSH over WebSocket to {self.url}"
        return where + (f" through the {self.proxy}" if self.proxy else "")


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def origin(base_url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a relay URL."""
    parts = urlsplit(base_url)
    scheme = parts.scheme.lower()
    return scheme, parts.hostname or "", parts.port or (443 if scheme == "https" else 80)


def cluster_routes(routes: list[Route], relays: object, *, pin: str | None = None,
                   environ: Mapping[str, str] | None = None) -> list[Route]:
    """`routes` followed by the routes to every other relay of the cluster, as a relay
    listed them ([{"ssh": HOST:PORT or None, "http": URL}, ...]); what cannot be read is
    left out (a relay's word is not trusted to be well formed)."""
    known = {(r.kind, r.host, r.port, r.url) for r in routes}
    merged = list(routes)
    for relay in relays[:RELAYS_MAX] if isinstance(relays, list) else ():
        if not isinstance(relay, dict) or not isinstance(relay.get("http"), str):
            continue
        ssh = relay.get("ssh") if isinstance(relay.get("ssh"), str) else None
        port = ssh.rpartition(":")[2] if ssh else "1"
        if not (port.isdigit() and 0 < int(port) < 65536):
            continue
        try:
            found = relay_routes(ssh, relay["http"], pin=pin, environ=environ)
        except (ValueError, ProxySettingError):
            continue
        for route in found:
            if (route.kind, route.host, route.port, route.url) not in known:
                known.add((route.kind, route.host, route.port, route.url))
                merged.append(route)
    return merged


def websocket_route(base_url: str, *, pin: str | None = None,
                    environ: Mapping[str, str] | None = None) -> Route:
    scheme, host, port = origin(base_url)
    parts = urlsplit(base_url)
    url = (f"{'wss' if scheme == 'https' else 'ws'}://{parts.netloc.rpartition('@')[2]}"
           f"{parts.path.rstrip('/')}{WEBSOCKET_PATH}")
    return Route("websocket", host, port, url, proxy_for(scheme, host, port, environ), pin)


def relay_routes(ssh_address: str | None, base_url: str, *, pin: str | None = None,
                 environ: Mapping[str, str] | None = None) -> list[Route]:
    """The routes to try, in order: the SSH port (when the relay has one), then the
    WebSocket. The SSH port goes through the proxy of the relay URL's scheme."""
    routes = []
    if ssh_address:
        host, _, port = ssh_address.rpartition(":")
        scheme, _, _ = origin(base_url)
        host = host.strip("[]")
        routes.append(Route("ssh", host, int(port), None,
                            proxy_for(scheme, host, int(port), environ)))
    routes.append(websocket_route(base_url, pin=pin, environ=environ))
    return routes


async def open_route(route: Route) -> socket.socket:
    """A connected socket that carries the relay's SSH byte stream over `route` (for a
    WebSocket, one end of a socket pair bridged to it). Raises OSError (ssl.SSLError is
    one), which explain() words."""
    if route.proxy is not None:
        sock = await connect_via(route.proxy, route.host, route.port)
    else:
        sock = await dial(route.host, route.port)
    if route.kind == "ssh":
        return sock
    try:
        return await _websocket(route, sock)
    except BaseException:
        sock.close()
        raise


class WebSocketRefused(OSError):
    """The relay's address did not open the WebSocket (the cause says how it answered)."""


async def _websocket(route: Route, sock: socket.socket) -> socket.socket:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, WebSocketException

    assert route.url is not None
    secure = route.url.startswith("wss:")
    try:
        ws = await connect(route.url, sock=sock, proxy=None, compression=None,
                           ssl=client_context(route.pin) if secure else None,
                           server_hostname=route.host if secure else None,
                           max_size=MAX_MESSAGE, ping_interval=None, open_timeout=None,
                           user_agent_header="adhoc")
    except WebSocketException as exc:
        raise WebSocketRefused(f"no WebSocket at {route.url}: {exc}") from exc
    mine, theirs = socket.socketpair()

    async def receive() -> bytes | None:
        try:
            message = await ws.recv()
        except ConnectionClosed:
            return None
        return message if isinstance(message, bytes) else b""

    async def run() -> None:
        try:
            await bridge(theirs, receive, ws.send)
        finally:
            await ws.close()

    task = asyncio.get_running_loop().create_task(run())
    _bridges.add(task)
    task.add_done_callback(_bridges.discard)
    return mine


def http_route(base_url: str, environ: Mapping[str, str] | None = None) -> str:
    """How HTTP to the relay goes, for messages: "HTTPS to relay.example:443 through …"."""
    scheme, host, port = origin(base_url)
    try:
        proxy = proxy_for(scheme, host, port, environ)
    except ProxySettingError:
        proxy = None
    return f"{scheme.upper()} to {_hostport(host, port)}" + \
        (f" through the {proxy}" if proxy else "")


def http_client(relay_url: str, *, pin: str | None = None,
                environ: Mapping[str, str] | None = None, **options) -> httpx.AsyncClient:
    """An httpx client for the relay at `relay_url`, with the proxy and TLS rules above (not
    httpx's own reading of the environment, which differs)."""
    scheme, host, port = origin(relay_url)
    return httpx.AsyncClient(trust_env=False, verify=client_context(pin),
                             proxy=_httpx_proxy(proxy_for(scheme, host, port, environ)),
                             **options)


def _httpx_proxy(proxy: Proxy | None) -> httpx.Proxy | None:
    if proxy is None:
        return None
    auth = None if proxy.user is None else \
        (proxy.user, proxy.password.reveal() if proxy.password else "")
    return httpx.Proxy(proxy.url, auth=auth)


def _root_causes(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


# What explain() says first: the kind of failure, short enough for a console's row, in the
# words a customer can pass on. Every explanation is "<kind>: <sentence>".
NAME_NOT_FOUND = "name not found"
REFUSED = "refused"
NO_ANSWER = "no answer"
TLS_FAILURE = "TLS failure"
PROXY_PASSWORD = "proxy asks for a password"
BLOCKED = "blocked"
NO_NETWORK = "no network route"
CUT = "cut off"
PROXY_SETTING = "proxy setting"
NOT_THE_RELAY = "not the relay"
FAILED = "failed"
KINDS = (NAME_NOT_FOUND, REFUSED, NO_ANSWER, TLS_FAILURE, PROXY_PASSWORD, BLOCKED, NO_NETWORK,
         CUT, PROXY_SETTING, NOT_THE_RELAY, FAILED)
# How the failures of several routes are joined into one problem.
SEPARATOR = "; "


def explain(exc: BaseException, host: str = "", port: int | None = None,
            proxy: Proxy | None = None) -> str:
    """Why a connection to the relay at host:port failed, as a customer can read it out on
    the phone: "<kind>: <what happened and what to do>" (KINDS). Through `proxy`, failing to
    connect at all is the proxy's doing, and said so."""
    target = _hostport(host, port) if host and port else (host or "the relay")
    for cause in _root_causes(exc):
        words = _words(cause, host or "the relay", target, proxy)
        if words:
            return f"{words[0]}: {words[1]}"
    return f"{FAILED}: could not connect to {target} ({str(exc) or type(exc).__name__})"


def failure(exc: BaseException, route: Route) -> str:
    """One route's failure for a list of them: "<explain()> (tried <route>)"."""
    return f"{explain(exc, route.host, route.port, route.proxy)} (tried {route})"


def summary(problem: str) -> str:
    """The kinds of failure in a problem made of explain()s joined by SEPARATOR, e.g.
    "refused, blocked"; the problem itself when it is not made that way."""
    kinds = []
    for part in problem.split(SEPARATOR):
        kind = part.split(": ", 1)[0]
        if kind in KINDS and kind not in kinds:
            kinds.append(kind)
    return ", ".join(kinds) or problem


def _words(exc: BaseException, host: str, where: str,
           proxy: Proxy | None) -> tuple[str, str] | None:
    server, check = "the relay", "check the link"
    if proxy is not None and isinstance(exc, socket.gaierror | ConnectionRefusedError
                                        | TimeoutError | httpx.ConnectTimeout):
        # It never got as far as the relay: the proxy is the one not there.
        host, where = proxy.host, f"the {proxy}"
        server, check = "the proxy", f"check {proxy.variable}"
    if isinstance(exc, ProxyError):
        return (PROXY_PASSWORD if exc.kind == "auth" else BLOCKED), str(exc)
    if isinstance(exc, ProxySettingError):
        return PROXY_SETTING, str(exc)
    if isinstance(exc, PinMismatch):
        return TLS_FAILURE, str(exc)
    if isinstance(exc, socket.gaierror):
        return NAME_NOT_FOUND, (f"the name {host} was not found (DNS): {check}, or this "
                                "computer's network connection")
    if isinstance(exc, ConnectionRefusedError):
        return REFUSED, (f"{where} refused the connection: {server} may be down, or a "
                         "firewall rejects it")
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        return NO_ANSWER, (f"nothing answered at {where}: a firewall may block it, or "
                           f"{server} is down")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return TLS_FAILURE, (f"the certificate of {host} is not trusted on this computer "
                             f"({exc.verify_message or exc.reason}): someone may be "
                             "intercepting, or the relay's certificate is wrong")
    if isinstance(exc, ssl.SSLError):
        return TLS_FAILURE, f"talking to {where}: {exc.reason or exc}"
    status = _websocket_status(exc)
    if status is not None:
        return BLOCKED, (f"{where} answered HTTP {status} instead of opening the WebSocket: "
                         "a proxy on the way may block WebSockets")
    if isinstance(exc, httpx.ProxyError):  # httpx's CONNECT got an answer other than 200
        if "407" in str(exc):
            return PROXY_PASSWORD, ("the proxy asks for a user name and password (or refused "
                                    "the ones given): put them in the proxy setting, as "
                                    "http://user:password@proxy:port")
        return BLOCKED, f"the proxy refused to connect to {where} ({exc})"
    if isinstance(exc, OSError) and exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH,
                                                  errno.EACCES, errno.EPERM):
        return NO_NETWORK, (f"no route to {where} ({os.strerror(exc.errno)}): check this "
                            "computer's network connection, or a firewall blocks it")
    if isinstance(exc, ConnectionResetError | ConnectionAbortedError):
        return CUT, f"{where} cut the connection: a firewall or proxy may block it"
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        return NOT_THE_RELAY, (f"what answered at {where} has another SSH host key than the "
                               "relay's: a network that redirects connections, or someone "
                               "posing as the relay; nothing was sent to it")
    return None


def _websocket_status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) and type(exc).__module__.startswith(
        "websockets") else None
