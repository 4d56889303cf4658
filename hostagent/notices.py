"""What the customer sees and can do: who is asking, who is connected doing what, chat, the end.

A plain-terminal front end: it works in any terminal, over SSH, in a dumb terminal and in logs.
Everything is a log line with a time stamp; an interactive terminal also gets one status line
at the bottom, redrawn in place with a carriage return (no cursor addressing), and single-key
commands:

    e   end the session now (asks y/N) -- ctrl+c ends it at once
    c   write a chat message to the technician (Enter sends, Esc cancels)
    s   show the status again
    ?   show these keys

Every string that came from elsewhere (names from the relay, the technician's login, chat) is
made printable first.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import os
import shutil
import sys
import time
import unicodedata
from collections.abc import Callable
from typing import TextIO

from hostagent.state import AgentState, Notices

KEYS_HELP = "Keys: e end the session, c chat with the technician, s status, ? help"
STATUS_REFRESH = 30.0


def printable(text: str, limit: int = 200) -> str:
    """Drop control characters and bidi overrides so a name cannot repaint the screen."""
    out = []
    for ch in str(text)[:limit]:
        category = unicodedata.category(ch)
        if category in ("Cc", "Cf", "Cs", "Co", "Cn"):
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


def format_left(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes = rest // 60
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min"
    return f"{seconds} s"


class LineNotices(Notices):
    """The customer's screen. `interactive` adds the status line; without it, lines only."""

    def __init__(self, out: TextIO | None = None, *, interactive: bool = False,
                 clock: Callable[[], float] = time.time) -> None:
        self.out = out or sys.stdout
        self.interactive = interactive
        self.clock = clock
        self.state: AgentState | None = None
        self.time_left: Callable[[], float] | None = None
        self.link = "starting"
        self.link_since: float | None = None
        self.prompt: str | None = None  # replaces the status line while the customer types
        self._drawn = 0

    # --- drawing ---------------------------------------------------------------------------

    def _width(self) -> int:
        return max(20, shutil.get_terminal_size((80, 24)).columns - 1)

    def _clear_status(self) -> None:
        if self._drawn:
            self.out.write("\r" + " " * self._drawn + "\r")
            self._drawn = 0

    def redraw(self) -> None:
        if not self.interactive:
            return
        self._clear_status()
        text = self.prompt if self.prompt is not None else self.status_text()
        text = text[-self._width():] if self.prompt is not None else text[:self._width()]
        self.out.write(text)
        self.out.flush()
        self._drawn = len(text)

    def say(self, message: str) -> None:
        stamp = time.strftime("%H:%M:%S", time.localtime(self.clock()))
        self._clear_status()
        print(f"[{stamp}] {message}", file=self.out, flush=True)
        self.redraw()

    def status_text(self) -> str:
        parts = []
        if self.time_left is not None:
            parts.append(f"Time left {format_left(self.time_left())}")
        if self.link == "connected":
            parts.append("connected")
        elif self.link == "reconnecting" and self.link_since is not None:
            since = time.strftime("%H:%M", time.localtime(self.link_since))
            parts.append(f"reconnecting since {since}")
        else:
            parts.append(self.link)
        if self.state is not None:
            people = self.state.who_does_what()
            if people:
                parts.append("; ".join(
                    f"{printable(who, 64)}: {', '.join(kinds) or 'connected'}"
                    for who, kinds in sorted(people.items())))
            else:
                parts.append("nobody connected")
        parts.append("e end, c chat, ? keys")
        return " | ".join(parts)

    def status_lines(self) -> list[str]:
        """The status as full sentences (for `s` and for non-interactive logs)."""
        lines = []
        if self.time_left is not None:
            lines.append(f"Time left: {format_left(self.time_left())}.")
        if self.link == "reconnecting" and self.link_since is not None:
            since = time.strftime("%H:%M:%S", time.localtime(self.link_since))
            lines.append(f"Connection: reconnecting since {since}.")
        else:
            lines.append(f"Connection: {self.link}.")
        if self.state is not None:
            people = self.state.who_does_what()
            if not people:
                lines.append("No technician is connected.")
            for who, kinds in sorted(people.items()):
                doing = ", ".join(kinds) if kinds else "nothing open"
                lines.append(f"Technician {printable(who, 64)} is connected: {doing}.")
        return lines

    # --- Notices ---------------------------------------------------------------------------

    def technician_connected(self, who: str) -> None:
        self.say(f"Technician {printable(who)} connected.")

    def technician_disconnected(self, who: str) -> None:
        self.say(f"Technician {printable(who)} disconnected.")

    def activity(self, who: str, what: str) -> None:
        self.say(f"Technician {printable(who)} {printable(what)}.")

    def auth_failed(self, who: str, failures: int) -> None:
        self.say(f"A wrong session password was typed ({failures} so far).")

    def chat(self, message: dict) -> None:
        self.say(f"Technician {printable(message.get('from', '?'), 64)} says: "
                 f"{printable(message.get('text', ''), 2000)}")
        if self.interactive:
            self.out.write("\a")  # a bell, so a customer looking elsewhere notices
            self.out.flush()

    def changed(self) -> None:
        self.redraw()

    def connection(self, state: str, detail: str) -> None:
        previous = self.link
        if state == "reconnecting" and previous != "reconnecting":
            self.link_since = self.clock()
        self.link = state
        if state == "connected":
            self.link_since = None
            route = f" ({printable(detail)})" if detail else ""
            self.say(f"Connected to the relay{route}: the technician can reach this computer.")
        elif state == "reconnecting":
            self.say(f"Connection to the relay lost, reconnecting ({printable(detail, 1000)}).")
        else:
            self.redraw()

    def finish(self) -> None:
        """Leave the terminal with the cursor on a fresh line."""
        self._clear_status()
        self.interactive = False
        self.out.flush()


