"""Key login for scripts: a public key sent with the session at create time logs in to the host
as the technician who created it (`sftp -b`, cron, BatchMode), besides the session password;
nobody else can use it, weak keys are refused at create time, and a password lockout does not
stop it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from pathlib import Path

import asyncssh

from tests.hostagent.helpers import inner_connection
from tests.hostagent.test_features import audit_events
from tests.openssh import RelayPath, make_key
from tests.support import SESSION_PASSWORD, Api, new_agent


async def create_with_key(api: Api, key: Path | str) -> dict:
    line = key.with_suffix(".pub").read_text() if isinstance(key, Path) else key
    return await api.create_session(technician_key=line)


async def started(api: Api, agents, tmp_path: Path, session: dict) -> dict:
    agent = new_agent(agents, tmp_path, session)
    agent.start()
    await agent.wait_for_line("Connected to the relay")
    return await api.wait_for(session["id"], lambda v: v["state"] == "active" and v["online"])


async def test_scripts_log_in_with_the_key_sent_with_the_session(start_relay, agents,
                                                                 tmp_path: Path,
                                                                 monkeypatch) -> None:
    monkeypatch.setenv("ADHOC_HOST_LOGIN_PAUSE", "0.02")
    relay = start_relay()
    key = make_key(tmp_path / "script_key")
    async with Api(relay.base_url) as api:
        session = await create_with_key(api, key)
        assert session["technician_key_fingerprint"].startswith("SHA256:")
        view = await started(api, agents, tmp_path, session)
        relay_key = (await api.relay_info())["host_key"]
        host = RelayPath(tmp_path / "alice", relay, "alice", view, relay_key, inner_key=key)

        # sftp -b (BatchMode: no password can be asked) and a plain command, as cron runs them
        payload = tmp_path / "report.bin"
        payload.write_bytes(os.urandom(200_000))
        batch = f"put {payload} {tmp_path}/up.bin\nget {tmp_path}/up.bin {tmp_path}/down.bin\n"
        sftp = await asyncio.to_thread(host.run, "sftp", "-b", "-", "h", input=batch.encode())
        assert sftp.returncode == 0, sftp.stderr
        assert (tmp_path / "down.bin").read_bytes() == payload.read_bytes()
        ran = await asyncio.to_thread(host.run, "ssh", "h", "echo from-cron")
        assert (ran.returncode, ran.stdout) == (0, b"from-cron\n"), ran.stderr

        # Ten wrong session passwords stop password logins, not the key.
        for n in range(10):
            with contextlib.suppress(asyncssh.PermissionDenied):
                async with inner_connection(relay, api, view, password=f"Nope-{n}-nope"):
                    pass
        ran = await asyncio.to_thread(host.run, "ssh", "h", "echo still-in")
        assert (ran.returncode, ran.stdout) == (0, b"still-in\n"), ran.stderr

        rows = await audit_events(api, view["id"], {"logins_locked", "command"})
        methods = [row["detail"]["agent"].get("method") for row in rows
                   if row["event"] == "technician_connected"]
        assert methods.count("publickey") >= 2

    # Another technician of the company holding a copy of the key gets nothing from it.
    async with Api(relay.base_url, login="bob") as bob:
        bobs = RelayPath(tmp_path / "bob", relay, "bob", view, relay_key, inner_key=key)
        refused = await asyncio.to_thread(bobs.run, "ssh", "h", "true")
        assert refused.returncode == 255
        assert "Permission denied" in refused.stderr.decode()
        assert bob.login_name == "bob"


async def test_other_keys_and_sessions_without_a_key(start_relay, agents,
                                                     tmp_path: Path) -> None:
    relay = start_relay()
    key, other = make_key(tmp_path / "script_key"), make_key(tmp_path / "other_key")
    async with Api(relay.base_url) as api:
        view = await started(api, agents, tmp_path, await create_with_key(api, key))
        relay_key = (await api.relay_info())["host_key"]
        wrong = RelayPath(tmp_path / "wrong", relay, "alice", view, relay_key, inner_key=other)
        result = await asyncio.to_thread(wrong.run, "ssh", "h", "true")
        assert result.returncode == 255 and "Permission denied" in result.stderr.decode()
        # The session password still works beside the key.
        password = await asyncio.to_thread(wrong.run, "ssh", "-o", "BatchMode=no", "h",
                                           "echo by-password")
        assert (password.returncode, password.stdout) == (0, b"by-password\n")
        ended = await api.client.post(f"/api/v1/sessions/{view['id']}/end")
        assert ended.status_code == 200

        # A session created without a key offers only the password.
        session = await api.create_session()
        assert session["technician_key_fingerprint"] is None
        view = await started(api, agents, tmp_path, session)
        keyed = RelayPath(tmp_path / "keyed", relay, "alice", view, relay_key, inner_key=key)
        result = await asyncio.to_thread(keyed.run, "ssh", "h", "true")
        assert result.returncode == 255
        assert "Permission denied (password)" in result.stderr.decode()


async def test_a_weak_or_broken_key_is_refused_at_create_time(relay, tmp_path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "1024", "-N", "", "-f",
                    str(tmp_path / "short")], check=True)
    async with Api(relay.base_url) as api:
        for line, said in (((tmp_path / "short.pub").read_text(), "fewer than the 2048"),
                           ("ssh-ed25519 not-base64", "not an OpenSSH public key"),
                           ("", "not an OpenSSH public key")):
            response = await api.client.post("/api/v1/sessions", json={
                "customer_email": "customer@example.com", "password": SESSION_PASSWORD,
                "technician_key": line})
            assert response.status_code == 422, response.text
            assert said in response.json()["detail"]
            assert response.json()["detail"].startswith("technician_key: ")
