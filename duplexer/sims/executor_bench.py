"""`duplexer bench executors`: the local executor against the Ray executor, in one run on this machine.

Two measurements, with one Ray instance (``ray.init`` once, through :func:`ensure_ray`):

1. **Event hop latency.** A probe event is published on a session's bus every
   ``--interval-ms`` (a realistic pace, not a flood), and a probe actor records
   ``clock.now_ms() - event.ts_ms`` when its ``handle()`` runs:

   - local executor: publish and actor in one process;
   - Ray executor: publish in the driver, actor in a session host (the events cross
     through :class:`~duplexer.runtime.linked_bus.LinkedBus`; both processes read one
     :class:`~duplexer.runtime.clock.EpochClock`, so the difference is a real one-way time),
     on the data lane and on the control lane;
   - baseline: a bare Ray async-actor call that returns its arrival time minus the send
     stamp (one way, the same monotonic clock), and its round trip.

2. **Concurrent real-time sessions.** N sessions run at once in this driver process
   (``asyncio.gather``), for N on a ramp 1, 2, 4, 8, 12, 16, 24, ... up to ``--cap``,
   stopping at the first level that is not sustained. Two workloads:

   - ``sim``: a shipped scenario replayed by the simulator in real time; the scripted
     VAD, ASR and LLM read the simulated user's script, so they stay in the driver, and
     the Ray placement is ``duplexer sim``'s default (``SIM_RAY_PLACEMENT``);
   - ``voice``: a synthetic voice spoken into a pipeline with an energy VAD and canned
     ASR (the scripted call engines), so every actor can be placed anywhere; placed as
     ``session`` (audio readers stay in the driver) and ``audio-remote`` (VAD and ASR in
     the session host, so every 20 ms frame crosses processes), with and without
     ``batch_ms``.

   A level is *sustained* when (see :func:`judge_level`) every session's behavioural
   outcomes equal those of the same session replayed on the virtual clock, the
   driver's frame pacing lag p99 is at most one frame (20 ms), and the response
   latency p50 is within ``--slack-ms`` of the virtual-clock reference.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

from duplexer.runtime.actor import Actor, ActorSpec, SessionContext
from duplexer.runtime.console import progress, say
from duplexer.runtime.events import FRAME_MS, AudioFrame, Event, Priority
from duplexer.sims.cli import SIM_RAY_PLACEMENT

SIM_SCENARIO = Path("scenarios/plain_three_turns.yaml")
SIM_TAIL_MS = 1000.0
"""The scenario's silence after its last step, shortened from its own (3 s) to keep levels short."""
RESPONSE_SLACK_MS = 100.0
PACE_BOUND_MS = float(FRAME_MS)
"""Sustained needs the driver's frame pacing lag p99 within one frame."""
HOP_RATIO_TARGET = 1.3
SESSIONS_RATIO_TARGET = 0.5
RAMP = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)
SHARED_SESSIONS_PER_HOST = 16
"""The shared-hosts ramp: 16 sessions to a host process (64 of them measured 40% of 2 cores, 32 to a
host fell behind on frame pacing sooner)."""
START_SPREAD_S = 1.0
"""Session starts of one level are spread over this long, as calls arriving do not line up on a frame."""
VOICE_TRANSCRIPTS = ("what is the weather like tomorrow", "and the day after", "thank you")
VOICE_REPLY = "It will be sunny and mild, with a light breeze."
VOICE_SPEECH_MS = 1200.0
VOICE_GAP_MS = 500.0
VOICE_TURN_TIMEOUT_MS = 15_000.0
AUDIO_REMOTE_PLACEMENT = "session=vad,asr,controller,context,llm,tts"
"""``audio-remote`` as the voice pipeline runs it (it has no tokenizer), written out so the table says what ran."""


# ------------------------------------------------------------------ pure helpers


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), interpolated linearly between ranks; NaN for no values."""
    ordered = sorted(v for v in values if not math.isnan(v))
    if not ordered:
        return math.nan
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile: q must be within 0..100, got {q}")
    index = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(index), math.ceil(index)
    return ordered[low] + (ordered[high] - ordered[low]) * (index - low)


def ramp_levels(cap: int) -> list[int]:
    """1, 2, 4, 8, 12, 16, 24, ... below ``cap``, then ``cap``."""
    if cap < 1:
        raise ValueError(f"the session cap must be at least 1, got {cap}")
    return [n for n in RAMP if n < cap] + [cap]


Outcomes = Mapping[str, int]
"""A session's behavioural outcomes: turns answered, replies completed, errors, ..."""


@dataclass(frozen=True)
class Reference:
    """What a session does on the virtual clock: its outcomes and its response latency p50."""

    outcomes: Outcomes
    response_p50_ms: float


