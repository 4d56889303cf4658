"""The join link a customer opens: who is asking, what will happen, and how to start the host.

`/join/{token}` is a page (HTML for a browser, plain text for curl); `/join/{token}/install.sh`
installs the temporary host into a fresh temporary folder from the wheels under
`/join/{token}/wheels/` (built by `adhoc-relay wheelhouse`) and starts it. Everything under a
link answers only while the link is pending: the relay is no anonymous file host.
"""

from __future__ import annotations

import hashlib
import html
import re
import shlex
import unicodedata
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, PlainTextResponse, Response

from relay.service import RelayService, ServiceError
from relay.usecases.shared import LINK_USED
from relay.wheelhouse import HOST_DIST, wheelhouse_dir

WHEEL_NAME = re.compile(r"^[A-Za-z0-9_.+-]{1,200}\.whl$")
_digests: dict[tuple[str, int, int], str] = {}


def _digest(path: Path) -> str:
    """SHA-256 of a wheel, cached by name, size and mtime (pip checks it from the index)."""
    stat = path.stat()
    key = (path.name, stat.st_size, stat.st_mtime_ns)
    if key not in _digests:
        _digests[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return _digests[key]


INSTALL_SCRIPT = r"""#!/bin/sh
# Adhoc temporary host: install into a fresh temporary folder, run, and remove it afterwards.
# Arguments are passed to `adhoc-host join` (e.g. --yes for unattended use, with the code in
# the environment variable ADHOC_JOIN_CODE). Nothing secret goes into a program's arguments,
# which every user of the computer can read: the link reaches the host through the
# environment, and the wheels through a local index file.
# Run it as root, or as a user who may use sudo: it asks sudo itself, giving it the part that
# needs administrator rights on standard input.
set -eu
say() { echo "adhoc: $*" >&2; }
quote() { printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"; }

MAIN=$(cat <<'ADHOC_INSTALL_END'
set -eu
JOIN_URL=__JOIN_URL__
say() { echo "adhoc: $*" >&2; }
PYTHON=
CHECK='import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))'
for candidate in python3.14 python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c "$CHECK" >/dev/null 2>&1; then
        PYTHON=$candidate
        break
    fi
done
if [ -z "$PYTHON" ]; then
    say "Python 3.11 or newer with venv is needed: install it from your system's packages" \
        "(for example: apt install python3 python3-venv) and run the command again"
    exit 1
fi
dir=$(mktemp -d "${TMPDIR:-/tmp}/adhoc-host-install-XXXXXX")
trap 'rm -rf "$dir"' EXIT
trap 'exit 130' INT TERM HUP
: > "$dir/.adhoc-host-install"
echo "Installing the temporary Adhoc host into $dir ..."
"$PYTHON" -m venv "$dir/venv"
# The relay's wheels, each checked against the SHA-256 this script names (the script itself
# came over the pinned connection): no index, no local pip configuration.
cat > "$dir/wheels.html" <<'ADHOC_WHEELS_END'
__WHEEL_INDEX__
ADHOC_WHEELS_END
unset PIP_FIND_LINKS PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_REQUIRE_VIRTUALENV PIP_CERT || true
cert=
if [ -n "${SSL_CERT_FILE:-}" ]; then  # the authorities this computer trusts, for pip too
    cert="--cert=$SSL_CERT_FILE"
    REQUESTS_CA_BUNDLE=$SSL_CERT_FILE  # pip's HTTP library prefers it to --cert
    export REQUESTS_CA_BUNDLE
fi
PIP_CONFIG_FILE=/dev/null "$dir/venv/bin/python" -m pip install --quiet --no-index \
    --no-cache-dir --disable-pip-version-check $cert --find-links "$dir/wheels.html" \
    __HOST_DIST__
extra=
if [ "$(id -u)" != 0 ]; then
    extra=--allow-unprivileged
fi
# This script may itself arrive on standard input (curl ... | sh): the host reads the terminal.
if (: < /dev/tty) 2>/dev/null; then
    input=/dev/tty
else
    input=/dev/null
fi
status=0
ADHOC_JOIN_URL="$JOIN_URL" ADHOC_HOST_INSTALL_DIR="$dir" "$dir/venv/bin/adhoc-host" join \
    $extra "$@" < "$input" || status=$?
exit "$status"
ADHOC_INSTALL_END
)

if [ "$(id -u)" = 0 ] || [ "${ADHOC_ALLOW_UNPRIVILEGED:-}" = 1 ]; then
    eval "$MAIN"
elif command -v sudo >/dev/null 2>&1; then
    say "administrator rights are needed to receive support: sudo may ask for your password"
    # sudo clears the environment: what the host needs of it goes along with the script.
    keep=
    for name in HTTPS_PROXY https_proxy HTTP_PROXY http_proxy NO_PROXY no_proxy \
            SSL_CERT_FILE SSL_CERT_DIR TMPDIR ADHOC_JOIN_CODE; do
        value=$(printenv "$name" || true)
        if [ -n "$value" ]; then
            keep="${keep}export $name=$(quote "$value")
"
        fi
    done
    printf '%s%s\n' "$keep" "$MAIN" | sudo sh -s -- "$@"
else
    say "administrator rights are needed to receive support, and this computer has no sudo:" \
        "become root (su -) and run the command again"
    exit 1
fi
"""


def _script(lines: str) -> str:
    """A script that says `lines` (the relay's words) on standard error and fails: what a
    customer's `curl … | sh` runs when the relay cannot install the host."""
    return f"#!/bin/sh\necho {shlex.quote('adhoc: ' + lines)} >&2\nexit 1\n"


def refusal_script(status: int, detail: str) -> Response:
    """The answer to a refused install.sh: a script saying why, exiting 1."""
    return PlainTextResponse(_script(detail), status_code=status,
                             media_type="text/x-shellscript")


def unavailable_script(join_url: str, data_dir: Path, *, failed: bool = False) -> str:
    # Not pip's own words: they may name the operator's package index and its credentials.
    why = " (preparing its files failed: the relay's log says why)" if failed else ""
    return _script(f"this relay cannot install the host yet{why}: its operator has to run "
                   f"'adhoc-relay --data-dir {data_dir} wheelhouse'. With Adhoc installed, "
                   f"run: sudo adhoc-host join {join_url}")


def preparing_script(join_url: str) -> str:
    return _script("the relay is still preparing the installer (a minute or two after it "
                   "first starts): run the same command again in a minute. With Adhoc "
                   f"installed, run: sudo adhoc-host join {join_url}")


def wheel_index(wheels: Path, wheels_url: str) -> str:
    """An HTML page of links to the relay's wheels, each with its SHA-256 (pip checks it)."""
    return "".join(
        f'<a href="{html.escape(wheels_url + p.name)}#sha256={_digest(p)}">'
        f'{html.escape(p.name)}</a>\n' for p in sorted(wheels.glob("*.whl")))


def install_script(join_url: str, index: str) -> str:
    return (INSTALL_SCRIPT.replace("__JOIN_URL__", shlex.quote(join_url))
            .replace("__WHEEL_INDEX__", index.rstrip("\n"))
            .replace("__HOST_DIST__", HOST_DIST))


def _wants_text(request: Request) -> bool:
    agent = request.headers.get("user-agent", "").lower()
    accept = request.headers.get("accept", "")
    return agent.startswith(("curl/", "wget/", "httpie/")) or "text/html" not in accept


# The join link carries its secret in the URL: no caching, no referrer, no script, no framing.
JOIN_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; base-uri 'none'; form-action 'none'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def plain(text: object) -> str:
    """Foreign text (a company name, a login) safe to print on a customer's terminal: control,
    format and bidi characters shown as escapes, never sent as themselves."""
    return "".join(c if unicodedata.category(c)[0] != "C" or c == " "
                   else c.encode("unicode_escape").decode("ascii") for c in str(text))


def join_text(info: dict, join_url: str, install_command: str) -> str:
    info = {**info, "technician": plain(info["technician"]), "company": plain(info["company"])}
    return (
        f"{info['technician']} of {info['company']} asks to give you remote support.\n"
        f"Only continue if you asked {info['company']} for help.\n\n"
        "What will happen:\n"
        "  1. You run the command below. It needs administrator rights: it asks sudo for\n"
        "     them (or run it as root). It starts the temporary Adhoc host in this terminal.\n"
        "  2. The technician reads you a 6-digit security code; you type it in.\n"
        f"  3. For {info['session_hours']} hours the technician can open a shell, files and a\n"
        "     system view on this computer. The window shows who is connected and what\n"
        "     they do; one key ends the session at once. Then the software removes itself.\n\n"
        f"Run:\n  {install_command}\n\n"
        f"Or, with Adhoc installed:\n  sudo adhoc-host join {join_url}\n"
    )


def add_routes(app: FastAPI, service: RelayService) -> None:
    @app.get("/join/{token}", include_in_schema=False)
    async def join_page(token: str, request: Request) -> Response:
        response = await _join_page(token, request)
        response.headers.update(JOIN_HEADERS)
        return response

    async def _join_page(token: str, request: Request) -> Response:
        try:
            info = await service.join_info(token)
        except ServiceError as exc:
            if _wants_text(request):
                return PlainTextResponse(exc.detail + "\n", status_code=exc.status)
            return HTMLResponse(_page("Link not valid", f"<p>{html.escape(exc.detail)}</p>"),
                                status_code=exc.status)
        if info["state"] != "pending":
            if _wants_text(request):
                return PlainTextResponse(LINK_USED + "\n", status_code=410)
            return HTMLResponse(_page("Link no longer valid", f"<p>{LINK_USED}</p>"),
                                status_code=410)
        text = join_text(info, service.join_url(token), service.install_command(token))
        if _wants_text(request):
            return PlainTextResponse(text)
        return HTMLResponse(_page(
            f"Remote support from {plain(info['company'])}",
            f"<pre>{html.escape(text)}</pre>"))

    add_install_routes(app, service)


def add_install_routes(app: FastAPI, service: RelayService) -> None:
    wheels = wheelhouse_dir(service.settings.data_dir)

    async def pending(token: str) -> None:
        info = await service.join_info(token)
        if info["state"] != "pending":
            raise ServiceError(410, "link_used", LINK_USED)

    @app.get("/join/{token}/install.sh", include_in_schema=False)
    async def install(token: str) -> Response:
        try:
            await pending(token)
        except ServiceError as exc:
            return refusal_script(exc.status, exc.detail)
        join_url = service.join_url(token)
        if any(wheels.glob("adhoc_host-*.whl")):
            script = install_script(join_url, wheel_index(wheels,
                                                          f"{service.link_url(token)}/wheels/"))
        elif service.wheels.preparing:
            script = preparing_script(join_url)
        else:
            script = unavailable_script(join_url, service.settings.data_dir,
                                        failed=service.wheels.failure is not None)
        return PlainTextResponse(script, media_type="text/x-shellscript",
                                 headers={"Cache-Control": "no-store"})

    @app.get("/join/{token}/wheels/", include_in_schema=False)
    async def wheel_listing(token: str) -> Response:
        await pending(token)
        links = wheel_index(wheels, "")
        return HTMLResponse(f"<!doctype html><html><body>\n{links}</body></html>\n",
                            headers={"Cache-Control": "no-store"})

    @app.get("/join/{token}/wheels/{name}", include_in_schema=False)
    async def wheel_file(token: str, name: str) -> Response:
        await pending(token)
        path = wheels / name
        if not WHEEL_NAME.match(name) or not path.is_file():
            raise ServiceError(404, "not_found", "no such file")
        return FileResponse(path, media_type="application/octet-stream")


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title></head><body><h1>{html.escape(title)}</h1>{body}</body></html>")
