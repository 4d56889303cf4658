"""The host wheel carries everything the host imports: its own package and `common`, nothing
of the relay or the console."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from relay.wheelhouse import build_host_wheel, refresh_host_wheel, wheelhouse_dir
from tests.support import RelayProcess, provision


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


def _stale_wheelhouse(data_dir: Path) -> tuple[Path, Path]:
    """A wheelhouse as an earlier Adhoc left it: its host wheel of other code, and a
    dependency wheel beside it."""
    wheels = wheelhouse_dir(data_dir)
    wheels.mkdir(parents=True)
    stale = wheels / "adhoc_host-0.0.1-py3-none-any.whl"
    with zipfile.ZipFile(stale, "w") as zf:
        zf.writestr("hostagent/shells.py", "# the code before the fix\n")
    dependency = wheels / "pyte-0.8.2-py3-none-any.whl"
    dependency.write_bytes(b"a dependency's wheel")
    return stale, dependency


def test_the_host_wheel_is_rebuilt_from_the_relays_code_after_an_upgrade(
        tmp_path: Path) -> None:
    stale, dependency = _stale_wheelhouse(tmp_path)
    assert refresh_host_wheel(tmp_path)
    wheels = sorted(wheelhouse_dir(tmp_path).glob("*.whl"))
    fresh = build_host_wheel(tmp_path)  # deterministic: the same bytes from the same code
    assert [w.name for w in wheels] == sorted([fresh.name, dependency.name])
    assert (wheelhouse_dir(tmp_path) / fresh.name).read_bytes() == fresh.read_bytes()
    assert dependency.read_bytes() == b"a dependency's wheel" and not stale.exists()
    assert not refresh_host_wheel(tmp_path), "already the relay's own: left as it is"
    assert not list(tmp_path.glob(".host-wheel-*"))
    assert not refresh_host_wheel(tmp_path / "no-wheelhouse")


def test_a_relay_starting_on_a_stale_wheelhouse_serves_its_own_host(tmp_path: Path) -> None:
    data = tmp_path / "relay"
    provision(data)
    stale, _ = _stale_wheelhouse(data)
    relay = RelayProcess(data)
    relay.start()
    try:
        hosts = list(wheelhouse_dir(data).glob("adhoc_host-*.whl"))
        assert len(hosts) == 1 and not stale.exists()
        with zipfile.ZipFile(hosts[0]) as zf:
            assert "hostagent/cli.py" in zf.namelist()
    finally:
        relay.stop()
