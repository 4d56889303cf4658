"""The console for OpenSSH users: `adhoc-console ssh-config` (a Host block per live session, so
stock `ssh`, `scp` and `rsync` reach a host by its session id or the customer's name, both host
keys pinned) and `--session-key` (a key sent with each new session, for scripts)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from textual.widgets import DataTable, Input, Label

from tests.hostagent.test_customer_terminal import activate, customer_of
from tests.hostagent.test_forwarding import echo_service, through
from tests.openssh import make_key
from tests.support import (
    PASSWORD,
    SESSION_PASSWORD,
    Api,
    RelayProcess,
    new_agent,
    run_cli,
)
from tests.tui.helpers import give_password, wait_until
from tui import sshconfig
from tui.app import ConsoleApp
from tui.client import RelayClient
from tui.screens.openssh import OpenSSHModal


def console(home: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    env = dict(os.environ, HOME=str(home), ADHOC_CONSOLE_CONFIG_DIR=str(home / "conf"))
    return subprocess.run([sys.executable, "-m", "tui.cli", *args], input=stdin, text=True,
                          capture_output=True, env=env, timeout=60)


def openssh(home: Path, tool: str, *args: str) -> subprocess.CompletedProcess:
    askpass = home / "askpass"
    askpass.write_text(f"#!/bin/sh\necho '{SESSION_PASSWORD}'\n")
    askpass.chmod(0o700)
    env = dict(os.environ, HOME=str(home), SSH_ASKPASS=str(askpass),
               SSH_ASKPASS_REQUIRE="force", DISPLAY=":0")
    env.pop("SSH_AUTH_SOCK", None)
    return subprocess.run([tool, "-F", str(home / ".ssh" / "config"), *args],
                          capture_output=True, text=True, env=env, timeout=120,
                          stdin=subprocess.DEVNULL)


async def ssh_and_scp(home: Path, tmp_path: Path, ssh_name: str, scp_name: str,
                      text: str) -> None:
    """Stock ssh runs a command, and scp copies a file, through the written config."""
    ran = await asyncio.to_thread(openssh, home, "ssh", ssh_name, "echo via-$((40+2))")
    assert (ran.returncode, ran.stdout) == (0, "via-42\n"), ran.stderr
    payload = tmp_path / "payload.txt"
    payload.write_text(text)
    copied = await asyncio.to_thread(openssh, home, "scp", str(payload),
                                     f"{scp_name}:{tmp_path}/copied.txt")
    assert copied.returncode == 0, copied.stderr
    assert (tmp_path / "copied.txt").read_text() == text


async def test_write_then_ssh_scp_rsync_by_id_and_name(relay, agents, tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    key = make_key(home / ".ssh" / "id_ed25519")
    run_cli(relay.data_dir, "technician", "add-key", "alice", f"{key}.pub")
    # The technician's own config: kept, and its IdentityFile applies after the Include.
    own = f"Host *\n  IdentityFile {key}\n  IdentitiesOnly yes\n"
    (home / ".ssh" / "config").write_text(own)
    async with Api(relay.base_url) as api:
        session = await api.create_session("dana.smith@example.com")
        agent = new_agent(agents, tmp_path, session)
        agent.start()
        await agent.wait_for_line("Connected to the relay")
        view = await api.wait_for(session["id"], lambda v: v["online"])
        async with Api(relay.base_url, login="bob") as bob:
            pending = await bob.create_session("eve@example.com")
    login = await asyncio.to_thread(console, home, "login", relay.base_url, "--login", "alice",
                                    "--password-stdin", stdin=PASSWORD + "\n")
    assert login.returncode == 0, login.stderr

    shown = await asyncio.to_thread(console, home, "ssh-config", session["id"])
    assert shown.returncode == 0, shown.stderr
    assert f"Host {session['id']} adhoc-dana.smith\n" in shown.stdout
    assert "  ProxyJump adhoc-relay\n" in shown.stdout
    assert f"  HostKeyAlias adhoc-{session['id']}\n" in shown.stdout
    pinned = " ".join(view["host_key"].split()[:2])
    assert f"#   adhoc-{session['id']} {pinned}\n" in shown.stdout
    assert not (home / ".ssh" / "adhoc").exists()  # printing writes nothing

    for _ in range(2):  # twice: the Include is added once
        written = await asyncio.to_thread(console, home, "ssh-config", "--write")
        assert written.returncode == 0, written.stderr
    assert "ssh adhoc-dana.smith    # dana.smith@example.com" in written.stdout
    main = (home / ".ssh" / "config").read_text()
    include = f"Include {home / '.ssh' / 'adhoc' / 'config'}"
    assert main.startswith(include + "\n") and main.count(include) == 1 and main.endswith(own)
    assert oct((home / ".ssh" / "adhoc" / "known_hosts").stat().st_mode & 0o777) == "0o600"
    config = (home / ".ssh" / "adhoc" / "config").read_text()
    assert f"{pending['id']}: waiting for the customer's security code" in config

    await ssh_and_scp(home, tmp_path, session["id"], "adhoc-dana.smith", "pinned both ways\n")
    synced = await asyncio.to_thread(
        subprocess.run, ["rsync", "-e", f"ssh -F {home / '.ssh' / 'config'}",
                         f"{session['id']}:{tmp_path}/copied.txt", str(tmp_path / "back.txt")],
        capture_output=True, text=True, timeout=120,
        env=dict(os.environ, HOME=str(home), SSH_ASKPASS=str(home / "askpass"),
                 SSH_ASKPASS_REQUIRE="force", DISPLAY=":0"))
    assert synced.returncode == 0, synced.stderr
    assert (tmp_path / "back.txt").read_text() == "pinned both ways\n"


async def test_with_the_ssh_port_off_the_written_config_goes_through_the_tunnel(
        data_dir: Path, agents, tmp_path: Path) -> None:
    """A relay behind one HTTPS port (`serve --ssh off`): `ssh-config --write` makes the relay
    hop a ProxyCommand of this console's `tunnel`, and stock ssh and scp work by name."""
    relay = RelayProcess(data_dir, ("--ssh", "off"))
    relay.start()
    try:
        home = tmp_path / "home"
        (home / ".ssh").mkdir(parents=True)
        key = make_key(home / ".ssh" / "id_ed25519")
        run_cli(relay.data_dir, "technician", "add-key", "alice", f"{key}.pub")
        (home / ".ssh" / "config").write_text(f"Host *\n  IdentityFile {key}\n")
        async with Api(relay.base_url) as api:
            session = await api.create_session("dana@example.com")
            new_agent(agents, tmp_path, session).start()
            view = await api.wait_for(session["id"], lambda v: v["online"])
        login = await asyncio.to_thread(console, home, "login", relay.base_url, "--login",
                                        "alice", "--password-stdin", stdin=PASSWORD + "\n")
        assert login.returncode == 0, login.stderr
        written = await asyncio.to_thread(console, home, "ssh-config", "--write")
        assert written.returncode == 0, written.stderr
        config = (home / ".ssh" / "adhoc" / "config").read_text()
        assert f" tunnel {relay.base_url}\n" in config
        await ssh_and_scp(home, tmp_path, "adhoc-dana", view["id"], "one port\n")
    finally:
        relay.stop()


