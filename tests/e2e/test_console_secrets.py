"""No secret in a crash report: the real console in tmux crashes with the session password in
a local variable, and neither the terminal nor stderr shows it (issue 13, blocker 2)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import SESSION_PASSWORD, console_login
from tests.tmux import Tmux
from tests.tui.helpers import online_session

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None,
                                reason="tmux is not installed; CI installs it")

# The console as installed, with one bug put in on purpose: the remote-control pane crashes
# while it is built, with the session password in a local variable (as open_pane once did).
CRASHING_CONSOLE = """
import sys
import tui.app
from tui.screens.remote import RemoteScreen

class Crashing(RemoteScreen):
    def compose(self):
        password = self.password
        session_password = getattr(password, "reveal", lambda: password)()
        raise RuntimeError("forced crash for the test")
        yield

tui.app.PANES["shell"] = Crashing
from tui.cli import main
sys.exit(main())
"""


async def test_a_crash_with_the_session_password_in_scope_shows_no_secret(
        relay, agents, tmp_path: Path) -> None:
    _view, _agent, _token = await online_session(relay, agents, tmp_path, "eve@example.com")
    config = tmp_path / "console-config"
    env = console_login(relay.base_url, config)
    token = (config / "console.toml").read_text().split('token = "')[1].split('"')[0]

    script = tmp_path / "crashing_console.py"
    script.write_text(CRASHING_CONSOLE)
    output = tmp_path / "output.bin"  # every byte the console wrote, stdout and stderr
    tmux = Tmux("secrets", tmp_path / "tmux.sock")
    tmux.start(f"sh -c 'sleep 0.5; {sys.executable} {script}; echo console-exited-$?; "
               "sleep 600'", env, cols=80, rows=24)
    subprocess.run([*tmux.base, "pipe-pane", "-o", "-t", tmux.name, f"cat >> {output}"],
                   check=True)
    try:
        tmux.wait_for(r"eve@example\.com")
        tmux.keys("r")
        tmux.wait_for("Session password for")
        tmux.type(SESSION_PASSWORD)
        tmux.keys("Enter")
        status = tmux.wait_for(r"console-exited-(\d+)").group(1)
        report = subprocess.run([*tmux.base, "capture-pane", "-p", "-S", "-", "-t", tmux.name],
                                capture_output=True, text=True).stdout
        written = output.read_bytes().decode(errors="replace")
    finally:
        tmux.kill()
    assert "forced crash for the test" in report  # the crash report was printed...
    for text in (written, report):  # ...and holds neither secret, nor any local variable
        assert SESSION_PASSWORD not in text
        assert token not in text
        assert "locals" not in text
    assert status != "0"  # and the console's exit status says it failed
