"""Store: session create and list latency, before the SQLAlchemy store and after, on both engines.

Run: python -m bench.store [--before 109b3cb] [--technicians 30] [--rounds 4] [--listed 1000]

Three real relay processes run side by side, each on its own data dir on disk, driven with
httpx one request at a time, interleaved and in rotated order:

- before: the relay as of --before (git archive of that commit; aiosqlite, one connection,
  which must be installed: pip install aiosqlite), on SQLite;
- sqlite: this checkout's relay (SQLAlchemy Core, sqlite3 on the store's own threads) on
  SQLite;
- postgresql: this checkout's relay on a throwaway PostgreSQL cluster on a Unix socket, with
  PostgreSQL's own defaults (fsync and synchronous_commit on).

Every SQLite database keeps the relay's settings (WAL, synchronous=FULL). Each relay is seeded
the same way through its own relay.store.Store (technicians sharing one argon2 hash, five per
company, and one company with --listed ended sessions for the long list). Timed: the create as
the console sends it (with password_verifier), the list a technician sees (GET /sessions, a
few sessions), the list of --listed sessions, and GET /relay, the HTTP floor and anchor of
every ratio; then creates with 8 in flight. Every session is ended right after it is timed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.api import burst, console_hash, create, end, login_all, timed
from bench.common import ROOT, header, median, percentile, table, verdict
from tests.postgres import postgres_cluster
from tests.support import PASSWORD, stop_process, wait_for_ready

# Run with a relay tree first on sys.path: seeds a data dir (and database) through that tree's
# own store, whose calls are the same before and after.
SEED = r"""
import asyncio, sys, time
from pathlib import Path
from common.passwords import hash_password
from relay import sessions as rules
from relay.config import RelaySettings
from relay.server import initialise
from relay.store import SessionRow, Store

data_dir, database, technicians, listed = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), \
    int(sys.argv[4])

async def main():
    settings = RelaySettings(data_dir=data_dir)
    if database:
        from relay.db.url import parse_database_url
        settings.database = parse_database_url(database)
    await initialise(settings)
    store = await Store.open(Path(settings.db_path) if not database else database)
    password_hash = hash_password(sys.argv[5])
    now = time.time()
    company_id = 0
    for n in range(technicians):
        if n % 5 == 0:
            company_id = (await store.add_company(f"api{n // 5}", "plus", 5, now)).id
        await store.add_technician(company_id, f"tech{n}", f"tech{n}@example.com",
                                   password_hash, False, now)
    big = await store.add_company("big", "plus", 5, now)
    lister = await store.add_technician(big.id, "lister", "lister@example.com", password_hash,
                                        False, now)
    for n in range(listed):
        session_id = rules.new_session_id()
        await store.create_session(SessionRow(
            id=session_id, company_id=big.id, technician_id=lister.id,
            customer_email=f"customer{n}@example.com", note="", password_verifier="-",
            join_token_hash=rules.token_hash(rules.new_token()), code_hmac="-",
            code_attempts=0, state=rules.State.PENDING, ended_reason=None, created_at=now,
            invite_expires_at=now + 1800, activated_at=None, expires_at=None, ended_at=None,
            agent_secret_hash=None, host_key=None, hostname=None, os=None, os_user=None,
            ip=None, machine_fp=None, features="[]", mail_status="sent", mail_detail=None))
        await store.end_session(session_id, rules.EndReason.TECHNICIAN, now, "bench")
    await store.close()

asyncio.run(main())
"""
KINDS = ("create", "list", "long list", "floor")


@dataclass
class Variant:
    name: str
    tree: Path
    data_dir: Path
    database: str = ""
    proc: subprocess.Popen | None = None
    base_url: str = ""
    tokens: list[dict] = field(default_factory=list)
    lister: dict = field(default_factory=dict)
    result: dict[str, list[float]] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        env = {**os.environ, "PYTHONPATH": str(self.tree)}
        env.pop("ADHOC_DATABASE", None)
        if self.database:
            env["ADHOC_DATABASE"] = self.database
        return env

    def seed(self, technicians: int, listed: int) -> None:
        subprocess.run([sys.executable, "-c", SEED, str(self.data_dir), self.database,
                        str(technicians), str(listed), PASSWORD],
                       cwd=self.tree, env=self.env(), check=True, timeout=1800)

    def start(self) -> None:
        log_path = self.data_dir / "relay.log"
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "relay.cli", "--data-dir", str(self.data_dir), "serve",
                 "--http", "127.0.0.1:0", "--ssh", "127.0.0.1:0", "--login-rate", "10000/1m"],
                stdout=subprocess.PIPE, stderr=log, text=True, cwd=self.tree, env=self.env())
        self.base_url, _, _ = wait_for_ready(self.proc, log_path, 60)

    def stop(self) -> None:
        stop_process(self.proc)


def checkout(revision: str, into: Path) -> Path:
    """The source tree of `revision` (git archive), unpacked into `into`."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", revision],
                             capture_output=True, check=True, timeout=120).stdout
    tree = into / f"adhoc-{revision}"
    tree.mkdir()
    archive_path = into / "tree.tar"
    archive_path.write_bytes(archive)
    with tarfile.open(archive_path) as tar:
        tar.extractall(tree, filter="data")
    return tree


