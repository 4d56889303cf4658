"""The wheels the relay serves to the temporary host, so a customer's install needs no index.

`adhoc-relay wheelhouse` (or `python -m relay.wheelhouse`) fills <data-dir>/wheelhouse with:
- adhoc_host-<version>-py3-none-any.whl, built here from the `hostagent` and `common` packages'
  files (a
  wheel is a zip with a few metadata files; no build backend is needed, and it works from an
  installed relay as well as from a checkout);
- binary wheels of the host's dependencies, fetched with `pip download` through this machine's
  pip configuration (index, proxy, cache). By default for this interpreter and platform;
  `--python-version` and `--platform` add others (customers' computers may differ).

The relay never imports `hostagent`: it only packs its files.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

log = logging.getLogger("adhoc.relay.wheelhouse")

HOST_DIST = "adhoc-host"
HOST_PACKAGE = "hostagent"
# What every Adhoc program shares (transport settings, the verifier check, secrets): the host
# ships it too. The host never imports `relay` or `tui`.
SHARED_PACKAGE = "common"
# What `hostagent` imports outside the standard library (keep in step with its imports).
HOST_REQUIREMENTS = ("asyncssh>=2.24.1", "argon2-cffi>=25.1", "httpx>=0.28", "psutil>=7.0",
                     "pyte>=0.8.2", "websockets>=14")
REQUIRES_PYTHON = ">=3.11"


def wheelhouse_dir(data_dir: Path) -> Path:
    return data_dir / "wheelhouse"


def _version() -> str:
    try:
        return importlib.metadata.version("adhoc")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def _package_files(package: str) -> dict[str, bytes]:
    """Every .py file of an importable package, keyed by its path inside a wheel."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the {package} package is not installed next to the relay")
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    return {f"{package}/{path.relative_to(package_dir).as_posix()}": path.read_bytes()
            for path in sorted(package_dir.rglob("*.py")) if "__pycache__" not in path.parts}


def build_host_wheel(dest: Path) -> Path:
    """Pack the hostagent and common packages into a pure-Python wheel in `dest`."""
    version = _version()
    dist_info = f"adhoc_host-{version}.dist-info"
    files = {**_package_files(HOST_PACKAGE), **_package_files(SHARED_PACKAGE)}
    metadata = [
        "Metadata-Version: 2.1", f"Name: {HOST_DIST}", f"Version: {version}",
        "Summary: Adhoc temporary host: receive remote support from a technician",
        f"Requires-Python: {REQUIRES_PYTHON}",
        *(f"Requires-Dist: {req}" for req in HOST_REQUIREMENTS), "",
    ]
    files[f"{dist_info}/METADATA"] = "\n".join(metadata).encode()
    files[f"{dist_info}/WHEEL"] = (b"Wheel-Version: 1.0\nGenerator: adhoc-relay\n"
                                   b"Root-Is-Purelib: true\nTag: py3-none-any\n")
    files[f"{dist_info}/entry_points.txt"] = \
        f"[console_scripts]\nadhoc-host = {HOST_PACKAGE}.cli:main\n".encode()
    record = [f"{name},{_record_hash(data)},{len(data)}" for name, data in files.items()]
    record.append(f"{dist_info}/RECORD,,")
    files[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()
    wheel = dest / f"adhoc_host-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), data)
    return wheel


def refresh_host_wheel(data_dir: Path) -> bool:
    """Make the wheelhouse's host wheel the one this relay's own code builds, when there is a
    wheelhouse and its host wheel is another (Adhoc was upgraded since it was built): the
    customer then installs the host of the relay they join, fixes included, not whatever
    was current when the wheelhouse was first made. The dependency wheels stay. Returns
    whether it was replaced."""
    target = wheelhouse_dir(data_dir)
    current = sorted(target.glob("adhoc_host-*.whl"))
    if not current:
        return False  # no wheelhouse yet: `adhoc-relay wheelhouse` or the console makes it
    staging = Path(tempfile.mkdtemp(prefix=".host-wheel-", dir=data_dir))
    try:
        fresh = build_host_wheel(staging)
        dest = target / fresh.name
        if current == [dest] and dest.read_bytes() == fresh.read_bytes():
            return False
        os.replace(fresh, dest)  # atomic: a download in progress gets one or the other
        for old in current:
            if old != dest:
                old.unlink(missing_ok=True)
        return True
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def download_dependencies(dest: Path, python_versions: list[str], platforms: list[str]) -> None:
    """Binary wheels of the host's dependencies, for each target asked for."""
    targets = [(v, p) for v in python_versions or [None] for p in platforms or [None]]
    for version, platform in targets:
        argv = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                "--only-binary=:all:", "--dest", str(dest)]
        if version:
            argv += ["--python-version", version]
        if platform:
            argv += ["--platform", platform]
        result = subprocess.run([*argv, *HOST_REQUIREMENTS], capture_output=True, text=True,
                                timeout=600)
        if result.returncode != 0:
            raise RuntimeError("pip could not fetch the host's dependencies (is the package "
                               "index reachable?): " + result.stderr.strip()[-1000:])


