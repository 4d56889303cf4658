"""Shared fixtures: a provisioned data dir, a running relay process on loopback, and a throwaway
PostgreSQL cluster for the tests that run the relay on it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.postgres import PostgresCluster, postgres_cluster
from tests.support import AgentProcess, RelayProcess, provision


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster | None]:
    """One cluster for the whole run (None when PostgreSQL is not installed)."""
    with postgres_cluster() as cluster:
        yield cluster


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "relay"
    provision(path, technicians=("alice", "bob"))
    return path


@pytest.fixture
def relay(data_dir: Path) -> Iterator[RelayProcess]:
    process = RelayProcess(data_dir)
    process.start()
    yield process
    process.stop()


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[list[AgentProcess]]:
    """Agents started by a test; all stopped at the end."""
    started: list[AgentProcess] = []
    yield started
    for agent in started:
        agent.stop()

