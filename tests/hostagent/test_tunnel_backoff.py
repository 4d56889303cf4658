"""The agent backs off from a relay that lets it log in but refuses its forward: the backoff
starts again only once a forward is accepted, not as soon as the SSH connection is up."""

from __future__ import annotations

import asyncio

import asyncssh

from common.secret import Secret
from hostagent.tunnel import Tunnel
from tests.sshserver import PasswordServer

WINDOW = 4.0  # seconds of attempts counted
# With the backoff (0.5 s, 1 s, 2 s, ... full jitter) more than 7 attempts in 4 s happen about
# once in 2,000 runs; retried at <= 0.5 s each, as before, a 4 s window holds 10 or more.
MOST_ATTEMPTS = 7


class _RefusesForwards(PasswordServer):
    """A relay that knows the agent's credentials and refuses every forward it asks for."""

    def __init__(self, logins: list[tuple[str, str]], forwards: list[tuple[str, int]]) -> None:
        super().__init__("agent-secret", logins, username="s-refused")
        self.forwards = forwards

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        self.forwards.append((listen_host, listen_port))
        return False


async def test_a_relay_that_refuses_the_forward_is_retried_with_backoff() -> None:
    relay_key = asyncssh.generate_private_key("ssh-ed25519")
    inner_key = asyncssh.generate_private_key("ssh-ed25519")
    attempts: list[tuple[str, str]] = []  # the logins it let in
    forwards: list[tuple[str, int]] = []
    server = await asyncssh.listen("127.0.0.1", 0, server_host_keys=[relay_key],
                                   server_factory=lambda: _RefusesForwards(attempts, forwards))
    port = server.sockets[0].getsockname()[1]
    states: list[tuple[str, str]] = []
    tunnel = Tunnel("s-refused", Secret("agent-secret"), "127.0.0.1", port,
                    relay_key.export_public_key("openssh").decode(),
                    {"server_host_keys": [inner_key]},
                    on_state=lambda state, detail: states.append((state, detail)))
    task = asyncio.create_task(tunnel.run())
    try:
        for _ in range(1000):  # the first attempt logs in and is refused its forward
            if forwards:
                break
            await asyncio.sleep(0.01)
        assert forwards == [("s-refused", 22)]
        await asyncio.sleep(WINDOW)
        counted = len(attempts)
    finally:
        tunnel.stop()
        await asyncio.wait_for(task, 15)
        server.close()
        await server.wait_closed()
    assert 2 <= counted <= MOST_ATTEMPTS, f"{counted} attempts in {WINDOW} s"
    refused = [detail for state, detail in states if state == "reconnecting"]
    assert refused and all("refused the forward" in detail for detail in refused), states
    assert not [state for state, _ in states if state == "connected"], states


async def test_a_connection_lost_while_asking_for_the_relays_list_is_no_error() -> None:
    """asyncssh asserts (AssertionError) when the connection goes while a channel it just
    opened is being set up; a busy relay turning agents away made it happen by the
    thousand, each a 'Task exception was never retrieved' traceback in the agent's output."""

    class Lost:
        async def open_connection(self, host: str, port: int):
            raise AssertionError()

    key = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    tunnel = Tunnel("sid", Secret("secret"), "127.0.0.1", 22, key, {})
    before = list(tunnel.routes)
    await tunnel._learn_relays(Lost())  # type: ignore[arg-type]
    assert tunnel.routes == before
