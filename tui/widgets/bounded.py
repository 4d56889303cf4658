"""A text field with a length limit that says so when it refuses.

Textual's Input works on its whole value at every key: 100 KB pasted into a terminal that sends
it as keystrokes kept the console at a full core for minutes while its memory grew past
1.5 GB. Every field of the console therefore has a limit, the relay's own where it has one
(relay/sessions.py MAX_EMAIL_CHARS and MAX_NOTE_CHARS, common/passwords.py
SESSION_PASSWORD_MAX). Typing past it, or
pasting more than fits, changes nothing and says so in a notification, once every few seconds
at most (a paste sent as keystrokes would otherwise raise one per key).
"""

from __future__ import annotations

import time

from textual import events
from textual.widgets import Input

SAY_AGAIN_AFTER = 3.0  # seconds between two "too long" notifications of one field
PATH_MAX = 4096  # Linux's limit on a path


class BoundedInput(Input):
    """An Input with a required `max_length` and a clear word when it refuses text."""

    def __init__(self, *args, max_length: int, what: str, **kwargs) -> None:
        super().__init__(*args, max_length=max_length, **kwargs)
        self.what = what  # "the customer's email", in "… takes at most N characters"
        self._said_at = -SAY_AGAIN_AFTER

    def _say_too_long(self, rest: str, *, always: bool = False) -> None:
        now = time.monotonic()
        if now - self._said_at < SAY_AGAIN_AFTER and not always:
            return
        self._said_at = now
        self.notify(f"{self.what[:1].upper()}{self.what[1:]} takes at most "
                    f"{self.max_length:,} characters: {rest}.",
                    severity="warning", markup=False)

    def restricted(self) -> None:
        self.app.bell()
        self._say_too_long("the rest was not taken")

    def _on_paste(self, event: events.Paste) -> None:
        line = event.text.splitlines()[0] if event.text else ""
        start, end = sorted(self.selection)  # both at the cursor when nothing is selected
        if len(self.value) - (end - start) + len(line) > self.max_length:
            event.stop()
            self.app.bell()  # a paste is one act: always answered
            self._say_too_long(f"nothing of the {len(line):,} characters pasted was taken",
                               always=True)
            return
        super()._on_paste(event)
