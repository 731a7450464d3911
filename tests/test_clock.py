"""The virtual-time loop runs the same asyncio code far faster than real time, deterministically."""

from __future__ import annotations

import asyncio
import time

import pytest

from duplexer.runtime.clock import LoopClock, VirtualClockDeadlock, run_virtual


def test_an_hour_of_virtual_sleeps_takes_well_under_a_second() -> None:
    async def main() -> float:
        clock = LoopClock()
        for _ in range(3600):
            await clock.sleep_ms(1000)
        return clock.now_ms()

    start = time.perf_counter()
    assert run_virtual(main()) == pytest.approx(3_600_000, abs=1)
    assert time.perf_counter() - start < 5.0  # generous: real time would be an hour


def test_concurrent_sleepers_wake_in_time_order_the_same_way_every_run() -> None:
    async def main() -> list[tuple[str, float]]:
        clock = LoopClock()
        order: list[tuple[str, float]] = []

        async def sleeper(name: str, ms: float) -> None:
            await clock.sleep_ms(ms)
            order.append((name, clock.now_ms()))

        await asyncio.gather(*(sleeper(n, ms) for n, ms in [("c", 30), ("a", 10), ("b", 20), ("a2", 10)]))
        return order

    first = run_virtual(main())
    assert [name for name, _ in first] == ["a", "a2", "b", "c"]
    assert run_virtual(main()) == first


def test_waiting_forever_is_reported_not_hung() -> None:
    async def main() -> None:
        await asyncio.get_running_loop().create_future()

    with pytest.raises(VirtualClockDeadlock):
        run_virtual(main())