def judge_level(
    outcomes: Sequence[Outcomes | None],
    reference: Reference,
    response_ms: Sequence[float],
    pace_lag_ms: Sequence[float],
    slack_ms: float = RESPONSE_SLACK_MS,
    pace_bound_ms: float = PACE_BOUND_MS,
) -> list[str]:
    """Why a level of concurrent sessions is not sustained in real time; empty when it is.

    ``outcomes`` has one entry per session (None: the session did not complete);
    ``response_ms`` pools every answered turn of every session, ``pace_lag_ms`` every
    frame's lateness against its real-time schedule in the driver.
    """
    reasons: list[str] = []
    if not outcomes:
        return ["no session ran"]
    failed = sum(o is None for o in outcomes)
    if failed:
        reasons.append(f"{failed} of {len(outcomes)} session(s) did not complete")
    differ = [o for o in outcomes if o is not None and dict(o) != dict(reference.outcomes)]
    if differ:
        first = differ[0]
        keys = sorted(set(first) | set(reference.outcomes))
        diffs = ", ".join(
            f"{k} {first.get(k, 0)} vs {reference.outcomes.get(k, 0)}"
            for k in keys
            if first.get(k, 0) != reference.outcomes.get(k, 0)
        )
        reasons.append(f"{len(differ)} of {len(outcomes)} session(s) differ from the reference ({diffs})")
    pace = percentile(pace_lag_ms, 99)
    if math.isnan(pace) or pace > pace_bound_ms:
        reasons.append(f"frame pacing lag p99 {pace:.1f} ms > {pace_bound_ms:.0f} ms")
    p50 = percentile(response_ms, 50)
    if math.isnan(p50) or p50 > reference.response_p50_ms + slack_ms:
        reasons.append(f"response p50 {p50:.0f} ms > reference {reference.response_p50_ms:.0f} + {slack_ms:.0f} ms")
    return reasons


def split_pace(
    frames: Sequence[Sequence[tuple[float, float]]], placed_s: Sequence[float]
) -> tuple[list[float], list[float]]:
    """Frame lags before and after the last session of a level was placed: (setup, steady state).

    ``frames`` holds each session's (due time, lag ms) pairs; ``placed_s`` when each session's
    place() returned (NaN: not known). Setting a session up holds the driver's loop (see the
    place() column), which every running session feels; it is reported apart from steady state.
    """
    known = [t for t in placed_s if not math.isnan(t)]
    steady_from = max(known, default=-math.inf)
    setup = [lag for session in frames for t, lag in session if t < steady_from]
    steady = [lag for session in frames for t, lag in session if t >= steady_from]
    return setup, steady


def largest_sustained(levels: Sequence[tuple[int, bool]]) -> int:
    """The largest N of a ramp sustained with every smaller level sustained too (0: none)."""
    best = 0
    for n, ok in sorted(levels):
        if not ok:
            break
        best = n
    return best


def ratio_verdict(value: float, target: float, at_most: bool) -> str:
    if math.isnan(value):
        return "not measured"
    met = value <= target if at_most else value >= target
    return f"{'met' if met else 'MISSED'} (target {'<=' if at_most else '>='} {target:g})"


def _fmt(value: float, digits: int = 0) -> str:
    return "-" if not math.isfinite(value) else f"{round(value, digits) + 0.0:.{digits}f}"


def _cpu_times() -> tuple[float, float] | None:
    """(busy, total) jiffies of the whole machine (Linux /proc/stat); None elsewhere."""
    try:
        fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    total = sum(fields[:8])
    return total - idle, total


def _machine_cpu_pct(before: tuple[float, float] | None, after: tuple[float, float] | None) -> float:
    if before is None or after is None or after[1] <= before[1]:
        return math.nan
    return 100.0 * (after[0] - before[0]) / (after[1] - before[1])


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


# ------------------------------------------------------------------ sessions


@dataclass
class SessionRun:
    outcomes: dict[str, int] | None
    response_ms: list[float] = field(default_factory=list)
    frames: list[tuple[float, float]] = field(default_factory=list)
    """(time.monotonic() when the frame was due, how late the driver sent it in ms), per mic frame."""
    host_ready_ms: float = math.nan
    place_ms: float = math.nan
    """How long place() held the driver's event loop (building actors, creating Ray hosts)."""
    placed_s: float = math.nan
    """time.monotonic() when place() returned."""
    error: str | None = None
    duration_ms: float = math.nan


@dataclass(frozen=True)
class Config:
    """One ramp: a workload on an executor."""

    workload: str  # sim | voice
    executor: str  # local | ray
    placement: str = ""
    batch_ms: float = 0.0
    prewarm: bool = False
    """Ray: the level's session hosts are started (a HostPool) before its sessions begin."""
    sessions_per_host: int = 1
    """Ray: sessions sharing one host process (RayOptions.sessions_per_host)."""

    @property
    def label(self) -> str:
        if self.executor == "local":
            return f"{self.workload} / local"
        batch = f", batch_ms={self.batch_ms:g}" if self.batch_ms else ""
        warm = ", hosts prewarmed" if self.prewarm else ""
        shared = f", {self.sessions_per_host} sessions per host" if self.sessions_per_host > 1 else ""
        return f"{self.workload} / ray {self.placement}{batch}{warm}{shared}"


