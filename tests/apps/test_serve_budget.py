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


def test_a_cancelled_request_holds_its_share_until_its_thread_lets_go() -> None:
    """A client that hangs up mid-decode: the request is cancelled, but the decode thread
    still holds the photo, so the budget must too (else hung-up requests get past it)."""
    import threading

    release = threading.Event()
    started = threading.Event()

    def slow_decode() -> str:
        started.set()
        release.wait(5)
        return "pixels"

    async def scenario() -> None:
        budget = serve.PixelBudget(100)

        async def request() -> None:
            async with budget.hold(60):
                await serve.finish(asyncio.to_thread(slow_decode))

        task = asyncio.create_task(request())
        while not started.is_set():
            await asyncio.sleep(0.005)
        task.cancel()
        await asyncio.sleep(0.05)
        assert not task.done() and budget.used == 60  # the thread still has the photo
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert budget.used == 0

    asyncio.run(asyncio.wait_for(scenario(), 5))


def test_finish_gives_the_result_or_the_error() -> None:
    async def scenario() -> None:
        assert await serve.finish(asyncio.to_thread(lambda: 7)) == 7
        with pytest.raises(ValueError, match="bad photo"):
            await serve.finish(asyncio.to_thread(_raise, ValueError("bad photo")))

    asyncio.run(scenario())


def _raise(e: Exception) -> None:
    raise e
