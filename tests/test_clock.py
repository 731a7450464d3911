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


def test_the_controller_ticks_only_when_a_timing_rule_comes_due_and_exactly_then() -> None:
    """No ticks while nothing is timed (an idle session costs no wake-ups); the pause rule fires at
    speech end + pause_ms to the millisecond, on the virtual clock."""
    from duplexer.actors.controller import ControllerActor
    from duplexer.policies.controller import PolicyParams
    from duplexer.runtime.events import StateChanged, Tick, VadSpeechStart, VadSpeechStop
    from duplexer.runtime.session import Session

    params = PolicyParams()

    async def main() -> tuple[int, int, list[tuple[str, float]]]:
        session = Session(clock=LoopClock())
        ticks = session.bus.subscribe("ticks", (Tick,))
        changes = session.bus.subscribe("changes", (StateChanged,))
        session.add(ControllerActor(session.ctx, params))
        await session.clock.sleep_ms(1000)
        idle_ticks = len(ticks)
        session.ctx.emit(VadSpeechStart, segment_id=1, probability=0.9, speech_start_ms=1000.0)
        await session.clock.sleep_ms(500)
        session.ctx.emit(VadSpeechStop, segment_id=1, probability=0.1, speech_end_ms=1450.0)
        await session.clock.sleep_ms(3000)
        seen = [(e.new_state, e.ts_ms) for e in iter(changes.get_nowait, None) if isinstance(e, StateChanged)]
        turn_ticks = len(ticks) - idle_ticks
        await session.stop()
        return idle_ticks, turn_ticks, seen

    idle_ticks, turn_ticks, seen = run_virtual(main())
    assert idle_ticks == 0
    states = dict(seen)
    assert states["UserPaused"] == pytest.approx(1450.0 + params.pause_ms, abs=1.0)
    # with no transcript, the turn ends silently once the end of turn and the ASR wait have passed
    assert states["Silence"] == pytest.approx(1450.0 + params.end_of_turn_ms + params.asr_final_timeout_ms, abs=1.0)
    assert turn_ticks == 2, "one tick per timing rule that fires (pause, end of turn), none retried"
