"""The one way foreign text reaches the screen: strings from a host, a customer or the relay.

Two rules, applied here and nowhere else:
- control, C1, bidi and other format characters are shown escaped (\\x1b, \\u202e) instead
  of reaching the technician's terminal (`clean`, `clean_lines`);
- markup is inert: what the console builds from such strings is a Rich `Text` (`plain`), or
  a plain string given to a widget made with `markup=False`; notifications are always text
  (ConsoleApp.notify). tests/tui/test_foreign_text.py checks every widget the console makes.
"""

from __future__ import annotations

import unicodedata

from rich.text import Text

HIDDEN = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def _escaped(ch: str) -> str:
    return f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}"


def clean(value: object, limit: int = 200, *, keep: str = "") -> str:
    """`value` as one line of text at most `limit` characters long (… marks a cut), with
    every character that could act on a terminal shown escaped (except those in `keep`)."""
    text = "" if value is None else str(value)
    out = [ch if ch in keep or unicodedata.category(ch) not in HIDDEN else _escaped(ch)
           for ch in text[:limit]]
    if len(text) > limit:
        out.append("…")
    return "".join(out)


def clean_lines(value: object, limit: int = 2000) -> str:
    """Like `clean`, but line breaks stay line breaks (a message of several lines)."""
    return clean(value, limit, keep="\n")


def plain(value: object, limit: int = 200, style: str = "") -> Text:
    """A Rich Text of `value`, cleaned, that never interprets markup."""
    return Text(clean(value, limit), style=style)