async def measure(variants: list[Variant], args: argparse.Namespace) -> None:
    clients = {v.name: httpx.AsyncClient(base_url=v.base_url, timeout=60) for v in variants}
    try:
        logins = [f"tech{n}" for n in range(args.technicians)]
        for v in variants:
            v.tokens = await login_all(clients[v.name], logins)
            (v.lister,) = await login_all(clients[v.name], ["lister"])
            v.result = {kind: [] for kind in (*KINDS, "burst", "rate")}
        n = 0
        step = 0
        for _ in range(args.rounds):
            for index in range(args.technicians):
                _, verifier = await asyncio.to_thread(console_hash)
                step += 1
                for v in variants[step % 3:] + variants[:step % 3]:
                    client, auth = clients[v.name], v.tokens[index]
                    elapsed, session_id = await create(client, auth, n,
                                                       password_verifier=verifier)
                    n += 1
                    v.result["create"].append(elapsed)
                    v.result["list"].append((await timed(client.get(
                        "/api/v1/sessions", headers=auth)))[0])
                    v.result["long list"].append((await timed(client.get(
                        "/api/v1/sessions", headers=v.lister)))[0])
                    v.result["floor"].append((await timed(client.get("/api/v1/relay")))[0])
                    await end(client, auth, session_id)
        for burst_round in range(args.rounds):
            verifiers = [(await asyncio.to_thread(console_hash))[1] for _ in logins]
            for v in variants[burst_round % 3:] + variants[:burst_round % 3]:
                latencies, rate = await burst(clients[v.name], v.tokens, verifiers, "verifier",
                                              n, 8)
                n += len(logins)
                v.result["burst"].extend(latencies)
                v.result["rate"].append(rate)
    finally:
        for client in clients.values():
            await client.aclose()


def report(variants: list[Variant], args: argparse.Namespace) -> None:
    before = variants[0]
    rows = []
    labels = {"create": "POST /sessions with password_verifier",
              "list": "GET /sessions (the technician's company: a few sessions)",
              "long list": f"GET /sessions ({args.listed} ended sessions in the company)",
              "floor": "GET /relay (HTTP floor)",
              "burst": "POST /sessions with password_verifier, 8 in flight"}
    for kind, label in labels.items():
        for v in variants:
            values = v.result[kind]
            p50 = percentile(values, 50)
            rows.append((label, v.name, len(values), f"{p50 * 1e3:.1f}",
                         f"{percentile(values, 99) * 1e3:.1f}",
                         f"{p50 / percentile(v.result['floor'], 50):.1f}x",
                         f"{p50 / percentile(before.result[kind], 50):.2f}x"))
    table(("request", "store", "n", "p50 ms", "p99 ms", "p50 / its GET /relay p50",
           "p50 / before p50"), rows)
    for v in variants:
        print(f"{v.name}: {median(v.result['rate']):.1f} creates/s with 8 in flight "
              f"(median of {args.rounds} bursts; before: {median(before.result['rate']):.1f})")
    for v in variants[1:]:
        p50 = percentile(v.result["create"], 50)
        print(f"target create <= 20 ms p50 on {v.name}: {verdict(p50 <= 0.020)} "
              f"({p50 * 1e3:.1f} ms)")
    print()


async def main_async(args: argparse.Namespace) -> None:
    header("Store: session create and list, before and after, SQLite and PostgreSQL",
           "fastapi", "uvicorn", "sqlalchemy", "asyncpg", "alembic", "httpx")
    print(f"before = {args.before}; {args.technicians} technicians in {args.technicians // 5} "
          f"companies, {args.rounds} rounds, {args.listed} sessions in the long list\n")
    folder = Path(tempfile.mkdtemp(prefix="adhoc-bench-store-"))
    try:
        with postgres_cluster(durable=True) as cluster:
            if cluster is None:
                raise SystemExit("PostgreSQL is not installed: apt-get install postgresql")
            print(f"postgresql: {cluster.bin_dir.parent.name}, Unix socket, fsync on\n")
            variants = [
                Variant("before (SQLite)", checkout(args.before, folder), folder / "before"),
                Variant("sqlite", ROOT, folder / "sqlite"),
                Variant("postgresql", ROOT, folder / "postgresql",
                        cluster.url(cluster.new_database())),
            ]
            try:
                for v in variants:
                    v.seed(args.technicians, args.listed)
                    v.start()
                await measure(variants, args)
            finally:
                for v in variants:
                    v.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    report(variants, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag, default, meaning in (
            ("--technicians", 30, "technicians, five per company"),
            ("--rounds", 4, "rounds of one create per technician per store"),
            ("--listed", 1000, "ended sessions in the long list's company")):
        parser.add_argument(flag, type=int, default=default, help=f"{meaning} (default {default})")
    parser.add_argument("--before", default="109b3cb",
                        help="the commit to compare with (default 109b3cb, the last store "
                             "before SQLAlchemy)")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
