"""An asyncssh server for tests that takes one password (and, if given, one user name) and
notes every login it let in."""

from __future__ import annotations

import asyncssh


class PasswordServer(asyncssh.SSHServer):
    def __init__(self, password: str, logins: list[tuple[str, str]] | None = None,
                 username: str | None = None) -> None:
        self.password = password
        self.username = username
        self.logins = logins if logins is not None else []

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return True

    def validate_password(self, username: str, password: str) -> bool:
        ok = password == self.password and self.username in (None, username)
        if ok:
            self.logins.append((username, password))
        return ok
