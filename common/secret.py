"""A secret as a type: a password, token, security code or agent secret that cannot be shown.

Its repr, str and format are redacted, so a crash report, a log line, an f-string or a
debugger shows `Secret('********')` and never the value. The value comes out only through
`reveal()`, called at the one edge that needs it (a hash check, an SSH auth call, a request
body). It refuses to be pickled or JSON-encoded by accident.
"""

from __future__ import annotations

import hmac

REDACTED = "Secret('********')"


class Secret:
    __slots__ = ("_value",)

    def __init__(self, value: str | Secret) -> None:
        if isinstance(value, Secret):
            value = value._value
        if not isinstance(value, str):
            raise TypeError(f"a Secret holds a str, not {type(value).__name__}")
        self._value = value

    def reveal(self) -> str:
        """The value itself: only where it must leave this process or be checked."""
        return self._value

    def __repr__(self) -> str:
        return REDACTED

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return REDACTED

    def __bool__(self) -> bool:
        return bool(self._value)

    def __len__(self) -> int:
        return len(self._value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __reduce__(self):
        raise TypeError("a Secret is not pickled: reveal() it where it must leave the process")


def reveal(value: str | Secret) -> str:
    """The plain value of a Secret, or a str as it is (for callers that accept either)."""
    return value.reveal() if isinstance(value, Secret) else value
