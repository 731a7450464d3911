"""Session clocks: the real one, and a virtual-time event loop for deterministic simulation.

Actors read time only through a :class:`Clock` and sleep only through it, so the
same actor code runs under the wall clock and under :class:`VirtualTimeLoop`,
where time jumps straight to the next timer instead of waiting for it.
"""

from __future__ import annotations

import asyncio
import selectors
import time
from collections.abc import Coroutine
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Clock(Protocol):
    """Monotonic session time in milliseconds."""

    def now_ms(self) -> float: ...

    async def sleep_ms(self, duration_ms: float) -> None: ...


class LoopClock:
    """Reads the running event loop's monotonic time, relative to the session start.

    Under a normal loop this is the real clock; under :class:`VirtualTimeLoop` it is virtual.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop or asyncio.get_running_loop()
        self._origin_s = self._loop.time()

    def now_ms(self) -> float:
        return (self._loop.time() - self._origin_s) * 1000.0

    async def sleep_ms(self, duration_ms: float) -> None:
        await asyncio.sleep(max(0.0, duration_ms) / 1000.0)


class EpochClock:
    """Session time shared by processes: milliseconds since a wall-clock epoch (``time.time()`` seconds).

    Each process converts the epoch to its own monotonic clock once, at construction, so time
    never jumps afterwards. On one machine every process reads the same monotonic clock; across
    machines the clocks agree as well as the machines' wall clocks do (NTP: about a millisecond).
    The Ray executor stamps a session's events with it in the driver and in every Ray actor.
    """

    def __init__(self, epoch_s: float | None = None) -> None:
        self.rebase(time.time() if epoch_s is None else epoch_s)

    def rebase(self, epoch_s: float) -> None:
        """Count from a new epoch (every process of a session moves together, before anything happens)."""
        self.epoch_s = epoch_s
        self._origin_s = time.monotonic() - (time.time() - epoch_s)

    def now_ms(self) -> float:
        return (time.monotonic() - self._origin_s) * 1000.0

    async def sleep_ms(self, duration_ms: float) -> None:
        await asyncio.sleep(max(0.0, duration_ms) / 1000.0)


class VirtualClockDeadlock(RuntimeError):
    """Every task waits on something no timer will ever wake."""


class _VirtualSelector(selectors.DefaultSelector):
    """Polls real file descriptors without blocking, and advances virtual time instead of waiting."""

    def __init__(self) -> None:
        super().__init__()
        self.loop: VirtualTimeLoop | None = None

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready:
            return ready
        if timeout is None:
            raise VirtualClockDeadlock(
                "virtual clock: all tasks are waiting and no timer is scheduled "
                "(is something waiting on real I/O or a thread?)"
            )
        if timeout > 0 and self.loop is not None:
            self.loop.advance_s(timeout)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An asyncio loop whose clock starts at 0 and jumps to the next timer when idle.

    Runs deterministically: callbacks are ordered by virtual time, then by scheduling order.
    Use it through ``asyncio.Runner(loop_factory=VirtualTimeLoop)``.
    """

    def __init__(self) -> None:
        selector = _VirtualSelector()
        self._virtual_time_s = 0.0
        super().__init__(selector)
        selector.loop = self

    def time(self) -> float:
        return self._virtual_time_s

    def advance_s(self, seconds: float) -> None:
        self._virtual_time_s += seconds


def run_virtual(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion on a fresh virtual-time loop and return its result.

    Virtual time jumps to the next timer whenever every task waits, so only work done on the loop
    (scripted engines, the actors, the controller) is timed; work in threads (the real models) is not."""
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(coro)
