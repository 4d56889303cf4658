"""The agent under faults: relay restart mid-shell, offline across expiry, wrong codes, a second
instance on the same computer."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.hostagent.helpers import (
    inner_connection,
    leftovers,
    pid_alive,
    read_until,
    wait_for_count,
)
from tests.hostagent.test_shells import open_shell, shell_pid
from tests.support import AgentProcess, Api, impostor_relay, new_agent, start_session


async def test_relay_restart_keeps_the_shell(start_relay, agents, tmp_path: Path,
                                             quick_agent) -> None:
    relay = start_relay()
    async with Api(relay.base_url) as api:
        view, agent = await start_session(api, agents, tmp_path)
        async with inner_connection(relay, api, view) as inner:
            shell = await open_shell(inner, "survivor")
            pid = await shell_pid(shell)
            shell.stdin.write(b"echo before-$((40+2))-restart\r")
            await read_until(shell.stdout, b"before-42-restart")
            http_port = int(relay.base_url.rsplit(":", 1)[1])
            ssh_port = relay.ssh_port
            relay.stop()
            await agent.wait_for_line("reconnecting")
        relay.start(http_port=http_port, ssh_port=ssh_port)
        await wait_for_count(agent, "Connected to the relay", 2)
    async with Api(relay.base_url) as api:
        await api.wait_for(view["id"], lambda v: v["online"])
        async with inner_connection(relay, api, view) as inner:
            again = await open_shell(inner, "survivor")
            await read_until(again.stdout, b"before-42-restart")  # the same screen
            assert await shell_pid(again) == pid
        assert (await api.session(view["id"]))["state"] == "active"


async def test_a_server_posing_as_the_relay_is_told_nothing_and_ends_nothing(
        start_relay, agents, tmp_path: Path, quick_agent) -> None:
    """While the relay is down, something else answers SSH at its address with another host
    key (a network that redirects connections, or someone posing as the relay): the host
    says so, sends it nothing, and keeps trying; the session goes on once the relay is
    back. It used to end the session and remove itself at the first such answer."""
    relay = start_relay()
    async with Api(relay.base_url) as api:
        view, agent = await start_session(api, agents, tmp_path)
        http_port, ssh_port = int(relay.base_url.rsplit(":", 1)[1]), relay.ssh_port
        relay.stop()
        await agent.wait_for_line("reconnecting")
        async with impostor_relay(ssh_port) as (_port, logins):
            line = await agent.wait_for_line("another SSH host key than the relay's")
            assert "nothing was sent to it" in line
        assert logins == []  # not even the session's name
        relay.start(http_port=http_port, ssh_port=ssh_port)
        await wait_for_count(agent, "Connected to the relay", 2)
        await api.wait_for(view["id"], lambda v: v["online"])
        assert (await api.session(view["id"]))["state"] == "active"
        assert agent.proc.poll() is None
    assert not any("removed itself" in line for line in agent.output)


async def test_offline_host_removes_itself_at_expiry(start_relay, agents, tmp_path: Path,
                                                     quick_agent) -> None:
    relay = start_relay("--session-lifetime", "6s")
    async with Api(relay.base_url) as api:
        view, agent = await start_session(api, agents, tmp_path)
        async with inner_connection(relay, api, view) as inner:
            pid = await shell_pid(await open_shell(inner, "left-behind"))
        relay.stop()
        await agent.wait_for_line("reconnecting")
        # No relay to tell it: the agent's own clock ends the session.
        await agent.wait_for_line("The session time is over", timeout=30)
        assert agent.wait_exit(20) == 0
    assert any("removed itself" in line for line in agent.output)
    assert not pid_alive(pid)
    assert leftovers(agent.workdir) == []


async def test_wrong_codes_and_a_second_instance(start_relay, agents, tmp_path: Path) -> None:
    relay = start_relay()
    async with Api(relay.base_url) as api:
        session = await api.create_session()
        wrong = "000000" if session["security_code"] != "000000" else "111111"
        for left in (4, 3):
            bad = AgentProcess(session["join_url"], wrong, tmp_path / f"bad{left}")
            bad.workdir.mkdir()
            agents.append(bad)
            bad.start()
            assert bad.wait_exit(30) == 1
            assert any(f"{left} tries left" in line for line in bad.output), bad.output
            assert leftovers(bad.workdir) == []

        # The right code still works after wrong ones (5 tries per link in total).
        agent = new_agent(agents, tmp_path, session)
        agent.start()
        await agent.wait_for_line("Connected to the relay")

        ended = await api.client.post(f"/api/v1/sessions/{session['id']}/end")
        assert ended.status_code == 200
        await agent.wait_for_line("removed itself")
        agent.wait_exit(20)

    async with Api(relay.base_url, login="bob") as api:
        first_session = await api.create_session()
        first = new_agent(agents, tmp_path, first_session)
        first.start()
        await first.wait_for_line("Connected to the relay")
    # A second host on the same computer (same lock) is refused before anything happens.
    async with Api(relay.base_url) as api:
        second_session = await api.create_session()
        second = AgentProcess(second_session["join_url"], second_session["security_code"],
                              first.workdir)  # same folder, same lock file: same computer
        agents.append(second)
        second.start()
        assert second.wait_exit(30) == 1
        assert any("already runs on this computer" in line for line in second.output)
        assert (await api.session(second_session["id"]))["state"] == "pending"
    await asyncio.sleep(0)
    assert first.proc is not None and first.proc.poll() is None  # the first one goes on


def test_a_failed_background_task_is_logged_not_printed_on_the_customers_window(caplog) -> None:
    """asyncio's default prints "Task exception was never retrieved" and the traceback on
    stderr, the customer's window; the agent logs it, shown with -v only."""
    import gc
    import logging

    from hostagent.agent import _background_failure

    async def fails() -> None:
        raise TypeError("an internal step")

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(_background_failure)
        task = asyncio.get_running_loop().create_task(fails())
        await asyncio.wait({task})  # done, its exception not retrieved
        del task
        gc.collect()  # the unretrieved exception is reported as the task goes

    caplog.set_level(logging.DEBUG)
    asyncio.run(main())
    shown = [r for r in caplog.records if r.levelno >= logging.WARNING]
    said = [r for r in caplog.records if "background step failed" in r.getMessage()]
    assert not shown and len(said) == 1 and said[0].levelno == logging.INFO
    assert "TypeError" in said[0].getMessage() and "internal step" not in said[0].getMessage()
    traced = [r for r in caplog.records if r.exc_info]
    assert len(traced) == 1 and traced[0].levelno == logging.DEBUG
    assert traced[0].exc_info[0] is TypeError
