"""The customer's side in a real terminal (a PTY): consent, the code prompt, status, chat and the
one key that ends the session -- online and offline."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import subprocess
import sys
import time
from pathlib import Path

from tests.hostagent.helpers import inner_connection, leftovers, pid_alive, read_until
from tests.hostagent.test_shells import open_shell, shell_pid
from tests.support import Api


class TerminalAgent:
    """`adhoc-host join` as a customer runs it: in a terminal, typing at its prompts."""

    def __init__(self, join_url: str, workdir: Path) -> None:
        self.workdir = workdir
        workdir.mkdir()
        master, slave = pty.openpty()
        env = dict(os.environ, ADHOC_HOST_LOCK=str(workdir / "agent.lock"),
                   TMPDIR=str(workdir), TERM="dumb", COLUMNS="200")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hostagent.cli", "join", join_url, "--allow-unprivileged"],
            stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True)
        os.close(slave)
        self.master = master
        self.screen = ""

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    async def wait_for(self, text: str, timeout: float = 20) -> None:
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + timeout
        while text not in self.screen:
            if time.monotonic() > deadline:
                raise AssertionError(f"never saw {text!r}; the terminal shows:\n{self.screen}")
            try:
                data = await asyncio.wait_for(loop.run_in_executor(None, self._read), 1)
            except TimeoutError:
                continue
            if not data:
                raise AssertionError(f"agent exited before {text!r}:\n{self.screen}")
            if data == b"\0":
                continue
            self.screen += data.decode(errors="replace")

    def _read(self) -> bytes:
        import select

        ready, _, _ = select.select([self.master], [], [], 0.5)
        if not ready:
            return b"\0"  # nothing yet; not the end
        try:
            return os.read(self.master, 4096)
        except OSError:
            return b""

    def wait_exit(self, timeout: float = 20) -> int:
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        os.close(self.master)


async def test_customer_consents_chats_and_ends_with_one_key(start_relay, tmp_path: Path) -> None:
    relay = start_relay()
    async with Api(relay.base_url) as api:
        session = await api.create_session()
        agent = TerminalAgent(session["join_url"], tmp_path / "customer")
        try:
            await agent.wait_for("alice <alice@example.com> of Acme asks to give you remote "
                                 "support")
            await agent.wait_for("Only continue if you asked Acme for help")
            await agent.wait_for("Continue? [y/N]")
            agent.type("y\n")
            await agent.wait_for("Security code")
            agent.type("99999x\n")
            await agent.wait_for("4 tries left")
            agent.type(session["security_code"] + "\n")
            await agent.wait_for("Connected to the relay")
            await agent.wait_for("Time left 23 h")
            await agent.wait_for("nobody connected")

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

                agent.type("e")
                await agent.wait_for("End the session now?")
                agent.type("y")
                assert await asyncio.to_thread(agent.wait_exit, 20) == 0
            await agent.wait_for("removed itself")
            assert not pid_alive(pid)
            assert leftovers(agent.workdir) == []
            ended = await api.wait_for(session["id"], lambda v: v["state"] == "ended")
            assert ended["ended_reason"] == "ended_by_customer"
        finally:
            agent.close()


async def test_customer_ends_while_offline(start_relay, tmp_path: Path) -> None:
    relay = start_relay()
    async with Api(relay.base_url) as api:
        session = await api.create_session()
    agent = TerminalAgent(session["join_url"], tmp_path / "customer")
    try:
        await agent.wait_for("Continue? [y/N]")
        agent.type("y\n")
        await agent.wait_for("Security code")
        agent.type(session["security_code"] + "\n")
        await agent.wait_for("Connected to the relay")
        relay.stop()
        await agent.wait_for("reconnecting since")
        agent.type("e")
        await agent.wait_for("End the session now?")
        agent.type("y")
        assert await asyncio.to_thread(agent.wait_exit, 20) == 0
        await agent.wait_for("removed itself")
        assert leftovers(agent.workdir) == []
    finally:
        agent.close()
