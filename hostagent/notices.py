"""What the customer sees and can do: who is asking, who is connected doing what, chat, the end.

A plain-terminal front end: it works in any terminal, over SSH, in a dumb terminal and in logs.
Everything is a log line with a time stamp; an interactive terminal also gets one status line
at the bottom, redrawn in place with a carriage return (no cursor addressing), and single-key
commands:

    e   end the session now (asks y/N) -- ctrl+c ends it at once
    c   write a chat message to the technician (Enter sends, Esc cancels)
    s   show the status again
    u   allow logins again after too many wrong session passwords
    ?   show these keys
    y/n/a  answer a technician's request to reach a host and port through this computer
           (yes / no / all for the rest of the session)

Every string that came from elsewhere (names from the relay, the technician's login, chat) is
made printable first (hostagent/text.py). An outage of the relay is one line when it starts
and one when it ends; in between only the status line says "reconnecting since HH:MM".
"""

from __future__ import annotations

import asyncio
import codecs
import collections
import contextlib
import logging
import os
import shutil
import sys
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from hostagent.forwards import ALL, NO, NO_ANSWER, UNATTENDED, WITHDRAWN, YES
from hostagent.state import AgentState, Notices
from hostagent.text import format_left, local_time, printable

log = logging.getLogger("adhoc.host")

KEYS_HELP = "Keys: e end the session, c chat with the technician, s status, ? help"
STATUS_REFRESH = 30.0


@dataclass
class ForwardQuestion:
    """A technician's request to reach a destination, waiting for the customer's answer."""

    who: str  # printable
    where: str  # printable host:port
    answer: asyncio.Future[str]

    def prompt(self) -> str:
        return f"Allow {self.who} to reach {self.where}? [y]es / [n]o / [a]ll this session "


