"""`duplexer bench executors`, concurrent sessions: timed sessions and the two workloads (sim, voice)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from duplexer.bench.executor_levels import (
    SIM_TAIL_MS,
    VOICE_GAP_MS,
    VOICE_REPLY,
    VOICE_SPEECH_MS,
    VOICE_TRANSCRIPTS,
    VOICE_TURN_TIMEOUT_MS,
    Reference,
    percentile,
)
from duplexer.runtime.actor import Actor
from duplexer.runtime.events import FRAME_MS, AudioFrame, Event

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


def session_factory(
    config: Config, options: Any, run_tag: str, n: int, pool: Any = None
) -> Callable[[int], SessionFactory]:
    """For session i of a level: (session id, engine factory) -> a session of the config's executor."""
    if config.executor == "local":
        from duplexer.runtime.clock import LoopClock
        from duplexer.runtime.session import Session

        return lambda i: lambda sid, factory: _timed(Session(session_id=sid, clock=LoopClock()))
    from duplexer.runtime.ray_executor import RaySession

    ray_options = replace(
        options,
        placement=options.actors.parse(config.placement),  # named ("session") or HOST=ACTOR,...
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
        from duplexer.bench.webrtc import synthetic_speech

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
