"""A link that goes silently dead between agent and relay: both ends notice by keepalive and the
agent comes back once the link does (THREATS: "a dead link (traffic silently dropped)").

Keepalive is 15 s × 3 in production; here both ends use 2 s × 3 (ADHOC_HOST_KEEPALIVE,
ADHOC_RELAY_KEEPALIVE) so the test takes seconds, not minutes. The count is the real one.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.proxy import DeadLinkProxy
from tests.hostagent.helpers import wait_for_count
from tests.ports import free_port
from tests.support import Api, new_agent


@pytest.fixture
async def proxy():
    link = await DeadLinkProxy().start()
    yield link
    await link.close()


async def test_silently_dead_link_is_noticed_by_both_ends_and_the_agent_returns(
        start_relay, agents, proxy: DeadLinkProxy, tmp_path: Path, quick_agent,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADHOC_HOST_KEEPALIVE", "2")
    monkeypatch.setenv("ADHOC_RELAY_KEEPALIVE", "2")
    ssh_port = free_port()
    proxy.upstream = ("127.0.0.1", ssh_port)
    # Activation tells the agent to dial the proxy, not the relay.
    relay = start_relay("--ssh-public", f"127.0.0.1:{proxy.port}", ssh_port=ssh_port)
    async with Api(relay.base_url) as api:
        session = await api.create_session()
        agent = new_agent(agents, tmp_path, session)
        agent.start("-v")  # the customer's line is plain; the log line says why
        await agent.wait_for_line("Connected to the relay")
        await api.wait_for(session["id"], lambda v: v["online"])
        assert proxy.forwarded == 1  # the agent's only way in is through the proxy

        proxy.cut()
        # The relay cannot have heard anything from the agent: only its own keepalive can
        # tell it the agent is gone. The agent's keepalive tells the agent.
        offline = await api.wait_for(session["id"], lambda v: not v["online"], timeout=30)
        await agent.wait_for_line("Connection to the relay lost", timeout=30)
        why = await agent.wait_for_line("relay connection: reconnecting", timeout=30)
        assert "keepalive" in why.lower(), why
        assert offline["state"] == "active"
        assert proxy.forwarded == 1

        proxy.mend()
        back = await api.wait_for(session["id"], lambda v: v["online"], timeout=60)
        await wait_for_count(agent, "Connected to the relay", 2, timeout=30)
        assert back["state"] == "active"
        assert back["expires_at"] == offline["expires_at"]
        assert proxy.forwarded >= 2  # it came back through the proxy, on a new connection
    assert agent.proc is not None and agent.proc.poll() is None
