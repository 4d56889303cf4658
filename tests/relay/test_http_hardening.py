"""The relay's HTTP listener against a hostile client: forged proxy headers, headers that never
finish, and methods a route does not take."""

from __future__ import annotations

import asyncio
import json

import httpx

from tests.relay.conftest import db_rows


async def _failed_logins(base_url: str, forwarded: list[str]) -> list[int]:
    statuses = []
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        for address in forwarded:
            response = await client.post(
                "/api/v1/login", json={"login": "alice", "password": "wrong-password-1"},
                headers={"X-Forwarded-For": address, "X-Forwarded-Proto": "https"})
            statuses.append(response.status_code)
    return statuses


async def test_forwarded_for_is_ignored_unless_the_proxy_is_named(start_relay) -> None:
    relay = start_relay("--login-rate", "3/1m")
    # Each attempt claims another address: the limit still counts them as 127.0.0.1's.
    assert await _failed_logins(relay.base_url, [f"198.51.100.{n}" for n in range(5)]) == [
        401, 401, 401, 429, 429]
    actors = {actor for (actor,) in db_rows(relay.data_dir,
                                            "SELECT actor FROM audit WHERE event = 'login'")}
    assert actors == {"login:alice@127.0.0.1"}

    # Named as a trusted proxy, 127.0.0.1's X-Forwarded-For is the client's address.
    proxied = start_relay("--login-rate", "3/1m", "--trusted-proxy", "127.0.0.1")
    assert await _failed_logins(proxied.base_url, ["203.0.113.7"] * 4 + ["203.0.113.8"]) == [
        401, 401, 401, 429, 401]
    actors = {actor for (actor,) in db_rows(proxied.data_dir,
                                            "SELECT actor FROM audit WHERE event = 'login'")}
    assert {"login:alice@203.0.113.7", "login:alice@203.0.113.8"} <= actors


async def test_connections_whose_headers_never_finish_are_closed(start_relay,
                                                                 monkeypatch) -> None:
    monkeypatch.setenv("ADHOC_RELAY_HEADER_TIMEOUT", "2")
    relay = start_relay()
    host, port = relay.base_url.removeprefix("http://").rsplit(":", 1)
    slow = []
    try:
        for _ in range(20):
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"GET /api/v1/relay HTTP/1.1\r\nHost: relay\r\nX-Slow: ")
            slow.append((reader, writer))
        # A keep-alive connection that starts a second request and never finishes it.
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /api/v1/relay HTTP/1.1\r\nHost: relay\r\n\r\n")
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).startswith(
            b"HTTP/1.1 200")
        writer.write(b"GET /api/v1/relay HTTP/1.1\r\nHo")
        slow.append((reader, writer))
        # Meanwhile others are served.
        async with httpx.AsyncClient(base_url=relay.base_url, timeout=10) as client:
            assert (await client.get("/api/v1/relay")).status_code == 200
        for reader, writer in slow:
            writer.write(b"x")  # still trickling
            try:  # up to the relay hanging up: a FIN, or a reset if our byte crossed it
                await asyncio.wait_for(reader.read(), 30)
            except ConnectionResetError:
                continue
            assert reader.at_eof()
    finally:
        for _, writer in slow:
            writer.close()


async def test_a_wrong_method_says_which_methods_the_route_takes(relay) -> None:
    async with httpx.AsyncClient(base_url=relay.base_url, timeout=30) as client:
        response = await client.delete("/api/v1/login")
        assert response.status_code == 405
        body = response.json()
        assert body["error"] == "method_not_allowed"
        assert "POST" in body["detail"] and "DELETE" in body["detail"], body
        assert response.headers["Allow"] == "POST"
        assert json.dumps(body).count("Method Not Allowed") == 0