@dataclass
class Level:
    config: Config
    sessions: int
    runs: list[SessionRun]
    wall_s: float
    driver_cpu_pct: float
    machine_cpu_pct: float
    reasons: list[str]
    setup_lag_ms: list[float] = field(default_factory=list)
    steady_lag_ms: list[float] = field(default_factory=list)

    @property
    def sustained(self) -> bool:
        return not self.reasons


SessionFactory = Callable[[str, Callable[..., Any]], Any]


class _Timing:
    """What a timed session notes: its clock's origin in time.monotonic(), and what place() cost."""

    def __init__(self, clock: Any) -> None:
        self.origin_s = time.monotonic() - clock.now_ms() / 1000.0
        self.place_ms = math.nan
        self.placed_s = math.nan
        self.ready_ms = math.nan

    def wall_s(self, session_ms: float) -> float:
        return self.origin_s + session_ms / 1000.0


def _timed(session: Any) -> Any:
    """``session`` noting how long its place() held the loop and, on Ray, when its hosts first answer."""
    timing = session.timing = _Timing(session.clock)
    place = session.place

    def timed_place(specs: Any, engines: Any = None) -> dict[str, Actor]:
        start = time.monotonic()
        local: dict[str, Actor] = place(specs, engines)
        timing.placed_s = time.monotonic()
        timing.place_ms = 1000.0 * (timing.placed_s - start)
        if hasattr(session, "ping"):

            async def ready() -> None:
                with contextlib.suppress(Exception):
                    await session.ping()
                    timing.ready_ms = 1000.0 * (time.monotonic() - start)

            session.supervisor.spawn(ready, "bench-host-ready")
        return local

    session.place = timed_place
    return session


def _timing_of(session: Any) -> _Timing:
    timing = getattr(session, "timing", None)
    return timing if isinstance(timing, _Timing) else _Timing(session.clock)


def _session_factory(
    config: Config, options: Any, run_tag: str, n: int, pool: Any = None
) -> Callable[[int], SessionFactory]:
    """For session i of a level: (session id, engine factory) -> a session of the config's executor."""
    if config.executor == "local":
        from duplexer.runtime.clock import LoopClock
        from duplexer.runtime.session import Session

        return lambda i: lambda sid, factory: _timed(Session(session_id=sid, clock=LoopClock()))
    from duplexer.runtime.ray_executor import Placement, RaySession

    ray_options = replace(
        options,
        placement=Placement.parse(config.placement),
        batch_ms=config.batch_ms,
        sessions_per_host=config.sessions_per_host,
    )
    return lambda i: lambda sid, factory: _timed(RaySession(ray_options, f"{sid}-{run_tag}-{i}", factory, pool=pool))


# ---- workload "sim": a scenario through the simulator


def _sim_outcomes(run: Any) -> dict[str, int]:
    from duplexer.sims.metrics import turn_facts

    facts = turn_facts(run)
    return {
        "answered": len(facts.latencies_ms),
        "unanswered": facts.unanswered_turns,
        "pause_takeovers": facts.pause_takeovers,
        "barge_ins": len(facts.barge_in_stops_ms),
        "backchannel_stops": facts.backchannel_stops,
        "speculation_committed": facts.spec_committed,
        "speculation_discarded": facts.spec_discarded,
        "errors": facts.errors,
        "underruns": int(facts.underruns),
    }


class SimWorkload:
    name = "sim"

    def __init__(self, path: Path, seed: int) -> None:
        from duplexer.policies.controller import PolicyParams
        from duplexer.sims.scenario import collect_scenarios
        from duplexer.sims.simulator import policy_for

        loaded = collect_scenarios([path])
        if len(loaded) != 1:
            raise ValueError(f"{path}: expected one scenario, found {len(loaded)}")
        source, scenario = loaded[0]
        self.scenario = scenario.model_copy(update={"tail_ms": min(scenario.tail_ms, SIM_TAIL_MS)})
        self.params = policy_for(self.scenario, PolicyParams(), str(source))
        self.seed = seed

    def describe(self) -> str:
        return f"scenario {self.scenario.name} (tail {self.scenario.tail_ms:.0f} ms)"

    def reference(self) -> tuple[Reference, float]:
        from duplexer.sims.metrics import turn_facts
        from duplexer.sims.simulator import simulate

        run = simulate(self.scenario, self.params, self.seed)
        latencies = list(turn_facts(run).latencies_ms.values())
        return Reference(_sim_outcomes(run), percentile(latencies, 50)), run.duration_ms

    async def run_one(self, make: SessionFactory) -> SessionRun:
        from duplexer.sims.metrics import turn_facts
        from duplexer.sims.simulator import _simulate

        holder: dict[str, Any] = {}

        def make_session(sid: str, factory: Callable[..., Any]) -> Any:
            session = make(sid, factory)
            holder["session"] = session
            holder["frames"] = session.bus.subscribe("bench-pace", (AudioFrame,), maxsize=1_000_000)
            return session

        run = await _simulate(self.scenario, self.params, self.seed, make_session)
        frames = holder["frames"]
        timing = _timing_of(holder["session"])
        lags = []
        while (frame := frames.get_nowait()) is not None:
            assert isinstance(frame, AudioFrame)
            due_ms = frame.seq * FRAME_MS  # the simulator's mic sends frame n at n x 20 ms
            lags.append((timing.wall_s(due_ms), frame.ts_ms - due_ms))
        return SessionRun(
            _sim_outcomes(run),
            list(turn_facts(run).latencies_ms.values()),
            lags,
            timing.ready_ms,
            timing.place_ms,
            timing.placed_s,
            duration_ms=run.duration_ms,
        )


