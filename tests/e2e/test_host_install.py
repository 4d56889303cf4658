"""From the join link to a running host with nothing but curl and sh: the real install script
against a real relay, with the host's wheels served by the relay (no package index)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import ssl
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from relay import wheelhouse
from tests.certs import Authority
from tests.support import AgentProcess, Api, RelayProcess, technician_ssh

seen_secrets: list[str] = []


async def secrets_in_argv(root: int, secrets: tuple[str, ...]) -> None:
    """Watch the command lines of `root`'s descendants, as any local user can, and note every
    one that carries a secret (except the test's own curl and the `sh -c` running it)."""
    seen_secrets.clear()
    own = psutil.Process(root).cmdline()  # the test's `sh -c`, and its forks for the pipe
    while True:
        with contextlib.suppress(psutil.Error):
            for proc in psutil.Process(root).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    argv = proc.cmdline()
                    if (argv and argv[0] == "curl") or argv == own:
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


def customer_env(tmp_path: Path, customer_tmp: Path, **extra: str) -> dict[str, str]:
    """A customer's shell: this machine's own pip settings stay (the script must ignore them
    itself); no sudo is needed when the customer is root already."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADHOC_")}
    env.update(TMPDIR=str(customer_tmp), ADHOC_HOST_LOCK=str(tmp_path / "host.lock"),
               PATH=f"{Path(sys.executable).parent}:" + env.get("PATH", ""), **extra)
    if os.geteuid() != 0:
        env["ADHOC_ALLOW_UNPRIVILEGED"] = "1"
    return env


@pytest.fixture(params=["http", "https-pinned"])
def served(request, tmp_path: Path, data_dir: Path):
    """A relay over plain HTTP, or over HTTPS with the link pinning its key (the customer's
    computer trusts the relay's authority through SSL_CERT_FILE: curl, pip and the host)."""
    extra: tuple[str, ...] = ()
    trusted = None
    if request.param == "https-pinned":
        folder = tmp_path / "tls"
        folder.mkdir()
        authority = Authority(folder)
        cert = authority.issue("relay")
        extra = ("--tls-cert", str(cert.cert), "--tls-key", str(cert.key),
                 "--pin-certificate", str(cert.cert))
        trusted = authority.path
    process = RelayProcess(data_dir, extra)
    process.start()
    yield process, trusted
    process.stop()


async def test_the_one_liner_installs_and_runs_the_host_as_root_and_leaves_nothing(
        served, agents, tmp_path: Path, built_wheelhouse: Path) -> None:
    relay, trusted = served
    shutil.copytree(built_wheelhouse, wheelhouse.wheelhouse_dir(relay.data_dir))
    customer_tmp = tmp_path / "customer"
    customer_tmp.mkdir()
    verify = ssl.create_default_context(cafile=str(trusted)) if trusted else True
    async with Api(relay.base_url, verify=verify) as api:
        session = await api.create_session()
        page = await api.client.get(session["join_url"], headers={"User-Agent": "curl/8.5.0"})
        assert "alice of Acme asks to give you remote support" in page.text
        command = session["install_command"]
        assert command in page.text
        assert command.startswith("curl -sSL ") and command.endswith(" | sh")
        assert "sudo" not in command and " -f" not in command
        if trusted:
            assert "--pinnedpubkey 'sha256//" in command
        env = customer_env(tmp_path, customer_tmp,
                           **({"SSL_CERT_FILE": str(trusted), "CURL_CA_BUNDLE": str(trusted)}
                              if trusted else {}))
        # Unattended, as documented: the code in the environment, never in an argument.
        env["ADHOC_JOIN_CODE"] = session["security_code"]
        host = AgentProcess(session["join_url"], session["security_code"], customer_tmp)
        host.proc = subprocess.Popen(  # noqa: ASYNC220 (read line by line from the test)
            ["sh", "-c", f"{command} -s -- --yes"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            text=True, env=env, start_new_session=True)
        agents.append(host)
        token = session["join_url"].split("#")[0].rsplit("/", 1)[1]
        watcher = asyncio.create_task(secrets_in_argv(
            host.proc.pid, (token, session["security_code"])))
        await host.wait_for_line("Installing the temporary Adhoc host", timeout=30)
        await host.wait_for_line("Connected to the relay", timeout=120)
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
        assert (await api.client.get(
            f"{session['join_url'].split('#')[0]}/wheels/")).status_code == 410

        ended = await api.client.post(f"/api/v1/sessions/{session['id']}/end")
        assert ended.status_code == 200
        assert host.wait_exit(30) == 0
    assert any("removed itself" in line for line in host.output)
    assert sorted(p.name for p in customer_tmp.iterdir()) == []


async def test_a_used_or_mistyped_link_says_why_and_fails(relay, tmp_path: Path) -> None:
    """curl -f used to hide the relay's answer (and sh then exited 0): the customer sees the
    relay's words and the one-liner fails."""
    async with Api(relay.base_url) as api:
        session = await api.create_session()
        await api.client.post(f"/api/v1/sessions/{session['id']}/end")
    command = session["install_command"]
    link = session["join_url"]
    cases = {
        command: "adhoc: this link was already used, has expired or was ended: ask your "
                 "technician for a new invitation",
        command.replace(link, link[:-3] + "xyz"): "adhoc: this link is not valid: ask your "
                                                  "technician for a new invitation",
        command.replace("/join/", "/jion/"): "adhoc: this link is not valid: copy the whole "
                                             "command from the invitation, or ask your "
                                             "technician for a new one",
    }
    customer_tmp = tmp_path / "customer"
    customer_tmp.mkdir()
    for line, words in cases.items():
        result = subprocess.run(["sh", "-c", line], capture_output=True, text=True,
                                env=customer_env(tmp_path, customer_tmp), timeout=60)
        assert result.returncode == 1, (line, result)
        assert result.stderr.strip() == words, line
