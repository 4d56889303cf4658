"""Runs every benchmark in turn and prints their tables: `python -m bench` (or this file).

Run: python -m bench [--only transfer,keystroke,...] [--quick] [--levers]

Each benchmark is its own module, run as a child process with a time limit, so one that fails
or hangs cannot take the others with it. --quick shrinks every benchmark to a smoke run (for
checking the harness, not for figures); --levers adds the tuned variants beside the shipped
ones. Nothing here runs in CI or the test suite.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# name: (full arguments, quick arguments, time limit in seconds)
BENCHMARKS: dict[str, tuple[list[str], list[str], int]] = {
    "transfer": (["--mib", "256", "--rounds", "2"], ["--mib", "16", "--rounds", "1"], 1500),
    "keystroke": (["--trips", "1000"], ["--trips", "100"], 600),
    "fanin": (["--agents", "1000,10000"],
              ["--agents", "200", "--workers", "2", "--idle", "3", "--settle", "1"], 1500),
    "api": (["--technicians", "20", "--rounds", "3"], ["--technicians", "10", "--rounds", "1"],
            900),
    "store": (["--technicians", "30", "--rounds", "4"],
              ["--technicians", "5", "--rounds", "1", "--listed", "20"], 900),
    "console": ([], ["--seconds", "1", "--sessions", "200"], 600),
    "flood": ([], ["--mb", "2", "--rounds", "1", "--interrupts", "3"], 2400),
    "join": (["--rounds", "10"], ["--rounds", "2"], 600),
    "emulator_parse": ([], ["--mb", "0.2", "--repeat", "1"], 600),
}
LEVERS = {"transfer": ["--levers", "shipped,gcm,inner2m,tuned"],
          "keystroke": ["--levers", "shipped,tuned"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help=f"comma-separated subset of: {', '.join(BENCHMARKS)}")
    parser.add_argument("--quick", action="store_true", help="smoke-sized runs")
    parser.add_argument("--levers", action="store_true", help="also measure the tuned variants")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(BENCHMARKS)
    for name in names:
        if name not in BENCHMARKS:
            parser.error(f"unknown benchmark {name!r}: choose from {', '.join(BENCHMARKS)}")
    failed = []
    for name in names:
        full, quick, limit = BENCHMARKS[name]
        extra = quick if args.quick else full
        if args.levers and name in LEVERS:
            extra = [*extra, *LEVERS[name]]
        command = [sys.executable, "-m", f"bench.{name}", *extra]
        print(f"\n#### {' '.join(['python', '-m', f'bench.{name}', *extra])}", flush=True)
        started = time.monotonic()
        # Its own process group, so a stopped benchmark takes its relay and agents with it.
        child = subprocess.Popen(command, cwd=ROOT, start_new_session=True,
                                 env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            code = child.wait(limit)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            code = -1
            print(f"!! {name} passed its {limit} s limit and was stopped", flush=True)
        print(f"#### {name}: {'ok' if code == 0 else f'FAILED ({code})'} in "
              f"{time.monotonic() - started:.0f} s", flush=True)
        if code != 0:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
