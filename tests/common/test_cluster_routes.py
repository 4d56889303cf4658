"""The routes an agent adds from a relay's list of its cluster: what is well formed, once;
what is not, left out (the list is the relay's word, not trusted to be well formed)."""

from __future__ import annotations

from common.protocol import RELAYS_MAX
from common.reach import cluster_routes, relay_routes


def test_other_relays_are_added_once_after_the_routes_known() -> None:
    known = relay_routes("relay-a.example:8722", "https://relay-a.example", environ={})
    relays = [{"ssh": "relay-a.example:8722", "http": "https://relay-a.example"},
              {"ssh": "relay-b.example:8722", "http": "https://relay-b.example"},
              {"ssh": "relay-b.example:8722", "http": "https://relay-b.example"},
              {"ssh": None, "http": "https://relay-c.example"}]
    routes = cluster_routes(known, relays, environ={})
    assert routes[:2] == known
    assert [str(r) for r in routes[2:]] == [
        "SSH to relay-b.example:8722", "SSH over WebSocket to wss://relay-b.example/api/v1/ssh",
        "SSH over WebSocket to wss://relay-c.example/api/v1/ssh"]


def test_a_hostile_list_adds_nothing_it_cannot_read() -> None:
    known = relay_routes("relay-a.example:8722", "https://relay-a.example", environ={})
    hostile = [None, 7, "relay", {"ssh": "no-port", "http": "https://x.example"},
               {"ssh": "x:99999999999", "http": "https://x.example"}, {"http": 5},
               {"ssh": ["x"], "http": "https://y.example"}, {}]
    routes = cluster_routes(known, hostile, environ={})
    assert [str(r) for r in routes[2:]] == [
        "SSH over WebSocket to wss://y.example/api/v1/ssh"]
    assert cluster_routes(known, {"relays": "nope"}, environ={}) == known
    many = [{"ssh": f"r{n}.example:22", "http": f"https://r{n}.example"} for n in range(500)]
    assert len(cluster_routes([], many, environ={})) == 2 * RELAYS_MAX
