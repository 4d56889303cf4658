"""The console's own settings: which relay, the stored login token, and key remaps.

Kept in the user config dir as console.toml, mode 0600 (it holds a bearer token).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

from common.secret import Secret, reveal


def config_dir() -> Path:
    override = os.environ.get("ADHOC_CONSOLE_CONFIG_DIR")
    return Path(override) if override else Path(platformdirs.user_config_dir("adhoc",
                                                                             appauthor=False))


def embedded_data_dir() -> Path:
    override = os.environ.get("ADHOC_CONSOLE_DATA_DIR")
    return Path(override) if override else Path(platformdirs.user_data_dir("adhoc",
                                                                           appauthor=False))


@dataclass
class ConsoleConfig:
    relay_url: str | None = None
    login: str | None = None
    token: Secret | None = None
    keymap: dict[str, str] = field(default_factory=dict)
    # [embedded]: where the bundled relay listens and the address customers use (the
    # command line's --listen and --public-url win)
    listen: str | None = None
    public_url: str | None = None

    @property
    def path(self) -> Path:
        return config_dir() / "console.toml"

    @classmethod
    def load(cls) -> ConsoleConfig:
        config = cls()
        try:
            data = tomllib.loads(config.path.read_text())
        except FileNotFoundError:
            return config
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SystemExit(f"adhoc-console: cannot read {config.path}: {exc}; fix or delete "
                             "the file") from None
        relay = data.get("relay", {})
        config.relay_url = relay.get("url")
        config.login = relay.get("login")
        token = relay.get("token")
        config.token = Secret(token) if isinstance(token, str) and token else None
        config.keymap = {str(k): str(v) for k, v in data.get("keys", {}).items()}
        embedded = data.get("embedded", {})
        config.listen = embedded.get("listen")
        config.public_url = embedded.get("public_url")
        return config

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lines = ["[relay]"]
        for key in ("relay_url", "login", "token"):
            value = getattr(self, key)
            if value:
                name = "url" if key == "relay_url" else key
                lines.append(f"{name} = {_quote(reveal(value))}")
        embedded = [f"{key} = {_quote(value)}" for key, value in
                    (("listen", self.listen), ("public_url", self.public_url)) if value]
        if embedded:
            lines += ["\n[embedded]", *embedded]
        if self.keymap:
            lines.append("\n[keys]")
            lines += [f"{_quote(k)} = {_quote(v)}" for k, v in sorted(self.keymap.items())]
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(tmp, self.path)


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
