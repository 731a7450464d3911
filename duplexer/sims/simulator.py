"""Replays a scenario through the real actors, on the virtual clock, and records what happened.

The simulated user is reactive: it waits for the bot to finish or to start
speaking when a step says so, and writes its speech into a timeline that the
scripted VAD and ASR read as their audio. Everything else (controller, context,
LLM, TTS and playout actors, the bus, the supervisor) is the live code.
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
from dataclasses import dataclass, field
from typing import Any, cast

from duplexer.actors.asr import AsrParams
from duplexer.actors.controller import RULE_VIOLATION
from duplexer.actors.engines import AudioSink, Engines, LlmEngine
from duplexer.actors.pipeline import PipelineConfig, start_pipeline
from duplexer.actors.scripted import (
    ScriptedAsr,
    ScriptedLlm,
    ScriptedToolBehaviour,
    ScriptedToolbox,
    ScriptedToolLlm,
    ScriptedToolReply,
    ScriptedTts,
    ScriptedVad,
    SpeechSpan,
    SpeechTimeline,
    echo_reply,
)
from duplexer.actors.tool_registry import ToolRegistry
from duplexer.actors.vad import VadParams
from duplexer.policies.controller import ControllerError, PolicyParams
from duplexer.runtime.clock import Clock, LoopClock, run_virtual
from duplexer.runtime.events import (
    FRAME_MS,
    FRAME_SAMPLES,
    INPUT_SAMPLE_RATE_HZ,
    AudioFrame,
    CancelReply,
    CommitReply,
    EndOfTurnProbability,
    ErrorEvent,
    Event,
    LlmCancelled,
    LlmDone,
    PlayoutDone,
    PlayoutStarted,
    PlayoutStopped,
    StartReply,
    StateChanged,
    ToolCallDeferred,
    ToolCallRequested,
    ToolCallStarted,
    ToolResult,
)
from duplexer.runtime.executors import SessionMaker
from duplexer.runtime.session import Session
from duplexer.sims.scenario import (
    DEFAULT_MS_PER_WORD,
    MAX_SIMULATED_MS,
    Backchannel,
    EngineModels,
    Noise,
    Say,
    Scenario,
    ScenarioError,
    Silence,
    Start,
    ToolReply,
    tool_replies,
)
from duplexer.sims.turn_detector_script import end_of_turn_script, sim_turn_detector

SILENT_FRAME = bytes(2 * FRAME_SAMPLES)
FIRST_STEP_AT_MS = 500.0
RECORDED_EVENTS: tuple[type[Event], ...] = (
    StateChanged,
    StartReply,
    CancelReply,
    CommitReply,
    LlmDone,
    LlmCancelled,
    PlayoutStarted,
    PlayoutDone,
    PlayoutStopped,
    ErrorEvent,
    ToolCallRequested,
    ToolCallStarted,
    ToolCallDeferred,
    ToolResult,
    EndOfTurnProbability,
)


@dataclass
class StepRecord:
    """What the simulated user actually did in one step, in session time."""

    index: int
    kind: str  # say, backchannel, noise, silence
    text: str
    start_ms: float
    end_ms: float
    segments: list[tuple[float, float]] = field(default_factory=list)
    bot_speaking_at_onset: bool = False


@dataclass
class BotInterval:
    reply_id: str
    start_ms: float
    end_ms: float


CONTIGUOUS_MS = FRAME_MS
"""Chunks of one reply less than a frame apart play as one stretch of audio. On the virtual clock
they abut exactly; on the wall clock a write lands a few milliseconds early or late."""


class RecordingSink:
    """The simulator's speaker: records when bot audio was audible, per reply."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.intervals: list[BotInterval] = []

    def write(self, pcm: bytes, sample_rate_hz: int, reply_id: str, ts_ms: float) -> None:
        end_ms = ts_ms + 1000.0 * (len(pcm) // 2) / sample_rate_hz
        last = self.intervals[-1] if self.intervals else None
        if last is not None and last.reply_id == reply_id and last.start_ms <= ts_ms <= last.end_ms + CONTIGUOUS_MS:
            last.end_ms = max(last.end_ms, end_ms)
        else:
            self.intervals.append(BotInterval(reply_id, ts_ms, end_ms))

    def flush(self) -> None:
        now = self.clock.now_ms()
        if self.intervals and self.intervals[-1].end_ms > now:
            self.intervals[-1].end_ms = now

    def speaking_at(self, t_ms: float) -> bool:
        return any(i.start_ms <= t_ms < i.end_ms for i in self.intervals)


@dataclass
class SimRun:
    """Everything one replay recorded; metrics are computed from it."""

    scenario: str
    speculation: bool
    params: PolicyParams
    steps: list[StepRecord]
    bot_audio: list[BotInterval]
    events: list[Event]
    duration_ms: float
    underruns: float
    tools_ran: list[tuple[str, dict[str, Any], float]] = field(default_factory=list)
    """(tool, arguments, start_ms) of every scripted tool call that really ran."""


def _pipeline_config(scenario: Scenario, params: PolicyParams) -> PipelineConfig:
    models = scenario.engines
    return PipelineConfig(
        policy=params,
        strict_policy=True,
        vad=VadParams(min_speech_ms=models.vad.onset_lag_ms, min_silence_ms=models.vad.offset_lag_ms),
        asr=AsrParams(partial_interval_ms=models.asr.partial_interval_ms),
    )


def policy_for(scenario: Scenario, base: PolicyParams, source: str) -> PolicyParams:
    """The base parameters with the scenario's own overrides applied; unknown names are errors."""
    try:
        return base.with_overrides(scenario.policy)
    except ValueError as exc:
        raise ScenarioError(f"{source}: policy: {exc}") from None


def _say_segments(step: Say) -> tuple[list[tuple[float, float]], list[tuple[float, str]]]:
    """Speech segments and word onsets of a turn, relative to its start."""
    if step.segments is not None:
        segs = [(s.start_ms, s.end_ms) for s in step.segments]
        words = [(t, w) for s in step.segments for t, w in s.words]
        if not words:  # spread the text over the segments
            words = _spread(step.say.split(), segs)
        return segs, words
    words_list = step.say.split()
    total_ms = step.duration_ms or DEFAULT_MS_PER_WORD * len(words_list)
    per_word = total_ms / len(words_list)
    pause_after = {p.after_word: p.ms for p in step.pauses}
    segs, words = [], []
    t = seg_start = 0.0
    for i, word in enumerate(words_list, start=1):
        words.append((t, word))
        t += per_word
        if i in pause_after:
            segs.append((seg_start, t))
            t += pause_after[i]
            seg_start = t
    segs.append((seg_start, t))
    return segs, words


def _spread(words: list[str], segs: list[tuple[float, float]]) -> list[tuple[float, str]]:
    total = sum(e - s for s, e in segs)
    out: list[tuple[float, str]] = []
    per_word = total / max(1, len(words))
    seg_i, offset = 0, 0.0
    for word in words:
        s, e = segs[seg_i]
        while s + offset >= e and seg_i + 1 < len(segs):
            seg_i, offset = seg_i + 1, 0.0
            s, e = segs[seg_i]
        out.append((s + offset, word))
        offset += per_word
    return out


class _BotWatch:
    """Follows bot playout from the bus, for the user's bot_start/bot_done anchors."""

    def __init__(self) -> None:
        self.speaking = False
        self.starts: list[float] = []
        self.ends: list[float] = []

    def see(self, event: Event) -> None:
        if isinstance(event, PlayoutStarted):
            self.speaking = True
            self.starts.append(event.ts_ms)
        elif isinstance(event, (PlayoutDone, PlayoutStopped)):
            if self.speaking:
                self.ends.append(event.ts_ms)
            self.speaking = False


class _User:
    def __init__(
        self,
        scenario: Scenario,
        timeline: SpeechTimeline,
        clock: Clock,
        watch: _BotWatch,
        sink: RecordingSink,
        replies: dict[str, str | ScriptedToolReply],
        end_of_turn: dict[str, float] | None = None,
    ) -> None:
        self.scenario, self.timeline, self.clock = scenario, timeline, clock
        self.watch, self.sink, self.replies = watch, sink, replies
        self.end_of_turn = {} if end_of_turn is None else end_of_turn
        """The scripted turn detector's answers, each turn's added as it begins."""
        self.steps: list[StepRecord] = []

    async def _until(self, t_ms: float) -> None:
        await self.clock.sleep_ms(t_ms - self.clock.now_ms())

    async def _anchor(self, start: Start | None, prev_end: float, first: bool) -> float:
        if start is None:
            start = Start(at_ms=FIRST_STEP_AT_MS) if first else Start(after="bot_done", gap_ms=400.0)
        if start.at_ms is not None:
            return max(start.at_ms, self.clock.now_ms())
        if start.after == "previous":
            return prev_end + start.gap_ms
        deadline = prev_end + start.wait_ms
        while self.clock.now_ms() < deadline:
            if start.after == "bot_start":
                if self.watch.speaking or any(t >= prev_end for t in self.watch.starts):
                    anchor = max((t for t in self.watch.starts), default=prev_end)
                    return max(anchor + start.gap_ms, self.clock.now_ms())
            elif not self.watch.speaking and any(t >= prev_end for t in self.watch.ends):
                return self.watch.ends[-1] + start.gap_ms
            await self.clock.sleep_ms(FRAME_MS)
        return self.clock.now_ms() + start.gap_ms

    async def run(self) -> None:
        prev_end = 0.0
        for index, step in enumerate(self.scenario.script):
            begin = await self._anchor(step.start, prev_end, first=index == 0)
            await self._until(begin)
            record = StepRecord(index, "", "", begin, begin, bot_speaking_at_onset=self.watch.speaking)
            if isinstance(step, Say):
                segs, words = _say_segments(step)
                record.kind, record.text = "say", step.say
                record.segments = [(begin + s, begin + e) for s, e in segs]
                for s, e in record.segments:
                    in_seg = tuple((begin + t, w) for t, w in words if s <= begin + t < e)
                    self.timeline.add(SpeechSpan(s, e, in_seg))
                record.end_ms = record.segments[-1][1]
                self.replies[step.say.strip()] = _scripted_reply(step.reply) or echo_reply(step.say)
                self.end_of_turn.update(end_of_turn_script(step, segs, words))
            elif isinstance(step, Backchannel):
                record.kind, record.text = "backchannel", step.backchannel
                record.end_ms = begin + step.duration_ms
                record.segments = [(begin, record.end_ms)]
                self.timeline.add(SpeechSpan(begin, record.end_ms, ((begin, step.backchannel),), kind="backchannel"))
            elif isinstance(step, Noise):
                record.kind = "noise"
                record.end_ms = begin + step.noise.duration_ms
                record.segments = [(begin, record.end_ms)]
                self.timeline.add(
                    SpeechSpan(begin, record.end_ms, (), probability=step.noise.probability, kind="noise")
                )
            elif isinstance(step, Silence):
                record.kind = "silence"
                record.end_ms = begin + step.silence_ms
            self.steps.append(record)
            await self._until(record.end_ms)
            prev_end = record.end_ms
        await self._until(prev_end + self.scenario.tail_ms)


def _scripted_reply(reply: str | ToolReply | None) -> str | ScriptedToolReply | None:
    if not isinstance(reply, ToolReply):
        return reply
    return ScriptedToolReply(
        preface=reply.preface,
        name=reply.call.name,
        arguments=json.dumps(reply.call.args),
        then=reply.then,
        call_format=reply.call.format,
        raw=reply.call.text,
    )


def scripted_tools(scenario: Scenario, clock: Clock, rng: random.Random) -> tuple[ToolRegistry, ScriptedToolbox]:
    """A registry of the scenario's scripted tools (those it registers), answering as its steps say."""
    toolbox = ScriptedToolbox(clock, rng)
    registry = ToolRegistry()
    registered: set[str] = set()
    for _, reply in tool_replies(scenario):
        call, tool = reply.call, reply.tool
        toolbox.behave(
            call.name, ScriptedToolBehaviour(dict(call.args), tool.latency_ms, tool.result, tool.error, tool.jitter)
        )
    for _, reply in tool_replies(scenario):
        call, tool = reply.call, reply.tool
        if tool.registered and call.name not in registered:
            registered.add(call.name)
            registry.add(
                toolbox.tool(
                    call.name,
                    read_only=not tool.side_effect,
                    timeout_ms=tool.timeout_ms,
                    params=None if tool.params is None else dict(tool.params),
                )
            )
    return registry, toolbox


async def _mic(ctx_session: Session) -> None:
    """The simulated microphone: one frame every FRAME_MS, stamped by sequence number."""
    clock, seq = ctx_session.clock, 0
    while True:
        ctx_session.ctx.emit(AudioFrame, pcm=SILENT_FRAME, sample_rate_hz=INPUT_SAMPLE_RATE_HZ, seq=seq)
        seq += 1
        await clock.sleep_ms(seq * FRAME_MS - clock.now_ms())


def engine_rng(seed: str, engine: str) -> random.Random:
    """One scripted engine's own random stream.

    Each engine draws its jitter from its own stream, so what one engine draws never depends on
    how many draws another made before it: a session replays the same timings whichever engines
    run in another process (a Ray host) and however their calls interleave in real time.
    """
    return random.Random(f"{seed}:{engine}")


def _scripted_engines(
    models: EngineModels,
    clock: Clock,
    seed: str,
    timeline: SpeechTimeline,
    sink: AudioSink,
    llm: LlmEngine | None = None,
) -> Engines:
    return Engines(
        vad=ScriptedVad(timeline),
        asr=ScriptedAsr(
            timeline,
            clock,
            engine_rng(seed, "asr"),
            models.asr.final_latency_ms,
            models.asr.partial_latency_ms,
            models.jitter,
        ),
        llm=llm
        or ScriptedLlm(clock, engine_rng(seed, "llm"), models.llm.ttft_ms, models.llm.tokens_per_s, models.jitter),
        tts=ScriptedTts(
            clock,
            engine_rng(seed, "tts"),
            models.tts.first_chunk_ms,
            models.tts.rtf,
            models.tts.ms_per_char,
            jitter=models.jitter,
        ),
        sink=sink,
    )


def host_engines(models: EngineModels, seed: str, clock: Clock, sink: AudioSink) -> Engines:
    """A scenario's scripted engines in another process (a Ray host), for the actors placed there.

    Only engines that need no simulated user run there (TTS): the scripted VAD, ASR and LLM read
    the user's script, so they stay in the simulator's process.
    """
    return _scripted_engines(models, clock, seed, SpeechTimeline(), sink)


async def _simulate(
    scenario: Scenario, params: PolicyParams, seed: int, make_session: SessionMaker | None = None
) -> SimRun:
    models = scenario.engines
    seed_key = f"{seed}:{scenario.name}"
    session = (
        Session(session_id=scenario.name, clock=LoopClock())
        if make_session is None
        else make_session(scenario.name, functools.partial(host_engines, models, seed_key))
    )
    clock: Clock = session.clock
    timeline = SpeechTimeline()
    sink = RecordingSink(clock)
    replies: dict[str, str | ScriptedToolReply] = {}

    def reply_for(user_text: str) -> str | ScriptedToolReply:
        # The reply scripted for the latest turn the user text ends with (speculation sees prefixes).
        for said, reply in reversed(list(replies.items())):
            if user_text.strip().endswith(said) or said.startswith(user_text.strip()):
                return reply
        return echo_reply(user_text)

    llm: LlmEngine
    tools: tuple[ToolRegistry, ScriptedToolbox] | None = None
    if tool_replies(scenario):
        tools = scripted_tools(scenario, clock, engine_rng(seed_key, "tools"))
        tool_llm = ScriptedToolLlm(
            clock,
            engine_rng(seed_key, "llm"),
            models.llm.ttft_ms,
            models.llm.tokens_per_s,
            models.jitter,
            reply_for,
            models.llm.continuation_ttft_ms,
        )
        # It streams call fragments beside text (a ToolCallingLlmEngine), which LlmActor takes;
        # Engines.llm is typed for text-only engines.
        llm = cast(LlmEngine, tool_llm)
    else:

        def text_reply(user_text: str) -> str:
            reply = reply_for(user_text)
            assert isinstance(reply, str), "no step of this scenario calls a tool"
            return reply

        llm = ScriptedLlm(
            clock, engine_rng(seed_key, "llm"), models.llm.ttft_ms, models.llm.tokens_per_s, models.jitter, text_reply
        )
    engines = _scripted_engines(models, clock, seed_key, timeline, sink, llm)
    end_of_turn: dict[str, float] = {}
    engines.turn_detector = sim_turn_detector(scenario, clock, engine_rng(seed_key, "turn_detector"), end_of_turn)
    recorder = session.bus.subscribe("sim-recorder", RECORDED_EVENTS, maxsize=1_000_000)
    actors = start_pipeline(
        session, engines, _pipeline_config(scenario, params), tools=None if tools is None else tools[0]
    )
    await session.ready(restart_clock=True)  # Ray hosts take seconds to start; the script waits for them
    watch = _BotWatch()
    events: list[Event] = []

    async def record() -> None:
        async for event in recorder:
            events.append(event)
            watch.see(event)

    session.supervisor.spawn(record, "recorder")
    session.supervisor.spawn(lambda: _mic(session), "mic")
    user = _User(scenario, timeline, clock, watch, sink, replies, end_of_turn)
    try:
        # The loader bounds max_duration_ms; min() keeps the bound for a scenario built in code.
        budget_ms = min(scenario.max_duration_ms, MAX_SIMULATED_MS)
        await asyncio.wait_for(user.run(), timeout=budget_ms / 1000.0)
    except TimeoutError:
        session.ctx.emit(ErrorEvent, source="simulator", message=f"scenario {scenario.name} hit max_duration_ms")
    await asyncio.sleep(0)
    duration_ms = clock.now_ms()
    while (event := recorder.get_nowait()) is not None:
        events.append(event)
    await session.stop()
    # The table broke its own promise: a bug, never a figure. On Ray the controller runs on a host,
    # so the violation arrives as its error event.
    controller: Any = actors.get("controller")
    if controller is not None and controller.violation is not None:
        raise controller.violation
    for event in events:
        if isinstance(event, ErrorEvent) and event.source == "controller" and event.message.startswith(RULE_VIOLATION):
            raise ControllerError(event.message)
    playout: Any = actors["playout"]
    return SimRun(
        scenario=scenario.name,
        speculation=params.speculation,
        params=params,
        steps=user.steps,
        bot_audio=sink.intervals,
        events=events,
        duration_ms=duration_ms,
        underruns=float(playout.underruns),
        tools_ran=[] if tools is None else list(tools[1].ran),
    )


def simulate(scenario: Scenario, params: PolicyParams, seed: int = 0) -> SimRun:
    """Replay one scenario on a fresh virtual-time loop; deterministic for (scenario, params, seed)."""
    result = run_virtual(_simulate(scenario, params, seed))
    assert isinstance(result, SimRun)
    return result
