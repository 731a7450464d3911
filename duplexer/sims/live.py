"""Live conversations in real time: a scripted or recorded user against any engines.

The reactive user of the simulator speaks real audio here: each speech span it
utters is written into a microphone track that is streamed in 20 ms frames on
the wall clock. Everything the bot plays is kept, so the run can be written out
as a stereo wav (user left, bot right) and measured with the simulator's metrics.
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from duplexer.actors.context import ContextManager
from duplexer.actors.engines import AudioSink, Engines
from duplexer.actors.pipeline import PipelineConfig, start_pipeline
from duplexer.actors.scripted import SpeechSpan, SpeechTimeline
from duplexer.policies.state import Phase
from duplexer.runtime.clock import Clock, LoopClock
from duplexer.runtime.events import (
    FRAME_MS,
    FRAME_SAMPLES,
    INPUT_SAMPLE_RATE_HZ,
    AudioFrame,
    ErrorEvent,
    Event,
    HistoryUpdated,
    PlayoutStarted,
    SpeakRequest,
    StateChanged,
)
from duplexer.runtime.session import Session
from duplexer.sims.audio_timeline import played_speech_spans
from duplexer.sims.scenario import Scenario
from duplexer.sims.simulator import RECORDED_EVENTS, BotInterval, RecordingSink, SimRun, _BotWatch, _User

EngineFactory = Callable[[Clock, AudioSink], Engines]

QUIET_WAIT_MS = 60_000.0
"""Once the input has ended, how long a live run waits for the bot to go quiet (no reply generated or
played) before it ends anyway with an ErrorEvent: a reply is never cut off, but a run always ends."""

QUIET_SETTLE_MS = 300.0
"""The bot is quiet only after this long with no turn and no reply in progress: speech at the very end
of the input reaches the controller one VAD onset lag later, and its reply must not be cut off."""


class MicTrack:
    """The user's side as one growing PCM16 track at the pipeline rate."""

    def __init__(self, pcm: bytes = b"") -> None:
        self.samples = np.frombuffer(pcm, dtype="<i2").copy()

    def place(self, start_ms: float, pcm: bytes) -> None:
        start = round(start_ms * INPUT_SAMPLE_RATE_HZ / 1000)
        audio = np.frombuffer(pcm, dtype="<i2")
        end = start + len(audio)
        if end > len(self.samples):
            self.samples = np.concatenate([self.samples, np.zeros(end - len(self.samples), dtype="<i2")])
        self.samples[start:end] = audio

    def frame(self, seq: int) -> bytes:
        start = seq * FRAME_SAMPLES
        chunk = self.samples[start : start + FRAME_SAMPLES]
        if len(chunk) < FRAME_SAMPLES:
            chunk = np.concatenate([chunk, np.zeros(FRAME_SAMPLES - len(chunk), dtype="<i2")])
        return chunk.tobytes()