# ---- workload "voice": synthetic speech through an energy VAD and canned ASR


def voice_engine_factory() -> Callable[..., Any]:
    """The scripted call engines (picklable, so a Ray host can build its own): energy VAD, canned ASR."""
    from duplexer.protocols.engine_factory import scripted_engines

    return scripted_engines(VOICE_TRANSCRIPTS, reply_for=lambda _text: VOICE_REPLY)


class VoiceWorkload:
    name = "voice"

    def __init__(self, turns: int) -> None:
        from duplexer.protocols.webrtc_bench import synthetic_speech

        self.turns = turns
        self.speech = synthetic_speech(VOICE_SPEECH_MS)
        self.factory = voice_engine_factory()

    def describe(self) -> str:
        return (
            f"{self.turns} turns of {VOICE_SPEECH_MS / 1000:.1f} s synthetic speech, each answered "
            f"({len(VOICE_REPLY)}-character reply) before the next, {VOICE_GAP_MS:.0f} ms later"
        )

    def reference(self) -> tuple[Reference, float]:
        from duplexer.runtime.clock import LoopClock, run_virtual
        from duplexer.runtime.session import Session

        def local(sid: str, factory: Callable[..., Any]) -> Any:
            return Session(session_id=sid, clock=LoopClock())  # virtual time: no timing to note

        result = run_virtual(self.run_one(local))
        assert isinstance(result, SessionRun)
        if result.outcomes is None:
            raise RuntimeError(f"the voice workload fails on the virtual clock: {result.error}")
        return Reference(result.outcomes, percentile(result.response_ms, 50)), result.duration_ms

    async def run_one(self, make: SessionFactory) -> SessionRun:
        from duplexer.actors.pipeline import start_pipeline
        from duplexer.protocols.webrtc_call import CallSettings
        from duplexer.runtime.events import (
            FRAME_SAMPLES,
            INPUT_SAMPLE_RATE_HZ,
            ErrorEvent,
            PlayoutDone,
            PlayoutStarted,
            PlayoutStopped,
        )
        from duplexer.sims.simulator import RecordingSink

        session = make("voice", self.factory)
        clock = session.clock
        timing = _timing_of(session)
        sink = RecordingSink(clock)
        engines = self.factory(clock, sink)
        recorder = session.bus.subscribe(
            "bench-recorder", (PlayoutStarted, PlayoutDone, PlayoutStopped, ErrorEvent), maxsize=1_000_000
        )
        actors = start_pipeline(session, engines, CallSettings().pipeline)
        events: list[Event] = []
        pending = bytearray()
        speech_ends: list[float] = []
        lags: list[tuple[float, float]] = []
        frame_bytes = 2 * FRAME_SAMPLES

        try:  # the conversation starts once the session's hosts are up and its actors started
            await asyncio.wait_for(session.ready(), 60.0)
        except Exception as exc:
            await session.stop()
            raise RuntimeError(f"session host did not start: {exc!r}") from None
        first_seq = math.ceil(clock.now_ms() / FRAME_MS)  # frames are numbered in session time

        async def mic() -> None:
            seq = first_seq
            while True:
                due = (seq + 1) * FRAME_MS  # a frame exists once spoken
                await clock.sleep_ms(due - clock.now_ms())
                lags.append((timing.wall_s(due), clock.now_ms() - due))
                had_speech = bool(pending)
                chunk = bytes(pending[:frame_bytes])
                del pending[:frame_bytes]
                if had_speech and not pending:
                    speech_ends.append(due)
                session.ctx.emit(
                    AudioFrame,
                    pcm=chunk + bytes(frame_bytes - len(chunk)),
                    sample_rate_hz=INPUT_SAMPLE_RATE_HZ,
                    seq=seq,
                )
                seq += 1

        async def record() -> None:
            async for event in recorder:
                events.append(event)

        session.supervisor.spawn(mic, "bench-mic")
        session.supervisor.spawn(record, "bench-recorder")
        error: str | None = None
        try:
            for turn in range(self.turns):
                await clock.sleep_ms(VOICE_GAP_MS)
                ended = len([e for e in events if isinstance(e, (PlayoutDone, PlayoutStopped))])
                pending.extend(self.speech)
                deadline = clock.now_ms() + VOICE_SPEECH_MS + VOICE_TURN_TIMEOUT_MS
                while len([e for e in events if isinstance(e, (PlayoutDone, PlayoutStopped))]) <= ended:
                    if clock.now_ms() > deadline:
                        raise TimeoutError(f"turn {turn + 1}: no reply played within {VOICE_TURN_TIMEOUT_MS:.0f} ms")
                    if getattr(session, "failed", None) is not None and session.failed.is_set():
                        raise RuntimeError(session.failure or "a session host died")
                    await clock.sleep_ms(FRAME_MS)
            await clock.sleep_ms(VOICE_GAP_MS)
        except (TimeoutError, RuntimeError) as exc:
            error = str(exc)
        duration_ms = clock.now_ms()
        await asyncio.sleep(0)
        while (event := recorder.get_nowait()) is not None:
            events.append(event)
        await session.stop()
        response = []
        for i, end in enumerate(speech_ends):
            nxt = speech_ends[i + 1] - VOICE_SPEECH_MS if i + 1 < len(speech_ends) else math.inf
            starts = [a.start_ms for a in sink.intervals if end <= a.start_ms < nxt]
            if starts:
                response.append(starts[0] - end)
        playout: Any = actors["playout"]
        outcomes = {
            "answered": len(response),
            "replies_started": sum(isinstance(e, PlayoutStarted) for e in events),
            "replies_completed": sum(isinstance(e, PlayoutDone) for e in events),
            "replies_stopped": sum(isinstance(e, PlayoutStopped) for e in events),
            "errors": sum(isinstance(e, ErrorEvent) for e in events),
            "underruns": int(playout.underruns),
        }
        return SessionRun(
            None if error else outcomes,
            response,
            lags,
            timing.ready_ms,
            timing.place_ms,
            timing.placed_s,
            error,
            duration_ms,
        )


