"""`duplexer bench executors`, event hop latency: probe events from a bus to an actor, local and on Ray."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from duplexer.bench.executor_levels import percentile
from duplexer.runtime.actor import Actor, ActorSpec, SessionContext
from duplexer.runtime.events import Event, Priority

# ------------------------------------------------------------------ hop probes


@dataclass(frozen=True, slots=True, kw_only=True)
class HopProbe(Event):
    """A probe on the data lane (as audio travels): its ``ts_ms`` is when it was published."""

    seq: int


@dataclass(frozen=True, slots=True, kw_only=True)
class HopProbeControl(Event):
    """A probe on the control lane (as interrupts travel)."""

    seq: int
    priority: ClassVar[Priority] = Priority.CONTROL


@dataclass(frozen=True, slots=True, kw_only=True)
class HopSeen(Event):
    """The probe actor's answer: how long a probe took from publish to its ``handle()``."""

    seq: int
    lane: str
    hop_ms: float


class HopProbeActor(Actor):
    """Records publish -> handle() time of every probe, and reports it on the bus."""

    name = "hop_probe"
    subscribes = (HopProbe, HopProbeControl)

    def __init__(self, ctx: SessionContext) -> None:
        super().__init__(ctx)

    async def handle(self, event: Event) -> None:
        assert isinstance(event, (HopProbe, HopProbeControl))
        hop_ms = self.ctx.clock.now_ms() - event.ts_ms
        lane = "control" if event.priority is Priority.CONTROL else "data"
        self.emit(HopSeen, seq=event.seq, lane=lane, hop_ms=hop_ms)


class BareActor:
    """The baseline: a trivial async Ray actor (wrapped by ``ray.remote`` at run time)."""

    async def oneway(self, sent_s: float) -> float:
        return 1000.0 * (time.monotonic() - sent_s)


@dataclass
class HopSamples:
    label: str
    values_ms: list[float] = field(default_factory=list)

    def p(self, q: float) -> float:
        return percentile(self.values_ms, q)


BareProbe = Callable[[], Awaitable[tuple[float, float]]]
"""One bare Ray call: returns (one way ms, round trip ms)."""


async def _probe_session(
    session: Any,
    kinds: Sequence[type[Event]],
    samples: int,
    warmup: int,
    interval_ms: float,
    rng: random.Random,
    bare: BareProbe | None = None,
) -> tuple[dict[type[Event], list[float]], list[tuple[float, float]]]:
    """Publish probes of each kind at a realistic pace; the actor's answers are the samples.

    The kinds (and the bare call, when given) take turns probe by probe, so every path is
    sampled over the same seconds and a change in the machine's load shows in all of them alike.
    Returns the hops per kind and the bare calls' (one way, round trip) pairs.
    """
    sub = session.bus.subscribe("bench-hop", (HopSeen,), maxsize=1_000_000)
    session.place([ActorSpec.of(HopProbeActor)])
    await session.ready()  # the host is up and the probe actor started
    seen: dict[type[Event], list[float]] = {kind: [] for kind in kinds}
    by_lane = {("control" if kind.priority is Priority.CONTROL else "data"): kind for kind in kinds}
    bare_samples: list[tuple[float, float]] = []

    def drain() -> None:
        while (event := sub.get_nowait()) is not None:
            assert isinstance(event, HopSeen)
            if event.seq >= warmup:
                seen[by_lane[event.lane]].append(event.hop_ms)

    async def pause() -> None:
        await asyncio.sleep(rng.uniform(0.5, 1.5) * interval_ms / 1000.0)

    for i in range(warmup + samples):
        for kind in kinds:
            session.ctx.emit(kind, seq=i)
            await pause()
            drain()
        if bare is not None:
            sample = await bare()
            if i >= warmup:
                bare_samples.append(sample)
            await pause()
    deadline = time.monotonic() + 2.0
    while any(len(v) < samples for v in seen.values()) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
        drain()
    await session.stop()
    return seen, bare_samples


async def measure_hops(options: Any, samples: int, warmup: int, interval_ms: float) -> list[HopSamples]:
    from duplexer.runtime.clock import LoopClock
    from duplexer.runtime.ray_executor import Placement, RaySession, ray_module
    from duplexer.runtime.session import Session

    rng = random.Random(0)
    kinds = (HopProbe, HopProbeControl)
    local, _ = await _probe_session(Session("bench-hop-local", LoopClock()), kinds, samples, warmup, interval_ms, rng)
    ray = ray_module()
    decorate: Any = ray.remote
    actor = decorate(num_cpus=0)(BareActor).remote()

    async def bare() -> tuple[float, float]:
        sent = time.monotonic()
        one = await actor.oneway.remote(sent)
        return one, 1000.0 * (time.monotonic() - sent)

    ray_options = replace(options, placement=Placement.parse("probe=hop_probe"))
    try:
        await bare()  # the bare actor's process is up before sampling starts, as the host's is
        remote, pairs = await _probe_session(
            RaySession(ray_options, "bench-hop-ray"), kinds, samples, warmup, interval_ms, rng, bare
        )
    finally:
        ray.kill(actor)
    oneway, roundtrip = [one for one, _ in pairs], [back for _, back in pairs]
    return [
        HopSamples("local executor: publish -> handle(), data lane", local[HopProbe]),
        HopSamples("local executor: publish -> handle(), control lane", local[HopProbeControl]),
        HopSamples("Ray executor: driver publish -> host handle(), data lane", remote[HopProbe]),
        HopSamples("Ray executor: driver publish -> host handle(), control lane", remote[HopProbeControl]),
        HopSamples("bare Ray async-actor call, one way", oneway),
        HopSamples("bare Ray async-actor call, round trip", roundtrip),
    ]
