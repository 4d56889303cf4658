"""Relay settings: defaults, the database, durations like "90s" or "24h", and host:port pairs."""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import platformdirs
from sqlalchemy import URL

from relay.db.url import sqlite_url

# Listening on these means every address: not an address anyone can dial.
WILDCARDS = ("", "0.0.0.0", "::")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(text: str) -> timedelta:
    """Parse "90s", "30m", "24h", "2d" or a bare number of seconds."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(
            f"cannot read duration {text!r}: use a number with s, m, h or d, e.g. 90s or 24h")
    value = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if value <= 0:
        raise ValueError(f"duration {text!r} must be greater than zero")
    return timedelta(seconds=value)


def format_duration(delta: timedelta) -> str:
    """The inverse of parse_duration for whole seconds, e.g. 86400s -> "24h"."""
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def parse_hostport(text: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """Parse "HOST:PORT", "[::1]:PORT" or ":PORT"."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"cannot read address {text!r}: use HOST:PORT, e.g. 127.0.0.1:8780")
    if host.startswith("[") != host.endswith("]"):
        raise ValueError(f"cannot read address {text!r}: write an IPv6 address in brackets, "
                         "e.g. [::1]:8780")
    host = host.strip("[]") or default_host
    return host, int(port)


def parse_public_url(text: str) -> str:
    """The URL customers and consoles reach a relay at (--public-url), checked: an http or
    https URL with a host name and, if any, a numeric port; ValueError in words otherwise."""
    example = "write it like https://support.example.com or http://192.0.2.10:8780"
    try:
        parts = urlsplit(text.strip())
        parts.port  # noqa: B018 - a port that is not a number raises here
    except ValueError:
        raise ValueError(f"cannot read the URL {text!r}: {example}") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{text!r} is not an http:// or https:// URL with a host: {example}")
    return text.strip().rstrip("/")


@dataclass(frozen=True)
class Rate:
    """At most `count` requests per `per` from one source address."""

    count: int
    per: timedelta

    def __str__(self) -> str:
        return f"{self.count}/{format_duration(self.per)}"


def parse_rate(text: str) -> Rate:
    """Parse "20/1m" (twenty per minute) or "5/90s"."""
    count, sep, window = text.partition("/")
    if not sep or not count.strip().isdigit() or int(count) < 1:
        raise ValueError(f"cannot read rate {text!r}: use COUNT/DURATION, e.g. 20/1m")
    return Rate(int(count), parse_duration(window))


def format_hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("adhoc-relay", appauthor=False))


@dataclass
class RelaySettings:
    """Everything `adhoc-relay serve` (or the console's embedded relay) runs with."""

    data_dir: Path = field(default_factory=default_data_dir)
    # PostgreSQL (or another SQLite file) instead of relay.db in the data dir. A URL object:
    # its repr and str hide the password.
    database: URL | None = None
    http_host: str = "127.0.0.1"
    http_port: int = 8780
    ssh_host: str = "127.0.0.1"
    ssh_port: int = 8722
    public_url: str | None = None
    ssh_public: str | None = None
    session_lifetime: timedelta = timedelta(hours=24)
    invite_ttl: timedelta = timedelta(minutes=30)
    smtp_url: str | None = None
    mail_from: str = "Adhoc <adhoc@localhost>"
    mail_attempts: int = 5
    mail_retry_delay: timedelta = timedelta(seconds=2)
    # Per source address; in memory, so a restart forgets them (that is fine: they slow down
    # guessing, they are not an account lock-out).
    login_rate: Rate = field(default_factory=lambda: Rate(20, timedelta(minutes=1)))
    activate_rate: Rate = field(default_factory=lambda: Rate(20, timedelta(minutes=1)))
    # Reverse proxies whose X-Forwarded-For / X-Forwarded-Proto the relay believes (addresses
    # or networks); none by default, so no client can choose the address it is seen from.
    trusted_proxies: tuple[str, ...] = ()
    # False with `--ssh off`: SSH only over WebSocket on the HTTP listener.
    ssh_listen: bool = True
    # TLS on the HTTP listener itself (`--tls-cert`, `--tls-key`), for small deployments.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # A certificate whose public key join links name, so agents pin it (`--pin-certificate`).
    pin_certificate: Path | None = None
    # Build the host's wheels in the background when they are missing (the embedded relay).
    prepare_wheels: bool = False
    # Health and Prometheus metrics on a listener of their own (`--metrics`); None: off.
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None
    # The cluster (relay/cluster/): this relay's node name (None: host name and SSH port), and
    # where the other relays reach it (None: its SSH address; HOST:0 picks a free port).
    node: str | None = None
    peer_address: tuple[str, int] | None = None
    # With `--workers N`: N relay processes sharing the listening ports (SO_REUSEPORT), and
    # the SSH listening socket the parent keeps for this worker (relay/cluster/workers.py).
    reuse_port: bool = False
    ssh_socket: socket.socket | None = None

    @property
    def db_path(self) -> Path:
        return self.data_dir / "relay.db"

    @property
    def database_url(self) -> URL:
        return self.database or sqlite_url(self.db_path)

    @property
    def host_key_path(self) -> Path:
        return self.data_dir / "ssh_host_ed25519_key"

    @property
    def secret_key_path(self) -> Path:
        return self.data_dir / "secret.key"

    @property
    def cluster_key_path(self) -> Path:
        return self.data_dir / "cluster_ed25519_key"

    @property
    def outbox_dir(self) -> Path:
        return self.data_dir / "outbox"

    def base_url(self, http_port: int | None = None) -> str:
        """The URL customers and consoles reach the HTTP API at."""
        if self.public_url:
            return self.public_url.rstrip("/")
        scheme = "https" if self.tls_cert else "http"
        return f"{scheme}://{format_hostport(self.http_host, http_port or self.http_port)}"

    def ssh_address(self, ssh_port: int | None = None) -> str | None:
        """The host:port agents and technicians dial for SSH; None with `--ssh off`. A
        listener on every address (0.0.0.0, ::) is reached by the public URL's host name."""
        if not self.ssh_listen:
            return None
        if self.ssh_public:
            return self.ssh_public
        host = self.ssh_host
        if host in WILDCARDS:
            host = urlsplit(self.base_url()).hostname or host
        return format_hostport(host, ssh_port or self.ssh_port)
