"""Helpers for host agent tests (shared with tests/e2e/test_host_*.py): real processes only."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path

from tests.support import (
    AgentProcess,
    provision,
    run_cli,
    technician_ssh,
)


def provisioned_template(path: Path) -> Path:
    data_dir = path / "relay"
    provision(data_dir, technicians=("alice", "bob"))
    run_cli(data_dir, "company", "add", "Basic", "--plan", "base", "--seats", "2")
    run_cli(data_dir, "technician", "add", "bert", "--email", "bert@example.com",
            "--company", "Basic", "--password-stdin", stdin="tech-password-1\n")
    return data_dir


async def wait_for_count(agent: AgentProcess, text: str, count: int,
                         timeout: float = 20) -> None:
    """Wait until the agent has printed `count` lines containing `text`."""
    deadline = time.monotonic() + timeout
    while sum(text in line for line in agent.output) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"agent printed {text!r} fewer than {count} times:\n"
                                 + "".join(agent.output))
        assert agent.proc is not None and agent.proc.stdout is not None
        line = await asyncio.wait_for(
            asyncio.get_running_loop().run_in_executor(None, agent.proc.stdout.readline),
            max(0.1, left))
        if not line:
            raise AssertionError("agent exited:\n" + "".join(agent.output))
        agent.output.append(line)


# A raw asyncssh client through the relay to the agent: what any SSH client can do.
inner_connection = technician_ssh



async def read_until(reader, needle: bytes, timeout: float = 15) -> bytes:
    """Read from an SSH stream until `needle` shows up; everything read is returned."""
    seen = b""
    try:
        async with asyncio.timeout(timeout):
            while needle not in seen:
                chunk = await reader.read(4096)
                if not chunk:
                    raise AssertionError(f"stream ended before {needle!r}; got {seen[-500:]!r}")
                seen += chunk
    except TimeoutError:
        raise AssertionError(f"no {needle!r} within {timeout}s; got {seen[-500:]!r}") from None
    return seen


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0): read its state.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


def leftovers(folder: Path, keep: tuple[str, ...] = ("agent.lock",)) -> list[str]:
    """What an agent left in its temp folder (its TMPDIR in tests)."""
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)
