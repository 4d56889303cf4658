"""adhoc-console's command line (issue 13, polish): ctrl+c or end of input at a prompt, a
mistyped option, a relay address without scheme or with a path, and a relay that cannot be
reached each end in one line that says what to do, a non-zero status and no traceback."""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import pytest

from tests.support import PASSWORD
from tests.tmux import Tmux
from tests.tui.helpers import own_bundled_ports


def console_cli(tmp_path: Path, *args: str, stdin: str | None = None,
                ) -> subprocess.CompletedProcess:
    env = {**os.environ, "ADHOC_CONSOLE_CONFIG_DIR": str(tmp_path / "config"),
           "ADHOC_CONSOLE_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": os.getcwd()}
    return subprocess.run([sys.executable, "-m", "tui.cli", *args], input=stdin, text=True,
                          capture_output=True, env=env, timeout=60,
                          stdin=None if stdin is not None else subprocess.DEVNULL)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("adhoc-console")
    return lines[0]


def stored(tmp_path: Path) -> dict:
    return tomllib.loads((tmp_path / "config" / "console.toml").read_text())["relay"]


def test_a_mistyped_option_is_named_with_what_was_meant(tmp_path: Path) -> None:
    line = one_line_error(console_cli(tmp_path, "--realy", "http://127.0.0.1:8780"))
    assert "--realy" in line and "--relay" in line


@pytest.mark.parametrize(("args", "words"), [
    (("login", "http://[::1"), "cannot read 'http://[::1' as a relay's address"),
    (("login", "[::1"), "cannot read '[::1' as a relay's address"),
    (("--public-url", "http://[x"), "--public-url (or public_url in console.toml): cannot "
                                     "read the URL 'http://[x'"),
    (("--public-url", "ftp://x"), "is not an http:// or https:// URL with a host"),
    (("--listen", "[::1"), "write an IPv6 address in brackets"),
])
def test_an_address_that_cannot_be_read_is_refused_in_words(tmp_path: Path, args: tuple,
                                                            words: str) -> None:
    """An unbalanced bracket (a mistyped IPv6 address) ended in a traceback."""
    line = one_line_error(console_cli(tmp_path, *args))
    assert words in line
    assert not (tmp_path / "config" / "console.toml").exists()


def test_end_of_input_at_the_login_prompt(tmp_path: Path) -> None:
    line = one_line_error(console_cli(tmp_path, "login", "http://127.0.0.1:9"))
    assert "stopped" in line
    assert not (tmp_path / "config" / "console.toml").exists()


@pytest.mark.parametrize(("stdin", "words"), [
    ("", "no password on standard input"),
    ("\n", "no password on standard input"),
    ("a" * 3_000_000, "longer than a password can be (1,024 characters)"),
], ids=["empty", "empty-line", "3MB"])
def test_a_password_on_standard_input_that_cannot_be_one_is_refused_at_once(
        tmp_path: Path, stdin: str, words: str) -> None:
    """An empty pipe, or a file given by mistake, is not sent to the relay (it was, and the
    answer spoke of the relay); port 9 would say "cannot reach" if it were contacted."""
    line = one_line_error(console_cli(tmp_path, "login", "http://127.0.0.1:9", "--login",
                                      "alice", "--password-stdin", stdin=stdin))
    assert words in line and "nothing was changed" in line
    assert "a" * 20 not in line  # what was on standard input is not repeated


def test_an_unreachable_relay_says_what_to_check(tmp_path: Path) -> None:
    line = one_line_error(console_cli(tmp_path, "login", "http://127.0.0.1:9", "--login",
                                      "alice", "--password-stdin", stdin="x\n"))
    assert "cannot reach the relay at http://127.0.0.1:9" in line.lower()
    assert "check that the relay is running" in line


def test_an_address_that_is_not_a_relay_says_to_check_the_url(tmp_path: Path) -> None:
    """Some other web server answers (501 to a POST, in HTML): the console says which
    address answered and to check it, not "the relay answered HTTP 501"."""
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        address = f"127.0.0.1:{server.server_port}"
        line = one_line_error(console_cli(tmp_path, "login", address, "--login", "alice",
                                          "--password-stdin", stdin="x\n"))
    finally:
        server.shutdown()
        server.server_close()
    assert f"http://{address} answered HTTP 501" in line
    assert "check the URL" in line


def test_a_wrong_password_is_one_line(relay, tmp_path: Path) -> None:
    line = one_line_error(console_cli(tmp_path, "login", relay.base_url, "--login", "alice",
                                      "--password-stdin", stdin="wrong-password\n"))
    assert "wrong-password" not in line


def test_login_takes_an_address_without_scheme_or_with_the_api_path(relay,
                                                                    tmp_path: Path) -> None:
    bare = relay.base_url.removeprefix("http://")  # 127.0.0.1:PORT
    result = console_cli(tmp_path, "login", bare, "--login", "alice", "--password-stdin",
                         stdin=PASSWORD + "\n")
    assert result.returncode == 0, result.stderr
    assert stored(tmp_path)["url"] == relay.base_url
    result = console_cli(tmp_path, "login", f"{relay.base_url}/api/v1/", "--login", "alice",
                         "--password-stdin", stdin=PASSWORD + "\n")
    assert result.returncode == 0, result.stderr
    assert stored(tmp_path)["url"] == relay.base_url
    assert PASSWORD not in result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed; CI installs it")