def build(data_dir: Path, python_versions: list[str] | None = None,
          platforms: list[str] | None = None) -> list[Path]:
    """(Re)build the wheelhouse; the old one stays in place until the new one is complete."""
    target = wheelhouse_dir(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    for stale in data_dir.glob(".wheelhouse-*"):  # a build stopped half-way
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=".wheelhouse-", dir=data_dir))
    try:
        build_host_wheel(staging)
        download_dependencies(staging, python_versions or [], platforms or [])
        old = data_dir / ".wheelhouse-old"
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            target.rename(old)
        staging.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return sorted(target.glob("*.whl"))


def has_host_wheel(data_dir: Path) -> bool:
    return any(wheelhouse_dir(data_dir).glob("adhoc_host-*.whl"))


class Preparation:
    """Builds the wheelhouse in the background when it is missing (the console's embedded
    relay), as a child process that stopping the relay ends. Until it is done the install
    script says "preparing"; if it fails, why (and the relay's log has it)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.preparing = False
        self.failure: str | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task | None = None

    def refresh(self) -> None:
        """At the relay's start: the host wheel from this relay's code (refresh_host_wheel)."""
        try:
            if refresh_host_wheel(self.data_dir):
                log.info("the host's wheel was rebuilt from this relay's code (Adhoc "
                         "changed since the wheelhouse was made)")
        except (OSError, RuntimeError) as exc:
            log.warning("could not rebuild the host's wheel from this relay's code: %s; "
                        "customers get the one built before (adhoc-relay wheelhouse "
                        "rebuilds it)", exc)

    def start(self) -> None:
        if has_host_wheel(self.data_dir) or self._task is not None:
            return
        self.preparing = True
        self._task = asyncio.get_running_loop().create_task(self._build())

    async def _build(self) -> None:
        try:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "relay.wheelhouse", "--data-dir", str(self.data_dir),
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
            _, errors = await self._proc.communicate()
            if self._proc.returncode != 0:
                self.failure = errors.decode(errors="replace").strip()[-500:] or \
                    f"exit status {self._proc.returncode}"
                log.warning("could not prepare the host's wheels: %s", self.failure)
        finally:
            self.preparing = False

    async def stop(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
            await self._proc.wait()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


def _configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--python-version", action="append", default=[], metavar="X.Y",
                        help="also fetch dependency wheels for this Python (repeatable)")
    parser.add_argument("--platform", action="append", default=[], metavar="TAG",
                        help="and for this platform tag, e.g. manylinux2014_x86_64 "
                             "(repeatable)")
    return parser


def add_command(sub) -> None:
    """Register `adhoc-relay wheelhouse`; relay/cli.py dispatches it to `run`."""
    _configure(sub.add_parser("wheelhouse",
                              help="build the wheels the join link's install script serves"))


def run(data_dir: Path, args: argparse.Namespace) -> int:
    try:
        wheels = build(data_dir, args.python_version, args.platform)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        print(f"adhoc-relay: {exc}", file=sys.stderr)
        return 1
    print(f"wheelhouse ready in {wheelhouse_dir(data_dir)}: {len(wheels)} wheels")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _configure(argparse.ArgumentParser(prog="python -m relay.wheelhouse",
                                                description=__doc__))
    parser.add_argument("--data-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    return run(args.data_dir.expanduser().resolve(), args)


if __name__ == "__main__":
    sys.exit(main())
