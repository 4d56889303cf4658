"""THREATS.md "weak SSH algorithms or keys": ssh-audit finds nothing failing on the relay's SSH
endpoint or on a host's inner server, and technician keys too weak to trust are refused."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import asyncssh
import httpx
import pytest

from common.transport import pinned
from tests.relay.conftest import db_rows, db_write
from tests.support import Api, run_cli, stop_process

ROOT_DIR = Path(__file__).resolve().parents[2]


def ssh_audit_failures(port: int) -> list[str]:
    """Every "fail" ssh-audit reports for the SSH server on 127.0.0.1:port."""
    result = subprocess.run(
        [sys.executable, "-m", "ssh_audit", "--json", "--skip-rate-test", "-p", str(port),
         "127.0.0.1"], capture_output=True, text=True, timeout=120)
    report = json.loads(result.stdout)
    assert report.get("kex"), result.stdout[-2000:]  # it did reach the server
    failures = [f"cve {cve.get('name')}" for cve in report.get("cves", [])]
    for section in ("kex", "key", "enc", "mac"):
        for entry in report.get(section, []):
            for note in entry.get("notes", {}).get("fail", []):
                failures.append(f"{section} {entry['algorithm']}: {note}")
    return failures


def test_ssh_audit_finds_nothing_failing_on_the_relay(relay) -> None:
    assert ssh_audit_failures(relay.ssh_port) == []


def test_ssh_audit_finds_nothing_failing_on_a_hosts_inner_server(tmp_path: Path) -> None:
    """The agent's inner SSH server, started on a loopback port as bench/launch.py does."""
    port_file = tmp_path / "inner.json"
    proc = subprocess.Popen([sys.executable, "-m", "bench.launch", "direct", str(port_file)],
                            cwd=ROOT_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists():
            assert proc.poll() is None, proc.stdout.read().decode(errors="replace")
            assert time.monotonic() < deadline, "the inner server did not start"
            time.sleep(0.05)
        port = json.loads(port_file.read_text())["port"]
        assert ssh_audit_failures(port) == []
    finally:
        stop_process(proc)


def _public_key_file(tmp_path: Path, name: str, algorithm: str, **options) -> Path:
    path = tmp_path / f"{name}.pub"
    path.write_bytes(asyncssh.generate_private_key(algorithm, **options).export_public_key())
    return path


def test_weak_technician_keys_are_refused_when_added(tmp_path: Path, data_dir: Path) -> None:
    dsa = _public_key_file(tmp_path, "dsa", "ssh-dss")
    rsa1024 = _public_key_file(tmp_path, "rsa1024", "ssh-rsa", key_size=1024)
    good = _public_key_file(tmp_path, "ed", "ssh-ed25519")
    rsa2048 = _public_key_file(tmp_path, "rsa2048", "ssh-rsa", key_size=2048)
    for weak, says in ((dsa, "DSA keys (ssh-dss) are too weak"),
                       (rsa1024, "has 1024 bits, fewer than the 2048")):
        for args, stdin in ((("technician", "add-key", "alice", str(weak)), None),
                            (("technician", "add", "newbie", "--email", "n@example.com",
                              "--company", "Acme", "--ssh-key", str(weak), "--password-stdin"),
                             "Long-enough-pass-1\n")):
            result = run_cli(data_dir, *args, stdin=stdin, check=False)
            assert result.returncode == 2, result.stderr
            assert says in result.stderr and "ssh-keygen -t ed25519" in result.stderr
            assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not db_rows(data_dir, "SELECT 1 FROM technicians WHERE login = 'newbie'")
    run_cli(data_dir, "technician", "add-key", "alice", str(good))
    run_cli(data_dir, "technician", "add-key", "alice", str(rsa2048))
    keys = db_rows(data_dir, "SELECT public_key FROM ssh_keys k JOIN technicians t "
                             "ON t.id = k.technician_id WHERE t.login = 'alice'")
    assert [k.split()[0] for (k,) in keys] == ["ssh-ed25519", "ssh-rsa"]


async def test_the_admin_api_refuses_weak_technician_keys(relay, tmp_path: Path) -> None:
    dsa = _public_key_file(tmp_path, "dsa", "ssh-dss").read_text()
    async with Api(relay.base_url, "alice") as alice:
        response = await alice.client.post("/api/v1/admin/technicians", json={
            "login": "newbie", "email": "n@example.com", "password": "Long-enough-pass-1",
            "ssh_keys": [dsa]})
        assert response.status_code == 422
        assert "DSA keys (ssh-dss) are too weak" in response.json()["detail"]


async def test_sha1_signatures_and_weak_stored_keys_do_not_log_in(relay, tmp_path: Path) -> None:
    rsa = asyncssh.generate_private_key("ssh-rsa", key_size=3072)
    key_file = tmp_path / "rsa.pub"
    key_file.write_bytes(rsa.export_public_key())
    run_cli(relay.data_dir, "technician", "add-key", "alice", str(key_file))
    async with httpx.AsyncClient(base_url=relay.base_url) as client:
        relay_key = (await client.get("/api/v1/relay")).json()["host_key"]
    common = {"username": "alice", "known_hosts": pinned(relay_key), "agent_path": None,
              "config": None, "preferred_auth": "publickey"}
    async with asyncssh.connect(relay.ssh_host, relay.ssh_port, client_keys=[rsa],
                                signature_algs=["rsa-sha2-256"], **common):
        pass
    with pytest.raises(asyncssh.PermissionDenied):
        await asyncssh.connect(relay.ssh_host, relay.ssh_port, client_keys=[rsa],
                               signature_algs=["ssh-rsa"], **common)
    # A DSA key stored before the relay refused them (straight into the database) is no login.
    dsa = asyncssh.generate_private_key("ssh-dss")
    db_write(relay.data_dir, "INSERT INTO ssh_keys(technician_id, public_key, created_at) "
                             "SELECT id, ?, 0 FROM technicians WHERE login = 'alice'",
             (dsa.export_public_key().decode().strip(),))
    with pytest.raises((asyncssh.PermissionDenied, asyncssh.KeyExchangeFailed)):
        await asyncssh.connect(relay.ssh_host, relay.ssh_port, client_keys=[dsa],
                               signature_algs=["ssh-dss"], **common)


async def test_no_empty_ignore_before_every_packet_on_aes_gcm(relay, caplog) -> None:
    """asyncssh sends an empty SSH_MSG_IGNORE before every packet, a defence for CBC ciphers:
    on AES-GCM it only doubled what every leg encrypts, sends and decrypts (downloads through
    the relay ran at 0.64x an OpenSSH jump host with it, 0.77x without). The relay's packets
    reach a client without it."""
    asyncssh.set_debug_level(3)
    caplog.set_level("DEBUG", logger="asyncssh")
    try:
        with pytest.raises(asyncssh.PermissionDenied):
            await asyncssh.connect("127.0.0.1", relay.ssh_port, username="nobody",
                                   password="wrong", known_hosts=None,
                                   encryption_algs=["aes128-gcm@openssh.com"])
    finally:
        asyncssh.set_debug_level(1)
    received = [r.getMessage() for r in caplog.records if "] Received MSG_" in r.getMessage()]
    assert any("MSG_USERAUTH_FAILURE" in line for line in received)  # encrypted packets came
    assert not [line for line in received if "MSG_IGNORE" in line]
