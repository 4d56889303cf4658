"""The customer's side in a real terminal (a PTY): consent, the code prompt, status, chat and the
one key that ends the session -- online and offline -- and what the customer reads when things
go wrong: typos, ctrl+c, ctrl+d, an outage, the technician ending it, a guessed password."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import pty
import re
import select
import socket
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import asyncssh
import pytest

from tests.hostagent.helpers import inner_connection, leftovers, pid_alive, read_until
from tests.hostagent.test_shells import open_shell, shell_pid
from tests.support import Api

ISO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d")


def wrong_code(session: dict) -> str:
    return "000000" if session["security_code"] != "000000" else "111111"


def _controlling_terminal() -> None:  # in the child: the PTY is its terminal, as for a customer
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class TerminalAgent:
    """`adhoc-host join` as a customer runs it: in a terminal, typing at its prompts."""

    def __init__(self, join_url: str, workdir: Path, columns: int = 200) -> None:
        self.workdir = workdir
        workdir.mkdir()
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
        env = dict(os.environ, ADHOC_HOST_LOCK=str(workdir / "agent.lock"),
                   TMPDIR=str(workdir), TERM="dumb", COLUMNS=str(columns))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hostagent.cli", "join", join_url, "--allow-unprivileged"],
            stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True,
            preexec_fn=_controlling_terminal)
        os.close(slave)
        self.master = master
        self.screen = ""

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    async def _read_more(self, deadline: float, waiting_for: str) -> None:
        if time.monotonic() > deadline:
            raise AssertionError(f"never saw {waiting_for}; the terminal shows:\n{self.screen}")
        loop = asyncio.get_running_loop()
        try:
            data = await asyncio.wait_for(loop.run_in_executor(None, self._read), 1)
        except TimeoutError:
            return
        if not data:
            raise AssertionError(f"agent exited before {waiting_for}:\n{self.screen}")
        if data != b"\0":
            self.screen += data.decode(errors="replace")

    async def wait_for(self, text: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.screen:
            await self._read_more(deadline, repr(text))

    async def wait_for_count(self, text: str, count: int, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while self.screen.count(text) < count:
            await self._read_more(deadline, f"{text!r} {count} times")

    def _read(self) -> bytes:
        ready, _, _ = select.select([self.master], [], [], 0.5)
        if not ready:
            return b"\0"  # nothing yet; not the end
        try:
            return os.read(self.master, 4096)
        except OSError:
            return b""

    async def rest(self, timeout: float = 30) -> str:
        """Everything the agent printed until it exited."""
        deadline = time.monotonic() + timeout
        while True:
            if time.monotonic() > deadline:
                raise AssertionError(f"the agent did not exit; the terminal shows:\n{self.screen}")
            data = await asyncio.to_thread(self._read)
            if not data:
                return self.screen
            if data != b"\0":
                self.screen += data.decode(errors="replace")

    def wait_exit(self, timeout: float = 20) -> int:
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        os.close(self.master)


@contextlib.asynccontextmanager
async def customer_of(relay, tmp_path: Path, columns: int = 200):
    """A new session of alice's and the customer's agent in a terminal, closed at the end."""
    async with Api(relay.base_url) as api:
        session = await api.create_session()
        agent = TerminalAgent(session["join_url"], tmp_path / "customer", columns)
        try:
            yield api, session, agent
        finally:
            agent.close()


async def end_with_the_key(agent: TerminalAgent) -> None:
    agent.type("e")
    await agent.wait_for("End the session now?")
    agent.type("y")


async def activate(agent: TerminalAgent, session: dict) -> None:
    await agent.wait_for("Continue? [y/N]")
    agent.type("y\n")
    await agent.wait_for("Security code")
    agent.type(session["security_code"] + "\n")
    await agent.wait_for("Connected to the relay")


async def test_customer_consents_chats_and_ends_with_one_key(start_relay, tmp_path: Path) -> None:
    relay = start_relay()
    async with customer_of(relay, tmp_path) as (api, session, agent):
        await agent.wait_for("alice <alice@example.com> of Acme asks to give you remote support")
        await agent.wait_for("Only continue if you asked Acme for help")
        await agent.wait_for("Continue? [y/N]")
        agent.type("y\n")
        await agent.wait_for("Security code")
        # Typos are caught here and cost none of the five tries.
        for n, typo in enumerate(("12345", "abc def", "1234567"), 1):
            agent.type(typo + "\n")
            await agent.wait_for_count("The security code is 6 digits", n)
        agent.type(wrong_code(session) + "\n")
        await agent.wait_for("4 tries left")
        code = session["security_code"]
        agent.type(f"{code[:3]} {code[3:]}\n")  # as it is read out: with a space
        await agent.wait_for("Connected to the relay")
        await agent.wait_for("Time left 23 h")
        await agent.wait_for("nobody connected")
        assert "Session active: alice can connect until " in agent.screen
        assert not ISO_TIME.search(agent.screen)  # local time, to the minute

        view = await api.wait_for(session["id"], lambda v: v["online"])
        async with inner_connection(relay, api, view) as inner:
            chat = await inner.create_process(subsystem="chat", encoding=None)
            chat.stdin.write(b'{"text": "I am looking at your disk now"}\n')
            await agent.wait_for("Technician alice says: I am looking at your disk now")
            agent.type("c")
            await agent.wait_for("Message (Enter sends")
            agent.type("thanks, go ahead\r")
            seen = await read_until(chat.stdout, b"go ahead")
            lines = [json.loads(x) for x in seen.splitlines() if x.strip()]
            assert lines[-1]["from"] == "customer" and lines[-1]["text"] == "thanks, go ahead"

            shell = await open_shell(inner, "main")
            pid = await shell_pid(shell)
            await agent.wait_for("Technician alice opened a shell")
            await agent.wait_for("alice: chat, shell")

            await end_with_the_key(agent)
            assert await asyncio.to_thread(agent.wait_exit, 20) == 0
        await agent.wait_for("removed itself")
        assert not pid_alive(pid)
        assert leftovers(agent.workdir) == []
        ended = await api.wait_for(session["id"], lambda v: v["state"] == "ended")
        assert ended["ended_reason"] == "ended_by_customer"


async def test_customer_ends_while_offline(start_relay, tmp_path: Path) -> None:
    relay = start_relay()
    async with customer_of(relay, tmp_path) as (_api, session, agent):
        await activate(agent, session)
        relay.stop()
        await agent.wait_for("reconnecting since")
        await end_with_the_key(agent)
        assert await asyncio.to_thread(agent.wait_exit, 20) == 0
        await agent.wait_for("removed itself")
        assert leftovers(agent.workdir) == []


@pytest.mark.parametrize(("where", "key", "status", "said"), [
    ("Continue? [y/N]", "\x03", 130, "Interrupted: nothing was changed on this computer."),
    ("Security code", "\x03", 130, "Interrupted: nothing was changed on this computer."),
    ("Security code", "\x04", 1, "no security code was given: nothing was changed"),
    ("Continue? [y/N]", "\x04", 1, "Cancelled: nothing was changed on this computer."),
])
async def test_ctrl_c_or_ctrl_d_at_a_prompt_is_one_line(start_relay, tmp_path: Path, where: str,
                                                        key: str, status: int,
                                                        said: str) -> None:
    relay = start_relay()
    async with customer_of(relay, tmp_path) as (api, session, agent):
        await agent.wait_for("Continue? [y/N]")
        if where != "Continue? [y/N]":
            agent.type("y\n")
            await agent.wait_for(where)
        agent.type(key)
        screen = await agent.rest()
        assert agent.wait_exit() == status
        assert said in screen
        assert "Traceback" not in screen and "Error" not in screen
        after = screen[screen.index(where):]
        assert len([line for line in after.splitlines()[1:] if line.strip()]) == 1, after
        assert leftovers(agent.workdir) == []
        assert (await api.session(session["id"]))["state"] == "pending"


async def test_technician_ending_the_session_is_said_plainly(start_relay,
                                                             tmp_path: Path) -> None:
    relay = start_relay()
    async with customer_of(relay, tmp_path) as (api, session, agent):
        await activate(agent, session)
        ended = await api.client.post(f"/api/v1/sessions/{session['id']}/end")
        assert ended.status_code == 200
        screen = await agent.rest()
        assert agent.wait_exit() == 0
    assert "The session ended: your technician (alice) ended it." in screen
    assert "ended_by" not in screen and "ended: session ended" not in screen
    after = screen[screen.index("The session ended"):]
    assert "Time left" not in after  # no status line once it is over


async def test_an_outage_is_one_line_and_a_steady_status(start_relay, tmp_path: Path,
                                                         quick_agent) -> None:
    relay = start_relay()
    async with customer_of(relay, tmp_path) as (_api, session, agent):
        await activate(agent, session)
        http_port, ssh_port = int(relay.base_url.rsplit(":", 1)[1]), relay.ssh_port
        relay.stop()
        # Something that takes the agent's connections and drops them at once, so the test
        # can count the agent's attempts while the relay is away.
        with socket.create_server(("127.0.0.1", ssh_port)) as door:
            door.settimeout(20)
            for _ in range(4):
                conn, _ = await asyncio.to_thread(door.accept)
                conn.close()
        relay.start(http_port=http_port, ssh_port=ssh_port)
        await agent.wait_for("Connected to the relay again")
        await end_with_the_key(agent)
        screen = await agent.rest()
    assert screen.count("Connection to the relay lost") == 1
    shown = set(re.findall(r"reconnecting since (\d\d:\d\d)", screen))
    assert len(shown) == 1, shown  # the time the outage began, however many attempts
    assert f"Connected to the relay again (out of reach since {shown.pop()})" in screen
    # A reason is said when it changes, never once per attempt.
    assert screen.count("Still trying to reach the relay") <= 2, screen


async def test_customer_allows_logins_again_after_a_lockout(start_relay, tmp_path: Path,
                                                            monkeypatch) -> None:
    monkeypatch.setenv("ADHOC_HOST_LOGIN_PAUSE", "0.02")
    relay = start_relay()
    async with customer_of(relay, tmp_path, columns=80) as (api, session, agent):
        await activate(agent, session)
        view = await api.wait_for(session["id"], lambda v: v["online"])
        for n in range(10):
            with contextlib.suppress(asyncssh.PermissionDenied):
                async with inner_connection(relay, api, view, password=f"Nope-{n}-nope"):
                    pass
        await agent.wait_for("press u to allow logins again")
        # At 80 columns the status line drops its keys hint rather than cut what matters.
        await agent.wait_for("| connected | logins stopped (u) | nobody connected\r")
        agent.type("u")
        await agent.wait_for("You allowed logins again")
        async with inner_connection(relay, api, view) as inner:
            assert (await inner.run("echo in-$((1+1))", check=True)).stdout == "in-2\n"
        rows = (await api.client.get(f"/api/v1/sessions/{session['id']}/audit")).json()
        events = [row["event"] for row in rows["audit"]]
        assert "logins_locked" in events and "logins_unlocked" in events
