"""Shared fixtures: a provisioned data dir, a running relay process on loopback, and a throwaway
PostgreSQL cluster for the tests that run the relay on it; and how the suite runs in parallel.

`python3 -m pytest` runs the tests in several worker processes at once (pytest-xdist; see
`pytest_cmdline_main`): most of a test's time is spent waiting on real relays, agents, sshd and
tmux, so two cores carry more than two workers. Session fixtures run once per worker (each
worker has its own PostgreSQL cluster). A test marked `serial` runs with no other test beside
it (see `pytest_runtest_protocol`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.postgres import PostgresCluster, postgres_cluster
from tests.support import AgentProcess, RelayProcess, provision


@pytest.fixture(autouse=True)
def _console_config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The console's files (its login, its shells' names) in the test's own folder, never in
    the home of whoever runs the tests; a test that names one keeps its own."""
    if "ADHOC_CONSOLE_CONFIG_DIR" not in os.environ:
        monkeypatch.setenv("ADHOC_CONSOLE_CONFIG_DIR", str(tmp_path / "console-config"))


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



@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    """In parallel unless the command line says otherwise (`-n 0` or `-p no:xdist`: in this
    process; `-n N`: N workers). Workers steal queued tests from each other, so the few long
    tests do not pile up at the end of one worker's queue."""
    if (config.pluginmanager.hasplugin("xdist") and not hasattr(config, "workerinput")
            and config.option.numprocesses is None and not config.option.tx):
        config.option.numprocesses = "auto"
        if config.option.dist == "no":
            config.option.dist = "worksteal"


@pytest.hookimpl(optionalhook=True)  # known only while xdist is loaded
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """`-n auto`: twice the cores, as the tests mostly wait (PYTEST_XDIST_AUTO_NUM_WORKERS
    overrides it)."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None
    return 2 * (len(os.sched_getaffinity(0)) or 1)


@contextlib.contextmanager
def _turn(item: pytest.Item) -> Iterator[None]:
    """Hold this worker's turn for the test: shared for most, alone for a `serial` test.

    Two locks on files every worker of the run sees: a serial test closes the gate (no test
    starts after that), then waits until every running one has finished; any other test
    passes the gate and runs beside the rest."""
    if not hasattr(item.config, "workerinput"):
        yield  # one process: nothing runs beside anything
        return
    run = item.config._tmp_path_factory.getbasetemp().parent
    alone = item.get_closest_marker("serial") is not None
    with (run / "adhoc-gate.lock").open("a") as gate, (run / "adhoc-run.lock").open("a") as lane:
        fcntl.flock(gate, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        fcntl.flock(lane, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        if not alone:
            fcntl.flock(gate, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(lane, fcntl.LOCK_UN)
            fcntl.flock(gate, fcntl.LOCK_UN)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    """Around the test's setup, call and teardown, outside its timeout (the wait for a serial
    test's turn is not the test's own time)."""
    with _turn(item):
        yield