def test_names_from_the_relay_never_become_directives() -> None:
    relay = sshconfig.relay_from({"ssh": "relay.example:8722",
                                  "host_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB"},
                                 "alice")
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA"
    views = [
        {"id": "a" * 16, "state": "active", "host_key": key,
         "customer_email": "x\n  ProxyCommand touch /tmp/pwned@example.com"},
        {"id": "b" * 16 + "\nHost *", "state": "active", "host_key": key,
         "customer_email": "y@example.com"},
        {"id": "c" * 16, "state": "active", "host_key": key + "\n  ProxyCommand sh",
         "customer_email": "z@example.com"},
    ]
    chosen, notes = sshconfig.entries(views)
    text = sshconfig.render(relay, chosen, notes, "/k")
    assert [e.session_id for e in chosen] == ["a" * 16, "c" * 16]  # the key's tail dropped
    assert "ProxyCommand" not in "\n".join(line for line in text.splitlines()
                                           if not line.lstrip().startswith("#"))
    assert all(line.startswith(("#", "Host ", "  ")) or not line for line in text.splitlines())
    assert "Host *" not in text


@pytest.mark.skipif(shutil.which("ssh") is None, reason="OpenSSH client is not installed")
def test_a_home_with_a_space_in_its_path_is_read_by_openssh_as_written(tmp_path: Path) -> None:
    """~/.ssh of "Dana Smith": the Include and the pinned keys' file are each one path to
    OpenSSH (`ssh -G` prints the options it would use), not two."""
    relay = sshconfig.relay_from({"ssh": "relay.example:8722",
                                  "host_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB"},
                                 "alice")
    chosen, notes = sshconfig.entries([{"id": "a" * 16, "state": "active",
                                        "host_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA",
                                        "customer_email": "dana@example.com"}])
    ssh_dir = tmp_path / "Dana Smith" / ".ssh"
    for _ in range(2):  # the quoted Include is recognised: added once
        sshconfig.write(relay, chosen, notes, ssh_dir)
    assert (ssh_dir / "config").read_text().count("Include") == 1
    # Made here, ~/.ssh is private as OpenSSH makes it, and so is what is in it.
    assert [oct(path.stat().st_mode & 0o777) for path in
            (ssh_dir, ssh_dir / "adhoc", ssh_dir / "config")] == ["0o700", "0o700", "0o600"]
    known = ssh_dir / "adhoc" / "known_hosts"
    for host, alias in (("a" * 16, "adhoc-" + "a" * 16),
                        (sshconfig.RELAY_ALIAS, relay.key_alias)):
        used = subprocess.run(["ssh", "-F", str(ssh_dir / "config"), "-G", host],
                              capture_output=True, text=True, timeout=30,
                              stdin=subprocess.DEVNULL)
        assert used.returncode == 0, used.stderr
        options = dict(line.split(" ", 1) for line in used.stdout.splitlines() if " " in line)
        assert options["hostkeyalias"] == alias
        assert options["userknownhostsfile"] == str(known)


