"""`duplexer bench webrtc`: barge-in stop latency over a real WebRTC call vs in process, in one run.

The same scripted engines and policy answer the same user twice: once with the
user's frames fed straight onto the session bus, once over a WebRTC call on
this machine (aiortc server and caller in one process, Opus both ways). Each
trial interrupts the bot 1 s into a long reply; each reply opens with Piper's
digital silence (:data:`~duplexer.protocols.engine_factory.PIPER_LEAD_SILENCE_MS`).
Stop latency is the end of the bot's last audible sample (at or above
:data:`~duplexer.kernels.loudness.AUDIBLE_DBFS`) minus the user's speech onset
(Full-Duplex-Bench v1.5):

- in process: the last audible sample written to the sink (cut at a flush), minus
  the VAD's onset;
- WebRTC at the server: the last audible sample the track handed to the sender,
  minus the VAD's onset, both on the session clock;
- WebRTC at the caller: the last audible sample received (its frame's arrival plus
  its offset in the frame) before 100 ms with none, minus when the caller sent the
  first frame of the interruption. It adds Opus, the network and both receivers'
  jitter buffers (aiortc holds 4 packets before decoding).

The engine's figure, the end of the last frame written or sent whatever it holds, is
kept beside the first two as a breakdown.

With ``--sessions N`` it instead measures concurrency: how many calls one server
process sustains in real time (see :func:`duplexer.bench.webrtc_sessions.run_sessions` for the definition), and
the response and barge-in stop latencies each caller hears at that load.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import statistics
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from duplexer.actors.pipeline import start_pipeline
from duplexer.bench.log import add_log_arguments, append_benchmark, log_path_from_args
from duplexer.kernels.loudness import audible_spans
from duplexer.protocols.engine_factory import PIPER_LEAD_SILENCE_MS, EngineFactory, scripted_engines
from duplexer.protocols.webrtc_call import CallSettings
from duplexer.protocols.webrtc_client import WebRtcCaller
from duplexer.protocols.webrtc_server import ServerConfig, WebRtcServer
from duplexer.runtime.bus import Subscription
from duplexer.runtime.clock import Clock
from duplexer.runtime.console import say
from duplexer.runtime.events import (
    FRAME_MS,
    FRAME_SAMPLES,
    INPUT_SAMPLE_RATE_HZ,
    AudioFrame,
    Event,
    PlayoutDone,
    PlayoutStarted,
    PlayoutStopped,
    VadSpeechStart,
)
from duplexer.runtime.session import Session

LONG_REPLY = (
    "Well, that is a long story, and I will tell it slowly, from the very beginning, with every "
    "detail that matters, and quite a few that do not matter at all, so please bear with me."
)
INTERRUPT_AFTER_S = 1.0
STEP_TIMEOUT_S = 15.0


def synthetic_speech(duration_ms: float, seed: int = 0) -> bytes:
    """A voice-like sound at 16 kHz: harmonics of 140 Hz at syllable rate, never silent inside."""
    rng = np.random.default_rng(seed)
    n = int(INPUT_SAMPLE_RATE_HZ * duration_ms / 1000)
    t = np.arange(n) / INPUT_SAMPLE_RATE_HZ
    voice = sum(np.sin(2 * np.pi * 140.0 * k * t + rng.uniform(0, 2 * np.pi)) / k for k in range(1, 6))
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * 4.0 * t)
    ramp = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.01)
    samples = 0.25 * voice / 2.3 * envelope * ramp
    return (samples * 32767).astype("<i2").tobytes()


@dataclass
class Trial:
    reply_id: str
    onset_ms: float
    stop_ms: float
    """The end of the last audible sample."""
    engine_stop_ms: float | None = None
    """The end of the last frame, whatever it holds."""
    caller_onset_s: float | None = None

    @property
    def stop_latency_ms(self) -> float:
        return self.stop_ms - self.onset_ms

    @property
    def engine_stop_latency_ms(self) -> float | None:
        return None if self.engine_stop_ms is None else self.engine_stop_ms - self.onset_ms


@dataclass
class Run:
    mode: str
    trials: list[Trial] = field(default_factory=list)


class TimedSink:
    """The in-process speaker: when each reply's audio, and its audible part, ends, cut short by a flush."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.end_ms: dict[str, float] = {}
        self.audible_end_ms: dict[str, float] = {}
        self._last: str | None = None

    def write(self, pcm: bytes, sample_rate_hz: int, reply_id: str, ts_ms: float) -> None:
        self.end_ms[reply_id] = ts_ms + 1000.0 * (len(pcm) // 2) / sample_rate_hz
        spans = audible_spans(np.frombuffer(pcm, dtype="<i2"), sample_rate_hz)
        if spans:
            self.audible_end_ms[reply_id] = ts_ms + spans[-1][1]
        self._last = reply_id

    def flush(self) -> None:
        last = self._last
        if last is not None:
            now_ms = self.clock.now_ms()
            self.end_ms[last] = min(self.end_ms[last], now_ms)
            if last in self.audible_end_ms:
                self.audible_end_ms[last] = min(self.audible_end_ms[last], now_ms)

    def stop_of(self, reply_id: str) -> tuple[float | None, float]:
        return self.audible_end_ms.get(reply_id), self.end_ms[reply_id]


async def _next(sub: Subscription, kinds: tuple[type[Event], ...], reply_id: str | None = None) -> Event:
    async with asyncio.timeout(STEP_TIMEOUT_S):
        while True:
            event = await sub.get()
            if isinstance(event, kinds) and (reply_id is None or getattr(event, "reply_id", None) == reply_id):
                return event


Say = Callable[[bytes], Awaitable[float | None]]
"""Speak a clip as the user; returns when its first frame went out (caller's loop time, s), if known."""
StopOf = Callable[[str], tuple[float | None, float]]
"""A reply's end: of its last audible sample (None if none was), and of its last frame."""


async def _trials(
    sub: Subscription, say: Say, question: bytes, interruption: bytes, n: int, stop_of: StopOf
) -> list[Trial]:
    """Ask, then n times: wait for a reply to play, interrupt it after 1 s, record its stop."""
    trials: list[Trial] = []
    await say(question)
    for _ in range(n):
        started = await _next(sub, (PlayoutStarted,))
        assert isinstance(started, PlayoutStarted)
        await asyncio.sleep(INTERRUPT_AFTER_S)
        caller_onset_s = await say(interruption)
        onset = await _next(sub, (VadSpeechStart,))
        assert isinstance(onset, VadSpeechStart)
        ended = await _next(sub, (PlayoutStopped, PlayoutDone), started.reply_id)
        if isinstance(ended, PlayoutDone):
            raise RuntimeError(f"reply {started.reply_id} played to its end: the interruption was not heard")
        audible_end_ms, end_ms = stop_of(started.reply_id)
        if audible_end_ms is None:
            raise RuntimeError(f"reply {started.reply_id} was stopped before anything of it was audible")
        trials.append(Trial(started.reply_id, onset.speech_start_ms, audible_end_ms, end_ms, caller_onset_s))
    return trials


async def run_in_process(engines: EngineFactory, question: bytes, interruption: bytes, n: int) -> Run:
    session = Session(session_id="bench-inprocess")
    sink = TimedSink(session.clock)
    built = engines(session.clock, sink)
    start_pipeline(session, built, CallSettings().pipeline)
    sub = session.bus.subscribe("bench", (VadSpeechStart, PlayoutStarted, PlayoutStopped, PlayoutDone), 100_000)
    pending = bytearray()

    async def mic() -> None:
        clock, seq = session.clock, 0
        frame_bytes = 2 * FRAME_SAMPLES
        while True:
            chunk = bytes(pending[:frame_bytes])
            del pending[:frame_bytes]
            chunk += bytes(frame_bytes - len(chunk))
            await clock.sleep_ms((seq + 1) * FRAME_MS - clock.now_ms())  # a frame exists once spoken
            session.ctx.emit(AudioFrame, pcm=chunk, sample_rate_hz=INPUT_SAMPLE_RATE_HZ, seq=seq)
            seq += 1

    async def say(pcm: bytes) -> float | None:
        pending.extend(pcm)
        return None

    session.supervisor.spawn(mic, "bench-mic")
    try:
        trials = await _trials(sub, say, question, interruption, n, sink.stop_of)
    finally:
        await session.stop()
    return Run("in process", trials)


async def run_webrtc(engines: EngineFactory, question: bytes, interruption: bytes, n: int) -> tuple[Run, Run]:
    server = WebRtcServer(ServerConfig(port=0), engines)
    await server.start()
    caller = WebRtcCaller(server.url)
    try:
        session_id = await caller.connect()
        call = server.calls[session_id]
        sub = call.session.bus.subscribe(
            "bench", (VadSpeechStart, PlayoutStarted, PlayoutStopped, PlayoutDone), 100_000
        )

        async def say(pcm: bytes) -> float:
            return await caller.mic.say(pcm, INPUT_SAMPLE_RATE_HZ)

        def stop_of(reply_id: str) -> tuple[float | None, float]:
            sent = call.track.replies[reply_id]
            return sent.last_audible_end_ms, sent.last_sent_end_ms

        trials = await _trials(sub, say, question, interruption, n, stop_of)
        await asyncio.sleep(0.5)  # let the last reply's audio arrive
        at_caller = Run("WebRTC, at the caller")
        for trial in trials:
            onset_s = trial.caller_onset_s
            assert onset_s is not None
            heard_end_s = caller.audio.heard.end_s(onset_s)
            if heard_end_s is not None:
                at_caller.trials.append(Trial(trial.reply_id, 0.0, 1000.0 * (heard_end_s - onset_s)))
        return Run("WebRTC, at the server", trials), at_caller
    finally:
        with contextlib.suppress(Exception):
            await caller.close()
        await server.stop()


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    index = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(index), math.ceil(index)
    return ordered[low] + (ordered[high] - ordered[low]) * (index - low)


def _row(run: Run) -> list[object]:
    stops = [t.stop_latency_ms for t in run.trials]
    engine = [e for t in run.trials if (e := t.engine_stop_latency_ms) is not None]
    return [
        run.mode,
        len(stops),
        f"{percentile(stops, 50):.0f}",
        f"{percentile(stops, 90):.0f}",
        f"{statistics.fmean(stops):.0f}" if stops else "-",
        f"{percentile(engine, 50):.0f}" if engine else "-",
    ]


async def bench(trials: int, question: bytes, interruption: bytes) -> tuple[Run, Run, Run]:
    engines = scripted_engines(transcripts=(), reply_for=lambda _: LONG_REPLY, lead_silence_ms=PIPER_LEAD_SILENCE_MS)
    in_process = await run_in_process(engines, question, interruption, trials)
    at_server, at_caller = await run_webrtc(engines, question, interruption, trials)
    return in_process, at_server, at_caller


def main(argv: Sequence[str]) -> int:
    from duplexer.bench.webrtc_sessions import SESSION_TRIALS, main_sessions
    from duplexer.cli_support import fail
    from duplexer.protocols.wav import WavError, read_wav
    from duplexer.runtime.logging import configure_logging

    parser = argparse.ArgumentParser(prog="duplexer bench webrtc", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=8, help="barge-ins per mode (default 8)")
    parser.add_argument(
        "--speech", type=Path, help="a wav of the user's question and interruption (default: a synthetic voice)"
    )
    parser.add_argument(
        "--sessions",
        type=int,
        help="instead: find the most concurrent calls sustained in real time, searching 1, 2, 4, ... up to this",
    )
    parser.add_argument("--max-sessions", type=int, default=32, help="cap on --sessions (default 32)")
    parser.add_argument(
        "--session-trials",
        type=int,
        default=SESSION_TRIALS,
        help=f"barge-ins per session with --sessions (default {SESSION_TRIALS})",
    )
    add_log_arguments(parser)
    args = parser.parse_args(list(argv))
    if args.trials < 1:
        return fail(f"--trials must be at least 1, got {args.trials}")
    if args.sessions is not None and args.sessions < 1:
        return fail(f"--sessions must be at least 1, got {args.sessions}")
    if args.max_sessions < 1:
        return fail(f"--max-sessions must be at least 1, got {args.max_sessions}")
    if args.session_trials < 1:
        return fail(f"--session-trials must be at least 1, got {args.session_trials}")
    configure_logging("ERROR")
    if args.speech is not None:
        try:
            recorded = read_wav(args.speech, INPUT_SAMPLE_RATE_HZ)
        except WavError as exc:
            return fail(str(exc))
        question = interruption = recorded
        source = f"speech from {args.speech}"
    else:
        question, interruption = synthetic_speech(1500.0), synthetic_speech(1000.0, seed=1)
        source = "a synthetic voice (1.5 s question, 1.0 s interruptions)"
    if args.sessions is not None:
        return main_sessions(args, argv, question, interruption, source)
    try:
        in_process, at_server, at_caller = asyncio.run(bench(args.trials, question, interruption))
    except (RuntimeError, TimeoutError) as exc:
        return fail(f"the benchmark did not complete: {exc}")
    p50_in = percentile([t.stop_latency_ms for t in in_process.trials], 50)
    p50_server = percentile([t.stop_latency_ms for t in at_server.trials], 50)
    p50_caller = percentile([t.stop_latency_ms for t in at_caller.trials], 50)
    difference = p50_server - p50_in
    rows = [_row(in_process), _row(at_server), _row(at_caller)]
    notes = [
        "barge-in stop latency as heard = end of the last audible bot sample (>= -40 dBFS) - user speech "
        "onset (ms); engine = end of the last bot frame written or sent, whatever it holds; scripted engines "
        f"(a hum opening with {PIPER_LEAD_SILENCE_MS:.0f} ms of digital silence, as Piper's replies do), EnergyVad, "
        "policy: bot audio pauses at speech onset, stops after min_barge_in_ms",
        f"user: {source}; the bot is interrupted {INTERRUPT_AFTER_S:.0f} s into a long reply",
        f"WebRTC at the server vs in process, p50: {difference:+.0f} ms ({difference / FRAME_MS:+.1f} frames), "
        f"ratio {p50_server / p50_in:.2f}",
        f"WebRTC at the caller adds Opus, loopback UDP and both aiortc jitter buffers: p50 {p50_caller:.0f} ms",
    ]
    header = ["path", "trials", "heard p50 ms", "heard p90 ms", "heard mean ms", "engine p50 ms"]
    text = append_benchmark(
        "WebRTC barge-in stop latency",
        header,
        rows,
        notes,
        log_path=log_path_from_args(args),
        argv=["bench", "webrtc", *argv],
    )
    say(text)
    return 0
