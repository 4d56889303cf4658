"""Which HTTP proxy a connection to the relay goes through, and a TCP connection through it.

The environment decides, as curl reads it: HTTPS_PROXY for https:// relays, HTTP_PROXY for
http:// ones (lower-case names win, as in curl), and NO_PROXY lists what goes direct. NO_PROXY
alone decides: unlike some libraries there is no hidden exception for localhost or loopback
addresses, so a proxy that must be used is used. NO_PROXY entries are `*`, host names (which
also cover their sub-domains; a leading dot is allowed), IP addresses and networks
(10.0.0.0/8), each optionally with `:port`. Every connection, SSH included, goes through the
proxy with HTTP CONNECT; credentials in the proxy URL (http://user:pass@proxy:3128) are sent
as basic auth and never shown.

httpx and websockets each read the environment their own way: websockets prefers a SOCKS
proxy and HTTPS_PROXY even for a plain ws:// address, httpx also takes ALL_PROXY, neither
understands networks in NO_PROXY, and on macOS the standard library they build on skips the
proxy for local addresses by itself. So Adhoc decides here, once, and hands each library an
explicit proxy (or none) with its own reading of the environment turned off.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from common.secret import Secret
from common.transport import dial

# At most this much of a proxy's answer to CONNECT is read (its status line and headers).
MAX_ANSWER = 16 * 1024


class ProxyError(OSError):
    """The proxy refused or failed the CONNECT; `kind` is "auth" (it wants a password, or a
    different one) or "refused" (it will not connect there), `status` its HTTP status."""

    def __init__(self, message: str, kind: str, status: int = 0) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status


class ProxySettingError(ValueError):
    """A proxy variable that cannot be used as it is."""


@dataclass(frozen=True)
class Proxy:
    host: str
    port: int
    user: str | None = None
    password: Secret | None = None
    variable: str = "HTTPS_PROXY"

    def __str__(self) -> str:
        """Where it is, never the credentials."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"proxy {host}:{self.port} ({self.variable})"

    @property
    def url(self) -> str:
        """The proxy's URL without its credentials (httpx takes those apart, as `auth`)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def authorization(self) -> str | None:
        if self.user is None:
            return None
        raw = f"{self.user}:{self.password.reveal() if self.password else ''}"
        return "Basic " + base64.b64encode(raw.encode()).decode("ascii")


def _variable(environ: Mapping[str, str], name: str) -> tuple[str, str] | None:
    for key in (name.lower(), name.upper()):
        value = environ.get(key, "").strip()
        if value:
            return key, value
    return None


def parse_proxy(value: str, variable: str) -> Proxy:
    url = value if "://" in value else f"http://{value}"
    try:
        parts = urlsplit(url)
    except ValueError:  # an unbalanced [ or ] in the host
        raise ProxySettingError(f"{variable} cannot be read as a URL: write it as "
                                "http://proxy.example:3128") from None
    if parts.scheme.lower() != "http":
        raise ProxySettingError(f"{variable} names a {parts.scheme}:// proxy; Adhoc speaks to "
                                "proxies with plain HTTP CONNECT: use an http:// proxy URL")
    try:
        port = parts.port or 80
    except ValueError:
        raise ProxySettingError(f"{variable} has no valid port: write it as "
                                "http://proxy.example:3128") from None
    if not parts.hostname:
        raise ProxySettingError(f"{variable} names no proxy host: write it as "
                                "http://proxy.example:3128")
    user = unquote(parts.username) if parts.username is not None else None
    password = Secret(unquote(parts.password)) if parts.password is not None else None
    return Proxy(parts.hostname, port, user, password, variable)


def _host_matches(host: str, port: int, entry: str) -> bool:
    entry = entry.strip().lower()
    if not entry:
        return False
    if entry == "*":
        return True
    name, want_port = entry, None
    if entry.startswith("["):  # [v6]:port
        name, _, rest = entry[1:].partition("]")
        want_port = rest[1:] if rest.startswith(":") else None
    elif entry.count(":") == 1:
        name, want_port = entry.split(":")
    if want_port is not None and want_port != str(port):
        return False
    host = host.lower().strip("[]").rstrip(".")
    try:
        network = ipaddress.ip_network(name, strict=False)
    except ValueError:
        network = None
    if network is not None:
        try:
            return ipaddress.ip_address(host) in network
        except ValueError:
            return False
    name = name.lstrip(".").rstrip(".")
    return host == name or host.endswith("." + name)


def bypasses(host: str, port: int, no_proxy: str) -> bool:
    """Whether NO_PROXY sends a connection to host:port direct."""
    return any(_host_matches(host, port, entry) for entry in no_proxy.replace(" ", ",")
               .split(","))


def proxy_for(scheme: str, host: str, port: int,
              environ: Mapping[str, str] | None = None) -> Proxy | None:
    """The proxy for a connection to the relay at host:port whose URL has `scheme`, or None
    to go direct. Raises ProxySettingError for a proxy variable that cannot be used."""
    environ = os.environ if environ is None else environ
    found = _variable(environ, "https_proxy" if scheme == "https" else "http_proxy")
    if found is None:
        return None
    no_proxy = _variable(environ, "no_proxy")
    if no_proxy is not None and bypasses(host, port, no_proxy[1]):
        return None
    variable, value = found
    return parse_proxy(value, variable.upper())


async def connect_via(proxy: Proxy, host: str, port: int) -> socket.socket:
    """A TCP connection to host:port through `proxy` (HTTP CONNECT), ready for the bytes of
    whatever runs on it (SSH, TLS). Raises OSError (ProxyError when the proxy said no)."""
    sock = await dial(proxy.host, proxy.port)
    try:
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}", "User-Agent: adhoc"]
        auth = proxy.authorization()
        if auth:
            lines.append(f"Proxy-Authorization: {auth}")
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(sock, ("\r\n".join(lines) + "\r\n\r\n").encode())
        status = await _read_answer(loop, sock, proxy)
        if status == 407:
            raise ProxyError(f"the {proxy} asks for a user name and password"
                             + (" and refused the ones given" if auth else "")
                             + ": put them in the proxy setting, as "
                               "http://user:password@proxy:port", "auth", status)
        if not 200 <= status < 300:
            raise ProxyError(f"the {proxy} refused to connect to {target} (HTTP {status}): it "
                             "may block this address or port", "refused", status)
        return sock
    except BaseException:
        sock.close()
        raise


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    ready = loop.create_future()
    loop.add_reader(sock.fileno(), lambda: ready.done() or ready.set_result(None))
    try:
        await ready
    finally:
        loop.remove_reader(sock.fileno())


async def _read_answer(loop: asyncio.AbstractEventLoop, sock: socket.socket,
                       proxy: Proxy) -> int:
    """The status of the proxy's answer, leaving every byte after its headers unread (the
    relay may speak at once: its SSH version line must not be lost)."""
    seen = b""
    while b"\r\n\r\n" not in seen:
        if len(seen) >= MAX_ANSWER:
            raise ProxyError(f"the {proxy} sent an answer too long to be HTTP", "refused")
        await _readable(loop, sock)
        peek = sock.recv(MAX_ANSWER, socket.MSG_PEEK)
        if not peek:
            raise ProxyError(f"the {proxy} closed the connection without answering",
                             "refused")
        end = (seen + peek).find(b"\r\n\r\n")
        take = len(peek) if end < 0 else end + 4 - len(seen)
        seen += sock.recv(take)
    status_line = seen.split(b"\r\n", 1)[0].decode("latin-1")
    parts = status_line.split()
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ProxyError(f"the {proxy} did not answer in HTTP ({status_line[:60]!r})",
                         "refused")
    return int(parts[1])
