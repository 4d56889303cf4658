"""The host wheel carries everything the host imports: nothing from the relay but contracts."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from relay.wheelhouse import build_host_wheel


def test_host_wheel_imports_alone(tmp_path: Path) -> None:
    wheel = build_host_wheel(tmp_path)
    target = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        zf.extractall(target)
    assert "relay/transport.py" in names
    assert not any(n.startswith("relay/") and n not in ("relay/__init__.py",
                                                         "relay/transport.py") for n in names)
    # Import every host module with only the wheel's files on the path (plus site-packages
    # for third-party dependencies), not the source checkout.
    code = ("import sys; sys.path = [p for p in sys.path if 'work/main' not in p and p != '']; "
            f"sys.path.insert(0, {str(target)!r}); "
            "import importlib, pkgutil, hostagent; "
            "[importlib.import_module('hostagent.' + m.name) "
            " for m in pkgutil.iter_modules(hostagent.__path__)]; "
            "assert hostagent.__file__.startswith(" + repr(str(target)) + ")")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
