"""A short seeded chaos run in the suite (tests/faults/chaos.py): a few hundred steps of user
actions and faults against the real console, relay and agent, bounded in time. Replay a
failing run with ADHOC_CHAOS_SEED=<the seed it printed>; more steps with ADHOC_CHAOS_STEPS."""

from __future__ import annotations

import os
from pathlib import Path

from tests.faults import chaos

STEPS = int(os.environ.get("ADHOC_CHAOS_STEPS", "250"))
SECONDS = float(os.environ.get("ADHOC_CHAOS_SECONDS", "150"))


async def test_the_console_survives_seeded_chaos(tmp_path: Path) -> None:
    report = await chaos.run(tmp_path / "chaos", seed=chaos.seed_from_env(), steps=STEPS,
                             seconds=SECONDS)
    print(report.summary())
    assert report.steps >= min(STEPS, 100), report.summary()  # enough ran to mean something
    assert sum(report.faults.values()) >= 5, report.summary()