class LineNotices(Notices):
    """The customer's screen. `interactive` adds the status line; without it, lines only."""

    def __init__(self, out: TextIO | None = None, *, interactive: bool = False,
                 clock: Callable[[], float] = time.time) -> None:
        self.out = out or sys.stdout
        self.interactive = interactive
        self.clock = clock
        self.state: AgentState | None = None
        self.time_left: Callable[[], float] | None = None
        self.fingerprint: str | None = None  # the host key's, for the technician to compare
        self.link = "starting"
        self.ever_connected = False
        self.outage_since: float | None = None  # fixed for the whole of one outage
        self.problem: str | None = None  # why the relay cannot be reached, said once each
        self.prompt: str | None = None  # replaces the status line while the customer types
        # Forwards waiting for the customer's y/n/a, oldest first: the first is the prompt
        # whenever the customer is not typing something else.
        self.questions: collections.deque[ForwardQuestion] = collections.deque()
        self._drawn = 0

    # --- drawing ---------------------------------------------------------------------------

    def _width(self) -> int:
        return max(20, shutil.get_terminal_size((80, 24)).columns - 1)

    def _write(self, text: str) -> None:
        """Write to the customer's terminal; a terminal that went away (closed window, hung-up
        SSH) is not an error of the host's: the session goes on until it ends."""
        try:
            self.out.write(text)
            self.out.flush()
        except (OSError, ValueError):
            pass

    def _clear_status(self) -> None:
        if self._drawn:
            self._write("\r" + " " * self._drawn + "\r")
            self._drawn = 0

    def redraw(self) -> None:
        if not self.interactive:
            return
        self._clear_status()
        width = self._width()
        prompt = self.prompt if self.prompt is not None else \
            self.questions[0].prompt() if self.questions else None
        text = prompt[-width:] if prompt is not None else self.status_text(width)
        self._write(text)
        self._drawn = len(text)

    def say(self, message: str) -> None:
        stamp = time.strftime("%H:%M:%S", time.localtime(self.clock()))
        self._clear_status()
        self._write(f"[{stamp}] {message}\n")
        self.redraw()

    def end_prompt_line(self) -> None:
        """After ctrl+c at a prompt the cursor is still on the prompt's line."""
        with contextlib.suppress(OSError, ValueError):
            if self.out.isatty():
                self._write("\n")

    def _link_text(self) -> str:
        if self.link == "connected":
            return "connected"
        if self.outage_since is not None:
            return f"reconnecting since {local_time(self.outage_since, self.clock())}"
        return "connecting"

    def status_text(self, width: int | None = None) -> str:
        """The status line, fitted to `width`: the keys hint goes first when it does not fit,
        then the list of technicians is cut (visibly)."""
        parts = []
        if self.time_left is not None:
            parts.append(f"Time left {format_left(self.time_left())}")
        parts.append(self._link_text())
        people = ""
        if self.state is not None:
            if self.state.guard.locked:
                parts.append("logins stopped (u)")
            doing = self.state.who_does_what()
            people = "; ".join(f"{printable(who, 64)}: {', '.join(kinds) or 'connected'}"
                               for who, kinds in sorted(doing.items())) or "nobody connected"
        hint = "e end, c chat, ? keys"
        line = " | ".join([*parts, people, hint] if people else [*parts, hint])
        if width is None or len(line) <= width:
            return line
        line = " | ".join([*parts, people] if people else parts)
        if len(line) <= width or not people:
            return line[:width]
        room = width - len(" | ".join([*parts, ""])) - 1
        return " | ".join([*parts, people[:max(room, 0)] + "…"])[:width]

    def status_lines(self) -> list[str]:
        """The status as full sentences (for `s` and for non-interactive logs)."""
        lines = []
        if self.time_left is not None:
            lines.append(f"Time left: {format_left(self.time_left())}.")
        lines.append(f"Connection: {self._link_text()}.")
        if self.problem and self.link != "connected":
            lines.append(f"Last problem reaching the relay: {self.problem}.")
        if self.fingerprint:
            lines.append(f"This computer's key: {self.fingerprint}.")
        if self.state is not None:
            if self.state.guard.locked:
                lines.append("Logins are stopped after too many wrong session passwords: "
                             "press u to allow them again.")
            people = self.state.who_does_what()
            if not people:
                lines.append("No technician is connected.")
            for who, kinds in sorted(people.items()):
                doing = ", ".join(kinds) if kinds else "nothing open"
                lines.append(f"Technician {printable(who, 64)} is connected: {doing}.")
        return lines

    # --- Notices ---------------------------------------------------------------------------

    def technician_connected(self, who: str) -> None:
        self.say(f"Technician {printable(who, 64)} connected.")

    def technician_disconnected(self, who: str) -> None:
        self.say(f"Technician {printable(who, 64)} disconnected.")

    def activity(self, who: str, what: str) -> None:
        self.say(f"Technician {printable(who, 64)} {what}.")

    def auth_failed(self, who: str, failures: int) -> None:
        self.say(f"A wrong session password was typed ({failures} so far).")

    def logins_locked(self, failures: int) -> None:
        if self.interactive:
            self.say(f"Logins stopped after {failures} wrong session passwords in a row: "
                     "someone may be guessing it. If your technician is on the phone with you "
                     "and only mistyped it, press u to allow logins again.")
        else:
            self.say(f"Logins stopped after {failures} wrong session passwords in a row: "
                     "someone may be guessing it. They stay stopped for this session.")

    def logins_unlocked(self, refused: int) -> None:
        extra = f" ({refused} were refused while they were stopped)" if refused else ""
        self.say(f"You allowed logins again{extra}.")

    def chat(self, message: dict) -> None:
        self.say(f"Technician {printable(message.get('from', '?'), 64)} says: "
                 f"{printable(message.get('text', ''), 2000)}")
        if self.interactive:
            self._write("\a")  # a bell, so a customer looking elsewhere notices

    def changed(self) -> None:
        self.redraw()

    def ask_forward(self, who: str, where: str) -> asyncio.Future[str]:
        answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        if not self.interactive:
            answer.set_result(UNATTENDED)  # nobody to ask: refused
            return answer
        question = ForwardQuestion(printable(who, 64), where, answer)
        self.questions.append(question)
        answer.add_done_callback(lambda _: self._answered(question))
        self.say(f"Technician {question.who} wants to reach {where} through your computer: "
                 "press y to allow it, n to refuse, a to allow everything this session.")
        self._write("\a")  # a bell, so a customer looking elsewhere notices
        return answer

    def answer(self, choice: str) -> None:
        """The customer's y/n/a for the oldest question."""
        if self.questions and not self.questions[0].answer.done():
            self.questions[0].answer.set_result(choice)

    def _answered(self, question: ForwardQuestion) -> None:
        with contextlib.suppress(ValueError):
            self.questions.remove(question)
        result = question.answer.result()
        who, where = question.who, question.where
        said = {YES: f"You allowed {who} to reach {where}.",
                ALL: f"You allowed {who} to reach anything this computer can reach, for the "
                     "rest of the session.",
                NO: f"You refused: {who} cannot reach {where}.",
                NO_ANSWER: f"No answer in time: {who} cannot reach {where}.",
                WITHDRAWN: f"Technician {who} no longer waits to reach {where} (their "
                           "connection closed): nothing to answer."}.get(result)
        if said is not None and not (result == NO and self.state is not None
                                     and self.state.ended):
            self.say(said)
        else:
            self.redraw()

    def connection(self, state: str, detail: str) -> None:
        """The tunnel's state: "connecting", "connected" or "reconnecting" (with a detail
        for the log). One line when an outage starts and one when it ends."""
        log.info("relay connection: %s (%s)", state, detail)
        if state == "connected":
            since, self.outage_since = self.outage_since, None
            self.link, self.problem = "connected", None
            route = f" ({printable(detail)})" if detail else ""
            if not self.ever_connected:
                self.ever_connected = True
                self.say(f"Connected to the relay{route}: the technician can reach this "
                         "computer.")
            else:
                away = f" (out of reach since {local_time(since, self.clock())})" \
                    if since is not None else ""
                self.say(f"Connected to the relay again{away}{route}.")
            return
        if state == "reconnecting":
            problem = printable(detail, 1000) if detail else None
            if self.outage_since is None:
                self.outage_since = self.clock()
                self.link, self.problem = "reconnecting", problem
                why = f" ({problem})" if problem else ""
                if self.ever_connected:
                    self.say(f"Connection to the relay lost{why}: reconnecting by itself. "
                             "Your technician cannot reach this computer until it is back.")
                else:
                    self.say(f"The relay cannot be reached yet{why}: trying again by itself.")
                return
            if problem and problem != self.problem:
                # Said once per different reason (a proxy that starts asking for a password,
                # say), never once per attempt: the status line keeps the time it began.
                self.problem = problem
                self.say(f"Still trying to reach the relay: {problem}.")
                return
        if self.outage_since is None:
            self.link = state
        self.redraw()

    def finish(self) -> None:
        """Leave the terminal with the cursor on a fresh line."""
        self._clear_status()
        self.interactive = False
        self._write("")


class KeyReader:
    """Single keys from an interactive terminal (cbreak mode, restored on exit)."""

    def __init__(self, notices: LineNotices, *, on_end: Callable[[], None],
                 on_chat: Callable[[str], None], on_unlock: Callable[[], bool] = lambda: False,
                 fd: int | None = None) -> None:
        self.notices = notices
        self.on_end = on_end
        self.on_chat = on_chat
        self.on_unlock = on_unlock
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
        elif self.notices.questions and ch in ("y", "Y", "n", "N", "a", "A", "\x1b"):
            self.notices.answer({"y": YES, "a": ALL}.get(ch.lower(), NO))
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
        elif ch in ("u", "U"):
            if not self.on_unlock():
                self.notices.say("Logins are not stopped: nothing to allow.")
        elif ch in ("?", "h", "H"):
            self.notices.say(KEYS_HELP + ", u allow logins after too many wrong passwords, "
                             "y/n/a answer a request to reach a host and port through this "
                             "computer (ctrl+c also ends the session).")

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
