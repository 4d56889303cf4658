"""Port forwarding with OpenSSH (`-L`, `-W`) to a service on the customer's side, through the
customer's real prompt: asked first ([y]es / [n]o / [a]ll this session), shown while in use,
audited with destination and bytes, ended with the session. Refused without the customer's
answer, on plans without it, for `-R`, and for agent and X11 forwarding."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

from hostagent.forwards import MAX_QUESTIONS
from tests.hostagent.test_customer_terminal import activate, customer_of, end_with_the_key
from tests.hostagent.test_features import audit_events
from tests.openssh import RelayPath
from tests.ports import free_port
from tests.support import Api, kill_and_reap, start_session


@contextlib.asynccontextmanager
async def echo_service(hosts: tuple[str, ...] = ("127.0.0.1",)) -> AsyncIterator[int]:
    """A TCP service on the customer's side (loopback addresses `hosts`, one port): answers
    every line in capitals."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while line := await reader.readline():
                writer.write(line.upper())
                await writer.drain()
        writer.close()

    port = free_port() if len(hosts) > 1 else 0
    server = await asyncio.start_server(serve, list(hosts), port)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


@contextlib.asynccontextmanager
async def openssh(host: RelayPath, *args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """An OpenSSH `ssh` running through the relay for the length of the block."""
    proc = await asyncio.create_subprocess_exec(
        "ssh", *host.args(), *args, env=host.env, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        yield proc
    finally:
        await kill_and_reap(proc)


async def relay_path(relay, tmp_path: Path, api: Api, session: dict,
                     agent) -> tuple[dict, RelayPath]:
    """Activate `session` at the customer's prompt; its view once online, and OpenSSH's way
    to its host through `relay` as alice."""
    await activate(agent, session)
    view = await api.wait_for(session["id"], lambda v: v["online"])
    return view, RelayPath(tmp_path / "openssh", relay, "alice", view,
                           (await api.relay_info())["host_key"])


async def local_port_open(port: int, ssh: asyncio.subprocess.Process) -> None:
    """Until `ssh -L port:...` listens (once logged in). Probed by binding the port, not by
    connecting: a connection would open a forward, and ask the customer."""
    async with asyncio.timeout(60):
        while True:
            assert ssh.returncode is None, "ssh exited before its forward listened"
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError:
                    return  # taken: ssh listens on it
            await asyncio.sleep(0.1)


async def through(port: int, line: bytes) -> bytes:
    """Send one line to a forwarded local port; the answer, or b"" if the forward closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(line)
        return await asyncio.wait_for(reader.readline(), 60)
    except ConnectionResetError:  # how ssh may close a forward that could not open
        return b""
    finally:
        writer.close()


async def test_the_customer_allows_a_destination_and_it_is_carried_shown_and_audited(
        start_relay, tmp_path: Path) -> None:
    relay = start_relay()
    async with customer_of(relay, tmp_path) as (api, session, agent), \
            echo_service() as printer, echo_service() as router:
        _view, host = await relay_path(relay, tmp_path, api, session, agent)
        to_printer, to_router = free_port(), free_port()
        async with openssh(host, "-N", "-L", f"{to_printer}:127.0.0.1:{printer}",
                           "-L", f"{to_router}:127.0.0.1:{router}", "h") as ssh:
            await local_port_open(to_printer, ssh)
            # The first connection waits for the customer's answer.
            answer = asyncio.create_task(through(to_printer, b"hello printer\n"))
            await agent.wait_for(f"Technician alice wants to reach 127.0.0.1:{printer} through "
                                 "your computer")
            await agent.wait_for(f"Allow alice to reach 127.0.0.1:{printer}? [y]es / [n]o / "
                                 "[a]ll this session")
            assert not answer.done()
            agent.type("y")
            assert await answer == b"HELLO PRINTER\n"
            await agent.wait_for(f"You allowed alice to reach 127.0.0.1:{printer}.")
            # Shown while in use.
            reader, writer = await asyncio.open_connection("127.0.0.1", to_printer)
            writer.write(b"still here\n")
            assert await asyncio.wait_for(reader.readline(), 60) == b"STILL HERE\n"
            await agent.wait_for(f"alice: forward 127.0.0.1:{printer}")
            writer.close()
            # Asked once per destination: the next connection goes straight through.
            assert await through(to_printer, b"again\n") == b"AGAIN\n"
            assert agent.screen.count("wants to reach") == 1

            # Another destination, refused by the customer.
            refused = asyncio.create_task(through(to_router, b"let me in\n"))
            await agent.wait_for(f"wants to reach 127.0.0.1:{router}")
            agent.type("n")
            assert await refused == b""
            await agent.wait_for(f"You refused: alice cannot reach 127.0.0.1:{router}.")
            ssh.kill()
            _, stderr = await ssh.communicate()
        assert f"Adhoc: the customer did not allow you to reach 127.0.0.1:{router}" \
            in stderr.decode()

        rows = await audit_events(api, session["id"], {"forward_refused", "forward_closed"})
        fields = [(row["event"], row["detail"]["agent"]) for row in rows
                  if row["event"].startswith("forward_")]
        requested = [f for e, f in fields if e == "forward_requested"]
        assert [(f["host"], int(f["port"])) for f in requested] == \
            [("127.0.0.1", printer), ("127.0.0.1", router)]
        closed = [f for e, f in fields if e == "forward_closed"]
        assert len(closed) == 3 and all(int(f["port"]) == printer for f in closed)
        assert sorted(int(f["bytes_out"]) for f in closed) == \
            sorted(len(x) for x in (b"hello printer\n", b"still here\n", b"again\n"))
        assert sorted(int(f["bytes_in"]) for f in closed) == \
            sorted(int(f["bytes_out"]) for f in closed)
        refusal = next(f for e, f in fields if e == "forward_refused")
        assert (int(refusal["port"]), refusal["why"]) == (router, "customer")


async def test_all_this_session_and_the_end_of_the_session(start_relay, tmp_path: Path) -> None:
    relay = start_relay()
    async with customer_of(relay, tmp_path) as (api, session, agent), \
            echo_service() as printer, echo_service() as router:
        _view, host = await relay_path(relay, tmp_path, api, session, agent)
        async with openssh(host, "-W", f"127.0.0.1:{printer}", "h") as first:
            assert first.stdin is not None and first.stdout is not None
            first.stdin.write(b"one\n")
            await agent.wait_for(f"wants to reach 127.0.0.1:{printer}")
            agent.type("a")
            assert await asyncio.wait_for(first.stdout.readline(), 60) == b"ONE\n"
            await agent.wait_for("You allowed alice to reach anything this computer can reach")
            async with openssh(host, "-W", f"127.0.0.1:{router}", "h") as second:
                assert second.stdin is not None and second.stdout is not None
                second.stdin.write(b"two\n")  # not asked again: everything is allowed
                assert await asyncio.wait_for(second.stdout.readline(), 60) == b"TWO\n"
                assert agent.screen.count("wants to reach") == 1
                # The end of the session ends every forward.
                await end_with_the_key(agent)
                assert await asyncio.wait_for(first.stdout.read(), 30) == b""
                assert await asyncio.wait_for(second.stdout.read(), 30) == b""
                await asyncio.wait_for(second.wait(), 30)
            await asyncio.wait_for(first.wait(), 30)


async def test_questions_nobody_waits_for_go_and_all_answers_every_one_waiting(
        start_relay, tmp_path: Path) -> None:
    """A question whose ssh went is taken off the customer's screen; a browser behind `-D`
    asks for many hosts at once: at most MAX_QUESTIONS wait on the customer's screen, and
    one "all" answers every one of them (it answered only the first, and the others waited
    for answers of their own)."""
    relay = start_relay()
    hosts = tuple(f"127.0.0.{n}" for n in range(1, MAX_QUESTIONS + 2))
    async with customer_of(relay, tmp_path) as (api, session, agent), \
            echo_service(hosts) as port:
        _view, host = await relay_path(relay, tmp_path, api, session, agent)
        async with openssh(host, "-W", f"{hosts[0]}:{port}", "h") as gone:
            await agent.wait_for(f"Allow alice to reach {hosts[0]}:{port}?")
            await kill_and_reap(gone)
        await agent.wait_for(f"Technician alice no longer waits to reach {hosts[0]}:{port} "
                             "(their connection closed): nothing to answer.")
        await agent.wait_for("| nobody connected |")  # and no question left to answer

        local = [free_port() for _ in hosts]
        forwards = [arg for there, here in zip(hosts, local, strict=True)
                    for arg in ("-L", f"{here}:{there}:{port}")]
        to_nothing, nothing = free_port(), free_port()  # nothing listens there
        forwards += ["-L", f"{to_nothing}:127.0.0.1:{nothing}"]
        async with openssh(host, "-N", *forwards, "h") as ssh:
            await local_port_open(local[-1], ssh)
            answers = {}
            # One after the other, so that the one past the limit is the last.
            for there, here in zip(hosts, local, strict=True):
                answers[there] = asyncio.create_task(through(here, f"to {there}\n".encode()))
                await agent.wait_for_count("wants to reach", 1 + len(answers))
                if len(answers) == MAX_QUESTIONS:
                    break
            past = asyncio.create_task(through(local[-1], b"one too many\n"))
            assert await asyncio.wait_for(past, 30) == b""  # refused at once, not asked
            agent.type("a")
            for there, answer in answers.items():
                assert await answer == f"TO {there}\n".encode()
            await agent.wait_for("You allowed alice to reach anything")
            assert agent.screen.count("You allowed") == 1
            assert agent.screen.count("wants to reach") == 1 + MAX_QUESTIONS
            assert await through(local[-1], b"now\n") == b"NOW\n"  # allowed by the "all"
            assert await through(to_nothing, b"anyone?\n") == b""
            ssh.kill()
            _, stderr = await ssh.communicate()
        assert f"Adhoc: the customer has {MAX_QUESTIONS} questions of yours to answer " \
            f"already; try {hosts[-1]}:{port} again once they have answered" in stderr.decode()
        # In the system's words, not asyncio's ("Connect call failed ('127.0.0.1', ...)").
        assert f"Adhoc: 127.0.0.1:{nothing} cannot be reached from the customer's computer: " \
            "Connection refused" in stderr.decode()
        rows = await audit_events(api, session["id"], {"forward_refused", "forward_closed"},
                                  until=lambda rows: sum(r["event"] == "forward_refused"
                                                         for r in rows) == 3)
        refusals = [row["detail"]["agent"] for row in rows if row["event"] == "forward_refused"]
        assert [f["why"] for f in refusals] == \
            ["withdrawn", "too many questions", "unreachable: Connection refused"]


async def test_nobody_to_ask_plans_and_other_forwarding_are_refused(
        start_relay, agents, tmp_path: Path) -> None:
    relay = start_relay()
    async with echo_service() as printer:
        # An unattended host (no terminal): nobody can allow it.
        async with Api(relay.base_url) as api:
            view, agent = await start_session(api, agents, tmp_path)
            host = RelayPath(tmp_path / "alice", relay, "alice", view,
                             (await api.relay_info())["host_key"])
            unattended = await asyncio.to_thread(host.run, "ssh", "-W",
                                                 f"127.0.0.1:{printer}", "h")
            assert unattended.returncode == 255
            assert f"Adhoc: nobody at the customer's computer can allow reaching " \
                   f"127.0.0.1:{printer} (the host runs unattended)" in unattended.stderr.decode()
            # -R: refused, and the session's stderr says why.
            remote = await asyncio.to_thread(host.run, "ssh", "-R", "0:127.0.0.1:22", "h",
                                             "echo ran")
            assert remote.returncode == 0 and remote.stdout == b"ran\n"
            assert "Adhoc: remote forwarding (-R, port 0) is not available" \
                in remote.stderr.decode()
            # Agent forwarding and X11: refused; no agent socket appears on the host.
            ssh_agent = await asyncio.create_subprocess_exec(
                "ssh-agent", "-D", "-a", str(tmp_path / "agent.sock"),
                stdout=subprocess.DEVNULL)
            try:
                await asyncio.to_thread(_wait_for_socket, tmp_path / "agent.sock")
                forwarded = await asyncio.to_thread(
                    host.run, "ssh", "-A", "-X", "h", 'echo "agent=[$SSH_AUTH_SOCK]"',
                    env={"SSH_AUTH_SOCK": str(tmp_path / "agent.sock")})
            finally:
                ssh_agent.terminate()
                await ssh_agent.wait()
            assert forwarded.stdout == b"agent=[]\n", forwarded.stderr
            assert "X11 forwarding request failed" in forwarded.stderr.decode()
            rows = await audit_events(api, view["id"], {"forward_refused", "refused"})
            why = {row["detail"]["agent"].get("why") for row in rows
                   if row["event"] == "forward_refused"}
            assert why == {"unattended"}
            agent.stop()
        # A plan without forwarding (base).
        async with Api(relay.base_url, login="bert") as api:
            view, _agent = await start_session(api, agents, tmp_path)
            host = RelayPath(tmp_path / "bert", relay, "bert", view,
                             (await api.relay_info())["host_key"])
            base = await asyncio.to_thread(host.run, "ssh", "-W", f"127.0.0.1:{printer}", "h")
            assert base.returncode == 255
            assert "Adhoc: port forwarding is not included in this session's plan" \
                in base.stderr.decode()


def _wait_for_socket(path: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(path))
            return
        time.sleep(0.05)
    raise AssertionError(f"ssh-agent never listened on {path}")
