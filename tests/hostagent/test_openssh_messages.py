"""What OpenSSH users read when something is wrong: they see only what the relay sends in a
channel-open failure and what the host writes to stderr or in the login banner, so each of
those says what happened and what to do."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from tests.hostagent.test_customer_terminal import customer_of, end_with_the_key
from tests.hostagent.test_features import audit_events
from tests.hostagent.test_forwarding import openssh, relay_path
from tests.openssh import RelayPath
from tests.support import SESSION_PASSWORD, Api, start_session


def said(result) -> str:
    return result.stderr.decode(errors="replace")


@contextlib.asynccontextmanager
async def shell_ready(host: RelayPath) -> AsyncIterator[asyncio.subprocess.Process]:
    """`ssh -tt h` through the relay, once its remote shell printed "ready"."""
    async with openssh(host, "-tt", "h", "echo ready; sleep 60") as ssh:
        assert ssh.stdout is not None
        assert b"ready" in await asyncio.wait_for(ssh.stdout.readline(), 60)
        yield ssh


async def test_wrong_user_name_is_named_and_spends_no_try(openssh_host) -> None:
    host, agent, api = openssh_host.path, openssh_host.agent, openssh_host.api
    wrong = await asyncio.to_thread(host.run, "ssh", "root@h", "true")
    assert wrong.returncode == 255
    assert "there is no user root here: log in as support" in said(wrong)
    right = await asyncio.to_thread(host.run, "ssh", "h", "echo in")
    assert (right.returncode, right.stdout) == (0, b"in\n"), said(right)
    await agent.wait_for_line("Technician alice runs: echo in")
    assert not any("wrong session password" in line for line in agent.output)
    rows = await audit_events(api, openssh_host.view["id"], {"command"})
    assert "session_password" not in {row["event"] for row in rows}


async def test_one_mistyped_password_is_one_try(openssh_host) -> None:
    host, agent, api = openssh_host.path, openssh_host.agent, openssh_host.api
    host.set_password("Not-the-password-1")  # what an askpass program gives every time
    wrong = await asyncio.to_thread(host.run, "ssh", "h", "true")
    assert wrong.returncode == 255
    assert "wrong session password; after 9 more wrong tries" in said(wrong)
    host.set_password(SESSION_PASSWORD)
    right = await asyncio.to_thread(host.run, "ssh", "h", "echo in")
    assert right.returncode == 0, said(right)
    await agent.wait_for_line("Technician alice runs: echo in")
    wrongs = [line for line in agent.output if "wrong session password was typed" in line]
    assert len(wrongs) == 1 and "(1 so far)" in wrongs[0], wrongs
    rows = await audit_events(api, openssh_host.view["id"], {"command"})
    assert [row["event"] for row in rows].count("session_password") == 1


async def test_sessions_not_active_say_why(openssh_host, tmp_path: Path) -> None:
    relay, api = openssh_host.relay, openssh_host.api
    relay_key = (await api.relay_info())["host_key"]
    async with Api(relay.base_url, login="bob") as bobs:
        pending = await bobs.create_session()  # in alice's company, never activated
    to_pending = RelayPath(tmp_path / "pending", relay, "alice", pending, relay_key)
    result = await asyncio.to_thread(to_pending.run, "ssh", "h", "true")
    assert result.returncode == 255
    assert f"session {pending['id']} is not active yet: the customer has not entered the " \
           "security code" in said(result)

    gone = RelayPath(tmp_path / "gone", relay, "alice",
                     {**pending, "id": "a" * 16, "host_key": None}, relay_key)
    result = await asyncio.to_thread(gone.run, "ssh", "h", "true")
    assert f"no such session ({'a' * 16}) in your company" in said(result)

    ended = await api.client.post(f"/api/v1/sessions/{openssh_host.view['id']}/end")
    assert ended.status_code == 200
    result = await asyncio.to_thread(openssh_host.path.run, "ssh", "h", "true")
    assert result.returncode == 255
    assert f"session {openssh_host.view['id']} has ended (ended by a technician at " \
           in said(result)


async def test_a_plan_without_file_transfer_says_so(start_relay, agents,
                                                    tmp_path: Path) -> None:
    relay = start_relay()
    async with Api(relay.base_url, login="bert") as api:
        view, _agent = await start_session(api, agents, tmp_path)
        relay_key = (await api.relay_info())["host_key"]
        host = RelayPath(tmp_path / "openssh", relay, "bert", view, relay_key)
        refusal = "file transfer (SFTP) is not included in this session's plan"
        sftp = await asyncio.to_thread(host.run, "sftp", "-o", "BatchMode=no", "-b", "-", "h",
                                       input=b"pwd\n")
        assert sftp.returncode != 0 and refusal in said(sftp)
        scp = await asyncio.to_thread(host.run, "scp", "h:/etc/hostname", str(tmp_path / "x"))
        assert scp.returncode != 0 and refusal in said(scp)
        dashboard = await asyncio.to_thread(host.run, "ssh", "-s", "h", "dashboard")
        assert dashboard.returncode == 1
        assert "dashboard is not included in this session's plan" in said(dashboard)
        def refused(rows: list[dict]) -> set:
            return {row["detail"].get("agent", {}).get("what") for row in rows}

        rows = await audit_events(api, view["id"], {"refused"},
                                  until=lambda rows: "dashboard" in refused(rows))
        assert {"file transfer (SFTP)", "dashboard"} <= refused(rows)


async def test_the_customer_ending_the_session_is_said_to_an_openssh_user(
        start_relay, tmp_path: Path) -> None:
    relay = start_relay()
    async with customer_of(relay, tmp_path) as (api, session, agent):
        _view, host = await relay_path(relay, tmp_path, api, session, agent)
        async with shell_ready(host) as ssh:
            await agent.wait_for("alice: shell")
            await end_with_the_key(agent)
            _, stderr = await asyncio.wait_for(ssh.communicate(), 30)
        assert ssh.returncode == 255
        assert "Adhoc: the session ended: the customer ended it." in stderr.decode()


async def test_a_session_ended_at_the_relay_is_said_to_an_openssh_user(openssh_host) -> None:
    host, api, session_id = openssh_host.path, openssh_host.api, openssh_host.view["id"]
    async with shell_ready(host) as ssh:
        ended = await api.client.post(f"/api/v1/sessions/{session_id}/end")
        assert ended.status_code == 200
        _, stderr = await asyncio.wait_for(ssh.communicate(), 30)
    assert ssh.returncode == 255
    assert f"Adhoc: session {session_id} has ended (ended by a technician at " \
        in stderr.decode()
