"""From the join link to a running host with nothing but curl and sh: the real install script
against a real relay, with the host's wheels served by the relay (no package index)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from relay import wheelhouse
from tests.support import AgentProcess, Api, technician_ssh

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
        host = AgentProcess(session["join_url"], session["security_code"], customer_tmp)
        host.proc = subprocess.Popen(  # noqa: ASYNC220 (read line by line from the test)
            ["sh", "-c", 'curl -fsSL "$1/install.sh" | sh -s -- --yes --code "$2"', "sh",
             session["join_url"], session["security_code"]],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            text=True, env=env, start_new_session=True)
        agents.append(host)
        await host.wait_for_line("Installing the temporary Adhoc host", timeout=30)
        await host.wait_for_line("Connected to the relay", timeout=80)
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