def test_a_config_it_cannot_write_is_a_sentence_that_says_what_to_do(tmp_path: Path) -> None:
    """~/.ssh/config kept read-only elsewhere (dotfiles in a read-only store; here /proc, which
    root cannot write either), or ~/.ssh/adhoc taken by a file: a sentence, not a traceback."""
    relay = sshconfig.relay_from({"ssh": "relay.example:8722",
                                  "host_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB"},
                                 "alice")
    linked = tmp_path / "linked" / ".ssh"
    linked.mkdir(parents=True)
    (linked / "config").symlink_to("/proc/version")
    with pytest.raises(sshconfig.ConfigError) as refused:
        sshconfig.write(relay, [], [], linked)
    assert (linked / "adhoc" / "config").exists()
    assert str(refused.value).endswith(f"put the line `Include {linked / 'adhoc' / 'config'}` "
                                       "at its top yourself")
    taken = tmp_path / "taken" / ".ssh"
    taken.mkdir(parents=True)
    (taken / "adhoc").write_text("not a folder")
    with pytest.raises(sshconfig.ConfigError, match=r"cannot write the sessions to .* run "
                                                    r"ssh-config without --write"):
        sshconfig.write(relay, [], [], taken)


def test_a_relay_without_an_ssh_port_is_reached_through_the_tunnel() -> None:
    """`serve --ssh off`: GET /relay says ssh null; the relay's block carries OpenSSH through
    `adhoc-console tunnel URL`; a URL that could smuggle shell or ssh tokens is refused."""
    info = {"ssh": None, "host_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB"}
    relay = sshconfig.relay_from(info, "alice", "https://support.example.com/")
    assert (relay.host, relay.port) == ("support.example.com", 443)
    text = sshconfig.render(relay, [], [], "/k")
    assert "tunnel https://support.example.com\n" in text
    assert sshconfig.ssh_command(relay, "a" * 16).count("ProxyCommand") == 2
    for url in (None, "https://x.example/$(touch /tmp/p)", "https://x.example/%h",
                "https://x.example/ a", "http://x.example;sh"):
        with pytest.raises(sshconfig.ConfigError, match="ProxyCommand adhoc-console tunnel"):
            sshconfig.relay_from(info, "alice", url)


