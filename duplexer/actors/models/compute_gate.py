"""Blocking model calls in worker threads, taking turns on the cores (:class:`ComputeGate`).

Blocking model calls run in worker threads, one call per model at a time, so the
event loop keeps pacing audio. Streams stop at the next token or sentence once
their iterator is closed (a cancelled reply). Models loaded together also share a
:class:`ComputeGate`: their steps take turns on the cores, the most urgent first,
instead of running side by side with twice as many threads as cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any


class Urgency(enum.IntEnum):
    """Who goes first at the :class:`ComputeGate` (lower first)."""

    ASR = 0
    """A final transcript holds up the turn: speculation and the end-of-turn decision wait on it."""
    TTS = 1
    """Audio the user is about to hear; a sentence is rendered ~10x faster than it plays."""
    LLM = 2
    """A reply's tokens: its first clause holds up the first audio; a token (~20 ms) is short
    enough to wait for the steps above."""
    TURN_DETECTOR = 3
    """Its answer is needed only when the end-of-turn silence could end (>= 500 ms after the
    user stops under the live policy), so it lets a reply's first tokens go first, but for at most
    :data:`TURN_DETECTOR_MAX_WAIT_S`: then it goes before the LLM's next token."""


TURN_DETECTOR_MAX_WAIT_S = 0.15
"""How long a turn-detector evaluation (~60-90 ms) may wait behind LLM tokens."""
PROMOTIONS = {Urgency.TURN_DETECTOR: (TURN_DETECTOR_MAX_WAIT_S, Urgency.LLM)}
"""Waiters of an urgency that have waited this long rank as the second urgency (ahead of all of
its own later waiters), so nothing waits for a whole reply to be generated."""


@dataclass
class _Ticket:
    urgency: int
    seq: int
    promote_at: float | None
    promoted: int

    def rank(self, now: float) -> tuple[int, int, int]:
        if self.promote_at is not None and now >= self.promote_at:
            return (self.promoted, 0, self.seq)
        return (self.urgency, 1, self.seq)


class ComputeGate:
    """One model step at a time on a small CPU, the most urgent waiter first.

    llama.cpp, onnxruntime (Piper) and CTranslate2 (Whisper) each run a pool of spinning worker
    threads sized to the cores. Run side by side on 2 cores they oversubscribe them and each slows
    down far more than twofold (Piper's first sentence took 1.7x as long while SmolLM2 generated).
    Steps are short (an LLM token ~20 ms, a Piper sentence ~0.1-0.3 s, a Whisper call ~0.1 s), so
    taking turns costs little waiting, and the step that holds up what the user hears goes first.
    Equally urgent steps go in arrival order; see :data:`PROMOTIONS` for waiters that age.
    """

    def __init__(self, promotions: dict[Urgency, tuple[float, Urgency]] | None = None) -> None:
        self.promotions = PROMOTIONS if promotions is None else promotions
        self._cond = threading.Condition()
        self._busy = False
        self._waiting: list[_Ticket] = []
        self._tickets = itertools.count()

    def _first(self, now: float) -> _Ticket:
        return min(self._waiting, key=lambda t: t.rank(now))

    @contextlib.contextmanager
    def hold(self, urgency: Urgency) -> Iterator[None]:
        with self._cond:
            now = time.monotonic()
            wait_s, promoted = self.promotions.get(urgency, (None, urgency))
            ticket = _Ticket(int(urgency), next(self._tickets), None if wait_s is None else now + wait_s, promoted)
            self._waiting.append(ticket)
            while self._busy or self._first(time.monotonic()) is not ticket:
                timeout = None
                if ticket.promote_at is not None and time.monotonic() < ticket.promote_at:
                    timeout = ticket.promote_at - time.monotonic()
                self._cond.wait(timeout)
            self._waiting.remove(ticket)
            self._busy = True
        try:
            yield
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()


def gated(gate: ComputeGate | None, urgency: Urgency) -> contextlib.AbstractContextManager[None]:
    return contextlib.nullcontext() if gate is None else gate.hold(urgency)


def gated_steps(items: Iterable[Any], gate: ComputeGate | None, urgency: Urgency) -> Iterator[Any]:
    """Iterate a blocking generator, computing each item while holding the gate."""
    iterator = iter(items)
    while True:
        with gated(gate, urgency):
            item = next(iterator, _DONE)
        if item is _DONE:
            return
        yield item


_DONE = object()


async def stream_from_thread(
    produce: Callable[[Callable[[Any], None], threading.Event], None], lock: threading.Lock
) -> AsyncIterator[Any]:
    """Run a blocking producer in a thread and yield what it emits; closing the iterator stops it."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    stop = threading.Event()

    def emit(item: Any) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, ("item", item))

    def work() -> None:
        try:
            with lock:
                if not stop.is_set():
                    produce(emit, stop)
        except BaseException as exc:  # re-raised in the consumer
            loop.call_soon_threadsafe(queue.put_nowait, ("error", exc))
        else:
            loop.call_soon_threadsafe(queue.put_nowait, ("done", None))

    worker = loop.run_in_executor(None, work)
    try:
        while True:
            kind, value = await queue.get()
            if kind == "item":
                yield value
            elif kind == "error":
                raise value
            else:
                return
    finally:
        stop.set()
        if not worker.done():
            worker.add_done_callback(lambda _: None)
