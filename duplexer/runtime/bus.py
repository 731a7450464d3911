"""In-process async event bus: publish/subscribe by event type, bounded queues per subscriber.

Publishing never blocks: each subscriber has an unbounded control lane and a
bounded data lane. Control events (interrupts, playout stops) are delivered
before any queued data (audio), so a barge-in never waits behind a backlog.
When a data lane is full the event is refused loudly: an :class:`ErrorEvent`
is published and the ``bus.overflow`` metric counts it, so user audio is never
lost silently.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Iterable

from duplexer.runtime.clock import Clock
from duplexer.runtime.events import ErrorEvent, Event, Priority
from duplexer.runtime.metrics import Metrics

DEFAULT_QUEUE_SIZE = 512


class SubscriptionClosed(Exception):
    """The subscription was closed; no more events will arrive."""


class Subscription:
    """One subscriber's queues. Read with ``await get()`` or ``async for``."""

    def __init__(self, name: str, kinds: frozenset[type[Event]] | None, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError(f"subscription {name!r}: maxsize must be >= 1, got {maxsize}")
        self.name = name
        self.kinds = kinds
        self.maxsize = maxsize
        self._control: deque[Event] = deque()
        self._data: deque[Event] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False

    def __len__(self) -> int:
        return len(self._control) + len(self._data)

    def offer(self, event: Event) -> bool:
        """Queue an event; False when the data lane is full (the caller reports it)."""
        if self._closed:
            return True
        if event.priority is Priority.CONTROL:
            self._control.append(event)
        elif len(self._data) >= self.maxsize:
            return False
        else:
            self._data.append(event)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        return True

    def get_nowait(self) -> Event | None:
        if self._control:
            return self._control.popleft()
        if self._data:
            return self._data.popleft()
        return None

    async def get(self) -> Event:
        """The next event, control lane first. Raises SubscriptionClosed once closed and drained."""
        while True:
            event = self.get_nowait()
            if event is not None:
                return event
            if self._closed:
                raise SubscriptionClosed(self.name)
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def close(self) -> None:
        """Stop accepting events; readers drain what is queued, then stop."""
        self._closed = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def __aiter__(self) -> AsyncIterator[Event]:
        while True:
            try:
                yield await self.get()
            except SubscriptionClosed:
                return


class Bus:
    """Routes each published event to the subscribers of its type (and to catch-all ones)."""

    def __init__(self, session_id: str, clock: Clock, metrics: Metrics | None = None) -> None:
        self.session_id = session_id
        self.clock = clock
        self.metrics = metrics or Metrics()
        self._by_kind: dict[type[Event], list[Subscription]] = {}
        self._catch_all: list[Subscription] = []
        self._routes: dict[type[Event], tuple[Subscription, ...]] = {}

    def subscribe(
        self,
        name: str,
        kinds: Iterable[type[Event]] | None = None,
        maxsize: int = DEFAULT_QUEUE_SIZE,
    ) -> Subscription:
        """Subscribe to the given event types, or to every event when ``kinds`` is None."""
        kind_set = None if kinds is None else frozenset(kinds)
        sub = Subscription(name, kind_set, maxsize)
        if kind_set is None:
            self._catch_all.append(sub)
        else:
            for kind in kind_set:
                self._by_kind.setdefault(kind, []).append(sub)
        self._routes.clear()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        sub.close()
        if sub in self._catch_all:
            self._catch_all.remove(sub)
        for subs in self._by_kind.values():
            if sub in subs:
                subs.remove(sub)
        self._routes.clear()

    def _route(self, kind: type[Event]) -> tuple[Subscription, ...]:
        route = self._routes.get(kind)
        if route is None:
            route = tuple(self._by_kind.get(kind, ())) + tuple(self._catch_all)
            self._routes[kind] = route
        return route

    def publish(self, event: Event) -> None:
        """Deliver to every subscriber without blocking; overflow becomes an error event."""
        for sub in self._route(type(event)):
            if not sub.offer(event):
                self._overflow(sub, event)

    def _overflow(self, sub: Subscription, event: Event) -> None:
        lane = "user_audio" if event.is_user_audio else "data"
        self.metrics.incr("bus.overflow", subscriber=sub.name, kind=event.kind)
        self.publish(
            ErrorEvent(
                session_id=self.session_id,
                ts_ms=self.clock.now_ms(),
                turn_id=event.turn_id,
                source=f"bus:{sub.name}",
                message=(
                    f"subscriber {sub.name!r} queue full ({sub.maxsize}): "
                    f"{event.kind} refused ({lane}); the subscriber is too slow"
                ),
            )
        )
