"""Console soak: the seeded chaos run of tests/faults/chaos.py, long.

Run: python -m bench.console_soak [--steps 5000] [--seconds 3600] [--seed N]

The real console (Pilot) against a real relay process and real agent processes: random
technician actions interleaved with faults (relay restart, kill -9 and down for a while,
agent killed, the link silently cut, the customer ending the session), the console's
promises checked after every step (running, no exception, no secret on screen or in a log,
every error says what to do). Prints progress every 100 steps and, at the end, the steps
survived and the faults injected. A failure prints the seed: replay it with --seed (or
ADHOC_CHAOS_SEED). Not a figure with an anchor, so not in docs/BENCHMARKS.md's tables.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

from tests.faults import chaos


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=3600)
    parser.add_argument("--seed", type=int, default=None,
                        help="replay this run (default: ADHOC_CHAOS_SEED, else random)")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else chaos.seed_from_env()

    def progress(report: chaos.Report) -> None:
        if report.steps % 100 == 0:
            print(f"  {report.steps} steps, {sum(report.faults.values())} faults",
                  flush=True)

    root = Path(tempfile.mkdtemp(prefix="adhoc-soak-")) / "chaos"
    try:
        report = asyncio.run(chaos.run(root, seed=seed, steps=args.steps,
                                       seconds=args.seconds, on_step=progress))
    except chaos.ChaosFailure as failure:
        print(failure, file=sys.stderr)
        return 1
    print(report.summary())
    print(f"console soak: {report.steps} steps survived, "
          f"{sum(report.faults.values())} faults injected, seed {report.seed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
