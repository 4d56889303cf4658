"""The host wheel carries everything the host imports: its own package and `common`, nothing
of the relay or the console."""

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
    assert {"common/__init__.py", "common/passwords.py", "common/transport.py"} <= set(names)
    assert not any(n.startswith(("relay/", "tui/")) for n in names)
    # Import every host module with only the wheel's files on the path (plus site-packages
    # for third-party dependencies), not the source checkout: neither by path nor through
    # the editable install's import hook, wherever the checkout is.
    checkout = str(Path(__file__).resolve().parents[2])
    # Only the checkout itself exposes the sources (the layout is flat): a prefix test would
    # also drop a virtualenv beside it or inside it (/build/adhoc-venv, /build/adhoc/.venv).
    code = ("import os, sys; "
            f"sys.path = [p for p in sys.path if p and os.path.realpath(p) != {checkout!r}]; "
            "sys.meta_path = [f for f in sys.meta_path "
            "                 if '__editable__' not in getattr(f, '__module__', '')]; "
            f"sys.path.insert(0, {str(target)!r}); "
            "import importlib, pkgutil, hostagent; "
            "[importlib.import_module('hostagent.' + m.name) "
            " for m in pkgutil.iter_modules(hostagent.__path__)]; "
            "assert hostagent.__file__.startswith(" + repr(str(target)) + ")")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