class SpokenTimeline(SpeechTimeline):
    """Each span the user utters takes the next prepared utterance's audio into the mic track."""

    def __init__(self, track: MicTrack, utterances: list[bytes], clock: Clock) -> None:
        super().__init__()
        self.track, self.pending, self.clock = track, deque(utterances), clock

    def add(self, span: SpeechSpan) -> None:
        super().add(span)
        if span.kind == "noise" or not self.pending:
            return
        # Audio cannot start in a frame the microphone already sent.
        next_frame_ms = (int(self.clock.now_ms() // FRAME_MS) + 1) * FRAME_MS
        self.track.place(max(span.start_ms, next_frame_ms), self.pending.popleft())


class KeepingSink(RecordingSink):
    """Records bot audio intervals and keeps the audio itself, placed at its play time."""

    def __init__(self, clock: Clock, rate_hz: int) -> None:
        super().__init__(clock)
        self.rate_hz = rate_hz
        self.pieces: list[tuple[float, bytes]] = []

    def write(self, pcm: bytes, sample_rate_hz: int, reply_id: str, ts_ms: float) -> None:
        super().write(pcm, sample_rate_hz, reply_id, ts_ms)
        self.pieces.append((ts_ms, pcm))

    def track(self) -> np.ndarray:
        if not self.pieces:
            return np.zeros(0, dtype="<i2")
        end_ms = max(ts + 1000.0 * (len(p) // 2) / self.rate_hz for ts, p in self.pieces)
        out = np.zeros(int(end_ms * self.rate_hz / 1000) + 1, dtype="<i2")
        for ts, pcm in self.pieces:
            start = round(ts * self.rate_hz / 1000)
            audio = np.frombuffer(pcm, dtype="<i2")
            out[start : start + len(audio)] = audio[: len(out) - start]
        # A stop cuts audio that was queued in a frame but never heard.
        for interval in self.intervals:
            cut = int(interval.end_ms * self.rate_hz / 1000)
            nxt = [i.start_ms for i in self.intervals if i.start_ms >= interval.end_ms]
            until = int(min(nxt) * self.rate_hz / 1000) if nxt else len(out)
            out[cut:until] = 0
        return out


@dataclass
class LiveRun:
    """A live conversation: the simulator's record plus the audio and the history."""

    run: SimRun
    user_track: np.ndarray
    bot_track: np.ndarray
    history: list[tuple[str, str]]
    history_events: list[HistoryUpdated] = field(default_factory=list)

    @functools.cached_property
    def heard(self) -> SimRun:
        """The run as the user heard it: the bot's audio stretches are where its played track is
        audible, each cut to the reply whose chunks it lies in, not where the chunks were written
        (a TTS reply may start with digital silence). Found once: the VAD reads the whole track."""
        heard: list[BotInterval] = []
        for start, end in played_speech_spans(self.bot_track, INPUT_SAMPLE_RATE_HZ):
            for played in self.run.bot_audio:
                if played.start_ms < end and start < played.end_ms:
                    heard.append(BotInterval(played.reply_id, max(start, played.start_ms), min(end, played.end_ms)))
        return replace(self.run, bot_audio=sorted(heard, key=lambda a: a.start_ms))


async def _mic(session: Session, track: MicTrack, stop: asyncio.Event) -> None:
    clock, seq = session.clock, 0
    while not stop.is_set():
        session.ctx.emit(AudioFrame, pcm=track.frame(seq), sample_rate_hz=INPUT_SAMPLE_RATE_HZ, seq=seq)
        seq += 1
        await clock.sleep_ms(seq * FRAME_MS - clock.now_ms())


class _ReplyWatch:
    """Whether a turn or a reply is in progress, from the controller's state and the playout."""

    def __init__(self, bot: _BotWatch) -> None:
        self.bot, self.phase = bot, Phase.SILENCE.value

    def see(self, event: Event) -> None:
        if isinstance(event, StateChanged):
            self.phase = event.new_state

    def quiet(self) -> bool:
        return self.phase == Phase.SILENCE.value and not self.bot.speaking


async def _until_quiet(clock: Clock, watch: _ReplyWatch, limit_ms: float) -> bool:
    """Wait until the bot has been quiet for QUIET_SETTLE_MS; False when ``limit_ms`` passes first."""
    deadline = clock.now_ms() + limit_ms
    quiet_since: float | None = None
    while clock.now_ms() < deadline:
        now = clock.now_ms()
        if not watch.quiet():
            quiet_since = None
        elif quiet_since is None:
            quiet_since = now
        if quiet_since is not None and now - quiet_since >= QUIET_SETTLE_MS:
            return True
        await clock.sleep_ms(FRAME_MS)
    return False


async def run_live(
    scenario: Scenario,
    utterances: list[bytes],
    make_engines: EngineFactory,
    config: PipelineConfig,
    system_prompt: str | None = None,
    output_rate_hz: int = INPUT_SAMPLE_RATE_HZ,
    on_event: Callable[[Event], None] | None = None,
    greeting: str = "",
    recording: bytes | None = None,
    quiet_wait_ms: float | None = QUIET_WAIT_MS,
    extra_events: tuple[type[Event], ...] = (),
) -> LiveRun:
    """Play ``scenario`` in real time, speaking ``utterances`` (one per speech span, in order), or,
    given a ``recording``, streaming it verbatim from time 0 as the microphone (the scenario then only
    records the user's turns). The run lasts past the scenario and the whole recording until the bot
    is quiet, so the reply in progress is heard to its end; at most ``quiet_wait_ms`` longer. With
    ``quiet_wait_ms=None`` it ends with the input, as a benchmark whose outputs must be exactly the
    input's length needs. ``extra_events``: more event types to keep in the run's events (a stage
    breakdown needs the VAD's, ASR's, LLM's and TTS's own; they are many, so only on request)."""
    clock = LoopClock()
    track = MicTrack(recording or b"")
    input_ms = 1000.0 * len(track.samples) / INPUT_SAMPLE_RATE_HZ
    timeline = SpokenTimeline(track, [] if recording is not None else utterances, clock)
    sink = KeepingSink(clock, output_rate_hz)
    engines = make_engines(clock, sink)
    context = ContextManager(system_prompt) if system_prompt else ContextManager()
    session = Session(session_id=scenario.name, clock=clock)
    recorder = session.bus.subscribe(
        "live-recorder", (*RECORDED_EVENTS, HistoryUpdated, *extra_events), maxsize=1_000_000
    )
    actors = start_pipeline(session, engines, config, context)
    watch = _BotWatch()
    replies = _ReplyWatch(watch)
    events: list[Event] = []
    history_events: list[HistoryUpdated] = []
    stop_mic = asyncio.Event()

    async def record() -> None:
        async for event in recorder:
            if isinstance(event, HistoryUpdated):
                history_events.append(event)
            else:
                events.append(event)
            watch.see(event)
            replies.see(event)
            if on_event is not None:
                on_event(event)

    session.supervisor.spawn(record, "recorder")
    session.supervisor.spawn(lambda: _mic(session, track, stop_mic), "mic")
    if greeting:
        await asyncio.sleep(0)  # let the actors subscribe before the bot speaks first
        session.ctx.emit(SpeakRequest, reply_id="greeting", text=greeting)
    user = _User(scenario, timeline, clock, watch, sink, {})
    try:
        await asyncio.wait_for(user.run(), timeout=scenario.max_duration_ms / 1000.0)
    except TimeoutError:
        session.ctx.emit(ErrorEvent, source="live", message=f"{scenario.name} hit max_duration_ms")
    await clock.sleep_ms(input_ms - clock.now_ms())
    if quiet_wait_ms is not None and not await _until_quiet(clock, replies, quiet_wait_ms):
        message = f"{scenario.name}: the bot was still replying {quiet_wait_ms / 1000:.0f} s after the input ended"
        session.ctx.emit(ErrorEvent, source="live", message=message)
    stop_mic.set()
    await asyncio.sleep(0)
    duration_ms = clock.now_ms()
    while (event := recorder.get_nowait()) is not None:
        if isinstance(event, HistoryUpdated):
            history_events.append(event)
        else:
            events.append(event)
    await session.stop()
    playout: Any = actors["playout"]
    run = SimRun(
        scenario=scenario.name,
        speculation=config.policy.speculation,
        params=config.policy,
        steps=user.steps,
        bot_audio=sink.intervals,
        events=events,
        duration_ms=duration_ms,
        underruns=float(playout.underruns),
    )
    return LiveRun(run, track.samples.copy(), sink.track(), list(context.history), history_events)


def first_audio_ms(run: SimRun) -> float | None:
    starts = [e.ts_ms for e in run.events if isinstance(e, PlayoutStarted)]
    return starts[0] if starts else None


def without_speculation(config: PipelineConfig) -> PipelineConfig:
    return replace(config, policy=replace(config.policy, speculation=False))
