"""Actors, the supervisor that restarts them, and the per-session context they share.

An actor is a thin adapter between the bus and one engine: it subscribes to a
few event types, calls its engine, and publishes what comes back. Its queue
lives in the supervisor, not in the actor's task, so events that arrive while
a crashed actor waits out its backoff are delivered after the restart.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from duplexer.runtime.bus import DEFAULT_QUEUE_SIZE, Bus, Subscription, SubscriptionClosed
from duplexer.runtime.clock import Clock
from duplexer.runtime.events import ErrorEvent, Event
from duplexer.runtime.logging import get_logger
from duplexer.runtime.metrics import Metrics

E = TypeVar("E", bound=Event)


@dataclass
class SessionContext:
    """What every actor of one session shares."""

    session_id: str
    bus: Bus
    clock: Clock
    metrics: Metrics = field(default_factory=Metrics)

    def make(self, kind: type[E], turn_id: int | None = None, **fields: Any) -> E:
        """Build an event stamped with this session and the current clock time."""
        return kind(session_id=self.session_id, ts_ms=self.clock.now_ms(), turn_id=turn_id, **fields)

    def emit(self, kind: type[E], turn_id: int | None = None, **fields: Any) -> E:
        event = self.make(kind, turn_id, **fields)
        self.bus.publish(event)
        return event


class Actor:
    """Base actor: override ``subscribes`` and ``handle``; optionally ``on_start``/``on_stop``."""

    name: ClassVar[str] = "actor"
    subscribes: ClassVar[tuple[type[Event], ...]] = ()
    queue_size: ClassVar[int] = DEFAULT_QUEUE_SIZE

    def __init__(self, ctx: SessionContext) -> None:
        self.ctx = ctx
        self.log = get_logger(session_id=ctx.session_id, actor=self.name)
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run work beside the event loop (an engine stream, a timer); cancelled when the actor stops."""
        task = asyncio.create_task(coro, name=f"{self.ctx.session_id}:{self.name}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def cancel_tasks(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def emit(self, kind: type[E], turn_id: int | None = None, **fields: Any) -> E:
        return self.ctx.emit(kind, turn_id, **fields)

    async def on_start(self) -> None:
        """Called once before the first event, and again after each restart."""

    async def on_stop(self) -> None:
        """Called once at shutdown: cancel engine work and release resources."""

    async def handle(self, event: Event) -> None:
        raise NotImplementedError

    async def run(self, sub: Subscription) -> None:
        """Deliver events one at a time until the subscription closes."""
        await self.on_start()
        while True:
            try:
                event = await sub.get()
            except SubscriptionClosed:
                return
            await self.handle(event)


@dataclass(frozen=True)
class EngineRef:
    """Stands in an :class:`ActorSpec`'s arguments for the engine named ``field`` of the process it runs in."""

    field: str


@dataclass(frozen=True)
class ActorSpec:
    """How to build one actor anywhere: its class and arguments, without a session context.

    An executor builds it where the actor is placed, as ``cls(ctx, *args, **kwargs)`` with that
    process's context, and with each :class:`EngineRef` replaced by the engine of that process.
    Specs are plain data (a class, parameters), so they can be sent to another process.
    """

    cls: type[Actor]
    args: tuple[Any, ...] = ()
    kwargs: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def of(cls, actor_cls: type[Actor], *args: Any, **kwargs: Any) -> ActorSpec:
        return cls(actor_cls, args, tuple(kwargs.items()))

    @property
    def name(self) -> str:
        return self.cls.name

    @property
    def engine_fields(self) -> tuple[str, ...]:
        values = [*self.args, *(v for _, v in self.kwargs)]
        return tuple(v.field for v in values if isinstance(v, EngineRef))

    def build(self, ctx: SessionContext, engines: Any = None) -> Actor:
        def resolve(value: Any) -> Any:
            if not isinstance(value, EngineRef):
                return value
            if engines is None:
                raise ValueError(f"actor {self.name!r} needs the {value.field!r} engine, and none was given")
            return getattr(engines, value.field)

        args = [resolve(v) for v in self.args]
        kwargs = {k: resolve(v) for k, v in self.kwargs}
        return self.cls(ctx, *args, **kwargs)


@dataclass(frozen=True)
class RestartPolicy:
    """Exponential backoff between restarts; give up after ``max_restarts`` in a row."""

    initial_backoff_ms: float = 50.0
    max_backoff_ms: float = 2000.0
    max_restarts: int = 5
    healthy_after_ms: float = 10_000.0


class Supervisor:
    """Runs a session's actors; restarts a crashed one with backoff and reports it as an error event."""

    def __init__(self, ctx: SessionContext, policy: RestartPolicy | None = None) -> None:
        self.ctx = ctx
        self.policy = policy or RestartPolicy()
        self.actors: list[Actor] = []
        self._subs: dict[str, Subscription] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._background: list[asyncio.Task[Any]] = []
        self.restarts: dict[str, int] = {}

    def start(self, actor: Actor, gate: asyncio.Event | None = None) -> None:
        """Subscribe ``actor`` now and run it, once ``gate`` (if given) is set; events queue until then."""
        if actor.name in self._tasks:
            raise ValueError(f"an actor named {actor.name!r} is already running in this session")
        sub = self.ctx.bus.subscribe(actor.name, actor.subscribes, actor.queue_size)
        self.actors.append(actor)
        self._subs[actor.name] = sub
        self.restarts[actor.name] = 0
        self._tasks[actor.name] = asyncio.create_task(
            self._supervise(actor, sub, gate), name=f"{self.ctx.session_id}:{actor.name}"
        )

    def spawn(self, factory: Callable[[], Coroutine[Any, Any, Any]], name: str) -> asyncio.Task[Any]:
        """A background task owned by the session (cancelled at stop)."""
        task = asyncio.create_task(factory(), name=f"{self.ctx.session_id}:{name}")
        self._background.append(task)
        return task

    async def _supervise(self, actor: Actor, sub: Subscription, gate: asyncio.Event | None = None) -> None:
        if gate is not None:
            await gate.wait()
        policy = self.policy
        backoff_ms = policy.initial_backoff_ms
        streak = 0
        while True:
            started_ms = self.ctx.clock.now_ms()
            try:
                await actor.run(sub)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # an actor crash must not end the session
                if self.ctx.clock.now_ms() - started_ms >= policy.healthy_after_ms:
                    streak, backoff_ms = 0, policy.initial_backoff_ms
                streak += 1
                self.restarts[actor.name] += 1
                self.ctx.metrics.incr("actor.crash", actor=actor.name)
                give_up = streak > policy.max_restarts
                message = f"actor {actor.name!r} crashed: {type(exc).__name__}: {exc}; " + (
                    "giving up after repeated crashes" if give_up else f"restart in {backoff_ms:.0f} ms"
                )
                actor.log.error("actor_crashed", error=repr(exc), restart_in_ms=backoff_ms)
                self.ctx.emit(ErrorEvent, source=actor.name, message=message, fatal=give_up)
                if give_up:
                    return
                await self.ctx.clock.sleep_ms(backoff_ms)
                backoff_ms = min(backoff_ms * 2.0, policy.max_backoff_ms)

    async def stop(self) -> None:
        """Close every queue, stop every actor and cancel background tasks; leaves nothing running."""
        for sub in self._subs.values():
            self.ctx.bus.unsubscribe(sub)
        tasks = [*self._tasks.values(), *self._background]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for actor in self.actors:
            await actor.cancel_tasks()
            try:
                await actor.on_stop()
            except Exception as exc:
                actor.log.error("actor_stop_failed", error=repr(exc))
        self._tasks.clear()
        self._background.clear()

    @property
    def tasks(self) -> list[asyncio.Task[Any]]:
        """Every task this session still runs: actor loops, background tasks and actors' own work."""
        owned = [task for actor in self.actors for task in actor._tasks]
        return [*self._tasks.values(), *self._background, *owned]
