"""OpenSSH config for the company's live sessions: a `Host` block per session (ProxyJump through
the relay, HostKeyAlias, keepalive) and the pinned host keys, so `ssh <id>`, `scp`, `sftp`,
`rsync` and `sshfs` reach a customer's computer with nothing else to set up.

`adhoc-console ssh-config` prints it; with `--write` it goes to ~/.ssh/adhoc/config (keys in
~/.ssh/adhoc/known_hosts), included from ~/.ssh/config. Every name in it comes from the relay
(session ids, customer emails), so each is checked against a strict pattern before it is
written into a config file: a hostile string must not become an ssh_config directive.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from common.transport import INNER_USER

SESSION_ID = re.compile(r"^[a-z2-7]{16}$")
LOGIN = re.compile(r"^[a-z0-9._-]{1,64}$")
HOST = re.compile(r"^[A-Za-z0-9.-]{1,253}$|^[0-9A-Fa-f:]{2,39}$")
# A relay URL that may go into a ProxyCommand: no space, quote, % (ssh's token character) or
# anything a shell would read.
RELAY_URL = re.compile(r"^(https?)://([A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:]{2,39}\])"
                       r"(?::([0-9]{1,5}))?(/[A-Za-z0-9._~/-]*)?$")
KEY = re.compile(r"^(ssh-ed25519|ecdsa-sha2-nistp(256|384|521)|rsa-sha2-(256|512)|ssh-rsa|"
                 r"sk-ssh-ed25519@openssh\.com|sk-ecdsa-sha2-nistp256@openssh\.com) "
                 r"[A-Za-z0-9+/]+={0,3}$")
RELAY_ALIAS = "adhoc-relay"
KEEPALIVE = ("  ServerAliveInterval 15\n"  # the relay's own keepalive is 20 s x 3
             "  ServerAliveCountMax 3\n")


class ConfigError(Exception):
    """What the relay sent cannot go into an ssh_config file; says what and what to do."""


@dataclass(frozen=True)
class Relay:
    host: str
    port: int
    login: str
    host_key: str  # "ssh-ed25519 AAAA..."
    tunnel: str | None = None  # the relay's URL, when SSH reaches it only through its web port

    @property
    def key_alias(self) -> str:
        return f"adhoc-relay-{self.host}-{self.port}"


def relay_from(info: dict, login: str, url: str | None = None) -> Relay:
    """The relay as GET /api/v1/relay describes it, checked. A relay without an SSH port
    (`serve --ssh off`) is reached through `adhoc-console tunnel URL`: `url` is the relay's."""
    if not LOGIN.match(login):
        raise ConfigError(f"the login {login!r} cannot be written into an OpenSSH config")
    key = _key(info.get("host_key"), "the relay")
    if info.get("ssh") is None:
        match = RELAY_URL.match((url or "").rstrip("/"))
        if match is None:
            raise ConfigError("the relay has no SSH port (it serves SSH over its web address "
                              "only) and its URL cannot go into a ProxyCommand: reach it with "
                              "`ProxyCommand adhoc-console tunnel URL`, as docs/CONSOLE.md shows")
        scheme, host, port, _path = match.groups()
        return Relay(host.strip("[]"), int(port or (443 if scheme == "https" else 80)), login,
                     key, tunnel=match.group(0))
    host, _, port = str(info.get("ssh", "")).rpartition(":")
    host = host.strip("[]")
    if not HOST.match(host) or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"the relay's SSH address {info.get('ssh')!r} cannot be written into "
                          "an OpenSSH config: ask your administrator to check --public-url")
    return Relay(host, int(port), login, key)


def tunnel_command(url: str) -> str:
    """`adhoc-console tunnel URL` as a ProxyCommand: this installation's adhoc-console by
    its full path (ssh runs the command with the user's shell and PATH), quoted for the
    shell, with ssh's `%` doubled."""
    beside = Path(sys.executable).parent / "adhoc-console"
    found = str(beside) if beside.exists() else shutil.which("adhoc-console")
    words = [found] if found else [sys.executable, "-m", "tui.cli"]
    return shlex.join([*words, "tunnel", url]).replace("%", "%%")


def config_path(path: Path | str) -> str:
    """A local path as one ssh_config argument: in double quotes when it has a space (a home
    directory such as "/home/Dana Smith"), which OpenSSH would otherwise read as two files."""
    text = str(path)
    return f'"{text}"' if any(ch.isspace() for ch in text) else text


def _key(line: object, whose: str) -> str:
    parts = str(line or "").split()
    key = " ".join(parts[:2])
    if not KEY.match(key):
        raise ConfigError(f"{whose}'s host key is not an OpenSSH public key: refusing to pin it")
    return key


def _alias(email: str) -> str | None:
    """`adhoc-<local part of the customer's email>`, when that is a plain name."""
    local = email.split("@", 1)[0].lower()
    local = re.sub(r"[^a-z0-9._-]", "-", local).strip("-.")[:40]
    return f"adhoc-{local}" if local else None


@dataclass(frozen=True)
class Entry:
    session_id: str
    alias: str | None
    customer: str
    host_key: str
    key_login: bool