class KeyReader:
    """Single keys from an interactive terminal (cbreak mode, restored on exit)."""

    def __init__(self, notices: LineNotices, *, on_end: Callable[[], None],
                 on_chat: Callable[[str], None], fd: int | None = None) -> None:
        self.notices = notices
        self.on_end = on_end
        self.on_chat = on_chat
        self.fd = sys.stdin.fileno() if fd is None else fd
        self._saved: list | None = None
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._mode = "keys"
        self._typed = ""

    def start(self) -> None:
        import termios
        import tty

        self._saved = termios.tcgetattr(self.fd)
        tty.setcbreak(self.fd)
        asyncio.get_running_loop().add_reader(self.fd, self._readable)
        self.notices.say(KEYS_HELP + " (ctrl+c also ends the session).")

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self.fd)
        if self._saved is not None:
            import termios

            with contextlib.suppress(Exception):
                termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
            self._saved = None

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, 1024)
        except OSError:
            data = b""
        if not data:
            self.stop()  # the terminal went away; the session goes on until it ends otherwise
            return
        for ch in self._decoder.decode(data):
            self.key(ch)

    def key(self, ch: str) -> None:
        if self._mode == "chat":
            self._chat_key(ch)
        elif self._mode == "confirm-end":
            self._mode = "keys"
            self.notices.prompt = None
            if ch in ("y", "Y"):
                self.notices.say("Ending the session at your request.")
                self.on_end()
            else:
                self.notices.say("The session goes on.")
        elif ch in ("e", "E", "\x05"):
            self._mode = "confirm-end"
            self.notices.prompt = ("End the session now? The technician is disconnected and "
                                   "the host removes itself. [y/N] ")
            self.notices.redraw()
        elif ch in ("c", "C", "t", "T"):
            self._mode = "chat"
            self._typed = ""
            self._chat_prompt()
        elif ch in ("s", "S"):
            for line in self.notices.status_lines():
                self.notices.say(line)
        elif ch in ("?", "h", "H"):
            self.notices.say(KEYS_HELP + " (ctrl+c also ends the session).")

    def _chat_prompt(self) -> None:
        self.notices.prompt = f"Message (Enter sends, Esc cancels): {self._typed}"
        self.notices.redraw()

    def _chat_key(self, ch: str) -> None:
        if ch in ("\r", "\n"):
            text, self._typed = self._typed, ""
            self._mode = "keys"
            self.notices.prompt = None
            if text.strip():
                self.on_chat(text)
            else:
                self.notices.redraw()
            return
        if ch == "\x1b":
            self._mode = "keys"
            self.notices.prompt = None
            self.notices.redraw()
            return
        if ch in ("\x7f", "\x08"):
            self._typed = self._typed[:-1]
        elif ch == "\x15":  # ctrl+u
            self._typed = ""
        elif unicodedata.category(ch)[0] != "C" and len(self._typed) < 1000:
            self._typed += ch
        self._chat_prompt()
