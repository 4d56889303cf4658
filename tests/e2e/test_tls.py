"""TLS to the relay: the relay serves HTTPS itself (--tls-cert), the agent trusts what the
system trusts (SSL_CERT_FILE) and, when the link names the relay's key (--pin-certificate),
no other key, even one signed by an authority the computer trusts."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from common.tls import spki_pin
from tests.certs import Authority, bundle
from tests.support import Api, RelayProcess, new_agent, provision, technician_ssh


@pytest.fixture
def tls(tmp_path: Path):
    folder = tmp_path / "tls"
    folder.mkdir()
    authority = Authority(folder, "genuine")
    rogue = Authority(folder, "rogue")
    return authority, rogue, folder


def trusting(authority: Authority) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(authority.path))


def start_relay(tmp_path: Path, *flags: str) -> RelayProcess:
    data_dir = tmp_path / "relay"
    provision(data_dir)
    relay = RelayProcess(data_dir, flags)
    relay.start()
    return relay


async def test_https_relay_with_a_pinned_link(tmp_path: Path, agents, tls,
                                              monkeypatch) -> None:
    authority, _rogue, folder = tls
    cert = authority.issue("relay")
    relay = start_relay(tmp_path, "--tls-cert", str(cert.cert), "--tls-key", str(cert.key),
                        "--pin-certificate", str(cert.cert))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle(folder / "trusted.pem", authority)))
    try:
        assert relay.base_url.startswith("https://127.0.0.1:")
        pin = spki_pin(cert.cert.read_bytes())
        async with Api(relay.base_url, verify=trusting(authority)) as api:
            session = await api.create_session()
            assert session["join_url"].endswith(f"#sha256={pin}")
            assert session["install_command"] == (
                f"curl -sSL --pinnedpubkey 'sha256//{pin}' "
                f"{session['join_url'].split('#')[0]}/install.sh | sh")
            agent = new_agent(agents, tmp_path, session)
            agent.start()
            line = await agent.wait_for_line("Connected to the relay")
            assert "SSH to 127.0.0.1:" in line  # the SSH port is open here: it goes first
            view = await api.wait_for(session["id"], lambda v: v["online"])
            async with technician_ssh(relay, api, view) as inner:
                assert (await inner.run("echo tls-ok", check=True)).stdout.strip() == "tls-ok"
    finally:
        relay.stop()


async def test_the_agent_says_tls_failure_when_the_system_does_not_trust_the_relay(
        tmp_path: Path, agents, tls, monkeypatch) -> None:
    authority, _rogue, folder = tls
    cert = authority.issue("relay")
    relay = start_relay(tmp_path, "--tls-cert", str(cert.cert), "--tls-key", str(cert.key))
    try:
        monkeypatch.setenv("SSL_CERT_FILE", str(bundle(folder / "trusted.pem", authority)))
        async with Api(relay.base_url, verify=trusting(authority)) as api:
            session = await api.create_session()
        monkeypatch.setenv("SSL_CERT_FILE", str(folder / "rogue-ca.pem"))  # not the relay's
        agent = new_agent(agents, tmp_path, session)
        agent.start()
        assert agent.wait_exit(30) == 1
        said = "".join(agent.output)
        assert "TLS failure: the certificate of 127.0.0.1 is not trusted on this computer" in said
        assert f"tried HTTPS to 127.0.0.1:{relay.base_url.rsplit(':', 1)[1]}" in said
    finally:
        relay.stop()


async def test_a_rogue_authority_cannot_intercept_a_pinned_link(tmp_path: Path, agents, tls,
                                                                monkeypatch) -> None:
    """The relay's address answers with a certificate from an authority this computer trusts
    (as an intercepting proxy would), but not with the key the link names."""
    authority, rogue, folder = tls
    genuine = authority.issue("genuine")
    impostor = rogue.issue("impostor")
    relay = start_relay(tmp_path, "--tls-cert", str(impostor.cert), "--tls-key",
                        str(impostor.key), "--pin-certificate", str(genuine.cert))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle(folder / "both.pem", authority, rogue)))
    try:
        async with Api(relay.base_url, verify=trusting(rogue)) as api:
            session = await api.create_session()
        agent = new_agent(agents, tmp_path, session)
        agent.start()
        assert agent.wait_exit(30) == 1
        said = "".join(agent.output)
        assert ("the relay's certificate is not the one its link names: someone on this "
                "network may be intercepting the connection") in said
        # And without the pin the same computer would have gone ahead.
        unpinned = new_agent(agents, tmp_path, {**session,
                                                "join_url": session["join_url"].split("#")[0]})
        unpinned.start()
        await unpinned.wait_for_line("Connected to the relay")
    finally:
        relay.stop()
