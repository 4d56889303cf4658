"""The whole flow with real processes: invite, activate with the code, shell and SFTP through
the relay, OpenSSH as a client, and the end of the session."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from tests.support import Api, OpenSSH, new_agent, start_session, technician_ssh


async def test_invite_activate_shell_sftp_end(relay, agents, tmp_path: Path) -> None:
    async with Api(relay.base_url) as api:
        session = await api.create_session()
        assert session["state"] == "pending"
        assert len(session["security_code"]) == 6 and session["security_code"].isdigit()
        assert session["join_url"].startswith(relay.base_url + "/join/")

        agent = new_agent(agents, tmp_path, session)
        agent.start()
        await agent.wait_for_line("Connected to the relay")
        view = await api.wait_for(session["id"], lambda v: v["online"])
        assert view["state"] == "active"
        assert view["host_key"].startswith("ssh-ed25519 ")
        assert view["host"]["hostname"]
        activated = view["activated_at"]
        expires = view["expires_at"]
        from datetime import datetime
        hours = (datetime.fromisoformat(expires) - datetime.fromisoformat(activated))
        assert hours.total_seconds() == 24 * 3600

        async with technician_ssh(relay, api, view) as inner:
            result = await inner.run("echo hello-from-host; id -un", check=True)
            assert result.stdout.splitlines()[0] == "hello-from-host"

            source = tmp_path / "payload.bin"
            source.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
            remote = tmp_path / "remote-copy.bin"
            back = tmp_path / "back.bin"
            async with inner.start_sftp_client() as sftp:
                await sftp.put(str(source), str(remote))
                await sftp.get(str(remote), str(back))
            digest = hashlib.sha256(source.read_bytes()).hexdigest()
            assert hashlib.sha256(back.read_bytes()).hexdigest() == digest
            assert hashlib.sha256(remote.read_bytes()).hexdigest() == digest

        # The customer's screen named the technician before the shell ran.
        await agent.wait_for_line("Technician alice runs: echo hello-from-host")

        response = await api.client.post(f"/api/v1/sessions/{session['id']}/end")
        assert response.status_code == 200
        assert response.json()["state"] == "ended"
        assert response.json()["ended_reason"] == "ended_by_technician"
        assert agent.wait_exit(20) == 0
        assert any("removed itself" in line for line in agent.output)
        # Ending twice is fine and changes nothing.
        again = await api.client.post(f"/api/v1/sessions/{session['id']}/end")
        assert again.status_code == 200 and again.json()["ended_reason"] == "ended_by_technician"


async def test_pty_shell_through_relay(relay, agents, tmp_path: Path) -> None:
    async with Api(relay.base_url) as api:
        view, _agent = await start_session(api, agents, tmp_path)
        async with technician_ssh(relay, api, view) as inner:
            process = await inner.create_process(term_type="xterm-256color",
                                                 term_size=(100, 30), encoding=None)
            process.stdin.write(b"stty size; echo marker-$((6*7))\r")
            seen = b""
            while b"marker-42" not in seen:
                seen += await process.stdout.read(4096)
            assert b"30 100" in seen
            process.change_terminal_size(120, 40)
            process.stdin.write(b"stty size\r")
            while b"40 120" not in seen:
                seen += await process.stdout.read(4096)
            process.stdin.write(b"exit\r")
            await process.wait_closed()


async def test_wrong_session_password_is_refused(relay, agents, tmp_path: Path) -> None:
    import asyncssh

    async with Api(relay.base_url) as api:
        view, agent = await start_session(api, agents, tmp_path)
        with pytest.raises(asyncssh.PermissionDenied):
            async with technician_ssh(relay, api, view, password="not-the-password"):
                pass
        await agent.wait_for_line("wrong session password")


@pytest.mark.skipif(shutil.which("ssh") is None or shutil.which("sftp") is None,
                    reason="OpenSSH client (ssh, sftp) is not installed; CI installs it")
async def test_openssh_jump_through_relay(relay, agents, tmp_path: Path) -> None:
    async with Api(relay.base_url) as api:
        view, _agent = await start_session(api, agents, tmp_path)
        relay_key = (await api.relay_info())["host_key"]
    OpenSSH(tmp_path, relay, relay_key, view,
            ["HostName 127.0.0.1", f"Port {relay.ssh_port}"]).round_trip()
