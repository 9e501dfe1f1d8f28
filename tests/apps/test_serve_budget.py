"""The replica's pixel budget: how many decoded pixels it holds at once, and when it gives
freed memory back. Pure asyncio; no Ray needed."""

from __future__ import annotations

import asyncio

import pytest

from carseg.apps import serve


def test_holders_wait_for_room_and_one_oversized_holder_runs_alone() -> None:
    events: list[str] = []

    async def holder(budget: serve.PixelBudget, name: str, n: int, release: asyncio.Event
                     ) -> None:
        async with budget.hold(n):
            events.append(f"{name} in ({budget.used})")
            await release.wait()
        events.append(f"{name} out")

    async def scenario() -> None:
        budget = serve.PixelBudget(10)
        first, second, third = asyncio.Event(), asyncio.Event(), asyncio.Event()
        tasks = [asyncio.create_task(holder(budget, "a", 8, first))]
        await asyncio.sleep(0.01)
        tasks.append(asyncio.create_task(holder(budget, "b", 5, second)))  # 8 + 5 > 10: waits
        await asyncio.sleep(0.01)
        assert events == ["a in (8)"]
        first.set()
        await asyncio.sleep(0.01)
        assert events == ["a in (8)", "a out", "b in (5)"]
        tasks.append(asyncio.create_task(holder(budget, "c", 50, third)))  # over the limit
        await asyncio.sleep(0.01)
        assert "c in (50)" not in events  # not beside b
        second.set()
        await asyncio.sleep(0.01)
        assert events[-1] == "c in (50)"  # alone, once the replica is idle
        third.set()
        await asyncio.gather(*tasks)
        assert budget.used == 0

    asyncio.run(asyncio.wait_for(scenario(), 5))


def test_memory_is_given_back_when_the_last_holder_leaves_after_a_large_photo(
        monkeypatch: pytest.MonkeyPatch) -> None:
    trims: list[int] = []

    async def scenario() -> None:
        budget = serve.PixelBudget(100_000_000)
        monkeypatch.setattr(serve, "give_memory_back", lambda: trims.append(budget.used))
        small_done = asyncio.Event()

        async def small() -> None:
            async with budget.hold(1_000):
                await small_done.wait()

        task = asyncio.create_task(small())
        await asyncio.sleep(0.01)
        async with budget.hold(20_000_000):  # large, but the small one is still held
            pass
        assert trims == []
        small_done.set()
        await task  # the small one leaves last: now the replica is idle
        assert trims == [0]
        async with budget.hold(1_000):  # small photos alone never trim
            pass
        assert trims == [0]

    asyncio.run(asyncio.wait_for(scenario(), 5))
