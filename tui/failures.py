"""What a failure means to the technician: one sentence that says what happened and what to do.

Every error that reaches a screen (from the relay, a host, the network, the local disk or a
bug of ours) goes through `explain` here, so the words are the same wherever it happens. No
Textual here: the app decides how to show the sentence.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncssh

from tui.client import RelayError
from tui.sanitize import clean
from tui.transfers import TransferError

# What the technician can do about a relay error, by its code (the relay's `detail` says
# what happened; these say what next where the detail does not).
NEXT_STEP = {
    "unreachable": "check that the relay is running and that this computer can reach it",
    "offline": "wait until the list shows the host online (its network may be down), "
               "then try again",
    "unauthorized": "log in again: adhoc-console login followed by the relay's URL",
    "not_found": "the session is gone: the list shows what is left",
}


@dataclass(frozen=True)
class Explained:
    text: str  # one sentence, already safe to show as text
    expected: bool  # False: a bug of ours, worth reporting


def explain(error: BaseException) -> Explained:
    if isinstance(error, RelayError):
        return Explained(_relay_sentence(error), True)
    if isinstance(error, TransferError):
        return Explained(_sentence(str(error)), True)
    if isinstance(error, asyncssh.SFTPError):
        return Explained(_sentence(f"the customer's computer refused: "
                                   f"{error.reason or 'no reason given'}"), True)
    if isinstance(error, (asyncssh.ConnectionLost, asyncssh.DisconnectError, BrokenPipeError,
                          ConnectionError)):
        return Explained(_sentence(
            f"lost the connection to the customer's computer "
            f"({getattr(error, 'reason', '') or error or 'closed'}); "
            f"{NEXT_STEP['offline']}"), True)
    if isinstance(error, asyncssh.ChannelOpenError):
        return Explained(_sentence(f"the customer's computer did not answer ({error.reason}); "
                                   f"{NEXT_STEP['offline']}"), True)
    if isinstance(error, asyncssh.Error):
        return Explained(_sentence(f"the connection to the customer's computer failed "
                                   f"({error.reason}); {NEXT_STEP['offline']}"), True)
    if isinstance(error, OSError):
        return Explained(_sentence(f"{error.strerror or error}"
                                   f"{': ' + str(error.filename) if error.filename else ''}; "
                                   "check the path and its permissions on this computer"),
                         True)
    return Explained(_sentence(
        f"something went wrong inside the console ({type(error).__name__}: {error}); "
        "it keeps running, but please report this"), False)


def connection_lost(error: BaseException) -> bool:
    """Whether the error means the connection to the host is gone (not a refusal)."""
    if isinstance(error, asyncssh.SFTPError):
        return error.code == asyncssh.sftp.FX_CONNECTION_LOST or \
            error.code == asyncssh.sftp.FX_NO_CONNECTION
    return isinstance(error, (asyncssh.Error, ConnectionError, BrokenPipeError, EOFError)) \
        or (isinstance(error, RelayError) and error.status == 0)


def reason(error: BaseException) -> str:
    """What went wrong, in the error's own words, without a next step."""
    if isinstance(error, RelayError):
        return clean(error.detail, 300)
    if isinstance(error, OSError) and error.strerror:
        return clean(error.strerror, 300)
    return clean(getattr(error, "reason", "") or str(error) or type(error).__name__, 300)


# The relay names a refused field as its API does (`customer_email: ...`); the console's forms
# call them this.
FORM_FIELDS = {"customer_email": "customer email", "note": "note"}


def _relay_sentence(error: RelayError) -> str:
    detail = error.detail.rstrip(". ")
    field, colon, rest = detail.partition(": ")
    if colon and field in FORM_FIELDS:
        detail = f"{FORM_FIELDS[field]}: {rest}"
    key = "unauthorized" if error.status == 401 else error.code
    step = NEXT_STEP.get(key)
    if step and step not in detail:
        detail = f"{detail}; {step}"
    return _sentence(detail)


def _sentence(text: str) -> str:
    text = clean(text, 400).strip()
    if not text:
        return "Something went wrong."
    if "://" not in text.split(" ", 1)[0]:  # a sentence may start with a URL, as it is
        text = text[0].upper() + text[1:]
    return text + ("" if text.endswith((".", "…", "?", "!")) else ".")
