"""From the join link to a running host with nothing but curl and sh: the real install script
against a real relay, with the host's wheels served by the relay (no package index)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from relay import wheelhouse
from tests.support import AgentProcess, Api, technician_ssh

seen_secrets: list[str] = []


async def secrets_in_argv(root: int, secrets: tuple[str, ...]) -> None:
    """Watch the command lines of `root`'s descendants, as any local user can, and note every
    one that carries a secret (except the test's own curl and the `sh -c` running it)."""
    seen_secrets.clear()
    while True:
        with contextlib.suppress(psutil.Error):
            for proc in psutil.Process(root).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    argv = proc.cmdline()
                    if argv and argv[0] == "curl":
                        continue
                    if any(secret in part for part in argv for secret in secrets):
                        seen_secrets.append(" ".join(argv))
        await asyncio.sleep(0.02)


pytestmark = pytest.mark.skipif(shutil.which("curl") is None,
                                reason="curl is not installed; CI installs it")


@pytest.fixture(scope="session")
def built_wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data_dir = tmp_path_factory.mktemp("wheelhouse-build")
    try:
        wheelhouse.build(data_dir)
    except RuntimeError as exc:
        pytest.skip(f"cannot build the host's wheelhouse here (offline?): {exc}")
    return wheelhouse.wheelhouse_dir(data_dir)


async def test_install_script_runs_the_host_and_leaves_nothing(
        relay, agents, tmp_path: Path, built_wheelhouse: Path) -> None:
    shutil.copytree(built_wheelhouse, wheelhouse.wheelhouse_dir(relay.data_dir))
    customer_tmp = tmp_path / "customer"
    customer_tmp.mkdir()
    async with Api(relay.base_url) as api:
        session = await api.create_session()
        page = await api.client.get(session["join_url"], headers={"User-Agent": "curl/8.5.0"})
        assert "alice of Acme asks to give you remote support" in page.text
        assert f"curl -fsSL {session['join_url']}/install.sh | sudo sh" in page.text

        # The machine's own pip settings stay (the script must ignore them itself).
        env = {k: v for k, v in os.environ.items() if not k.startswith("ADHOC_")}
        env.update(TMPDIR=str(customer_tmp), ADHOC_HOST_LOCK=str(tmp_path / "host.lock"),
                   ADHOC_ALLOW_UNPRIVILEGED="1", PATH=f"{Path(sys.executable).parent}:"
                   + env.get("PATH", ""))
        # Unattended, as documented: the code in the environment, never in an argument.
        env["ADHOC_JOIN_CODE"] = session["security_code"]
        host = AgentProcess(session["join_url"], session["security_code"], customer_tmp)
        host.proc = subprocess.Popen(  # noqa: ASYNC220 (read line by line from the test)
            ["sh", "-c", 'curl -fsSL "$1/install.sh" | sh -s -- --yes', "sh",
             session["join_url"]],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            text=True, env=env, start_new_session=True)
        agents.append(host)
        token = session["join_url"].rsplit("/", 1)[1]
        watcher = asyncio.create_task(secrets_in_argv(
            host.proc.pid, (token, session["security_code"])))
        await host.wait_for_line("Installing the temporary Adhoc host", timeout=30)
        await host.wait_for_line("Connected to the relay", timeout=80)
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        # What a local user watching the process list saw while it installed and started:
        # no link and no code in any argument (but the test's own curl line, which has it).
        assert seen_secrets == []
        view = await api.wait_for(session["id"], lambda v: v["state"] == "active"
                                  and v["online"])
        async with technician_ssh(relay, api, view) as inner:
            result = await inner.run("echo installed-$((40+2))", check=True)
            assert result.stdout.strip() == "installed-42"

        # Used links serve nothing more.
        assert (await api.client.get(f"{session['join_url']}/wheels/")).status_code == 410

        ended = await api.client.post(f"/api/v1/sessions/{session['id']}/end")
        assert ended.status_code == 200
        assert host.wait_exit(30) == 0
    assert any("removed itself" in line for line in host.output)
    assert sorted(p.name for p in customer_tmp.iterdir()) == []
