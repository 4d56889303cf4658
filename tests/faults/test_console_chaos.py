"""A short seeded chaos run in the suite (tests/faults/chaos.py): a few hundred steps of user
actions and faults against the real console, relay and agent, bounded in time. Replay a
failing run with ADHOC_CHAOS_SEED=<the seed it printed>; more steps with ADHOC_CHAOS_STEPS."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.faults import chaos

STEPS = int(os.environ.get("ADHOC_CHAOS_STEPS", "100"))
# A guard against a hang, not a measure: 100 steps take about 90 s on two busy cores.
SECONDS = float(os.environ.get("ADHOC_CHAOS_SECONDS", "160"))
# The suite replays one seed, so a red run is a regression and not a new draw; new seeds are
# for `python -m bench.console_soak` and ADHOC_CHAOS_SEED=random (each prints its seed).
SUITE_SEED = 1076414052


# Alone (with other tests beside it on two cores, it got through 65 of 100 steps in 90 s), and
# every step must run: the run is bounded by its steps, SECONDS only stops a hung one. A floor
# of "enough steps within a time" failed on a slow minute (98 of 100 in 90 s) with nothing wrong.
@pytest.mark.serial
@pytest.mark.timeout(SECONDS + 60)
async def test_the_console_survives_seeded_chaos(tmp_path: Path) -> None:
    seed = SUITE_SEED if not os.environ.get("ADHOC_CHAOS_SEED") else chaos.seed_from_env()
    report = await chaos.run(tmp_path / "chaos", seed=seed, steps=STEPS,
                             seconds=SECONDS)
    print(report.summary())
    assert report.steps == STEPS, \
        f"only {report.steps} of {STEPS} steps ran in {SECONDS:.0f} s (ADHOC_CHAOS_SECONDS " \
        f"gives more time): {report.summary()}"
    assert sum(report.faults.values()) >= 5, report.summary()