async def test_the_console_sends_its_session_key(relay, tmp_path: Path) -> None:
    """`adhoc-console --session-key FILE`: every session created carries that key."""
    key = make_key(tmp_path / "script_key")
    line = (tmp_path / "script_key.pub").read_text()
    async with Api(relay.base_url) as api:
        client = RelayClient(relay.base_url, api.token, session_key=line.strip())
        try:
            created = await client.create_session("dana@example.com", SESSION_PASSWORD)
        finally:
            await client.aclose()
        shown = subprocess.run(["ssh-keygen", "-lf", f"{key}.pub"], capture_output=True,
                               text=True, check=True).stdout.split()[1]
        assert created["technician_key_fingerprint"] == shown
    (tmp_path / "notes.txt").write_text("not a key\n")
    bad = await asyncio.to_thread(console, tmp_path, "--session-key",
                                  str(tmp_path / "notes.txt"), "--relay", relay.base_url)
    assert bad.returncode != 0
    assert "is not an SSH public key: give the .pub file" in bad.stderr


async def test_forward_key_opens_a_local_port_the_customer_allows(relay, tmp_path: Path) -> None:
    """Key o on a session: the ssh command (copied with OSC 52), and a local port forwarded to
    a service on the customer's side, allowed on the customer's real prompt."""
    async with customer_of(relay, tmp_path) as (api, session, agent), echo_service() as printer:
        await activate(agent, session)
        await api.wait_for(session["id"], lambda v: v["online"])
        port = (await api.relay_info())["ssh"].rsplit(":", 1)[1]
        app = ConsoleApp(RelayClient(relay.base_url, api.token), "alice")
        async with app.run_test(size=(80, 24)) as pilot:
            table = app.screen.query_one("#sessions", DataTable)
            await wait_until(pilot, lambda: table.row_count == 1)
            await pilot.press("o")
            await wait_until(pilot, lambda: isinstance(app.screen, OpenSSHModal))
            command = f"ssh -J alice@127.0.0.1:{port} support@{session['id']}"
            shown = [str(label.render()) for label in app.screen.query(Label)]
            assert command in shown
            await pilot.press("ctrl+y")
            assert app.clipboard == command
            destination = app.screen.query_one("#destination", Input)
            destination.value = "no port here"
            await pilot.press("enter")
            assert "Give the destination as host:port" in \
                str(app.screen.query_one("#error", Label).render())
            destination.value = f"127.0.0.1:{printer}"
            await pilot.press("enter")
            await give_password(pilot, app)
            await wait_until(pilot, lambda: app.connector.open_forwards(session["id"]), 30)
            local = app.connector.open_forwards(session["id"])[0]
            assert local.endswith(f" → 127.0.0.1:{printer}")
            answer = asyncio.create_task(through(int(local.split()[0].rsplit(":", 1)[1]),
                                                 b"from the console\n"))
            await agent.wait_for(f"Technician alice wants to reach 127.0.0.1:{printer}")
            agent.type("y")
            assert await answer == b"FROM THE CONSOLE\n"
