"""Supervisor: a crashed actor is restarted with backoff, reported, and the session lives on."""

from __future__ import annotations

import asyncio
from typing import ClassVar

from duplexer.runtime.actor import Actor, RestartPolicy
from duplexer.runtime.clock import run_virtual
from duplexer.runtime.events import ErrorEvent, Event, MetricEvent
from duplexer.runtime.session import Session


class Fragile(Actor):
    """Crashes on every event named 'boom', counts the others."""

    name = "fragile"
    subscribes: ClassVar = (MetricEvent,)

    def __init__(self, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.handled: list[str] = []
        self.starts = 0

    async def on_start(self) -> None:
        self.starts += 1

    async def handle(self, event: Event) -> None:
        assert isinstance(event, MetricEvent)
        if event.name == "boom":
            raise RuntimeError("engine fell over")
        self.handled.append(event.name)


def test_crashed_actor_restarts_after_backoff_and_keeps_its_queue() -> None:
    async def main() -> tuple[list[str], int, list[ErrorEvent], list[float]]:
        async with Session("s", restart_policy=RestartPolicy(initial_backoff_ms=100)) as session:
            errors = session.bus.subscribe("errors", [ErrorEvent])
            actor = Fragile(session.ctx)
            session.add(actor)
            await asyncio.sleep(0)
            for name in ["a", "boom", "b", "c"]:
                session.ctx.emit(MetricEvent, name=name, value=1.0)
            await asyncio.sleep(0.05)
            before_backoff = list(actor.handled)
            await asyncio.sleep(0.2)
            got: list[ErrorEvent] = []
            while (e := errors.get_nowait()) is not None:
                got.append(e)  # type: ignore[arg-type]
            return actor.handled, actor.starts, got, [len(before_backoff)]

    handled, starts, errors, before = run_virtual(main())
    assert before == [1]  # 'a' done, then the crash; b and c wait out the backoff
    assert handled == ["a", "b", "c"]  # nothing queued was lost across the restart
    assert starts == 2
    assert len(errors) == 1 and "fragile" in errors[0].message and "engine fell over" in errors[0].message
    assert not errors[0].fatal


def test_supervisor_gives_up_after_repeated_crashes_with_a_fatal_error() -> None:
    async def main() -> list[ErrorEvent]:
        policy = RestartPolicy(initial_backoff_ms=10, max_backoff_ms=40, max_restarts=2)
        async with Session("s", restart_policy=policy) as session:
            errors = session.bus.subscribe("errors", [ErrorEvent])
            session.add(Fragile(session.ctx))
            await asyncio.sleep(0)
            for _ in range(5):
                session.ctx.emit(MetricEvent, name="boom", value=1.0)
            await asyncio.sleep(1.0)
            got = []
            while (e := errors.get_nowait()) is not None:
                got.append(e)
            return got  # type: ignore[return-value]

    errors = run_virtual(main())
    assert [e.fatal for e in errors] == [False, False, True]


def test_stop_leaves_no_task_running() -> None:
    async def main() -> tuple[int, int]:
        session = Session("s")
        session.add(Fragile(session.ctx))
        await asyncio.sleep(0)
        during = len([t for t in session.supervisor.tasks if not t.done()])
        await session.stop()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        return during, len(others)

    assert run_virtual(main()) == (1, 0)


def test_a_gated_actor_queues_its_events_and_handles_them_all_once_the_gate_opens() -> None:
    """How a Ray session holds its driver-side actors until every host is up, without losing input."""

    async def main() -> tuple[list[str], list[str], int]:
        async with Session("s") as session:
            gate = asyncio.Event()
            actor = Fragile(session.ctx)
            session.supervisor.start(actor, gate=gate)
            for name in ("a", "b", "c"):
                session.ctx.emit(MetricEvent, name=name, value=1.0)
            await asyncio.sleep(0.5)
            before, starts = list(actor.handled), actor.starts
            gate.set()
            await asyncio.sleep(0.01)
            return before, list(actor.handled), starts

    before, after, starts_before = run_virtual(main())
    assert before == [] and starts_before == 0
    assert after == ["a", "b", "c"]
