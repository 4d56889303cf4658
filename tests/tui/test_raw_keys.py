"""Every key reaches the host byte for byte: the pane against tmux's own key encoding.

tmux is the technician's terminal here. The same `send-keys` go to a plain program reading
its terminal raw (what a remote program gets through `ssh`) and to the console's terminal
pane; the bytes the pane would send to the host must equal what the plain program read.
"""

from __future__ import annotations

import shutil
import string
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None,
                                reason="tmux is not installed; CI installs it")

SEPARATOR = "§"
END = "END-OF-KEYS"

_NAMED = ["Enter", "Tab", "BTab", "BSpace", "Escape", "Space"]
_EDITING = ["Up", "Down", "Left", "Right", "Home", "End", "PPage", "NPage", "IC", "DC"]
_FUNCTION = [f"F{n}" for n in range(1, 13)]
_KEYPAD = [*(f"KP{n}" for n in range(10)), "KP/", "KP*", "KP-", "KP+", "KP.", "KPEnter"]
_PUNCTUATION = [c for c in string.punctuation if c not in ";"] + ["\\;"]
_CTRL = [f"C-{c}" for c in string.ascii_lowercase + "@[\\]^_? "] + ["C-Space"]
_ALT = [f"M-{c}" for c in string.ascii_letters + string.digits + string.punctuation
        if c not in ";"] + ["M-\\;", "M-Enter", "M-BSpace", "M-Tab", "M-Escape", "M-Space"]
_CTRL_ALT = [f"C-M-{c}" for c in string.ascii_lowercase]
# shift+PageUp and shift+PageDown scroll the pane's own history, as they do in xterm.
_MODIFIED = [f"{mods}{key}" for mods in ("S-", "C-", "M-", "C-S-", "M-S-", "C-M-", "C-M-S-")
             for key in _EDITING + _FUNCTION if f"{mods}{key}" not in ("S-PPage", "S-NPage")]
_TEXT = [*string.ascii_letters, *string.digits, "é", "日", "€", "👍"]

EVERY_KEY = (_NAMED + _EDITING + _FUNCTION + _KEYPAD + _PUNCTUATION + _CTRL + _ALT + _CTRL_ALT
             + _MODIFIED + _TEXT)


class Recorder:
    """A program from tests/tui/keyrecorder.py in its own tmux server, and what it recorded."""

    def __init__(self, tmp_path: Path, program: str, modes: str) -> None:
        self.out = tmp_path / f"{program}.bin"
        self.base = ["tmux", "-S", str(tmp_path / f"{program}.sock")]
        command = (f"env -u COLUMNS -u LINES TERM=xterm-256color {sys.executable} "
                   f"-m tests.tui.keyrecorder {program} {self.out} --modes={modes}")
        subprocess.run([*self.base, "new-session", "-d", "-s", "keys", "-x", "100", "-y", "30",
                        "-c", str(Path.cwd()), command], check=True)
        self._wait(lambda: "READY" in self._screen(), "the program never showed READY")

    def _screen(self) -> str:
        return subprocess.run([*self.base, "capture-pane", "-p", "-t", "keys"],
                              capture_output=True, text=True).stdout

    def _wait(self, condition, failure: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"{failure}:\n{self._screen()}")
            time.sleep(0.05)

    def type(self, keys: list[str]) -> bytes:
        """Send each key (then a separator) as tmux's send-keys; the bytes recorded."""
        for key in keys:
            subprocess.run([*self.base, "send-keys", "-t", "keys", key], check=True)
            subprocess.run([*self.base, "send-keys", "-t", "keys", "-l", SEPARATOR], check=True)
        subprocess.run([*self.base, "send-keys", "-t", "keys", "-l", END], check=True)
        self._wait(lambda: self.out.exists() and END.encode() in self.out.read_bytes(),
                   "the keys never all arrived")
        return self.out.read_bytes()

    def stop(self) -> None:
        subprocess.run([*self.base, "kill-server"], capture_output=True)


def per_key(keys: list[str], recorded: bytes) -> dict[str, bytes]:
    pieces = recorded.split(END.encode())[0].split(SEPARATOR.encode())
    return dict(zip(keys, pieces, strict=False))


def compare(tmp_path: Path, keys: list[str], modes: str = "") -> None:
    recorders = [Recorder(tmp_path, program, modes) for program in ("plain", "pane")]
    try:
        plain, pane = (per_key(keys, recorder.type(keys)) for recorder in recorders)
    finally:
        for recorder in recorders:
            recorder.stop()
    wrong = {key: (plain[key], pane.get(key)) for key in keys if pane.get(key) != plain[key]}
    assert not wrong, f"keys the pane changed (tmux sends, pane sent): {wrong}"
    assert len(plain) == len(keys)


def test_every_key_reaches_the_host_as_the_terminal_sent_it(tmp_path: Path) -> None:
    compare(tmp_path, EVERY_KEY)


def test_keys_follow_the_remote_programs_key_modes(tmp_path: Path) -> None:
    # A program that asked for application cursor keys and keypad gets them as it would
    # through ssh: the pane puts the technician's terminal in those modes.
    compare(tmp_path, _EDITING + _KEYPAD + [f"C-{key}" for key in _EDITING], "cursor,keypad")