# ------------------------------------------------------------------ the ramps


Workload = SimWorkload | VoiceWorkload


async def run_level(
    workload: Workload, config: Config, n: int, options: Any, reference: Reference, slack_ms: float, run_tag: str
) -> Level:
    pool = None
    if config.prewarm or config.sessions_per_host > 1:
        from duplexer.runtime.ray_executor import HostPool

        pool = HostPool(replace(options, sessions_per_host=config.sessions_per_host))
    if pool is not None and config.prewarm:
        await pool.fill(n)  # before the level's clock starts: the pool is what is measured without
    factory = _session_factory(config, options, run_tag, n, pool)

    async def one(i: int) -> SessionRun:
        await asyncio.sleep(START_SPREAD_S * i / n)
        try:
            return await workload.run_one(factory(i))
        except Exception as exc:  # a failed session fails the level; the ramp goes on reporting
            return SessionRun(None, error=f"{type(exc).__name__}: {exc}")

    cpu0, proc0, wall0 = _cpu_times(), time.process_time(), time.monotonic()
    try:
        runs = list(await asyncio.gather(*(one(i) for i in range(n))))
    finally:
        if pool is not None:
            pool.shutdown()
    wall = time.monotonic() - wall0
    driver_cpu = 100.0 * (time.process_time() - proc0) / wall
    machine_cpu = _machine_cpu_pct(cpu0, _cpu_times())
    setup, steady = split_pace([r.frames for r in runs], [r.placed_s for r in runs])
    reasons = judge_level(
        [r.outcomes for r in runs], reference, [v for r in runs for v in r.response_ms], steady, slack_ms
    )
    errors = [r.error for r in runs if r.error]
    if errors:
        reasons.append(f"first error: {errors[0]}")
    return Level(config, n, runs, wall, driver_cpu, machine_cpu, reasons, setup, steady)


def _progress(level: Level, reference: Reference) -> None:
    response = percentile([v for r in level.runs for v in r.response_ms], 50)
    pace = percentile(level.steady_lag_ms, 99)
    verdict = "sustained" if level.sustained else "NOT sustained: " + "; ".join(level.reasons)
    progress(
        f"  {level.config.label}: {level.sessions} session(s): {verdict} "
        f"(response p50 {_fmt(response)} ms vs {_fmt(reference.response_p50_ms)}, pace lag p99 {_fmt(pace, 1)} ms, "
        f"machine CPU {_fmt(level.machine_cpu_pct)}%, {level.wall_s:.0f} s)"
    )


async def ramp(
    workload: Workload,
    config: Config,
    cap: int,
    options: Any,
    reference: Reference,
    slack_ms: float,
    levels: Sequence[int] | None = None,
) -> list[Level]:
    """Run the ramp's levels in order, stopping after the first one not sustained."""
    out: list[Level] = []
    for n in levels if levels is not None else ramp_levels(cap):
        tag = f"{abs(hash(config)) % 10_000}-{n}-{time.monotonic_ns() % 1_000_000}"
        level = await run_level(workload, config, n, options, reference, slack_ms, tag)
        _progress(level, reference)
        out.append(level)
        if not level.sustained:
            break
    return out


