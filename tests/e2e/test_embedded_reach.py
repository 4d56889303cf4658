"""The embedded default reaches a customer on another computer: the real console in tmux at
80x24, its bundled relay listening on this machine's address on a network (`--listen`), and
the customer's host in a network namespace that only reaches that address. Quitting with the
customer connected asks first; after a restart on the kept ports the host is back."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from tests import netns
from tests.support import SESSION_PASSWORD, new_agent
from tests.tmux import Tmux
from tui.client import RelayClient
from tui.embedded import start_embedded

REASON = netns.available()
pytestmark = [
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed"),
    pytest.mark.skipif(REASON is not None, reason=REASON or ""),
]


async def test_a_customer_on_another_network_joins_the_consoles_bundled_relay(
        tmp_path: Path, agents, monkeypatch) -> None:
    home = tmp_path / "home"
    env = {"HOME": str(home), "ADHOC_CONSOLE_CONFIG_DIR": str(home / "config"),
           "ADHOC_CONSOLE_DATA_DIR": str(home / "data"), "TERM": "xterm-256color",
           "PYTHONPATH": os.getcwd()}
    monkeypatch.setenv("ADHOC_CONSOLE_DATA_DIR", env["ADHOC_CONSOLE_DATA_DIR"])
    tmux = Tmux("embedded", tmp_path / "tmux.sock")
    with netns.Namespace() as network:
        tmux.start(f"{sys.executable} -m tui.cli --listen {network.outside}:0", env,
                   cols=80, rows=24)
        try:
            tmux.wait_for(r"live sessions 0/")
            # The first run's admin password waits in its dialog until noted; the welcome
            # toast comes after it.
            tmux.wait_for(r"First run of the bundled relay")
            tmux.keys("Enter")
            flat = tmux.wait_for(r"Running the bundled\s+relay at").string.replace("\n", " ")
            assert "Only this computer" not in flat  # it listens for the network now
            # This test's technician: a second console process on the same data dir attaches
            # to the running relay (and is handed a token for its API).
            technician = await start_embedded()
            assert technician.attached
            assert technician.base_url.startswith(f"http://{network.outside}:")
            client = RelayClient(technician.base_url, technician.token)
            try:
                session = await client.create_session("far@example.com", SESSION_PASSWORD)
            finally:
                await client.aclose()
            await technician.stop()
            assert session["join_url"].startswith(f"http://{network.outside}:")

            customer = new_agent(agents, tmp_path, session)
            customer.start(wrap=network.wrap)
            line = await customer.wait_for_line("Connected to the relay", timeout=60)
            assert f"SSH to {network.outside}:" in line
            tmux.wait_for(r"far@example\.com\s+active\s+\S+\s+online")

            # Quitting would cut the customer off: the console asks first, and "no" keeps it.
            tmux.keys("q")
            tmux.wait_for(r"1 customer in a live\s+session")
            tmux.wait_for(r"still end on time\. Quit")
            tmux.keys("n")
            tmux.wait_for(r"far@example\.com\s+active")
            tmux.keys("q")
            tmux.wait_for(r"1 customer in a live\s+session")
            tmux.wait_for(r"still end on time\. Quit")  # the whole question, keys bound
            tmux.keys("y")
            await customer.wait_for_line("Connection to the relay lost",
                                         timeout=30)
            customer.output.clear()

            # Started again, without --listen: the same address and ports, and the host,
            # which remembered them, comes back by itself.
            tmux.kill()
            tmux = Tmux("embedded-again", tmp_path / "tmux-again.sock")
            tmux.start(f"{sys.executable} -m tui.cli", env, cols=80, rows=24)
            await customer.wait_for_line("Connected to the relay", timeout=60)
            tmux.wait_for(r"far@example\.com\s+active\s+\S+\s+online", timeout=30)
        finally:
            tmux.kill()
