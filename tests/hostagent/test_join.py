"""Joining: the link and the security code never sit in a process's arguments, where every user
of the computer can read them (a local user watching /proc could activate first); a code that
cannot be right is refused before it spends one of the link's five tries; and a link that leads
nowhere is one sentence, never a traceback."""

from __future__ import annotations

import asyncio
import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path

from tests.hostagent.test_customer_terminal import wrong_code
from tests.ports import free_port
from tests.support import AgentProcess, Api, technician_ssh


def join_command(tmp_path: Path, *args: str, stdin: str = "", env: dict | None = None,
                 timeout: float = 60) -> subprocess.CompletedProcess:
    """`adhoc-host join` run to its end without a terminal."""
    tmp_path.mkdir(exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "hostagent.cli", "join", *args, "--allow-unprivileged"],
        input=stdin, capture_output=True, text=True, timeout=timeout,
        env=dict(os.environ, ADHOC_HOST_LOCK=str(tmp_path / "agent.lock"),
                 TMPDIR=str(tmp_path), **(env or {})))


def test_help_names_every_way_to_give_the_code_and_link(tmp_path: Path) -> None:
    shown = join_command(tmp_path, "--help").stdout
    for name in ("ADHOC_JOIN_CODE", "--code-stdin", "ADHOC_JOIN_URL", "standard input"):
        assert name in shown
    assert "--code CODE" not in shown and "--code " not in shown.replace("--code-stdin", "")


async def test_code_in_argv_is_refused_and_spends_no_try(start_relay, tmp_path: Path) -> None:
    relay = start_relay()
    async with Api(relay.base_url) as api:
        session = await api.create_session()
        for form in (["--code", wrong_code(session)], [f"--code={wrong_code(session)}"]):
            result = join_command(tmp_path / "a", session["join_url"], *form, "--yes")
            assert result.returncode == 2
            assert "--code is not accepted" in result.stderr
            assert "ADHOC_JOIN_CODE" in result.stderr and "--code-stdin" in result.stderr
            assert "Traceback" not in result.stderr
        # Malformed codes from the environment or stdin: refused here, no try spent either.
        bad = join_command(tmp_path / "b", session["join_url"], "--yes",
                           env={"ADHOC_JOIN_CODE": "12 34 5"})
        assert bad.returncode == 2 and "the security code is 6 digits" in bad.stderr
        bad = join_command(tmp_path / "c", session["join_url"], "--yes", "--code-stdin",
                           stdin="abcdef\n")
        assert bad.returncode == 2 and "the security code is 6 digits" in bad.stderr
        wrong = join_command(tmp_path / "d", session["join_url"], "--yes",
                             env={"ADHOC_JOIN_CODE": wrong_code(session)})
        assert wrong.returncode == 1
        # The first try the relay judged: the four above never reached it. Said once, too.
        said = wrong.stdout + wrong.stderr
        assert said.count("that is not the code") == 1, said
        assert "(4 tries left)" in said


async def test_link_and_code_from_stdin_or_environment_never_in_argv(start_relay, agents,
                                                                    tmp_path: Path) -> None:
    relay = start_relay()
    async with Api(relay.base_url) as api:
        for way in ("stdin", "environment"):
            session = await api.create_session()
            token = session["join_url"].rsplit("/", 1)[1]
            workdir = tmp_path / way
            workdir.mkdir()
            agent = AgentProcess(session["join_url"], session["security_code"], workdir)
            agents.append(agent)
            env = dict(os.environ, ADHOC_HOST_LOCK=str(workdir / "agent.lock"),
                       TMPDIR=str(workdir), ADHOC_HOST_SHELL="/bin/sh")
            if way == "stdin":
                args, stdin = ["-", "--code-stdin"], subprocess.PIPE
            else:
                env.update(ADHOC_JOIN_URL=session["join_url"],
                           ADHOC_JOIN_CODE=f"{session['security_code'][:3]}-"
                                           f"{session['security_code'][3:]}")
                args, stdin = [], subprocess.DEVNULL
            agent.proc = subprocess.Popen(  # noqa: ASYNC220 (read line by line below)
                [sys.executable, "-m", "hostagent.cli", "join", *args, "--yes",
                 "--allow-unprivileged", "-v"], stdin=stdin, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, text=True, env=env)
            if way == "stdin":
                assert agent.proc.stdin is not None
                agent.proc.stdin.write(f"{session['join_url']}\n{session['security_code']}\n")
                agent.proc.stdin.close()
            await agent.wait_for_line("Connected to the relay")
            shown = Path(f"/proc/{agent.proc.pid}/cmdline").read_bytes()
            assert token.encode() not in shown
            assert session["security_code"].encode() not in shown
            # Nor in what the technician's shells inherit.
            view = await api.wait_for(session["id"], lambda v: v["online"])
            async with technician_ssh(relay, api, view) as inner:
                env_seen = (await inner.run("env", check=True)).stdout
            assert token not in env_seen and "ADHOC_JOIN" not in env_seen
            agent.proc.terminate()  # as a closed window or a kill would: the session ends
            assert await asyncio.to_thread(agent.wait_exit, 30) == 0
            # Nor in its own output, even verbose (-v logs every request it makes).
            said = "".join(agent.output)
            assert "relay connection: connected" in said
            assert token not in said and session["security_code"] not in said


class _NotARelay(http.server.BaseHTTPRequestHandler):
    """A web server that is not a relay: a captive portal, a typo'd host, a proxy's error."""

    def do_GET(self) -> None:
        status = 500 if "broken" in self.path else 200
        body = b"<html><body>Welcome to the hotel wifi</body></html>"
        self.send_response(status)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_a_link_that_leads_nowhere_is_a_sentence(tmp_path: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotARelay)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    nobody = free_port()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        for n, (link, said) in enumerate([
                (f"http://127.0.0.1:{nobody}/join/tok", "cannot reach the relay: refused"),
                (f"{base}/join/tok", "is not an Adhoc relay's: check the link"),
                (f"{base}/join/broken", "answered HTTP 500: check the link"),
                ("http://127.0.0.1:99999/join/tok", "that is not an Adhoc join link"),
                ("https://relay.example/joni/tok", "that is not an Adhoc join link"),
                (f"{base}/join/{'tok' * 40_000}", "that is not an Adhoc join link"),
                (f"{base}/join/tok\x1b]0;x\x07", "that is not an Adhoc join link"),
                ("http://[127.0.0.1/join/tok", "that is not an Adhoc join link")]):
            result = join_command(tmp_path / f"t{n}", link, "--yes",
                                  env={"ADHOC_JOIN_CODE": "123456"}, timeout=60)
            assert result.returncode in (1, 2), result
            assert said in result.stderr, result.stderr
            assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
            assert "tok" not in result.stderr  # the link's secret is not repeated back
    finally:
        server.shutdown()
        server.server_close()
