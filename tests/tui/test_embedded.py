"""The console's bundled relay: ports chosen once and kept (agents remember the SSH port),
a taken port said plainly rather than moved, one relay per data dir (a second console
attaches, and runs the relay once the first quits), every address only with a public URL,
and its wheels prepared in the background."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import httpx
import pytest
from textual.widgets import DataTable

from tests.ports import free_port
from tests.tui.helpers import own_bundled_ports, wait_until
from tui.app import ConsoleApp
from tui.client import RelayClient
from tui.embedded import ADDRESSES, Addresses, EmbeddedError, start_embedded


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch) -> Path:
    path = own_bundled_ports(tmp_path / "console-data")
    monkeypatch.setenv("ADHOC_CONSOLE_DATA_DIR", str(path))
    return path


async def _refused_while_taken(port: int) -> str:
    """Why the bundled relay does not start while something else listens on `port`."""
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", port))
        taken.listen()
        with pytest.raises(EmbeddedError) as refused:
            await start_embedded()
    return str(refused.value)


async def test_ports_are_chosen_once_and_kept(data_dir: Path) -> None:
    (data_dir / ADDRESSES).unlink()  # the one test to choose: the defaults if free
    first = await start_embedded(("127.0.0.1", 0))
    http_port, ssh_port = first.server.http_port, first.server.ssh_port
    await first.stop()
    again = await start_embedded()
    try:
        assert (again.server.http_port, again.server.ssh_port) == (http_port, ssh_port)
        assert again.first_run_password is None and first.first_run_password
    finally:
        await again.stop()
    # Someone else took the web port meanwhile: the relay says so instead of moving.
    said = await _refused_while_taken(http_port)
    assert f"cannot listen for HTTP on 127.0.0.1:{http_port}: the address is already in use" \
        in said
    assert "keeps the ports it first had" in said
    assert "--listen HOST:PORT" in said and "--http" not in said
    # The SSH port, which customers' computers dial: said in the console's words (it has
    # no --ssh), with the file that keeps it.
    said = await _refused_while_taken(ssh_port)
    assert f"cannot listen for SSH on 127.0.0.1:{ssh_port}: the address is already in use" \
        in said and f'delete "ssh_port" from {data_dir / ADDRESSES}' in said, said
    assert "--ssh" not in said
    # The lock went with the failed start: the next console starts normally.
    last = await start_embedded()
    await last.stop()


async def test_a_second_console_on_the_same_data_dir_uses_the_running_relay(
        data_dir: Path) -> None:
    owner = await start_embedded(("127.0.0.1", 0))
    try:
        second = await start_embedded()
        assert second.attached and second.owner_pid is not None
        assert second.base_url == owner.base_url
        client = RelayClient(second.base_url, second.token)
        try:
            assert (await client.me())["login"] == "admin"
        finally:
            await client.aclose()
        await second.stop()  # an attached console leaves the relay running
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"{owner.base_url}/healthz")).status_code == 200
        with pytest.raises(EmbeddedError, match=r"runs the bundled relay for .* quit it to "
                                                r"start the relay with --listen"):
            await start_embedded(("127.0.0.1", 0))
    finally:
        await owner.stop()


async def test_an_address_this_computer_does_not_have_is_said_plainly(data_dir: Path) -> None:
    with pytest.raises(EmbeddedError) as refused:
        await start_embedded(("192.0.2.77", 0))
    assert str(refused.value) == ("cannot listen on 192.0.2.77: this computer has no such "
                                  "address: give --listen one of this computer's own addresses")


async def test_listening_on_every_address_needs_the_public_url(data_dir: Path) -> None:
    with pytest.raises(EmbeddedError, match="say how customers reach this computer with "
                                            "--public-url"):
        await start_embedded(("0.0.0.0", 0))
    # Not the default ports: a relay on every address with them would also answer for a test
    # running beside this one on 8722 of one address (tests/e2e/test_embedded_reach.py),
    # whenever that test's own relay is restarting, with the wrong host key.
    data_dir.mkdir(parents=True, exist_ok=True)
    Addresses("0.0.0.0", free_port("0.0.0.0"), free_port("0.0.0.0")).save(data_dir)
    embedded = await start_embedded(("0.0.0.0", 0), "http://support.lan:8780")
    try:
        async with httpx.AsyncClient() as http:
            info = (await http.get(f"http://127.0.0.1:{embedded.server.http_port}"
                                   "/api/v1/relay")).json()
        assert info["base_url"] == "http://support.lan:8780"
        # Agents dial the public host name for SSH, not 0.0.0.0.
        assert info["ssh"] == f"support.lan:{embedded.server.ssh_port}"
    finally:
        await embedded.stop()


async def test_the_installer_says_preparing_until_the_wheels_are_built(
        data_dir: Path) -> None:
    embedded = await start_embedded(("127.0.0.1", 0))
    try:
        client = RelayClient(embedded.base_url, embedded.token)
        try:
            created = await client.create_session("customer@example.com", "Horse-battery-9")
        finally:
            await client.aclose()
        script_url = created["join_url"] + "/install.sh"
        async with httpx.AsyncClient(timeout=30) as http:
            first = (await http.get(script_url)).text
            assert "the relay is still preparing the installer" in first
            for _ in range(1200):  # building fetches wheels with pip: allow it minutes
                script = (await http.get(script_url)).text
                if "preparing" not in script:
                    break
                await asyncio.sleep(0.25)
        if embedded.server.service.wheels.failure:
            pytest.skip(f"cannot build the wheels here (offline?): "
                        f"{embedded.server.service.wheels.failure}")
        assert "Installing the temporary Adhoc host" in script, script
        assert (data_dir / "wheelhouse").is_dir()
    finally:
        await embedded.stop()


async def test_when_the_console_running_the_relay_quits_the_attached_one_runs_it(
        data_dir: Path, capfd) -> None:
    """Two consoles share the bundled relay; the one that ran it quits: the other runs it
    now, on the same addresses (customers' computers and its own panes find it again), says
    so once, and asks before quitting like the first did."""
    owner = await start_embedded(("127.0.0.1", 0))
    second = await start_embedded()
    client = RelayClient(second.base_url, second.token)
    try:
        await client.create_session("first@example.com", "Horse-battery-9")
        app = ConsoleApp(client, second.login, take_over=second.take_over)
        async with app.run_test(size=(80, 24), notifications=True) as pilot:
            table = app.screen.query_one("#sessions", DataTable)
            await wait_until(pilot, lambda: table.row_count == 1)
            assert not await second.take_over()  # the first console still runs it
            assert second.attached and not app.runs_relay
            await owner.stop()
            await wait_until(pilot, lambda: any("this console runs it now" in text
                                                for _s, text in app.notices),
                             what="(the takeover said)")
            assert app.runs_relay and not second.attached
            assert second.base_url == owner.base_url
            assert (await client.me())["login"] == second.login
            await wait_until(pilot, lambda: not app.relay_lost)
            assert table.row_count == 1 and not app.unexpected
            # The first relay ended this console's event stream as it stopped, rather than
            # read on from a database it had closed.
            assert "Exception in ASGI application" not in capfd.readouterr().err
            await app.action_quit()
        await second.stop()  # quitting stops the relay it took over, and lets go of it
        async with httpx.AsyncClient() as http:
            with pytest.raises(httpx.ConnectError):
                await http.get(f"{second.base_url}/healthz")
        again = await start_embedded()
        try:
            assert not again.attached and again.base_url == owner.base_url
        finally:
            await again.stop()
    finally:
        await client.aclose()
        await second.stop()
        await owner.stop()


async def test_a_takeover_that_cannot_write_its_data_dir_says_so_and_goes_on(
        data_dir: Path) -> None:
    """The attached console cannot run the relay (here: it cannot write the file that keeps
    the ports, as with a full disk): it says why once, and keeps waiting for a relay."""
    owner = await start_embedded(("127.0.0.1", 0))
    second = await start_embedded()
    client = RelayClient(second.base_url, second.token)
    try:
        app = ConsoleApp(client, second.login, take_over=second.take_over)
        async with app.run_test(size=(80, 24), notifications=True) as pilot:
            await wait_until(pilot, lambda: app.screen.query("#sessions"))
            (data_dir / ADDRESSES).with_suffix(".tmp").mkdir()  # no file can be written there
            await owner.stop()
            await wait_until(pilot, lambda: any("this one cannot run it" in text
                                                for _s, text in app.notices))
            await wait_until(pilot, lambda: app.relay_lost)
            assert second.attached and not app.runs_relay and not app.unexpected
            assert app.is_running
            await app.action_quit()
    finally:
        await client.aclose()
        await second.stop()
        await owner.stop()
