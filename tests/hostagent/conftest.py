"""Fixtures for the host agent's tests: a relay provisioned once per run and copied per test.

Provisioning runs the real `adhoc-relay` commands (and argon2) several times; copying the
resulting data dir gives every test its own relay with the same companies in a fraction of
the time. "Acme" has the plus plan (alice, bob), "Basic" the base plan (bert).
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.hostagent.helpers import provisioned_template
from tests.openssh import RelayPath, Sshd, sshd_server
from tests.support import AgentProcess, Api, RelayProcess, relays, start_session


@pytest.fixture(scope="session")
def relay_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return provisioned_template(tmp_path_factory.mktemp("relay-template"))


@pytest.fixture
def start_relay(relay_template: Path, tmp_path: Path) -> Iterator[Callable[..., RelayProcess]]:
    """start_relay(*serve_args) -> a running relay with its own copy of the template."""

    def fresh_copy(n: int) -> Path:
        return Path(shutil.copytree(relay_template, tmp_path / f"relay{n}"))

    with relays(fresh_copy) as start:
        yield start


@pytest.fixture
def quick_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    """Agents started from now on reconnect, check expiry and drop detached shells quickly."""
    monkeypatch.setenv("ADHOC_HOST_BACKOFF_CAP", "1")
    monkeypatch.setenv("ADHOC_HOST_CHECK_INTERVAL", "0.5")


@pytest.fixture(autouse=True)
def plain_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    """Agents run /bin/sh, not the login shell: a developer's profile (pyenv rehash, say) is
    slow and leaves stale locks behind when a test's shell is hung up mid-start."""
    monkeypatch.setenv("ADHOC_HOST_SHELL", "/bin/sh")


@pytest.fixture
def sshd() -> Iterator[Sshd]:
    """A throwaway OpenSSH sshd on loopback: the reference server of differential tests."""
    with sshd_server() as server:
        yield server


@dataclass
class OpenSSHHost:
    """A live session of alice's, its agent, and OpenSSH tools set up to reach it as `h`."""

    relay: RelayProcess
    api: Api
    view: dict
    agent: AgentProcess
    path: RelayPath


@pytest.fixture
async def openssh_host(start_relay, agents, tmp_path: Path) -> AsyncIterator[OpenSSHHost]:
    relay = start_relay()
    async with Api(relay.base_url) as api:
        view, agent = await start_session(api, agents, tmp_path)
        relay_key = (await api.relay_info())["host_key"]
        yield OpenSSHHost(relay, api, view, agent,
                          RelayPath(tmp_path / "openssh", relay, "alice", view, relay_key))
