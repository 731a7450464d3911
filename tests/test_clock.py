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


def test_the_controller_keeps_ticking_every_frame_after_the_session_clock_restarts() -> None:
    """The Ray executor restarts session time once its hosts are up; a controller started before
    that must not wait out the seconds the clock moved back before its next tick."""
    from duplexer.actors.controller import ControllerActor
    from duplexer.runtime.clock import EpochClock
    from duplexer.runtime.events import FRAME_MS, Tick
    from duplexer.runtime.session import Session

    async def main() -> int:
        clock = EpochClock(time.time() - 5.0)  # hosts took 5 s to start
        session = Session(clock=clock)
        ticks = session.bus.subscribe("ticks", (Tick,))
        session.add(ControllerActor(session.ctx))
        await asyncio.sleep(0.1)
        clock.rebase(time.time())
        while ticks.get_nowait() is not None:
            pass
        await asyncio.sleep(0.3)
        count = 0
        while ticks.get_nowait() is not None:
            count += 1
        await session.stop()
        return count

    # 300 ms is 15 frames; a stalled ticker gives none
    assert asyncio.run(main()) >= 0.3 * 300 / FRAME_MS
