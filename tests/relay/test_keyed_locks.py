"""The per-key locks that put one create per technician and one code per link in turn: the
same key waits, another key does not, and nothing is kept once no one holds or waits."""

from __future__ import annotations

import asyncio

from relay.usecases.shared import KeyedLocks


async def test_one_holder_per_key_and_nothing_kept_after() -> None:
    locks = KeyedLocks()
    order: list[str] = []
    first_in, release = asyncio.Event(), asyncio.Event()

    async def first() -> None:
        async with locks.hold("link"):
            order.append("first in")
            first_in.set()
            await release.wait()
            order.append("first out")

    async def second() -> None:
        async with locks.hold("link"):
            order.append("second in")

    holder = asyncio.create_task(first())
    await first_in.wait()
    waiter = asyncio.create_task(second())
    async with asyncio.timeout(5):  # another key is not held up by "link"
        async with locks.hold("other"):
            order.append("other")
    assert len(locks) == 1  # "other" is gone; "link" is held, with one waiting
    release.set()
    await asyncio.gather(holder, waiter)
    assert order == ["first in", "other", "first out", "second in"]
    assert len(locks) == 0


async def test_a_holder_that_fails_or_is_cancelled_leaves_nothing_behind() -> None:
    locks = KeyedLocks()
    try:
        async with locks.hold(7):
            raise ValueError("the create failed")
    except ValueError:
        pass
    waiting = asyncio.Event()

    async def held_forever() -> None:
        async with locks.hold(7):
            waiting.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(held_forever())
    await waiting.wait()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert len(locks) == 0
