"""Session and technician passwords: argon2id hashing, strength rules, and the verifier form.

A contract module shared by the relay, the console and the agent (it ships in the host wheel):
the console checks a session password's strength and hashes it; the relay checks the verifier
it is sent (or hashes a password itself) and hands it to the agent; the agent verifies the
technician's password against it on every login.
"""

from __future__ import annotations

import base64
import functools
import re

from argon2 import PasswordHasher, Type, extract_parameters
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()


@functools.cache
def dummy_hash() -> str:
    """A verifier of the right shape to spend the same time on unknown logins as on known
    ones; made on first use so that importing this module (the admin CLI) stays quick."""
    return _hasher.hash("adhoc-dummy-password")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(stored_hash, password)
    except (VerificationError, InvalidHashError):
        return False


_COMMON_PASSWORDS = {"password", "12345678", "123456789", "1234567890", "qwertyui", "qwerty123",
                     "password1", "letmein1", "iloveyou", "abcdefgh", "11111111", "00000000",
                     "passw0rd", "welcome1", "support1", "adhoc123", "changeme"}


def _password_problem(password: str, what: str, longest: int) -> str | None:
    """Why `what` (a session or technician password) is too weak, or None."""
    if len(password) < 8:
        return f"the {what} must have at least 8 characters"
    if len(password) > longest:
        return f"the {what} must have at most {longest} characters"
    if password.lower() in _COMMON_PASSWORDS or len(set(password)) < 4:
        return f"the {what} is too easy to guess: use a few unrelated words"
    classes = sum(bool(re.search(p, password)) for p in (r"[a-z]", r"[A-Z]", r"\d", r"[^\w]"))
    if len(password) < 12 and classes < 2:
        return (f"the {what} is too simple: use 12 or more characters, or mix letters with "
                "digits or symbols")
    return None


SESSION_PASSWORD_MAX = 256  # characters; the console's field takes no more


def session_password_problem(password: str) -> str | None:
    """Why a session password is too weak, or None. Shared with the console's strength hint."""
    return _password_problem(password, "session password", SESSION_PASSWORD_MAX)


TECHNICIAN_PASSWORD_MAX = 1024  # characters; the relay's login takes no more


def technician_password_problem(password: str) -> str | None:
    """Why a technician's account password is too weak, or None (the same rule)."""
    return _password_problem(password, "password", TECHNICIAN_PASSWORD_MAX)


# A verifier the console made in place of the session password (DESIGN §5): the relay hands it
# to the customer's agent, which checks the technician's password against it on every login.
# OWASP's argon2id floors (19 MiB with t=2, or 46 MiB with t=1), and caps so that an API caller
# cannot make the customer's computer spend seconds and 256+ MiB on each check.
VERIFIER_MAX_CHARS = 512
VERIFIER_MIN_MEMORY_KIB = 19456
VERIFIER_ONE_PASS_MEMORY_KIB = 47104
VERIFIER_MAX_MEMORY_KIB = 262144
VERIFIER_MAX_TIME_COST = 10
VERIFIER_MAX_PARALLELISM = 8
VERIFIER_MIN_BYTES = 16
# The one form argon2's own decoder reads: this order, no leading zeros, unpadded base64.
_VERIFIER_FORM = re.compile(r"\$argon2id\$v=19\$m=[1-9][0-9]*,t=[1-9][0-9]*,p=[1-9][0-9]*"
                            r"\$([A-Za-z0-9+/]+)\$([A-Za-z0-9+/]+)")
_HOW_TO_HASH = ("hash the session password with argon2id, at least 19 MiB and t=2 "
                "(argon2-cffi's defaults are fine)")


def _canonical_base64(text: str) -> bool:
    """Whether argon2 would decode this unpadded base64 (no stray bits after the last byte)."""
    if len(text) % 4 == 1:
        return False
    decoded = base64.b64decode(text + "=" * (-len(text) % 4))
    return base64.b64encode(decoded).decode().rstrip("=") == text


def verifier_problem(verifier: str) -> str | None:
    """Why a password verifier sent instead of the session password is unfit, or None."""
    if len(verifier) > VERIFIER_MAX_CHARS:
        return (f"password_verifier must have at most {VERIFIER_MAX_CHARS} characters: "
                f"{_HOW_TO_HASH}")
    try:
        params = extract_parameters(verifier)
    except InvalidHashError:
        params = None
    if params is not None and params.type is not Type.ID:
        return f"password_verifier is an argon2{params.type.name.lower()} hash: {_HOW_TO_HASH}"
    if params is not None and params.version != 19:
        return (f"password_verifier uses Argon2 version {params.version}: use version 19 "
                f"(v=19), which current libraries write; {_HOW_TO_HASH}")
    form = _VERIFIER_FORM.fullmatch(verifier)
    if params is None or form is None or not all(map(_canonical_base64, form.groups())):
        return ("password_verifier is not an argon2id hash in the standard form "
                f"$argon2id$v=19$m=...,t=...,p=...$salt$hash: {_HOW_TO_HASH}")
    for part, size in (("salt", params.salt_len), ("hash", params.hash_len)):
        if size < VERIFIER_MIN_BYTES:
            return (f"password_verifier has a {part} of {size} bytes: use at least "
                    f"{VERIFIER_MIN_BYTES}; {_HOW_TO_HASH}")
    memory, passes = params.memory_cost, params.time_cost
    if memory < VERIFIER_MIN_MEMORY_KIB or (memory < VERIFIER_ONE_PASS_MEMORY_KIB
                                            and passes < 2):
        return (f"password_verifier's argon2id parameters are too weak (m={memory} KiB, "
                f"t={passes}): hash the session password with at least 19 MiB and t=2, or "
                "46 MiB and t=1 (argon2-cffi's defaults, 64 MiB and t=3, are fine)")
    if (memory > VERIFIER_MAX_MEMORY_KIB or passes > VERIFIER_MAX_TIME_COST
            or params.parallelism > VERIFIER_MAX_PARALLELISM):
        return (f"password_verifier's argon2id parameters would cost the customer's computer "
                f"too much on every login (m={memory} KiB, t={passes}, "
                f"p={params.parallelism}): use at most {VERIFIER_MAX_MEMORY_KIB} KiB (256 MiB), "
                f"t={VERIFIER_MAX_TIME_COST} and p={VERIFIER_MAX_PARALLELISM}")
    return None


def session_secret_problem(password: str | None, verifier: str | None) -> str | None:
    """Why a create's session secret is unfit, or None: exactly one of the two, each fit."""
    if password is None and verifier is None:
        return ("send password_verifier (the session password hashed with argon2id, as the "
                "console does) or password")
    if password is not None and verifier is not None:
        return ("send password_verifier or password, not both: with the verifier the relay "
                "never needs the password")
    if verifier is not None:
        return verifier_problem(verifier)
    return session_password_problem(password)
