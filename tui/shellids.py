"""The shell each session's pane asks for, kept across console restarts.

The shell pane names its shell (ADHOC_SHELL_ID) and the host keeps a shell whose console went
away for 15 minutes (docs/PROTOCOL.md). Kept here, the name outlives the console itself: a
technician whose SSH connection to their jump server dropped, and took the console with it,
starts the console again and `r` reattaches to the shell they left, with what it printed
meanwhile. A second console of the same technician takes the shell over the same way; the
one that had it then says so and waits (tui/screens/remote.py).

One small JSON file in the console's config dir, mode 0600: session id -> shell id and when it
was last asked for; names not asked for in a week are dropped. When the file cannot be read
or written, a name for this run only is used: the pane works, without the reattach.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import time
from pathlib import Path

from tui.config import config_dir

FILE = "shells.json"
KEEP_SECONDS = 7 * 24 * 3600
_SHELL_ID = re.compile(r"^console-[0-9a-f]{16}$")


def _path() -> Path:
    return config_dir() / FILE


def _load(path: Path) -> dict[str, dict]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {key: value for key, value in data.items()
            if isinstance(key, str) and isinstance(value, dict)
            and isinstance(value.get("id"), str) and _SHELL_ID.match(value["id"])
            and isinstance(value.get("used"), (int, float))}


def _save(path: Path, data: dict[str, dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{FILE}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def shell_id_for(session_id: str, now: float | None = None) -> str:
    """The name of the shell this console keeps on `session_id`'s host (made once)."""
    now = time.time() if now is None else now
    path = _path()
    data = {key: value for key, value in _load(path).items()
            if now - value["used"] < KEEP_SECONDS}
    entry = data.get(session_id)
    shell_id = entry["id"] if entry else f"console-{secrets.token_hex(8)}"
    data[session_id] = {"id": shell_id, "used": now}
    with contextlib.suppress(OSError):
        _save(path, data)
    return shell_id
