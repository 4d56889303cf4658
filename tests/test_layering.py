"""Imports go only downward: every program may use `common`; no program imports another's
internals (the host's wheel carries `hostagent` and `common` alone)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# package -> the first-party packages it may import
ALLOWED = {
    "common": {"common"},
    "hostagent": {"hostagent", "common"},
    "relay": {"relay", "common"},
    # The console runs the bundled relay in-process (its embedded default).
    "tui": {"tui", "common", "relay"},
}


def _first_party_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found |= {name.split(".")[0] for name in names} & set(ALLOWED)
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_it_may(package: str) -> None:
    wrong = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        extra = _first_party_imports(path) - ALLOWED[package]
        if extra:
            wrong[str(path.relative_to(ROOT))] = sorted(extra)
    assert not wrong, f"{package} imports what it may not: {wrong}"
