"""Session rules: the state machine, plan features, limits, and the secrets a session carries.

Pure functions and small value types; the store applies them inside its transactions.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

MAX_CODE_ATTEMPTS = 5
MAX_LIVE_PER_TECHNICIAN = 1
MAX_LIVE_PER_COMPANY = 5
# What a session's customer email and note may hold (the API's and the console's limits).
MAX_EMAIL_CHARS = 254
MAX_NOTE_CHARS = 500


class State(StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    ENDED = "ended"


LIVE_STATES = (State.PENDING, State.ACTIVE)


class Event(StrEnum):
    ACTIVATE = "activate"
    EXPIRE = "expire"
    END = "end"


class EndReason(StrEnum):
    TECHNICIAN = "ended_by_technician"
    CUSTOMER = "ended_by_customer"
    EXPIRED = "expired"
    INVITE_EXPIRED = "invite_expired"
    CODE_ATTEMPTS = "code_attempts"
    ADMIN = "ended_by_admin"


# How an ended session's reason reads in a sentence, for people outside the console (OpenSSH
# users see it in a channel-open failure or a disconnect message).
END_WORDS: dict[str, str] = {
    EndReason.TECHNICIAN: "ended by a technician",
    EndReason.CUSTOMER: "ended by the customer",
    EndReason.EXPIRED: "its time was over",
    EndReason.INVITE_EXPIRED: "the invitation expired before the customer joined",
    EndReason.CODE_ATTEMPTS: "too many wrong security codes were tried",
    EndReason.ADMIN: "ended by an administrator",
}


def describe_end(reason: str | None, ended_at: float | None) -> str:
    """"ended by the customer at 2026-03-01 14:02 UTC" (reason and time as far as known)."""
    words = END_WORDS.get(reason or "", f"ended ({reason})" if reason else "ended")
    if ended_at is None:
        return words
    return f"{words} at {datetime.fromtimestamp(ended_at, UTC).strftime('%Y-%m-%d %H:%M')} UTC"


class Plan(StrEnum):
    TRIAL = "trial"
    BASE = "base"
    PLUS = "plus"
    PREMIER = "premier"


class Feature(StrEnum):
    SHELL = "shell"
    FILES = "files"
    DASHBOARD = "dashboard"
    CHAT = "chat"
    FORWARD = "forward"  # port forwarding to what the customer's computer can reach


PLAN_FEATURES: dict[Plan, tuple[Feature, ...]] = {
    Plan.TRIAL: (),
    Plan.BASE: (Feature.SHELL, Feature.CHAT),
    Plan.PLUS: (Feature.SHELL, Feature.CHAT, Feature.FILES, Feature.DASHBOARD,
                Feature.FORWARD),
    Plan.PREMIER: (Feature.SHELL, Feature.CHAT, Feature.FILES, Feature.DASHBOARD,
                   Feature.FORWARD),
}


class InvalidTransition(Exception):
    """A state change the rules do not allow (e.g. activating an ended session)."""


_TRANSITIONS: dict[tuple[State, Event], State] = {
    (State.PENDING, Event.ACTIVATE): State.ACTIVE,
    (State.PENDING, Event.EXPIRE): State.ENDED,
    (State.PENDING, Event.END): State.ENDED,
    (State.ACTIVE, Event.EXPIRE): State.ENDED,
    (State.ACTIVE, Event.END): State.ENDED,
}


def next_state(state: State, event: Event) -> State:
    """Where `event` takes a session in `state`; `ended` is final."""
    try:
        return _TRANSITIONS[(State(state), Event(event))]
    except KeyError:
        raise InvalidTransition(f"cannot {event} a session that is {state}") from None


class LimitError(Exception):
    """Creating a session would break a plan rule or a limit; `code` is the API error code."""

    def __init__(self, code: str, status: int, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class Occupancy:
    """What counts against the limits at the moment of a create."""

    plan: Plan
    seats: int
    live_for_technician: int
    live_for_company: int


def check_can_create(occ: Occupancy) -> None:
    """Raise LimitError when a new session is not allowed; checked in order plan, technician,
    company, seats so the message names the rule the technician can act on first."""
    if not PLAN_FEATURES[Plan(occ.plan)]:
        raise LimitError(
            "plan", 403,
            f"the {occ.plan} plan has no ad hoc support: ask your administrator to move the "
            "company to base, plus or premier",
        )
    if occ.live_for_technician >= MAX_LIVE_PER_TECHNICIAN:
        raise LimitError(
            "limit", 409,
            "technician limit: you already have a live session; end it (or let it expire) "
            "before inviting another customer",
        )
    if occ.live_for_company >= MAX_LIVE_PER_COMPANY:
        raise LimitError(
            "limit", 409,
            f"company limit: your company already has {MAX_LIVE_PER_COMPANY} live sessions; "
            "one must end before another can start",
        )
    if occ.live_for_company >= occ.seats:
        raise LimitError(
            "no_seat", 402,
            f"no free seat: all {occ.seats} seats of your company are in use; end a session or "
            "ask your administrator for more seats",
        )


# --- secrets ---------------------------------------------------------------------------------

def new_session_id() -> str:
    """16 lower-case base32 characters (80 bits): valid as an SSH host name; forward names
    arrive lower-cased, so ids are lower-case."""
    return base64.b32encode(secrets.token_bytes(10)).decode().lower()


def new_token() -> str:
    """A 256-bit bearer secret (API tokens, join tokens, agent secrets), URL-safe."""
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """Tokens are 256-bit random, so a plain SHA-256 is a sufficient verifier."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_security_code() -> str:
    return f"{secrets.randbelow(10**6):06d}"


def code_hmac(secret_key: bytes, join_token_hash: str, code: str) -> str:
    """Bind the code to its link: the same six digits on another link never match."""
    return hmac.new(secret_key, f"{join_token_hash}:{code}".encode(), hashlib.sha256).hexdigest()


def code_matches(secret_key: bytes, join_token_hash: str, code: str, stored: str) -> bool:
    return hmac.compare_digest(code_hmac(secret_key, join_token_hash, code), stored)


def is_well_formed_code(code: str) -> bool:
    return len(code) == 6 and code.isascii() and code.isdigit()