def _level_row(level: Level, reference: Reference) -> list[object]:
    runs = level.runs
    response = [v for r in runs for v in r.response_ms]
    pace = level.steady_lag_ms
    ready = [r.host_ready_ms for r in runs if not math.isnan(r.host_ready_ms)]
    place = [r.place_ms for r in runs if not math.isnan(r.place_ms)]
    return [
        level.config.label,
        level.sessions,
        "yes" if level.sustained else "no: " + "; ".join(level.reasons),
        f"{_fmt(percentile(response, 50))} ({_fmt(reference.response_p50_ms)})",
        _fmt(percentile(response, 90)),
        f"{_fmt(percentile(pace, 50), 1)} / {_fmt(percentile(pace, 99), 1)}",
        f"{_fmt(percentile(place, 50), 1)} / {_fmt(max(place, default=math.nan), 1)}",
        _fmt(max(level.setup_lag_ms, default=math.nan)),
        f"{_fmt(percentile(ready, 50))} / {_fmt(max(ready, default=math.nan))}" if ready else "-",
        _fmt(level.driver_cpu_pct),
        _fmt(level.machine_cpu_pct),
    ]


SESSION_HEADER = (
    "workload / executor",
    "sessions",
    "sustained",
    "response p50 ms (reference)",
    "response p90 ms",
    "pace lag p50 / p99 ms",
    "place() p50 / max ms",
    "setup lag max ms",
    "host ready p50 / max ms",
    "driver CPU %",
    "machine CPU %",
)
HOP_HEADER = ("path", "samples", "p50 ms", "p90 ms", "p99 ms")


@dataclass
class Results:
    hops: list[HopSamples]
    levels: list[Level]
    references: dict[str, Reference]
    best: dict[Config, int]


async def _bench(
    args: argparse.Namespace, options: Any, sim: SimWorkload, voice: VoiceWorkload, references: dict[str, Reference]
) -> Results:
    progress(f"hop latency: {args.samples} probes per path, one every ~{args.interval_ms:g} ms")
    hops = await measure_hops(options, args.samples, args.warmup, args.interval_ms)
    for hop in hops:
        progress(f"  {hop.label}: p50 {hop.p(50):.3f} ms, p99 {hop.p(99):.3f} ms")
    configs = [
        Config("sim", "local"),
        Config("sim", "ray", SIM_RAY_PLACEMENT),
        Config("sim", "ray", SIM_RAY_PLACEMENT, prewarm=True),
        Config("sim", "ray", SIM_RAY_PLACEMENT, prewarm=True, sessions_per_host=SHARED_SESSIONS_PER_HOST),
        Config("voice", "local"),
        Config("voice", "ray", "session"),
        Config("voice", "ray", AUDIO_REMOTE_PLACEMENT),
    ]
    levels: list[Level] = []
    best: dict[Config, int] = {}
    workloads: dict[str, Workload] = {"sim": sim, "voice": voice}
    for config in configs:
        if config.workload == "voice" and config.executor == "local" and not args.voice_local:
            continue
        progress(f"sessions: {config.label}, ramp up to {args.cap}")
        done = await ramp(
            workloads[config.workload], config, args.cap, options, references[config.workload], args.slack_ms
        )
        levels += done
        best[config] = largest_sustained([(lv.sessions, lv.sustained) for lv in done])
    remote = Config("voice", "ray", AUDIO_REMOTE_PLACEMENT)
    remote_levels = [lv for lv in levels if lv.config == remote]
    probe_levels = sorted({best[remote] or 1, remote_levels[-1].sessions})
    for batch_ms in args.batch_ms:
        config = replace(remote, batch_ms=batch_ms)
        progress(f"sessions: {config.label}, at {probe_levels}")
        done = await ramp(voice, config, args.cap, options, references["voice"], args.slack_ms, probe_levels)
        levels += done
        best[config] = largest_sustained([(lv.sessions, lv.sustained) for lv in done])
    return Results(hops, levels, references, best)


