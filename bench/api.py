"""Session create on the HTTP API: latency and throughput against a real relay with SQLite.

Run: python -m bench.api [--technicians 60] [--rounds 4] [--concurrency 8]

A real relay process (uvicorn + FastAPI + SQLite, WAL, synchronous=FULL) is driven with
httpx. Limits allow one live session per technician and five per company, so the bench makes
many technicians (through relay.store.Store, in a bench-only data dir, sharing one real argon2
password hash) and ends every session right after it is timed. Each step times, interleaved and
in alternating order, the two ways to create: with `password_verifier` (as the console sends
it: the console hashes the session password, timed on its own as the console's share) and with
`password` (the relay checks and hashes it). Beside them: `GET /api/v1/relay` (the HTTP stack's
floor, the anchor of every ratio) and `GET /api/v1/sessions/{id}` (an authorised read).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import (
    PASSWORD,
    SESSION_PASSWORD,
    BenchRelay,
    header,
    median,
    percentile,
    table,
    verdict,
)


async def seed(data_dir: Path, technicians: int) -> list[str]:
    from common.passwords import hash_password
    from relay.config import RelaySettings
    from relay.server import initialise
    from relay.store import Store

    settings = RelaySettings(data_dir=data_dir)
    await initialise(settings)
    store = await Store.open(settings.db_path)
    password_hash = hash_password(PASSWORD)
    now = time.time()
    logins = []
    company_id = 0
    for n in range(technicians):
        if n % 5 == 0:
            company_id = (await store.add_company(f"api{n // 5}", "plus", 5, now)).id
        login = f"tech{n}"
        await store.add_technician(company_id, login, f"{login}@example.com", password_hash,
                                   False, now)
        logins.append(login)
    await store.close()
    return logins


async def login_all(client: httpx.AsyncClient, logins: list[str]) -> list[dict]:
    tokens = []
    for login in logins:
        response = await client.post("/api/v1/login", json={"login": login, "password": PASSWORD})
        response.raise_for_status()
        tokens.append({"Authorization": f"Bearer {response.json()['token']}"})
    return tokens


async def timed(call) -> tuple[float, httpx.Response]:
    start = time.perf_counter()
    response = await call
    return time.perf_counter() - start, response


async def create(client: httpx.AsyncClient, auth: dict, n: int,
                 **secret: str) -> tuple[float, str]:
    """Time one create; `secret` is password=... or password_verifier=..."""
    elapsed, response = await timed(client.post(
        "/api/v1/sessions", headers=auth,
        json={"customer_email": f"customer{n}@example.com", **secret}))
    if response.status_code != 201:
        raise RuntimeError(f"create refused: {response.status_code} {response.text}")
    return elapsed, response.json()["id"]


async def end(client: httpx.AsyncClient, auth: dict, session_id: str) -> None:
    (await client.post(f"/api/v1/sessions/{session_id}/end", headers=auth)).raise_for_status()


def console_hash() -> tuple[float, str]:
    """What the console does before it sends a create: argon2id, argon2-cffi defaults."""
    from common.passwords import hash_password

    start = time.perf_counter()
    verifier = hash_password(SESSION_PASSWORD)
    return time.perf_counter() - start, verifier


KINDS = ("verifier", "password")


async def create_kind(client: httpx.AsyncClient, auth: dict, n: int, kind: str,
                      verifier: str) -> tuple[float, str]:
    if kind == "verifier":
        return await create(client, auth, n, password_verifier=verifier)
    return await create(client, auth, n, password=SESSION_PASSWORD)


async def measure(relay: BenchRelay, logins: list[str], args: argparse.Namespace) -> dict:
    async with httpx.AsyncClient(base_url=relay.base_url, timeout=60) as client:
        tokens = await login_all(client, logins)
        result: dict[str, list[float]] = {
            "verifier": [], "password": [], "floor": [], "read": [], "hash": [], "console": []}
        n = 0
        for _ in range(args.rounds):
            for auth in tokens:
                # The console hashes in a thread, then posts; the technician waits for both.
                hashed, verifier = await asyncio.to_thread(console_hash)
                result["hash"].append(hashed)
                for kind in KINDS if len(result["hash"]) % 2 else KINDS[::-1]:
                    elapsed, session_id = await create_kind(client, auth, n, kind, verifier)
                    n += 1
                    result[kind].append(elapsed)
                    if kind == "verifier":
                        result["console"].append(hashed + elapsed)
                        result["floor"].append((await timed(client.get("/api/v1/relay")))[0])
                        result["read"].append((await timed(client.get(
                            f"/api/v1/sessions/{session_id}", headers=auth)))[0])
                    await end(client, auth, session_id)
        # Throughput: every technician creates at once, `concurrency` requests in flight; the
        # verifiers are made beforehand, as each technician's own console would.
        for burst_round in range(args.rounds):
            verifiers = [(await asyncio.to_thread(console_hash))[1] for _ in tokens]
            for kind in KINDS if burst_round % 2 == 0 else KINDS[::-1]:
                latencies, rate = await burst(client, tokens, verifiers, kind, n,
                                              args.concurrency)
                result.setdefault(f"{kind} burst", []).extend(latencies)
                result.setdefault(f"{kind} rate", []).append(rate)
                n += len(tokens)
    return result


async def burst(client: httpx.AsyncClient, tokens: list[dict], verifiers: list[str], kind: str,
                n: int, concurrency: int) -> tuple[list[float], float]:
    """Every technician creates at once, `concurrency` in flight: (latencies, creates/s)."""
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def one(i: int, auth: dict) -> tuple[dict, str]:
        async with gate:
            elapsed, session_id = await create_kind(client, auth, n + i, kind, verifiers[i])
            latencies.append(elapsed)
            return auth, session_id

    start = time.perf_counter()
    created = await asyncio.gather(*(one(i, auth) for i, auth in enumerate(tokens)))
    rate = len(tokens) / (time.perf_counter() - start)
    for auth, session_id in created:
        await end(client, auth, session_id)
    return latencies, rate


def report(result: dict, args: argparse.Namespace) -> None:
    floor_p50 = percentile(result["floor"], 50)
    rows = []
    for label, key in (
            ("POST /sessions with password_verifier (as the console sends it)", "verifier"),
            ("POST /sessions with password (relay hashes)", "password"),
            ("GET /relay (HTTP floor)", "floor"),
            ("GET /sessions/{id} (authorised read)", "read"),
            ("console: argon2id hash of the session password (argon2-cffi defaults)", "hash"),
            ("console: hash + create with password_verifier (what the technician waits)",
             "console"),
            (f"POST /sessions with password_verifier, {args.concurrency} in flight",
             "verifier burst"),
            (f"POST /sessions with password, {args.concurrency} in flight", "password burst")):
        values = result[key]
        rows.append((label, len(values), f"{percentile(values, 50) * 1e3:.1f}",
                     f"{percentile(values, 99) * 1e3:.1f}",
                     f"{percentile(values, 50) / floor_p50:.1f}x"))
    table(("request", "n", "p50 ms", "p99 ms", "p50 / GET /relay p50"), rows)
    for kind in KINDS:
        print(f"throughput with {args.concurrency} in flight, create with {kind}: "
              f"{median(result[f'{kind} rate']):.1f} creates/s (median of {args.rounds} bursts)")
    create_p50 = percentile(result["verifier"], 50)
    print(f"target create <= 20 ms p50 (with password_verifier, as the console sends it): "
          f"{verdict(create_p50 <= 0.020)} ({create_p50 * 1e3:.1f} ms; with password "
          f"{percentile(result['password'], 50) * 1e3:.1f} ms)\n")


async def main_async(args: argparse.Namespace) -> None:
    header("API: session create with SQLite", "fastapi", "uvicorn", "sqlalchemy", "httpx",
           "argon2-cffi")
    print(f"{args.technicians} technicians in {args.technicians // 5} companies, "
          f"{args.rounds} rounds; one request at a time unless stated\n")
    folder = Path(tempfile.mkdtemp(prefix="adhoc-bench-api-"))
    relay = None
    try:
        logins = await seed(folder / "relay", args.technicians)
        relay = BenchRelay(folder / "relay")
        relay.start()
        result = await measure(relay, logins, args)
    finally:
        if relay is not None:
            relay.stop()
        shutil.rmtree(folder, ignore_errors=True)
    report(result, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--technicians", type=int, default=60,
                        help="technicians, five per company (default 60)")
    parser.add_argument("--rounds", type=int, default=4, help="create/end rounds (default 4)")
    parser.add_argument("--concurrency", type=int, default=8,
                        help="requests in flight in the throughput phase (default 8)")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
