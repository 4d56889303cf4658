"""How text from elsewhere, commands, times and reasons are written on the customer's screen.

Every string that came from the relay or a technician (names, commands, paths, chat) is made
printable here before the customer sees it: control characters, format characters (bidi
overrides, zero-width spaces) and unusual spaces are shown as escapes, and whatever is cut is
marked, never dropped silently.
"""

from __future__ import annotations

import hashlib
import time
import unicodedata
from collections.abc import Iterator

# What the customer's screen shows of one command; the audit keeps far more (and a digest).
COMMAND_SHOWN = 1000
COMMAND_AUDITED = 8192


def _escape(ch: str) -> str:
    return f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}"


def _hidden(ch: str) -> bool:
    """Characters that would change the screen or hide text rather than show as themselves."""
    category = unicodedata.category(ch)
    return category[0] == "C" or (category[0] == "Z" and ch != " ")


def _cut(pieces: list[str], limit: int) -> str:
    shown = "".join(pieces)
    if len(shown) <= limit:
        return shown
    kept, used = [], 0
    for piece in pieces:
        if used + len(piece) > limit:
            break
        kept.append(piece)
        used += len(piece)
    return "".join(kept) + f"… [+{len(shown) - used} chars]"


def printable(text: object, limit: int = 200) -> str:
    """`text` as it may appear on the screen: escapes for what would act on the terminal or
    hide, and a visible mark where it was cut."""
    return _cut([_escape(ch) if _hidden(ch) else ch for ch in str(text)], limit)


def _command_pieces(command: str) -> Iterator[str]:
    run = ""
    for ch in command:
        if ch in " \t\r\n":
            run += ch
            continue
        if run:
            yield " \\n " if ("\n" in run or "\r" in run) else " "
            run = ""
        yield _escape(ch) if _hidden(ch) else ch
    if run:
        yield " \\n" if ("\n" in run or "\r" in run) else " "


def shown_command(command: str, limit: int = COMMAND_SHOWN) -> str:
    """A command as the customer sees it: runs of spaces and tabs as one space, line breaks as
    `\\n` (the shell runs each line), anything else invisible escaped, and a cut marked with
    how much is not shown (`… [+612 chars]`)."""
    return _cut(list(_command_pieces(command)), limit)


def audited_command(command: str) -> dict:
    """The audit's record of a command: the text (up to a generous cap), its full length and
    SHA-256, so even a cut command can be matched with what ran."""
    detail: dict = {"command": command[:COMMAND_AUDITED], "command_chars": len(command),
                    "command_sha256": hashlib.sha256(command.encode(errors="surrogateescape"))
                    .hexdigest()}
    if len(command) > COMMAND_AUDITED:
        detail["command_cut"] = True
    return detail


def format_left(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes = rest // 60
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min"
    return f"{seconds} s"


def local_time(at: float, now: float | None = None) -> str:
    """A moment in the customer's local time, to the minute: "14:05", or "Tue 3 Mar 14:05"
    when it is not today."""
    when = time.localtime(at)
    today = time.localtime(time.time() if now is None else now)
    if when[:3] == today[:3]:
        return time.strftime("%H:%M", when)
    return f"{time.strftime('%a', when)} {when.tm_mday} {time.strftime('%b %H:%M', when)}"


def why_ended(reason: str, technician: str, company: str) -> str:
    """The relay's reason code for the end of a session, as a customer would say it."""
    who = printable(technician, 64)
    known = {
        "ended_by_technician": f"your technician ({who}) ended it",
        "ended_by_admin": f"an administrator of {printable(company, 64)} ended it",
        "ended_by_customer": "you ended it",
        "expired": "its time is over",
    }
    return known.get(reason, f"the relay ended it ({printable(reason, 64)})")
