"""A text field with a length limit that says so when it refuses.

Textual's Input works on its whole value at every key: 100 KB pasted into a terminal that sends
it as keystrokes kept the console at a full core for minutes while its memory grew past
1.5 GB. Every field of the console therefore has a limit, the relay's own where it has one
(an email address 254 characters, a session password 256, a note 500). Typing past it, or
pasting more than fits, changes nothing and says so in a notification, once every few seconds
at most (a paste sent as keystrokes would otherwise raise one per key).
"""

from __future__ import annotations

import time

from textual import events
from textual.widgets import Input

SAY_AGAIN_AFTER = 3.0  # seconds between two "too long" notifications of one field

# The relay's own limits on a new session (relay/api.py's SessionCreate; the session password's
# is common/passwords.py SESSION_PASSWORD_MAX), and Linux's on a path.
EMAIL_MAX = 254
NOTE_MAX = 500
PATH_MAX = 4096


class BoundedInput(Input):
    """An Input with a required `max_length` and a clear word when it refuses text."""

    def __init__(self, *args, max_length: int, what: str, **kwargs) -> None:
        super().__init__(*args, max_length=max_length, **kwargs)
        self.what = what  # "the customer's email", in "… takes at most N characters"
        self._said_at = -SAY_AGAIN_AFTER

    def _say_too_long(self, pasted: int | None = None) -> None:
        now = time.monotonic()
        if now - self._said_at < SAY_AGAIN_AFTER:
            return
        self._said_at = now
        rest = (f"nothing of the {pasted:,} characters pasted was taken" if pasted is not None
                else "the rest was not taken")
        self.notify(f"{self.what[:1].upper()}{self.what[1:]} takes at most "
                    f"{self.max_length:,} characters: {rest}.",
                    severity="warning", markup=False)

    def restricted(self) -> None:
        self.app.bell()
        self._say_too_long()

    def _on_paste(self, event: events.Paste) -> None:
        line = event.text.splitlines()[0] if event.text else ""
        start, end = sorted(self.selection) if not self.selection.is_empty \
            else (self.cursor_position, self.cursor_position)
        if len(self.value) - (end - start) + len(line) > self.max_length:
            event.stop()
            self.app.bell()
            self._said_at = -SAY_AGAIN_AFTER  # a paste is one act: always answered
            self._say_too_long(len(line))
            return
        super()._on_paste(event)
