"""The bus: ordering, control priority, loud overflow, catch-all subscribers."""

from __future__ import annotations

import asyncio

import pytest

from duplexer.runtime.bus import Bus, SubscriptionClosed
from duplexer.runtime.clock import LoopClock, run_virtual
from duplexer.runtime.events import AudioFrame, ErrorEvent, Event, StopPlayout, Tick


def frame(seq: int) -> AudioFrame:
    return AudioFrame(session_id="s", ts_ms=float(seq), pcm=b"\0\0", sample_rate_hz=16000, seq=seq)


def test_events_of_one_lane_arrive_in_publish_order() -> None:
    async def main() -> list[int]:
        bus = Bus("s", LoopClock())
        sub = bus.subscribe("a", [AudioFrame])
        for i in range(100):
            bus.publish(frame(i))
        return [(await sub.get()).seq for _ in range(100)]  # type: ignore[attr-defined]

    assert run_virtual(main()) == list(range(100))


def test_control_events_overtake_queued_audio() -> None:
    async def main() -> list[str]:
        bus = Bus("s", LoopClock())
        sub = bus.subscribe("playout", [AudioFrame, StopPlayout])
        for i in range(10):
            bus.publish(frame(i))
        bus.publish(StopPlayout(session_id="s", ts_ms=10.0, reply_id="r1"))
        return [(await sub.get()).kind for _ in range(11)]

    kinds = run_virtual(main())
    assert kinds[0] == "StopPlayout"
    assert kinds[1:] == ["AudioFrame"] * 10


def test_user_audio_overflow_is_an_error_event_and_a_metric() -> None:
    async def main() -> tuple[list[Event], float, int]:
        bus = Bus("s", LoopClock())
        slow = bus.subscribe("slow-asr", [AudioFrame], maxsize=4)
        errors = bus.subscribe("errors", [ErrorEvent])
        for i in range(6):
            bus.publish(frame(i))
        got = []
        while (e := errors.get_nowait()) is not None:
            got.append(e)
        return got, bus.metrics.count("bus.overflow", subscriber="slow-asr", kind="AudioFrame"), len(slow)

    errors, overflow, queued = run_virtual(main())
    assert queued == 4
    assert overflow == 2
    assert len(errors) == 2
    assert all("slow-asr" in e.message and "AudioFrame" in e.message for e in errors)  # type: ignore[attr-defined]


def test_each_subscriber_gets_its_own_copy_and_catch_all_sees_everything() -> None:
    async def main() -> tuple[int, int, int]:
        bus = Bus("s", LoopClock())
        a = bus.subscribe("a", [AudioFrame])
        b = bus.subscribe("b", [Tick])
        everything = bus.subscribe("all", None)
        bus.publish(frame(0))
        bus.publish(Tick(session_id="s", ts_ms=0.0))
        return len(a), len(b), len(everything)

    assert run_virtual(main()) == (1, 1, 2)


def test_a_waiting_reader_wakes_on_publish_and_stops_on_close() -> None:
    async def main() -> tuple[int, bool]:
        bus = Bus("s", LoopClock())
        sub = bus.subscribe("a", [AudioFrame])
        reader = asyncio.create_task(sub.get())
        await asyncio.sleep(0.01)
        bus.publish(frame(7))
        got = await reader
        waiting = asyncio.create_task(sub.get())
        await asyncio.sleep(0)
        bus.unsubscribe(sub)
        with pytest.raises(SubscriptionClosed):
            await waiting
        return got.seq, len(sub) == 0  # type: ignore[attr-defined]

    assert run_virtual(main()) == (7, True)
