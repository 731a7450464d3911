"""`duplexer demo` and `duplexer talk`: real conversations with real models, measured and written out.

The demo's user side is spoken by Piper: a question that needs a real answer, a
turn with a mid-turn pause, and a barge-in during a bot reply. It is streamed in
real time through the whole pipeline twice, with speculation on and off, so the
latency speculation saves is measured per turn in one run.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from duplexer.actors.context import ContextManager
from duplexer.actors.engines import AudioSink
from duplexer.actors.pipeline import PipelineConfig, start_pipeline
from duplexer.actors.tool_registry import ToolRegistry
from duplexer.actors.tts import TtsParams
from duplexer.policies.controller import PolicyParams
from duplexer.protocols.engine_factory import real_pipeline
from duplexer.runtime.clock import LoopClock
from duplexer.runtime.events import (
    FRAME_MS,
    INPUT_SAMPLE_RATE_HZ,
    AudioFrame,
    CancelReply,
    CommitReply,
    Event,
    LlmDone,
    SpeakRequest,
    StartReply,
)
from duplexer.runtime.session import Session
from duplexer.runtime.untrusted import slug
from duplexer.sims.audio_timeline import TURN_GAP_MS, speech_spans
from duplexer.sims.live import EngineFactory, KeepingSink, LiveRun, MicTrack, run_live, without_speculation
from duplexer.sims.metrics import percentiles, turn_facts
from duplexer.sims.persona import Persona
from duplexer.sims.scenario import MAX_SIMULATED_MS, Backchannel, Noise, Say, Scenario, Segment, Silence, Start
from duplexer.sims.simulator import RECORDED_EVENTS, BotInterval, SimRun, StepRecord
from duplexer.sims.speech_segments import speech_segments_pcm

USER_LENGTH_SCALE = 1.1
"""The demo's user speaks a little slower than the bot, in the same voice."""


@dataclass(frozen=True)
class DemoTurn:
    parts: tuple[str, ...]
    """Said with a pause between consecutive parts."""
    start: Start | None = None
    pause_ms: float = 450.0


DEMO_TURNS: tuple[DemoTurn, ...] = (
    DemoTurn(("Hello! What is the capital city of France?",)),
    DemoTurn(("Can you recommend", "a good book to read this weekend?")),
    DemoTurn(
        ("Wait, tell me a fun fact about cats instead.",),
        start=Start(after="bot_start", gap_ms=1500.0),
    ),
)


def trim(pcm: bytes, rate_hz: int = INPUT_SAMPLE_RATE_HZ) -> bytes:
    """Cut leading and trailing silence."""
    segments = speech_segments_pcm(np.frombuffer(pcm, dtype="<i2"), rate_hz)
    if not segments:
        return pcm
    start = int(segments[0][0] * rate_hz / 1000)
    end = int(segments[-1][1] * rate_hz / 1000)
    return pcm[2 * start : 2 * end]


