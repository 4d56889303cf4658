"""What the customer sees: who is asking, who is connected and doing what, and how it ends.

The plain-line front end here works in any terminal, over SSH and in logs. Every string that
came from elsewhere (names from the relay, the technician's login) is made printable first.
"""

from __future__ import annotations

import sys
import time
import unicodedata
from typing import TextIO

from hostagent.server import Notices


def printable(text: str, limit: int = 200) -> str:
    """Drop control characters and bidi overrides so a name cannot repaint the screen."""
    out = []
    for ch in text[:limit]:
        category = unicodedata.category(ch)
        if category in ("Cc", "Cf", "Cs", "Co", "Cn"):
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


class LineNotices(Notices):
    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout

    def say(self, message: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        print(f"[{stamp}] {message}", file=self.out, flush=True)

    def technician_connected(self, who: str) -> None:
        self.say(f"Technician {printable(who)} connected.")

    def technician_disconnected(self, who: str) -> None:
        self.say(f"Technician {printable(who)} disconnected.")

    def activity(self, who: str, what: str) -> None:
        self.say(f"Technician {printable(who)} {printable(what)}.")

    def auth_failed(self, who: str, failures: int) -> None:
        self.say(f"A wrong session password was typed ({failures} so far).")

    def connection(self, state: str, detail: str) -> None:
        if state == "connected":
            self.say("Connected to the relay: the technician can reach this computer.")
        elif state == "reconnecting":
            self.say(f"Connection to the relay lost, reconnecting ({printable(detail)}).")