def test_ctrl_c_at_the_password_prompt(relay, tmp_path: Path) -> None:
    env = {"ADHOC_CONSOLE_CONFIG_DIR": str(tmp_path / "config"), "PYTHONPATH": os.getcwd()}
    tmux = Tmux("cli", tmp_path / "tmux.sock")
    # bash, not sh: dash would die of the ctrl+c as well, before it says how the console ended
    tmux.start(f"bash -c '{sys.executable} -m tui.cli login {relay.base_url}; "
               "echo console-exited-$?; sleep 600'", env, cols=80, rows=24)
    try:
        tmux.wait_for("Login:")
        tmux.type("alice")
        tmux.keys("Enter")
        tmux.wait_for("Password:")
        tmux.keys("C-c")
        status = tmux.wait_for(r"console-exited-(\d+)").group(1)
        screen = tmux.screen()
    finally:
        tmux.kill()
    assert status != "0"
    assert "Traceback" not in screen and "KeyboardInterrupt" not in screen
    assert "adhoc-console: stopped" in screen


async def test_the_first_run_password_waits_in_a_dialog(tmp_path: Path, monkeypatch) -> None:
    """The bundled relay's first run shows the admin's password in a dialog that stays
    until a key says it was noted (a toast vanished after 30 s), with the command that sets
    a new one; the second run does not show it."""
    monkeypatch.setenv("ADHOC_CONSOLE_DATA_DIR", str(own_bundled_ports(tmp_path / "data")))
    assert await _embedded_console()  # the first run
    assert not await _embedded_console()  # the second


async def _embedded_console() -> bool:
    """Run the console on the bundled relay; whether it showed a first-run password."""
    from tests.tui.helpers import screen_text, wait_until
    from tui.app import ConsoleApp
    from tui.client import RelayClient
    from tui.embedded import start_embedded
    from tui.screens.first_run import FirstRunModal

    embedded = await start_embedded(("127.0.0.1", 0))
    try:
        app = ConsoleApp(RelayClient(embedded.base_url, embedded.token), embedded.login,
                         notice="Running the bundled relay.",
                         first_run_password=embedded.first_run_password)
        async with app.run_test(size=(80, 24), notifications=True) as pilot:
            await wait_until(pilot, lambda: app.screen.query("#sessions")
                             or isinstance(app.screen, FirstRunModal))
            await pilot.pause(0.2)
            welcomed = lambda: ("information", "Running the bundled relay.") in app.notices  # noqa: E731
            if embedded.first_run_password is None:
                assert not isinstance(app.screen, FirstRunModal)
                await wait_until(pilot, welcomed)
                await app.action_quit()
                return False
            password = embedded.first_run_password.reveal()
            await wait_until(pilot, lambda: isinstance(app.screen, FirstRunModal))
            drawn = screen_text(app)
            assert password in drawn
            assert "reset-password admin" in drawn
            await pilot.press("s", "x")  # other keys do not close it
            assert isinstance(app.screen, FirstRunModal)
            # The welcome toast waits for the dialog (over it, it hid half of it at 80x24).
            assert not welcomed() and not app._notifications
            await pilot.press("enter")
            await wait_until(pilot, lambda: not isinstance(app.screen, FirstRunModal))
            assert password not in screen_text(app)
            assert app.first_run_password is None  # the app keeps no copy
            await wait_until(pilot, lambda: welcomed() and len(app._notifications) == 1)
            # The new-session form clears it: it would hide the code and the link.
            await pilot.press("n")
            await wait_until(pilot, lambda: not app._notifications)
            await pilot.press("escape")
            await app.action_quit()
            return True
    finally:
        await embedded.stop()


async def test_ssh_config_uses_the_bundled_relay_a_console_runs(tmp_path: Path,
                                                                 monkeypatch) -> None:
    """On the embedded default nobody ran `adhoc-console login`: ssh-config in a second
    terminal uses the relay the running console bundles (it said "log in first", to a relay
    whose URL and admin password a new user had no reason to know), and says to start the
    console when none runs."""
    from tui.embedded import start_embedded

    monkeypatch.setenv("ADHOC_CONSOLE_DATA_DIR", str(own_bundled_ports(tmp_path / "data")))
    embedded = await start_embedded(("127.0.0.1", 0))
    try:
        shown = await asyncio.to_thread(console_cli, tmp_path, "ssh-config")
        assert shown.returncode == 0, shown.stderr
        assert "Host adhoc-relay" in shown.stdout and "User admin" in shown.stdout
    finally:
        await embedded.stop()
    line = one_line_error(await asyncio.to_thread(console_cli, tmp_path, "ssh-config"))
    assert "start `adhoc-console`" in line and "adhoc-console login URL" in line


class _HostileRelay(http.server.BaseHTTPRequestHandler):
    """A relay (or something posing as one) whose refusals carry an escape sequence."""

    DETAIL = "[red]no[/]\x1b]0;pwned\x07\x1b[2J cleared"

    def do_GET(self) -> None:
        body = json.dumps({"error": "conflict", "detail": self.DETAIL}).encode()
        self.send_response(409)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.mark.parametrize("command", ["ssh-config", "tunnel"])
def test_a_relay_detail_reaches_the_terminal_as_text(tmp_path: Path, command: str) -> None:
    server = http.server.HTTPServer(("127.0.0.1", 0), _HostileRelay)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}"
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "console.toml").write_text(
        f'[relay]\nurl = "{url}"\nlogin = "alice"\ntoken = "some-token"\n')
    try:
        line = one_line_error(console_cli(tmp_path, command))
    finally:
        server.shutdown()
        server.server_close()
    assert "\x1b" not in line and "\x07" not in line
    assert "[red]no[/]\\x1b]0;pwned\\x07\\x1b[2J cleared" in line
