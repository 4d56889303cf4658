"""Session create on the HTTP API: latency and throughput against a real relay with SQLite.

Run: python -m bench.api [--technicians 60] [--rounds 4] [--concurrency 8]

A real relay process (uvicorn + FastAPI + aiosqlite, WAL, synchronous=FULL) is driven with
httpx. Limits allow one live session per technician and five per company, so the bench makes
many technicians (through relay.store.Store, in a bench-only data dir, sharing one real argon2
password hash) and ends every session after each round. Beside each create it times, in the
same run and interleaved, `GET /api/v1/relay` (the HTTP stack's floor) and `GET
/api/v1/sessions/{id}` (an authorised read), and argon2id hashing the session password alone
(argon2-cffi defaults, as the relay does on every create).
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
    Levers,
    header,
    percentile,
    table,
    verdict,
)


async def seed(data_dir: Path, technicians: int) -> list[str]:
    from relay.config import RelaySettings
    from relay.server import initialise
    from relay.service import hash_password
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


async def create(client: httpx.AsyncClient, auth: dict, n: int) -> tuple[float, str]:
    elapsed, response = await timed(client.post(
        "/api/v1/sessions", headers=auth,
        json={"customer_email": f"customer{n}@example.com", "password": SESSION_PASSWORD}))
    if response.status_code != 201:
        raise RuntimeError(f"create refused: {response.status_code} {response.text}")
    return elapsed, response.json()["id"]


async def end_all(client: httpx.AsyncClient, created: list[tuple[dict, str]]) -> None:
    for auth, session_id in created:
        (await client.post(f"/api/v1/sessions/{session_id}/end", headers=auth)).raise_for_status()


def argon2_seconds() -> float:
    from relay.service import hash_password

    start = time.perf_counter()
    hash_password(SESSION_PASSWORD)
    return time.perf_counter() - start


VARIANTS = {
    "as shipped": Levers(),
    "session passwords hashed with argon2id at 19 MiB, t=2, p=1": Levers(argon2_owasp=True),
}


async def measure(relay: BenchRelay, logins: list[str], args: argparse.Namespace) -> dict:
    async with httpx.AsyncClient(base_url=relay.base_url, timeout=60) as client:
        tokens = await login_all(client, logins)
        serial: dict[str, list[float]] = {"create": [], "floor": [], "read": [], "argon2": []}
        n = 0
        for _ in range(args.rounds):
            created = []
            for auth in tokens:
                elapsed, session_id = await create(client, auth, n)
                n += 1
                serial["create"].append(elapsed)
                created.append((auth, session_id))
                serial["floor"].append((await timed(client.get("/api/v1/relay")))[0])
                serial["read"].append((await timed(client.get(
                    f"/api/v1/sessions/{session_id}", headers=auth)))[0])
                serial["argon2"].append(await asyncio.to_thread(argon2_seconds))
            await end_all(client, created)
        # Throughput: every technician creates at once, `concurrency` requests in flight.
        gate = asyncio.Semaphore(args.concurrency)
        burst: list[float] = []
        rates = []
        for _ in range(args.rounds):
            async def one(auth: dict, k: int) -> tuple[dict, str]:
                async with gate:
                    elapsed, session_id = await create(client, auth, k)
                    burst.append(elapsed)
                    return auth, session_id

            start = time.perf_counter()
            created = await asyncio.gather(*(one(auth, n + i) for i, auth in enumerate(tokens)))
            rates.append(len(tokens) / (time.perf_counter() - start))
            n += len(tokens)
            await end_all(client, list(created))
    return {**serial, "burst": burst, "rate": sorted(rates)[len(rates) // 2]}


def report(name: str, result: dict, args: argparse.Namespace) -> None:
    create_p50 = percentile(result["create"], 50)
    print(f"-- relay {name}")
    rows = []
    for label, key in (("POST /sessions (create)", "create"),
                       ("GET /relay (HTTP floor)", "floor"),
                       ("GET /sessions/{id} (authorised read)", "read"),
                       ("argon2id hash alone (in the bench)", "argon2")):
        values = result[key]
        rows.append((label, len(values), f"{percentile(values, 50) * 1e3:.1f}",
                     f"{percentile(values, 99) * 1e3:.1f}",
                     f"{create_p50 / percentile(values, 50):.1f}x"))
    burst = result["burst"]
    rows.append((f"POST /sessions, {args.concurrency} in flight", len(burst),
                 f"{percentile(burst, 50) * 1e3:.1f}", f"{percentile(burst, 99) * 1e3:.1f}", ""))
    table(("request", "n", "p50 ms", "p99 ms", "create p50 / this p50"), rows)
    print(f"throughput with {args.concurrency} in flight: {result['rate']:.1f} creates/s "
          f"(median of {args.rounds} bursts)")
    print(f"target create <= 20 ms p50: {verdict(create_p50 <= 0.020)} "
          f"({create_p50 * 1e3:.1f} ms)\n")


async def main_async(args: argparse.Namespace) -> None:
    header("API: session create with SQLite", "fastapi", "uvicorn", "aiosqlite", "httpx",
           "argon2-cffi")
    print(f"{args.technicians} technicians in {args.technicians // 5} companies per relay, "
          f"{args.rounds} rounds; one request at a time unless stated; the relays run side "
          "by side and are measured in turn\n")
    folder = Path(tempfile.mkdtemp(prefix="adhoc-bench-api-"))
    relays: dict[str, BenchRelay] = {}
    try:
        for i, (name, levers) in enumerate(VARIANTS.items()):
            logins = await seed(folder / f"relay{i}", args.technicians)
            relays[name] = BenchRelay(folder / f"relay{i}", levers=levers)
            relays[name].start()
        results = {name: await measure(relay, logins, args) for name, relay in relays.items()}
    finally:
        for relay in relays.values():
            relay.stop()
        shutil.rmtree(folder, ignore_errors=True)
    for name, result in results.items():
        report(name, result, args)


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
