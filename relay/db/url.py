"""Which database the relay uses: URLs as operators write them, and shown without a password.

SQLite is the embedded default (a file in the data dir); PostgreSQL takes several relays on one
database. A URL is only ever shown through `describe()`, with its password as ***.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from sqlalchemy import URL, exc, make_url

SQLITE = "sqlite"
POSTGRESQL = "postgresql"
# SQLite through the standard library's sqlite3 (on the store's own threads, see engine.py);
# PostgreSQL through asyncpg.
_DRIVERS = {SQLITE: "sqlite+pysqlite", POSTGRESQL: "postgresql+asyncpg"}
_ACCEPTED = {
    "sqlite": SQLITE, "sqlite+pysqlite": SQLITE, "sqlite+aiosqlite": SQLITE,
    "postgresql": POSTGRESQL, "postgresql+asyncpg": POSTGRESQL, "postgres": POSTGRESQL,
}
# What a PostgreSQL URL's query may say (asyncpg's names, and libpq's sslmode).
_POSTGRESQL_OPTIONS = {"host", "port", "ssl", "sslmode", "passfile", "target_session_attrs",
                       "prepared_statement_cache_size"}
URL_HELP = ("use postgresql://USER:PASSWORD@HOST:PORT/DATABASE (or postgresql+asyncpg://...) "
            "or sqlite:////absolute/path/relay.db")


def parse_database_url(text: str) -> URL:
    """A SQLite or PostgreSQL URL from what an operator typed, with the relay's driver."""
    try:
        url = make_url(text.strip())
    except (exc.ArgumentError, ValueError):
        raise ValueError(f"cannot read the database URL: {URL_HELP}") from None
    kind = _ACCEPTED.get(url.drivername)
    if kind is None:
        raise ValueError(f"the database {url.drivername!r} is not supported: {URL_HELP}")
    url = url.set(drivername=_DRIVERS[kind])
    if kind == SQLITE:
        if not url.database or url.database == ":memory:":
            raise ValueError(f"a SQLite database needs a file: {URL_HELP}")
        return url.set(database=str(Path(url.database).expanduser().resolve()))
    if not url.database:
        raise ValueError(f"the PostgreSQL URL names no database: {URL_HELP}")
    unknown = sorted(set(url.query) - _POSTGRESQL_OPTIONS)
    if unknown:
        raise ValueError(f"the database URL's option {', '.join(unknown)} is not one the relay "
                         f"passes on: use {', '.join(sorted(_POSTGRESQL_OPTIONS))}")
    if "sslmode" in url.query:  # libpq's name for what asyncpg calls ssl
        query = dict(url.query)
        query.setdefault("ssl", query.pop("sslmode"))
        url = url.set(query=query)
    return url


def sqlite_url(path: Path) -> URL:
    return URL.create(_DRIVERS[SQLITE], database=str(path))


def backend(url: URL) -> str:
    return url.get_backend_name()


def describe(url: URL) -> str:
    """The URL for messages and logs, as an operator writes it: no driver name, and the
    password, if any, as ***."""
    return url.set(drivername=backend(url)).render_as_string(hide_password=True)


def without_password(text: str, url: URL) -> str:
    """`text` (an error's words, for a log) with the URL's password, as it is and as a URL
    spells it, replaced by ***."""
    password = url.password
    if password:
        for form in {str(password), quote(str(password), safe="")}:
            text = text.replace(form, "***")
    return text


def sqlite_path(url: URL) -> Path:
    return Path(url.database or "")