def entries(views: list[dict]) -> tuple[list[Entry], list[str]]:
    """The sessions that get a block (active, with a host key), and a note for each live
    session that does not."""
    usable: list[Entry] = []
    notes: list[str] = []
    for view in views:
        session_id = str(view.get("id", ""))
        if not SESSION_ID.match(session_id):
            continue
        if view.get("state") == "pending":
            notes.append(f"{session_id}: waiting for the customer's security code")
            continue
        if view.get("state") != "active":
            continue
        try:
            key = _key(view.get("host_key"), f"session {session_id}")
        except ConfigError as exc:
            notes.append(f"{session_id}: skipped, {exc}")
            continue
        usable.append(Entry(session_id, _alias(str(view.get("customer_email", ""))),
                            _comment(str(view.get("customer_email", ""))), key,
                            bool(view.get("technician_key_fingerprint"))))
    taken = Counter(entry.alias for entry in usable)
    return [entry if taken[entry.alias] == 1 else
            Entry(entry.session_id, None, entry.customer, entry.host_key, entry.key_login)
            for entry in usable], notes


def _comment(text: str) -> str:
    """Foreign text on a comment line: printable ASCII only, no line breaks."""
    return "".join(ch if 32 <= ord(ch) < 127 else "?" for ch in text)[:120]


def render(relay: Relay, chosen: list[Entry], notes: list[str], known_hosts: Path) -> str:
    """The config text: the relay's block, then one block per session."""
    known = config_path(known_hosts)
    out = [f"# Adhoc sessions of {relay.login} on {relay.host}:{relay.port}, written by "
           "`adhoc-console ssh-config`; run it again when sessions change.\n",
           f"Host {RELAY_ALIAS}\n  HostName {relay.host}\n  Port {relay.port}\n"
           + (f"  ProxyCommand {tunnel_command(relay.tunnel)}\n" if relay.tunnel else "")
           + f"  User {relay.login}\n  HostKeyAlias {relay.key_alias}\n"
           f"  UserKnownHostsFile {known}\n  StrictHostKeyChecking yes\n{KEEPALIVE}"]
    for entry in chosen:
        names = " ".join(filter(None, (entry.session_id, entry.alias)))
        out.append(
            f"\n# {entry.customer}\nHost {names}\n  HostName {entry.session_id}\n"
            f"  User {INNER_USER}\n  ProxyJump {RELAY_ALIAS}\n"
            f"  HostKeyAlias adhoc-{entry.session_id}\n  UserKnownHostsFile {known}\n"
            f"  StrictHostKeyChecking yes\n{KEEPALIVE}"
            + ("" if entry.key_login else "  PreferredAuthentications password\n")
            + "  # A shell you can come back to after a drop: ssh -t with\n"
              "  # -o SetEnv=ADHOC_SHELL_ID=main (any name of A-Z a-z 0-9 _ -)\n")
    for note in notes:
        out.append(f"\n# {_comment(note)}\n")
    return "".join(out)


def known_hosts_lines(relay: Relay, chosen: list[Entry]) -> str:
    return "".join([f"{relay.key_alias} {relay.host_key}\n",
                    *(f"adhoc-{entry.session_id} {entry.host_key}\n" for entry in chosen)])


def ssh_command(relay: Relay, session_id: str) -> str:
    """The one line that works without any config (the keys are asked to be confirmed)."""
    if not SESSION_ID.match(session_id):  # it goes into a command the technician pastes
        raise ConfigError("the relay sent a session id that is not one (16 of a-z and 2-7): "
                          "no ssh command for it; tell the relay's administrator")
    host = f"[{relay.host}]" if ":" in relay.host else relay.host
    if relay.tunnel:  # no SSH port: the jump itself goes through the tunnel
        jump = (f"ssh -o ProxyCommand={shlex.quote(tunnel_command(relay.tunnel))} "
                f"-W %h:%p {relay.login}@{host}")
        return f"ssh -o ProxyCommand={shlex.quote(jump)} {INNER_USER}@{session_id}"
    return f"ssh -J {relay.login}@{host}:{relay.port} {INNER_USER}@{session_id}"


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename: mode 0600 for a new file,
    the mode it had otherwise; a symbolic link (dotfiles) is followed, not replaced."""
    path = path.resolve() if path.is_symlink() else path
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        mode = 0o600
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write(relay: Relay, chosen: list[Entry], notes: list[str],
          ssh_dir: Path | None = None) -> list[str]:
    """Write ~/.ssh/adhoc/config and known_hosts, and include them from ~/.ssh/config; what
    was done, one sentence each. ConfigError says what could not be written."""
    ssh_dir = ssh_dir or Path.home() / ".ssh"
    folder = ssh_dir / "adhoc"
    known = folder / "known_hosts"
    try:
        # A ~/.ssh made here is private, as OpenSSH makes it (mkdir's parents get 0755).
        ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        _write_private(known, known_hosts_lines(relay, chosen))
        _write_private(folder / "config", render(relay, chosen, notes, known))
    except OSError as exc:
        raise ConfigError(f"cannot write the sessions to {folder} ({exc.strerror or exc}): "
                          "check that you may write there, or run ssh-config without "
                          "--write and place what it prints yourself") from None
    done = [f"wrote {len(chosen)} session(s) to {folder / 'config'} and their keys to {known}"]
    main = ssh_dir / "config"
    # An absolute path: OpenSSH reads a relative one from the home directory of the password
    # database, whatever HOME says.
    include = f"Include {config_path(folder / 'config')}"
    try:
        try:
            current = main.read_text()
        except FileNotFoundError:
            current = None
        if current is not None and any(line.strip() == include
                                       for line in current.splitlines()):
            return done
        # Include goes first: after a Host line it would apply only to that host.
        _write_private(main, f"{include}\n" + ("\n" + current if current else ""))
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not text"
        raise ConfigError(f"wrote the sessions to {folder / 'config'}, but cannot change "
                          f"{main} ({why}): put the line `{include}` at its top yourself") \
            from None
    done.append(f"added `{include}` at the top of {main}")
    return done