def _parse_batches(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated milliseconds, got {text!r}") from None
    if any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError("batch sizes must be > 0 ms")
    return values


def build_parser() -> argparse.ArgumentParser:
    from duplexer.runtime.benchlog import DEFAULT_BENCH_LOG

    parser = argparse.ArgumentParser(
        prog="duplexer bench executors",
        description="Local vs Ray executor on this machine, in one run: per-hop event latency "
        "(bus publish -> actor handle(), against a bare Ray actor call) and the most concurrent "
        "real-time sessions one driver sustains, local and on Ray with audio in the driver or "
        "in the session host. Starts one local Ray instance. Prints the figures and appends "
        "them to docs/benchmarks.md.",
    )
    parser.add_argument("--quick", action="store_true", help="a fast variant: 100 probes per path, cap 4")
    parser.add_argument("--cap", type=int, help=f"most concurrent sessions to try (default {RAMP[-1]}; --quick 4)")
    parser.add_argument("--samples", type=int, help="hop probes per path after warm-up (default 300, --quick 100)")
    parser.add_argument("--warmup", type=int, default=30, help="hop probes discarded first (default 30)")
    parser.add_argument("--interval-ms", type=float, default=10.0, help="mean gap between probes (default 10)")
    parser.add_argument(
        "--scenario", type=Path, default=SIM_SCENARIO, help=f"the sim workload (default {SIM_SCENARIO})"
    )
    parser.add_argument("--seed", type=int, default=0, help="scenario jitter seed (default 0)")
    parser.add_argument(
        "--batch-ms", type=_parse_batches, default=[20.0, 40.0], help="batch_ms values tried with audio-remote (20,40)"
    )
    parser.add_argument(
        "--slack-ms",
        type=float,
        default=RESPONSE_SLACK_MS,
        help=f"response p50 may exceed the virtual-clock reference by this much (default {RESPONSE_SLACK_MS:.0f})",
    )
    parser.add_argument(
        "--voice-local", action="store_true", help="also ramp the voice workload on the local executor (slower)"
    )
    parser.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray instance (default 2)")
    parser.add_argument("--log", type=Path, default=DEFAULT_BENCH_LOG, help="benchmark log to append to")
    parser.add_argument("--no-log", action="store_true", help="print only; do not append")
    return parser


def main(argv: Sequence[str]) -> int:
    from duplexer.cli_support import fail

    parser = build_parser()
    args = parser.parse_args(list(argv))
    args.cap = args.cap if args.cap is not None else 4 if args.quick else RAMP[-1]
    args.samples = args.samples if args.samples is not None else 100 if args.quick else 300
    if args.cap < 1 or args.samples < 10 or args.warmup < 0 or args.interval_ms <= 0 or args.num_cpus < 1:
        return fail("--cap and --num-cpus must be >= 1, --samples >= 10, --warmup >= 0, --interval-ms > 0")

    from duplexer.actors.pipeline import PIPELINE_ACTORS
    from duplexer.runtime.logging import configure_logging
    from duplexer.runtime.ray_executor import RayOptions, RayUnavailable, ensure_ray
    from duplexer.sims.scenario import ScenarioError

    configure_logging("ERROR")
    try:
        sim = SimWorkload(args.scenario, args.seed)
    except (ScenarioError, ValueError, OSError) as exc:
        return fail(str(exc))
    voice = VoiceWorkload(2)
    sim_ref, sim_ms = sim.reference()
    voice_ref, voice_ms = voice.reference()
    references = {"sim": sim_ref, "voice": voice_ref}
    progress(
        f"references on the virtual clock: sim {sim_ms / 1000:.1f} s per session, response p50 "
        f"{sim_ref.response_p50_ms:.0f} ms; voice {voice_ms / 1000:.1f} s, "
        f"response p50 {voice_ref.response_p50_ms:.0f} ms"
    )
    options = RayOptions(num_cpus=args.num_cpus, actors=PIPELINE_ACTORS)
    started = time.monotonic()
    try:
        ensure_ray(options)
    except RayUnavailable as exc:
        return fail(str(exc))
    progress(f"ray started in {time.monotonic() - started:.1f} s")
    try:
        results = asyncio.run(_bench(args, options, sim, voice, references))
    finally:
        from duplexer.runtime.ray_executor import ray_module

        ray_module().shutdown()
    return _report(args, argv, results, sim, voice, time.monotonic() - started)


def _report(
    args: argparse.Namespace,
    argv: Sequence[str],
    results: Results,
    sim: SimWorkload,
    voice: VoiceWorkload,
    elapsed_s: float,
) -> int:
    from duplexer.runtime.benchlog import append_benchmark, format_table

    ray_data = results.hops[2]
    bare = results.hops[4]
    p50_ratio = ray_data.p(50) / bare.p(50) if bare.p(50) > 0 else math.nan
    p99_ratio = ray_data.p(99) / bare.p(99) if bare.p(99) > 0 else math.nan
    hop_rows = [[h.label, len(h.values_ms), f"{h.p(50):.3f}", f"{h.p(90):.3f}", f"{h.p(99):.3f}"] for h in results.hops]
    hop_notes = [
        f"probes published one at a time, every {args.interval_ms:g} ms on average (uniform 0.5-1.5x), "
        f"{args.warmup} warm-up probes discarded; Ray: one local instance, num_cpus={args.num_cpus}; the Ray "
        "data-lane, Ray control-lane and bare probes take turns, so all three are sampled over the same seconds",
        "hop = the probe actor's clock.now_ms() in handle() - the probe's ts_ms at publish; the Ray host and "
        "the driver share an EpochClock (one monotonic clock on one machine); bare one way = arrival - send "
        "stamp in time.monotonic(); round trip = await of the call in the driver",
        f"Ray hop p50 / bare call p50 (one way): {p50_ratio:.2f}, {ratio_verdict(p50_ratio, HOP_RATIO_TARGET, True)}",
        f"Ray hop p99 / bare call p99 (one way): {p99_ratio:.2f}",
    ]
    refs = results.references
    rows = [_level_row(level, refs[level.config.workload]) for level in results.levels]
    best = results.best

    def best_of(config: Config) -> int:
        return best.get(config, 0)

    sim_local = best_of(Config("sim", "local"))
    sim_ray = best_of(Config("sim", "ray", SIM_RAY_PLACEMENT))
    sim_warm = best_of(Config("sim", "ray", SIM_RAY_PLACEMENT, prewarm=True))
    sim_shared = best_of(
        Config("sim", "ray", SIM_RAY_PLACEMENT, prewarm=True, sessions_per_host=SHARED_SESSIONS_PER_HOST)
    )
    v_local = best_of(Config("voice", "local"))
    v_session = best_of(Config("voice", "ray", "session"))
    v_remote = best_of(Config("voice", "ray", AUDIO_REMOTE_PLACEMENT))
    sessions_ratio = sim_ray / sim_local if sim_local else math.nan
    warm_ratio = sim_warm / sim_local if sim_local else math.nan
    shared_ratio = sim_shared / sim_local if sim_local else math.nan
    capped = [c.label for c, n in best.items() if n >= args.cap]
    session_notes = [
        f"sim workload: {sim.describe()}, replayed by the simulator in real time; Ray placement {SIM_RAY_PLACEMENT} "
        "(the scripted VAD, ASR and LLM read the simulated user's script, so they stay in the driver)",
        f"voice workload: {voice.describe()}; energy VAD, canned ASR, scripted LLM and humming TTS "
        f"(duplexer.protocols.engine_factory.scripted_engines); Ray placements: session (controller, context, "
        f"llm, tts in the host; audio in the driver) and {AUDIO_REMOTE_PLACEMENT} (audio-remote without its "
        "tokenizer: every 20 ms frame crosses to the host)",
        f"N sessions at once in one driver process (asyncio.gather), starts spread over {START_SPREAD_S:.0f} s; "
        f"ramp {', '.join(str(n) for n in ramp_levels(args.cap))}, stopping at the first level not sustained; "
        "batch_ms variants only at the largest sustained and the first failing audio-remote level",
        "sustained = every session's outcomes (turns answered, replies started/completed/stopped, speculation "
        "committed/discarded, errors, underruns) equal the same session's on the virtual clock, AND the driver's "
        f"frame pacing lag p99 <= {PACE_BOUND_MS:.0f} ms (each mic frame's send time - its real-time schedule), "
        f"AND response latency p50 <= the virtual-clock reference + {args.slack_ms:.0f} ms; pacing is judged "
        "in steady state, from the moment the level's last session was placed",
        "place() = how long building a session's actors held the driver's event loop (Ray: creating the host "
        "actor and sending its specs and engine factory); setup lag max = the worst frame lateness of any "
        "running session while the level's sessions were being placed; host ready = place() -> the host "
        "answers a ping (includes starting a Ray worker process)",
        f"largest N sustained: sim local {sim_local}, sim Ray {sim_ray}, sim Ray with hosts prewarmed "
        f"{sim_warm}, sim Ray prewarmed with {SHARED_SESSIONS_PER_HOST} sessions per host {sim_shared}; voice local "
        f"{v_local if args.voice_local else '-'}, voice Ray session {v_session}, voice Ray audio-remote {v_remote}"
        + "".join(f"; audio-remote batch_ms={c.batch_ms:g} {n}" for c, n in best.items() if c.batch_ms),
        f"Ray sessions / local sessions (sim): {_fmt(sessions_ratio, 2)}, "
        f"{ratio_verdict(sessions_ratio, SESSIONS_RATIO_TARGET, False)}; with hosts prewarmed (HostPool, "
        f"--idle-hosts): {_fmt(warm_ratio, 2)}, {ratio_verdict(warm_ratio, SESSIONS_RATIO_TARGET, False)}; "
        f"prewarmed, {SHARED_SESSIONS_PER_HOST} sessions per host (--sessions-per-host): {_fmt(shared_ratio, 2)}, "
        f"{ratio_verdict(shared_ratio, SESSIONS_RATIO_TARGET, False)}"
        + (f"; at the cap ({args.cap}), so a lower bound: {', '.join(capped)}" if capped else ""),
        f"whole bench: {elapsed_s:.0f} s",
    ]
    hop_text = format_table(HOP_HEADER, hop_rows) + "\n" + "\n".join(f"- {n}" for n in hop_notes)
    session_text = format_table(SESSION_HEADER, rows) + "\n" + "\n".join(f"- {n}" for n in session_notes)
    say()
    say(hop_text)
    say()
    say(session_text)
    if not args.no_log:
        command = ["bench", "executors", *argv]
        append_benchmark(
            "executors: event hop latency, local vs Ray",
            HOP_HEADER,
            hop_rows,
            hop_notes,
            log_path=args.log,
            argv=command,
        )
        append_benchmark(
            "executors: concurrent real-time sessions, local vs Ray",
            SESSION_HEADER,
            rows,
            session_notes,
            log_path=args.log,
            argv=command,
        )
        say(f"\nappended to {args.log}")
    return 0


__all__ = ["judge_level", "largest_sustained", "main", "percentile", "ramp_levels"]
