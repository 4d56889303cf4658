"""OpenSSH's own tools as clients: a throwaway sshd (the reference server, and a jump host), and
`ssh`/`scp`/`sftp`/`rsync` set up to reach a session's host through a real relay.

Nothing here reads ~/.ssh or the machine's ssh_config: every tool runs with a config file of its
own, pinned host keys and a throwaway key.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.ports import free_port
from tests.support import SESSION_PASSWORD, run_cli, stop_process

TIMEOUT = 120


def make_key(path: Path) -> Path:
    """A fresh ed25519 key pair at `path` (and `path`.pub), without a passphrase."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f",
                    str(path)], check=True)
    return path


def sftp_server_path() -> str:
    return next((p for p in ("/usr/lib/openssh/sftp-server",
                             "/usr/libexec/openssh/sftp-server") if os.path.exists(p)),
                "internal-sftp")


@dataclass
class Sshd:
    """A throwaway sshd on a free loopback port with its own host key and a throwaway user key
    (the reference server for differential tests; with `jump`, a jump host that forwards)."""

    folder: Path
    jump: bool = False
    extra_config: str = ""
    port: int = 0
    user: str = field(default_factory=getpass.getuser)
    proc: subprocess.Popen | None = None

    @property
    def key(self) -> Path:
        return self.folder / "user_key"

    @property
    def known_hosts(self) -> Path:
        return self.folder / "known_hosts"

    @property
    def host_public_key(self) -> str:
        return (self.folder / "host_key.pub").read_text().strip()

    def client_args(self) -> list[str]:
        """Options for ssh/sftp/scp: this key only, this host key only, nothing from ~/.ssh."""
        return ["-F", "/dev/null", "-o", f"Port={self.port}", "-i", str(self.key),
                "-o", "IdentitiesOnly=yes",
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes",
                "-o", "BatchMode=yes", "-o", "LogLevel=ERROR"]

    @property
    def destination(self) -> str:
        return f"{self.user}@127.0.0.1"

    def start(self) -> None:
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        if not os.path.exists(sshd):
            raise RuntimeError("OpenSSH's sshd is missing: apt-get install openssh-server")
        self.folder.mkdir(parents=True, exist_ok=True)
        for name in ("host_key", "user_key"):
            make_key(self.folder / name)
        shutil.copy(self.folder / "user_key.pub", self.folder / "authorized_keys")
        self.port = free_port()
        host_pub = " ".join(self.host_public_key.split()[:2])
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {host_pub}\n")
        forwarding = "AllowTcpForwarding yes\n" if self.jump else ""
        config = self.folder / "sshd_config"
        config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\n"
            f"HostKey {self.folder / 'host_key'}\nPidFile {self.folder / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {self.folder / 'authorized_keys'}\n"
            "StrictModes no\nUsePAM no\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
            f"Subsystem sftp {sftp_server_path()}\nLogLevel ERROR\n"
            f"AcceptEnv LANG LC_* TERM COLORTERM TZ\n{forwarding}{self.extra_config}")
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", exist_ok=True)
        with (self.folder / "sshd.log").open("wb") as log:
            self.proc = subprocess.Popen([sshd, "-f", str(config), "-D", "-e"],
                                         stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), timeout=1) as sock:
                if sock.recv(4).startswith(b"SSH-"):
                    return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"sshd did not start: {(self.folder / 'sshd.log').read_text()}")

    def stop(self) -> None:
        stop_process(self.proc)


@contextlib.contextmanager
def sshd_server(*, jump: bool = False, extra_config: str = "",
                kind: type[Sshd] = Sshd) -> Iterator[Sshd]:
    """A started `kind` (Sshd or a subclass) for the length of the block."""
    server = kind(Path(tempfile.mkdtemp(prefix="adhoc-sshd-")), jump=jump,
                  extra_config=extra_config)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.folder, ignore_errors=True)


class RelayPath:
    """OpenSSH tools reaching a session's host as `h` through the relay (`ProxyJump`): the
    technician's key at the relay (registered with `technician add-key`), the session password
    from an askpass program (or `inner_key`, the key sent with the session), both host keys
    pinned."""

    def __init__(self, folder: Path, relay, login: str, session: dict, relay_key: str, *,
                 password: str = SESSION_PASSWORD, inner_key: Path | None = None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.session_id = session["id"]
        self.key = folder / "relay_key"
        if not self.key.exists():
            make_key(self.key)
            run_cli(relay.data_dir, "technician", "add-key", login, f"{self.key}.pub")
        known = folder / "known_hosts"
        host_key = f"{self.session_id} {session['host_key']}\n" if session.get("host_key") \
            else ""  # a session not activated yet has none
        known.write_text(f"[{relay.ssh_host}]:{relay.ssh_port} {relay_key}\n{host_key}")
        self.config = folder / "ssh_config"
        self.config.write_text(
            f"Host adhoc-relay\n  HostName {relay.ssh_host}\n  Port {relay.ssh_port}\n"
            f"  User {login}\n  IdentityFile {self.key}\n  IdentitiesOnly yes\n"
            f"  BatchMode yes\n"
            f"Host h\n  HostName {self.session_id}\n  HostKeyAlias {self.session_id}\n"
            f"  User support\n  ProxyJump adhoc-relay\n"
            + (f"  IdentityFile {inner_key}\n  IdentitiesOnly yes\n  BatchMode yes\n"
               if inner_key else "  PubkeyAuthentication no\n") +
            f"Host *\n  UserKnownHostsFile {known}\n  GlobalKnownHostsFile /dev/null\n"
            "  StrictHostKeyChecking yes\n")
        self.askpass = folder / "askpass"
        self.set_password(password)
        self.env = dict(os.environ, SSH_ASKPASS=str(self.askpass), SSH_ASKPASS_REQUIRE="force",
                        DISPLAY=":0")

    def set_password(self, password: str) -> None:
        self.askpass.write_text(f"#!/bin/sh\nprintf '%s\\n' '{password}'\n")
        self.askpass.chmod(0o700)

    def args(self) -> list[str]:
        return ["-F", str(self.config)]

    def run(self, tool: str, *args: str, input: bytes | None = None,
            env: dict | None = None, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
        """`tool` (ssh, scp, sftp) with this config; stdin is empty unless `input`."""
        return subprocess.run([tool, *self.args(), *args], input=input if input else b"",
                              capture_output=True, env={**self.env, **(env or {})},
                              timeout=timeout)


def run_against(sshd: Sshd, tool: str, *args: str, input: bytes | None = None,
                env: dict | None = None,
                timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    """`tool` against the reference sshd; "h:" and " h " in `args` stand for its address."""
    target = sshd.destination
    fixed = [target if a == "h" else a.replace("h:", f"{target}:", 1) if a.startswith("h:")
             else a for a in args]
    return subprocess.run([tool, *sshd.client_args(), *fixed], input=input if input else b"",
                          capture_output=True, env={**os.environ, **(env or {})},
                          timeout=timeout)
