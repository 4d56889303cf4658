"""Which pytest-xdist worker this process is, and its share of a resource the workers split.

The suite runs in several worker processes at once (pytest-xdist). A resource that must be
named before it is taken -- a port below the ephemeral range, a subnet for a network
namespace -- comes from this worker's own share of it, so two tests running at the same time
never pick the same one.
"""

from __future__ import annotations

import os


def worker() -> tuple[int, int]:
    """(this worker's index, how many workers): (0, 1) when the tests run in one process."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = max(int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1), 1)
    index = int(name[2:]) if name.startswith("gw") and name[2:].isdigit() else 0
    return index % count, count


def share(whole: range) -> range:
    """This worker's slice of `whole` (all of it without workers)."""
    index, count = worker()
    size = len(whole) // count
    return whole[index * size:(index + 1) * size]
