"""A session: one conversation's bus, clock, metrics and supervised actors (the local executor)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from types import TracebackType
from typing import Any, Self

from duplexer.runtime.actor import Actor, ActorSpec, RestartPolicy, SessionContext, Supervisor
from duplexer.runtime.bus import Bus
from duplexer.runtime.clock import Clock, LoopClock
from duplexer.runtime.metrics import Metrics


class StopsOnExit:
    """``async with`` support for an executor's session: leaving the block awaits ``stop()``."""

    async def stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


class Session(StopsOnExit):
    """Owns one conversation's actors; ``async with Session(...)`` stops them all on exit."""

    def __init__(
        self,
        session_id: str | None = None,
        clock: Clock | None = None,
        restart_policy: RestartPolicy | None = None,
    ) -> None:
        self.session_id = session_id or uuid.uuid4().hex[:12]
        self.clock = clock or LoopClock()
        self.metrics = Metrics()
        self.bus = Bus(self.session_id, self.clock, self.metrics)
        self.ctx = SessionContext(self.session_id, self.bus, self.clock, self.metrics)
        self.supervisor = Supervisor(self.ctx, restart_policy)

    def add(self, *actors: Actor) -> None:
        for actor in actors:
            self.supervisor.start(actor)

    def place(self, specs: Iterable[ActorSpec], engines: Any = None) -> dict[str, Actor]:
        """Build every spec here, on this session's bus, and start it; returns them by name."""
        actors = {spec.name: spec.build(self.ctx, engines) for spec in specs}
        self.add(*actors.values())
        return actors

    async def ready(self, restart_clock: bool = False) -> None:
        """Every actor of a local session is running as soon as it is added; nothing to wait for."""

    async def stop(self) -> None:
        await self.supervisor.stop()