def build_user_side(
    synthesize: Any, turns: Sequence[DemoTurn] = DEMO_TURNS, after_greeting: bool = False
) -> tuple[Scenario, list[bytes]]:
    """The scripted user as a scenario with exact speech timing, and its audio, one clip per segment."""
    steps: list[Say | Backchannel | Noise | Silence] = []
    clips: list[bytes] = []
    for index, turn in enumerate(turns):
        start = turn.start
        if index == 0 and after_greeting:
            start = Start(after="bot_done", gap_ms=400.0)
        segments, t = [], 0.0
        for part in turn.parts:
            clip = trim(synthesize(part))
            duration = 1000.0 * (len(clip) // 2) / INPUT_SAMPLE_RATE_HZ
            segments.append(Segment(start_ms=t, end_ms=t + duration, words=[(t, w) for w in part.split()]))
            clips.append(clip)
            t += duration + turn.pause_ms
        steps.append(Say(say=" ".join(turn.parts), segments=segments, start=start))
    scenario = Scenario(name="demo", script=steps, tail_ms=6000.0, max_duration_ms=120_000.0)
    return scenario, clips


def demo_config(
    persona: Persona | None, policy: PolicyParams | None = None, tools: ToolRegistry | None = None
) -> PipelineConfig:
    """Real models' settings, with ``policy`` (the default policy when None) and the session's ``tools``."""
    tts = TtsParams(default_instructions=persona.tts_instructions if persona else ())
    return replace(real_pipeline(policy or PolicyParams(), tts), tool_registry=tools)


def _reply_for_step(run: SimRun, index: int) -> str | None:
    steps = run.steps
    step = steps[index]
    next_start = steps[index + 1].start_ms if index + 1 < len(steps) else float("inf")
    for interval in run.bot_audio:
        if step.end_ms <= interval.start_ms < next_start:
            return interval.reply_id
    return None


def audio_after_commit_ms(run: SimRun, index: int) -> float | None:
    """From the commit of the reply that answered step ``index`` to that reply's first audio.

    With speculation off this is the time to generate and speak the first clause, which bounds the
    latency speculation can save; with it on, what is left of that time when the turn is committed.
    """
    reply_id = _reply_for_step(run, index)
    commits = [e.ts_ms for e in run.events if isinstance(e, CommitReply) and e.reply_id == reply_id]
    starts = [a.start_ms for a in run.bot_audio if a.reply_id == reply_id]
    if not commits or not starts:
        return None
    return round(min(starts) - commits[0], 1)


def _rounded(ms: float | None) -> float | None:
    return None if ms is None else round(ms, 1)


def turn_records(on: LiveRun, off: LiveRun | None) -> list[dict[str, Any]]:
    """Per user turn: what was said and heard, the reply, and its timing as heard (the engine's own
    time to the first chunk beside it)."""
    facts_on = turn_facts(on.heard)
    facts_off = turn_facts(off.heard) if off else None
    engine_on = turn_facts(on.run)
    scored = dict(zip(facts_on.step_of_turn, facts_on.turns, strict=True))
    by_reply: dict[str, dict[str, Any]] = {}
    heard_by_turn: dict[int | None, str] = {}
    for history in on.history_events:
        if history.role == "assistant":
            heard_by_turn.setdefault(history.turn_id, history.text)
    for event in on.run.events:
        if isinstance(event, CommitReply):
            info = by_reply.setdefault(event.reply_id, {})
            info["user_transcript"] = event.user_text
            # An interrupted reply's generation is cancelled (no LlmDone): what was played stands for it.
            info.setdefault("bot_reply", heard_by_turn.get(event.turn_id))
        elif isinstance(event, LlmDone):
            by_reply.setdefault(event.reply_id, {})["bot_reply"] = event.text
    committed = {e.reply_id for e in on.run.events if isinstance(e, CommitReply)}
    cancelled = {e.reply_id for e in on.run.events if isinstance(e, CancelReply)}
    records: list[dict[str, Any]] = []
    for i, step in enumerate(on.run.steps):
        if step.kind != "say":
            continue
        reply_id = _reply_for_step(on.run, i)
        info = by_reply.get(reply_id or "", {})
        turn_id = int(reply_id[1:].split("r")[0]) if reply_id else None
        spec = [e for e in on.run.events if isinstance(e, StartReply) and e.speculative and e.turn_id == turn_id]
        spec_ids = {e.reply_id for e in spec}
        latency = facts_on.latencies_ms.get(i)
        saved = None
        if facts_off is not None and latency is not None and i in facts_off.latencies_ms:
            saved = round(facts_off.latencies_ms[i] - latency, 1)
        records.append(
            {
                "turn": len(records) + 1,
                "user_said": step.text,
                "user_transcript": info.get("user_transcript"),
                "bot_reply": info.get("bot_reply"),
                "response_latency_ms": _rounded(latency),
                "engine_first_chunk_ms": _rounded(engine_on.first_chunk_ms.get(i)),
                "barge_in_stop_ms": _rounded(facts_on.barge_in_stops_ms.get(i)),
                "talk_over_ms": _rounded(scored[i].talk_over_ms),
                "pause_taken_over": scored[i].pause_taken_over,
                "speculation": {
                    "started": len(spec_ids),
                    "committed": len(spec_ids & committed),
                    "discarded": len((spec_ids & cancelled) - committed),
                },
                "latency_saved_ms": saved,
                "audio_after_commit_ms": {
                    "speculation_on": audio_after_commit_ms(on.run, i),
                    "speculation_off": audio_after_commit_ms(off.run, i) if off else None,
                },
            }
        )
    return records


def summarize_demo(records: list[dict[str, Any]], on: LiveRun, off: LiveRun | None) -> dict[str, Any]:
    latencies = [r["response_latency_ms"] for r in records if r["response_latency_ms"] is not None]
    stops = [r["barge_in_stop_ms"] for r in records if r["barge_in_stop_ms"] is not None]
    saved = [r["latency_saved_ms"] for r in records if r["latency_saved_ms"] is not None]
    facts = turn_facts(on.heard)
    engine = [r["engine_first_chunk_ms"] for r in records if r["engine_first_chunk_ms"] is not None]
    return {
        "response_latency_ms": percentiles(latencies, (10, 50, 90)),
        "engine_first_chunk_ms": percentiles(engine, (50,)),
        "talk_over_ms": round(sum(t.talk_over_ms for t in facts.turns), 1),
        "pause_takeovers": f"{facts.pause_takeovers}/{facts.paused_turns}",
        "barge_in_stop_ms": percentiles(stops, (50, 90)),
        "latency_saved_ms": percentiles(saved, (50,)),
        "output_underruns": int(on.run.underruns + (off.run.underruns if off else 0)),
        "errors": [e.message for e in on.run.events if type(e).__name__ == "ErrorEvent"],  # type: ignore[attr-defined]
    }


def pooled_figures(results: Sequence[tuple[list[dict[str, Any]], dict[str, Any]]]) -> dict[str, Any]:
    """`bench demo`'s figures over every turn of every repetition: ``results`` holds each repetition's
    turn records and summary. A p50 of one run's three turns is its middle turn; pooled, it is a median."""
    records = [r for turn_list, _ in results for r in turn_list]

    def values(get: Callable[[dict[str, Any]], float | None]) -> list[float]:
        return [v for v in map(get, records) if v is not None]

    return {
        "turns": len(records),
        "response_latency_ms": percentiles(values(lambda r: r["response_latency_ms"]), (50, 90)),
        "engine_first_chunk_ms": percentiles(values(lambda r: r.get("engine_first_chunk_ms")), (50, 90)),
        "talk_over_ms": round(sum(values(lambda r: r.get("talk_over_ms"))), 1),
        "latency_saved_ms": percentiles(values(lambda r: r["latency_saved_ms"]), (50,)),
        "barge_in_stop_ms": percentiles(values(lambda r: r["barge_in_stop_ms"]), (50,)),
        "output_underruns": sum(int(summary["output_underruns"]) for _, summary in results),
        "audio_after_commit_off_ms": percentiles(
            values(lambda r: r["audio_after_commit_ms"]["speculation_off"]), (50,)
        ),
        "audio_after_commit_on_ms": percentiles(values(lambda r: r["audio_after_commit_ms"]["speculation_on"]), (50,)),
        "latency_saved_p50_per_run": [summary["latency_saved_ms"]["p50"] for _, summary in results],
    }


def write_outputs(
    out_dir: Path, name: str, on: LiveRun, records: list[dict[str, Any]], summary: dict[str, Any]
) -> None:
    from duplexer.protocols.wav import interleave_stereo, write_wav
    from duplexer.sims.plots import plot_timeline

    out_dir.mkdir(parents=True, exist_ok=True)
    bot = on.bot_track
    write_wav(out_dir / f"{name}.wav", interleave_stereo(on.user_track, bot), INPUT_SAMPLE_RATE_HZ, channels=2)
    document = {"turns": records, "summary": summary, "history": [list(m) for m in on.history]}
    (out_dir / f"{name}.json").write_text(json.dumps(document, indent=2) + "\n")
    plot_timeline(on.run, out_dir / f"{name}_timeline.png")


def table(records: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    def fmt(v: Any) -> str:
        return "-" if v is None else f"{v:.0f}"

    lines = [
        f"{'turn':>4}  {'heard':>6}  {'engine':>6}  {'saved':>6}  {'stop':>5}  {'over':>5}  spec s/c/d  "
        "user (heard) -> bot",
        "-" * 110,
    ]
    for r in records:
        spec = r["speculation"]
        lines.append(
            f"{r['turn']:>4}  {fmt(r['response_latency_ms']):>6}  {fmt(r['engine_first_chunk_ms']):>6}  "
            f"{fmt(r['latency_saved_ms']):>6}  {fmt(r['barge_in_stop_ms']):>5}  {fmt(r['talk_over_ms']):>5}  "
            f"{spec['started']:>4}/{spec['committed']}/{spec['discarded']:<3}  "
            f"{r['user_transcript']!r} -> {(r['bot_reply'] or '')[:60]!r}"
        )
    lat, stop, saved = summary["response_latency_ms"], summary["barge_in_stop_ms"], summary["latency_saved_ms"]
    lines += [
        "",
        f"response latency as heard p50 {fmt(lat['p50'])} ms (p90 {fmt(lat['p90'])}; engine's first chunk p50 "
        f"{fmt(summary['engine_first_chunk_ms']['p50'])}), latency saved p50 {fmt(saved['p50'])} ms, "
        f"barge-in stop p50 {fmt(stop['p50'])} ms, talk-over {fmt(summary['talk_over_ms'])} ms, "
        f"turns with a pause taken over {summary['pause_takeovers']}, output underruns {summary['output_underruns']}",
        "heard: bot audible onset - end of the user's turn; engine: to the first TTS chunk (docs/metrics.md)",
    ]
    return "\n".join(lines)


async def run_demo(
    make_engines: EngineFactory,
    synthesize: Any,
    persona: Persona | None = None,
    compare: bool = True,
    turns: Sequence[DemoTurn] = DEMO_TURNS,
    speculation_first: bool = True,
    policy: PolicyParams | None = None,
    tools: ToolRegistry | None = None,
) -> tuple[LiveRun, LiveRun | None, list[dict[str, Any]], dict[str, Any]]:
    """The demo conversation with speculation on and, with ``compare``, off; ``speculation_first``
    says which runs first (a benchmark alternates it, so neither run always meets the warmer caches)."""
    greeting = persona.greeting if persona else ""
    scenario, clips = build_user_side(synthesize, turns, after_greeting=bool(greeting))
    config = demo_config(persona, policy, tools)
    prompt = persona.system_prompt if persona else None

    async def live(speculation: bool) -> LiveRun:
        chosen = config if speculation else without_speculation(config)
        return await run_live(scenario, clips, make_engines, chosen, prompt, greeting=greeting)

    off = None
    if compare and not speculation_first:
        off = await live(False)
    on = await live(True)
    if compare and speculation_first:
        off = await live(False)
    records = turn_records(on, off)
    return on, off, records, summarize_demo(records, on, off)


def group_turns(segments: Sequence[tuple[float, float]], turn_gap_ms: float) -> list[list[tuple[float, float]]]:
    """Speech segments grouped into user turns: a new turn after a silence of ``turn_gap_ms``."""
    groups: list[list[tuple[float, float]]] = []
    for seg in segments:
        if groups and seg[0] - groups[-1][-1][1] < turn_gap_ms:
            groups[-1].append(seg)
        else:
            groups.append([seg])
    return groups


def recording_scenario(
    pcm: bytes, name: str, turn_gap_ms: float = TURN_GAP_MS, source: str | None = None
) -> tuple[Scenario, list[bytes]]:
    """A recorded user as a scenario: speech found as ``duplexer score`` finds it (Silero VAD, edges
    refined to the audible sample), a new turn after a long gap. A recording with no speech is
    refused (a ValueError naming ``source``, else ``name``): there is nothing to answer, and a run
    over it would only stream silence for the file's length.

    No tail: :func:`run_live` given the recording itself lasts to its end and then until the bot is
    quiet, so neither trailing silence nor the reply in progress is cut off."""
    samples = np.frombuffer(pcm, dtype="<i2")
    where = source or name
    if not samples.any():
        raise ValueError(f"{where}: the recording is silent (every sample is zero): no user speech to answer")
    segments = speech_spans(samples, INPUT_SAMPLE_RATE_HZ)
    if not segments:
        raise ValueError(f"{where}: no speech found in the recording: no user speech to answer")
    steps: list[Say | Backchannel | Noise | Silence] = []
    clips: list[bytes] = []
    for group in group_turns(segments, turn_gap_ms):
        t0 = group[0][0]
        segs = [Segment(start_ms=s - t0, end_ms=e - t0) for s, e in group]
        steps.append(Say(say="(recorded speech)", segments=segs, start=Start(at_ms=t0)))
        for s, e in group:
            clips.append(pcm[2 * int(s * INPUT_SAMPLE_RATE_HZ / 1000) : 2 * int(e * INPUT_SAMPLE_RATE_HZ / 1000)])
    duration_ms = 1000.0 * (len(pcm) // 2) / INPUT_SAMPLE_RATE_HZ
    budget_ms = min(duration_ms + 60_000.0, MAX_SIMULATED_MS)
    return Scenario(name=slug(name, "recording"), script=steps, tail_ms=0.0, max_duration_ms=budget_ms), clips


# ------------------------------------------------------------------ live microphone


class TeeSink:
    """Bot audio to a recorder (for the outputs) and, when there is one, a speaker."""

    def __init__(self, recorder: KeepingSink, speaker: AudioSink | None) -> None:
        self.recorder, self.speaker = recorder, speaker

    def write(self, pcm: bytes, sample_rate_hz: int, reply_id: str, ts_ms: float) -> None:
        self.recorder.write(pcm, sample_rate_hz, reply_id, ts_ms)
        if self.speaker is not None:
            self.speaker.write(pcm, sample_rate_hz, reply_id, ts_ms)

    def flush(self) -> None:
        self.recorder.flush()
        if self.speaker is not None:
            self.speaker.flush()


def live_steps(
    samples: np.ndarray, bot_audio: Sequence[BotInterval], turn_gap_ms: float = TURN_GAP_MS
) -> list[StepRecord]:
    """The user's turns in a live recording, found afterwards the way ``talk FILE.wav`` finds them."""
    steps: list[StepRecord] = []
    for group in group_turns(speech_spans(samples, INPUT_SAMPLE_RATE_HZ), turn_gap_ms):
        start, end = group[0][0], group[-1][1]
        over_bot = any(i.start_ms <= start < i.end_ms for i in bot_audio)
        steps.append(StepRecord(len(steps), "say", "(live speech)", start, end, list(group), over_bot))
    return steps


async def run_microphone(
    devices: Any,
    make_engines: EngineFactory,
    config: PipelineConfig,
    system_prompt: str | None = None,
    stop: asyncio.Event | None = None,
    greeting: str = "",
    on_event: Callable[[Event], None] | None = None,
) -> LiveRun:
    """Talk live: microphone frames into the pipeline, bot audio to the speaker, until ``stop`` is set
    (``talk_live`` sets it on Ctrl-C). Frame ``k`` of the microphone is session time ``k * FRAME_MS``,
    numbered from the session clock at the first frame, so the VAD's times match the controller's."""
    from duplexer.protocols.microphone import MicrophoneInput, SpeakerOutput

    stop = stop or asyncio.Event()
    clock = LoopClock()
    recorder_sink = KeepingSink(clock, INPUT_SAMPLE_RATE_HZ)
    speaker = SpeakerOutput(devices) if devices.output_info is not None else None
    engines = make_engines(clock, TeeSink(recorder_sink, speaker))
    context = ContextManager(system_prompt) if system_prompt else ContextManager()
    session = Session(session_id="mic", clock=clock)
    recorder = session.bus.subscribe("mic-recorder", RECORDED_EVENTS, maxsize=1_000_000)
    actors = start_pipeline(session, engines, config, context)
    events: list[Event] = []
    track = MicTrack()
    mic = MicrophoneInput(devices)

    async def record() -> None:
        async for event in recorder:
            events.append(event)
            if on_event is not None:
                on_event(event)

    async def pump() -> None:
        seq: int | None = None
        async for pcm in mic.frames():
            if seq is None:
                seq = max(0, int(clock.now_ms() // FRAME_MS) - 1)
            track.place(seq * FRAME_MS, pcm)
            session.ctx.emit(AudioFrame, pcm=pcm, sample_rate_hz=INPUT_SAMPLE_RATE_HZ, seq=seq)
            seq += 1

    session.supervisor.spawn(record, "recorder")
    mic.start()
    session.supervisor.spawn(pump, "mic")
    if greeting:
        await asyncio.sleep(0)
        session.ctx.emit(SpeakRequest, reply_id="greeting", text=greeting)
    try:
        await stop.wait()
    finally:
        mic.close()
        await asyncio.sleep(0)
        duration_ms = clock.now_ms()
        while (event := recorder.get_nowait()) is not None:
            events.append(event)
        await session.stop()
        if speaker is not None:
            speaker.close()
    playout: Any = actors["playout"]
    run = SimRun(
        scenario="mic",
        speculation=config.policy.speculation,
        params=config.policy,
        steps=live_steps(track.samples, recorder_sink.intervals),
        bot_audio=recorder_sink.intervals,
        events=events,
        duration_ms=duration_ms,
        underruns=float(playout.underruns),
    )
    return LiveRun(run, track.samples.copy(), recorder_sink.track(), list(context.history))


async def talk_live(
    devices: Any,
    make_engines: EngineFactory,
    config: PipelineConfig,
    system_prompt: str | None = None,
    greeting: str = "",
) -> LiveRun:
    """:func:`run_microphone` until Ctrl-C (SIGINT), which ends the session cleanly."""
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    try:
        return await run_microphone(devices, make_engines, config, system_prompt, stop, greeting)
    finally:
        loop.remove_signal_handler(signal.SIGINT)


def with_policy(config: PipelineConfig, **changes: Any) -> PipelineConfig:
    return replace(config, policy=replace(config.policy, **changes))
