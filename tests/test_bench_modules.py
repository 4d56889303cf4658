"""Every benchmark in bench/ at least starts: each module imports and its --help runs.

The figures in docs/BENCHMARKS.md are taken by hand on a quiet machine, not in the suite, so a
bench broken by a refactor (a helper moved away from bench/common.py) would otherwise go
unnoticed until someone needs its figures.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOT_BENCHES = ("__init__", "__main__", "common", "launch")  # launch starts a bench's relay
BENCHES = sorted(path.stem for path in (ROOT / "bench").glob("*.py")
                 if path.stem not in NOT_BENCHES)


@pytest.mark.parametrize("name", BENCHES)
def test_bench_starts(name: str) -> None:
    done = subprocess.run([sys.executable, "-m", f"bench.{name}", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout
