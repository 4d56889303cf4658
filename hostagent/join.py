"""Reading the join link and activating the session with the security code (HTTP to the relay).

The link's token, the code and the agent secret the relay hands back are secrets: they are held
as `Secret` and revealed only in the request that needs them. Whatever the relay answers is
shown to the customer as text (hostagent/text.py), and every way a request can fail becomes a
`JoinError` with a sentence that says what to do.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import platform
import re
import socket
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import asyncssh
import httpx

from common.proxy import ProxySettingError, proxy_for
from common.reach import explain, http_client, http_route, origin
from common.secret import Secret
from common.tls import PIN_PREFIX, valid_pin
from hostagent.text import printable

TIMEOUT = httpx.Timeout(15.0, connect=10.0)
CODE_DIGITS = 6
_CODE_SEPARATORS = re.compile(r"[\s\-]+")


class JoinError(Exception):
    """The link or the code was refused; `final` means trying again cannot help."""

    def __init__(self, message: str, code: str = "error", final: bool = True) -> None:
        super().__init__(message)
        self.code = code
        self.final = final


# What a join link ends in: the relay's token (secrets.token_urlsafe, 43 characters today).
# Anything else, such as 100 KB pasted or a control character, is not a link worth sending.
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,128}")


@dataclass(frozen=True)
class JoinLink:
    base_url: str
    token: Secret
    # The relay certificate's public key (common/tls.py) when the link names it: then no
    # other key is accepted, whoever signed it.
    pin: str | None = None

    @classmethod
    def parse(cls, url: str) -> JoinLink:
        try:
            parts = urlsplit(url.strip())
        except ValueError:  # an unbalanced [ or ] in the host
            parts = urlsplit("")
        segments = [s for s in parts.path.split("/") if s]
        try:
            parts.port  # noqa: B018 (raises on a port that is not a number or out of range)
        except ValueError:
            parts = parts._replace(netloc="")
        if parts.scheme not in ("http", "https") or not parts.netloc or len(segments) < 2 \
                or segments[-2] != "join" or not _TOKEN.fullmatch(segments[-1]):
            raise JoinError("that is not an Adhoc join link: copy the whole link from the "
                            "invitation email (it looks like https://relay.example/join/...)",
                            "bad_link")
        pin = None
        if parts.fragment:
            pin = parts.fragment.removeprefix(PIN_PREFIX)
            if not parts.fragment.startswith(PIN_PREFIX) or not valid_pin(pin):
                raise JoinError("the end of the link (after #) is damaged: copy the whole "
                                "link from the invitation email", "bad_link")
        prefix = "/".join(segments[:-2])
        base = f"{parts.scheme}://{parts.netloc}" + (f"/{prefix}" if prefix else "")
        return cls(base, Secret(segments[-1]), pin)

    @property
    def api(self) -> str:
        return f"{self.base_url}/api/v1/join/{self.token.reveal()}"

    def client(self, **options) -> httpx.AsyncClient:
        """An HTTP client for the relay: the environment's proxy, the system's trust store
        and the link's pin (common/reach.py)."""
        try:
            return http_client(self.base_url, pin=self.pin, **options)
        except ProxySettingError as exc:
            raise JoinError(f"{exc}, then run the command again", "proxy") from None

    def unreachable(self, exc: BaseException) -> JoinError:
        """A failed request to the relay, in words the customer can pass on."""
        scheme, host, port = origin(self.base_url)
        proxy = proxy_for(scheme, host, port)
        why = explain(exc, host, port, proxy).replace(self.token.reveal(), "…")
        return JoinError(f"cannot reach the relay: {printable(why)} (tried "
                         f"{printable(http_route(self.base_url))}); try again, or tell your "
                         "technician these words", "unreachable", final=False)


def normalise_code(typed: str | Secret) -> Secret:
    """The six digits of a security code as a customer may type it ("123 456", "123-456",
    full-width digits); anything else is refused here, without spending one of the tries."""
    text = unicodedata.normalize("NFKC", typed.reveal() if isinstance(typed, Secret) else typed)
    digits = _CODE_SEPARATORS.sub("", text)
    if len(digits) != CODE_DIGITS or not digits.isascii() or not digits.isdigit():
        raise JoinError("the security code is 6 digits (spaces and dashes are fine): type it "
                        "again as your technician reads it to you", "bad_code", final=False)
    return Secret(digits)


@dataclass(frozen=True)
class Activation:
    session_id: str
    agent_secret: Secret
    ssh: str | None  # host:port of the relay's SSH port; None: SSH over WebSocket only
    relay_host_key: str
    expires_at: str
    features: tuple[str, ...]
    password_verifier: str
    company: str
    technician: str
    # Every relay of the cluster, as the relay listed them ([{"ssh", "http"}]): where the
    # agent goes when its relay dies (common/reach.py cluster_routes reads them).
    relays: tuple = ()
    technician_key: str | None = None  # may log in as `technician` (OpenSSH public key)


