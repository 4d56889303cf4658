"""Host-supplied strings made safe to show: control, C1, bidi and other format characters
are shown escaped (\\x1b, \\u202e) instead of reaching the technician's terminal, and
Rich markup is inert because every such string is rendered as plain Text."""

from __future__ import annotations

import unicodedata

from rich.text import Text


def clean(value: object, limit: int = 200) -> str:
    text = "" if value is None else str(value)
    out = []
    for ch in text[:limit]:
        if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn"):
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    if len(text) > limit:
        out.append("…")
    return "".join(out)


def plain(value: object, limit: int = 200, style: str = "") -> Text:
    """A Rich Text that never interprets markup in `value`."""
    return Text(clean(value, limit), style=style)
