"""Times as the relay and hosts send them (ISO 8601, UTC) and as the technician reads them."""

from __future__ import annotations

from datetime import datetime

from tui.sanitize import clean


def parse_time(value: object) -> float | None:
    """A Unix time from an ISO 8601 string, or None for nothing or nonsense."""
    if not value or not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def local_time(value: object, seconds: bool = True) -> str:
    """An ISO time in this computer's time zone (2030-01-15 12:00:05), or the text cleaned
    when it is not a time."""
    when = parse_time(value)
    if when is None:
        return clean(value, 30)
    return datetime.fromtimestamp(when).strftime("%Y-%m-%d %H:%M:%S" if seconds
                                                 else "%Y-%m-%d %H:%M")


def format_left(seconds: float) -> str:
    """A duration as h:mm:ss, or mm:ss under an hour."""
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"