def _public_key(data: dict) -> str | None:
    """The technician's key from an activation answer, if it sent one that parses."""
    line = data.get("technician_key")
    if not isinstance(line, str) or not line:
        return None
    try:
        asyncssh.import_public_key(line)
    except (asyncssh.KeyImportError, ValueError):
        return None
    return line


def _error_from(response: httpx.Response) -> JoinError:
    if response.status_code == 407:  # a proxy for plain http:// answered, not the relay
        return JoinError("the proxy asks for a user name and password: put them in the proxy "
                         "setting, as http://user:password@proxy:port", "proxy")
    try:
        body = response.json()
        code, detail = str(body.get("error", "error")), str(body.get("detail", ""))
    except (ValueError, AttributeError):
        code, detail = "error", ""
    if not detail:
        detail = (f"the relay answered HTTP {response.status_code}: check the link, or ask "
                  "your technician for a new invitation")
    final = code not in ("wrong_code", "rate_limited")
    return JoinError(printable(detail, 500), code, final)


def _not_understood(link: JoinLink) -> JoinError:
    return JoinError(f"the answer from {printable(link.base_url)} is not an Adhoc relay's: "
                     "check the link in the invitation email", "bad_answer")


def machine_id() -> str | None:
    """A stable id of this computer, so the relay can refuse a second session on it."""
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            value = Path(path).read_text().strip()
        except OSError:
            continue
        if value:
            return value
    return None


def host_facts() -> dict[str, str]:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return {"hostname": socket.gethostname(), "os": f"{platform.system()} {platform.release()}",
            "user": user}


async def _request(link: JoinLink, method: str, url: str, **kwargs) -> httpx.Response:
    async with link.client(timeout=TIMEOUT) as client:
        try:
            return await client.request(method, url, **kwargs)
        except (httpx.HTTPError, httpx.InvalidURL, OSError) as exc:
            raise link.unreachable(exc) from None


async def fetch_info(link: JoinLink) -> dict:
    """Who is asking (company, technician) and the link's state, as the relay knows them."""
    response = await _request(link, "GET", link.api)
    if response.status_code != 200:
        raise _error_from(response)
    try:
        info = response.json()
        for key in ("company", "technician", "state"):
            if not isinstance(info[key], str):
                raise TypeError(key)
    except (ValueError, KeyError, TypeError):
        raise _not_understood(link) from None
    return info


async def activate(link: JoinLink, code: Secret, host_key: str) -> Activation:
    body = {"code": code.reveal(), "host_key": host_key, "machine_id": machine_id(),
            **host_facts()}
    response = await _request(link, "POST", f"{link.api}/activate", json=body)
    if response.status_code != 200:
        raise _error_from(response)
    try:
        data = response.json()
        ssh = data.get("ssh")
        if ssh:
            host, _, port = ssh.rpartition(":")
            int(port)  # a relay that names no port is not understood (ValueError)
            if not host.strip("[]"):  # ":8722": the relay's own host name
                ssh = f"{urlsplit(link.base_url).hostname}:{port}"
        return Activation(
            session_id=data["session_id"], agent_secret=Secret(data["agent_secret"]),
            ssh=ssh or None, relay_host_key=data["relay_host_key"],
            expires_at=data["expires_at"], features=tuple(data["features"]),
            password_verifier=data["password_verifier"], company=data["company"],
            technician=data["technician"], technician_key=_public_key(data),
            relays=tuple(data["relays"]) if isinstance(data.get("relays"), list) else ())
    except (ValueError, KeyError, TypeError, AttributeError):
        raise _not_understood(link) from None


async def end_session(link: JoinLink, session_id: str, secret: Secret, *, attempts: int = 3,
                      per_try: float = 2.0) -> bool:
    """Tell the relay the customer ended the session; a few quick tries, then give up.

    The agent has already removed itself by then: if the relay is out of reach, the session
    shows the host offline until it expires.
    """
    url = f"{link.base_url}/api/v1/agent/end"
    headers = {"Authorization": f"Bearer {session_id}:{secret.reveal()}"}
    async with link.client(timeout=httpx.Timeout(per_try)) as client:
        for attempt in range(attempts):
            try:
                response = await client.post(url, headers=headers)
            except (httpx.HTTPError, OSError):
                if attempt + 1 < attempts:
                    await asyncio.sleep(0.5 * (attempt + 1))
                continue
            # 401: the session had already ended (expired, or the technician ended it).
            return response.status_code in (200, 401)
    return False
