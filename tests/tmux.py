"""The real console in tmux, driven as a person would: keys in, the screen read back (on a
tmux server of the test's own, by socket)."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path


class Tmux:
    def __init__(self, name: str, socket: Path) -> None:
        self.name = name
        self.base = ["tmux", "-S", str(socket)]

    def start(self, command: str, env: dict[str, str], cols: int = 120, rows: int = 40) -> None:
        exports = " ".join(f"{k}={v}" for k, v in env.items())
        # Without -u, the COLUMNS and LINES that readline exports into the test process would
        # pin the console at 80x24 whatever the window's size.
        subprocess.run([*self.base, "new-session", "-d", "-s", self.name, "-x", str(cols),
                        "-y", str(rows), f"env -u COLUMNS -u LINES {exports} {command}"],
                       check=True)

    def keys(self, *keys: str, literal: bool = False) -> None:
        subprocess.run([*self.base, "send-keys", "-t", self.name, *(["-l"] if literal else []),
                        *keys], check=True)

    def type(self, text: str) -> None:
        self.keys(text, literal=True)

    def screen(self) -> str:
        return subprocess.run([*self.base, "capture-pane", "-p", "-t", self.name],
                              capture_output=True, text=True).stdout

    def wait_for(self, pattern: str, timeout: float = 30) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.screen())
            if match:
                return match
            time.sleep(0.2)
        raise AssertionError(f"never saw {pattern!r} on the console:\n{self.screen()}")

    def wait_buffer(self, needle: str, timeout: float = 15) -> str:
        """tmux's newest paste buffer once it holds `needle` (what OSC 52 put there)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            buffer = subprocess.run([*self.base, "show-buffer"], capture_output=True,
                                    text=True).stdout
            if needle in buffer:
                return buffer
            time.sleep(0.2)
        raise AssertionError(f"the paste buffer never held {needle!r}")

    def kill(self) -> None:
        subprocess.run([*self.base, "kill-server"], capture_output=True)
