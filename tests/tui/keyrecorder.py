"""Two programs that record the bytes a terminal sends for keys, run inside tmux by the tests.

`plain OUT`: a program in raw mode on the terminal itself, as a remote program sees keys
through `ssh`: every byte it reads is appended to OUT. The reference.

`pane OUT`: the console's terminal pane (TerminalView under the console's raw-input driver)
in a bare app with no bindings; every byte the pane would send to the remote host is
appended to OUT.

Both first put the key modes named by --modes in place (as a remote program would write
them: `cursor` DECCKM, `keypad` DECKPAM, `other-keys` modifyOtherKeys 2), then show READY.
"""

from __future__ import annotations

import argparse
import os
import sys
import termios
import tty

MODES = {"cursor": b"\x1b[?1h", "keypad": b"\x1b=", "other-keys": b"\x1b[>4;2m"}


def _append(path: str, data: bytes) -> None:
    with open(path, "ab") as out:
        out.write(data)


def plain(out: str, modes: bytes) -> None:
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        os.write(sys.stdout.fileno(), modes + b"READY\r\n")
        while True:
            data = os.read(fd, 4096)
            if not data:
                return
            _append(out, data)
    finally:
        termios.tcsetattr(fd, termios.TCSANOW, saved)


def pane(out: str, modes: bytes) -> None:
    from textual.app import App, ComposeResult

    from tui.rawinput import raw_driver_for
    from tui.widgets.terminal import TerminalView

    class PaneApp(App, inherit_bindings=False):
        ENABLE_COMMAND_PALETTE = False

        def get_driver_class(self):
            return raw_driver_for(super().get_driver_class())

        def compose(self) -> ComposeResult:
            yield TerminalView(lambda data: _append(out, data), id="term")

        def on_mount(self) -> None:
            view = self.query_one(TerminalView)
            view.focus()
            self.call_after_refresh(view.feed, modes + b"READY\r\n")

    PaneApp().run()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("program", choices=("plain", "pane"))
    parser.add_argument("out")
    parser.add_argument("--modes", default="", help="comma-separated: " + ", ".join(MODES))
    args = parser.parse_args()
    modes = b"".join(MODES[name] for name in args.modes.split(",") if name)
    (plain if args.program == "plain" else pane)(args.out, modes)


if __name__ == "__main__":
    main()
