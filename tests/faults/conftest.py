"""Fault-test fixtures: a relay data dir provisioned once per run and copied per test, relays
that can be killed and restarted on the same ports, and quick agents.

Provisioning goes through `relay.store.Store` in this process (the CLI is tested in
tests/relay/test_admin.py); every relay here is still a real `adhoc-relay serve` process.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.ports import free_port
from tests.support import RelayProcess, provision_store


@pytest.fixture(scope="session")
def faults_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("faults-template") / "relay"
    asyncio.run(provision_store(path, [("Acme", "plus", 5, ["alice", "bob"])]))
    return path


@pytest.fixture
def start_relay(faults_template: Path, tmp_path: Path) -> Iterator[Callable[..., RelayProcess]]:
    """start_relay(*serve_flags, data_dir=None, ssh_port=None) -> a relay on fixed free ports
    (restart it with `restart(relay)`), on a copy of the template unless a data dir is given."""
    started: list[RelayProcess] = []

    def start(*extra: str, data_dir: Path | None = None, ssh_port: int | None = None
              ) -> RelayProcess:
        if data_dir is None:
            data_dir = tmp_path / f"relay{len(started)}"
            shutil.copytree(faults_template, data_dir)
        process = RelayProcess(data_dir, extra_args=extra)
        process.start(http_port=free_port(), ssh_port=ssh_port or free_port())
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def restart(relay: RelayProcess) -> None:
    """Start a stopped relay again on the ports it had."""
    http_port = int(relay.base_url.rsplit(":", 1)[1])
    relay.start(http_port=http_port, ssh_port=relay.ssh_port)


@pytest.fixture
def quick_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    """Agents started from now on retry within 2 s and run /bin/sh (no slow login profile)."""
    monkeypatch.setenv("ADHOC_HOST_BACKOFF_CAP", "2")
    monkeypatch.setenv("ADHOC_HOST_SHELL", "/bin/sh")
