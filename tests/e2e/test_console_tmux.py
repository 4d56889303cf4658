"""The real console in tmux against a real relay and agent: create, activate, shell, read back."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import SESSION_PASSWORD, AgentProcess, console_login
from tests.tmux import Tmux

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None,
                                reason="tmux is not installed; CI installs it")


async def test_console_in_tmux_end_to_end(relay, agents, tmp_path: Path) -> None:
    config = tmp_path / "console-config"
    env = console_login(relay.base_url, config)
    assert (config / "console.toml").stat().st_mode & 0o777 == 0o600

    tmux = Tmux("adhoc", tmp_path / "tmux.sock")
    tmux.start(f"{sys.executable} -m tui.cli", env)
    # Let the console's OSC 52 (the copy keys) reach tmux's paste buffer.
    subprocess.run([*tmux.base, "set-option", "-g", "set-clipboard", "on"], check=True)
    try:
        tmux.wait_for(r"live sessions 0/")
        tmux.keys("n")
        tmux.wait_for("Invite a customer")
        for value in ("sam@example.com", SESSION_PASSWORD, SESSION_PASSWORD, "tmux test"):
            # Typed at a person's pace: enter moves the focus to the next field, and keys
            # sent in the same instant would still land in the field being left.
            tmux.type(value)
            time.sleep(0.2)
            tmux.keys("Enter")
            time.sleep(0.3)
        code = tmux.wait_for(r"code (\d{6})").group(1)
        join_url = tmux.wait_for(r"(http://\S+/join/\S+)").group(1)
        # The link and the one-liner are each one line, copied whole by a key (OSC 52).
        tmux.keys("l")
        tmux.wait_buffer(join_url)
        tmux.keys("y")
        one_liner = tmux.wait_buffer(f"{join_url}/install.sh")
        assert one_liner.startswith("curl ") and one_liner.count("\n") == 0

        workdir = tmp_path / "agent"
        workdir.mkdir()
        agent = AgentProcess(join_url, code, workdir)
        agents.append(agent)
        agent.start()
        await agent.wait_for_line("Connected to the relay")
        tmux.wait_for("agent connected → active")
        tmux.keys("Enter")  # enter closes it too; a lone ESC is ambiguous under tmux
        tmux.wait_for(r"sam@example\.com .*active")
        tmux.keys("r")
        tmux.wait_for("Session password for")
        tmux.type(SESSION_PASSWORD)
        tmux.keys("Enter")
        tmux.wait_for(r"· connected ·")
        tmux.wait_for(r"(?m)[#$] *$")  # the shell's prompt: it is ready to read
        tmux.type("echo tmux-$((2*21))")
        tmux.keys("Enter")
        tmux.wait_for(r"(?m)^tmux-42\s*$")
        tmux.keys("C-]")
        tmux.wait_for(r"sam@example\.com .*active")
        tmux.keys("q")
    finally:
        tmux.kill()
