"""`duplexer bench webrtc`: barge-in stop latency over a real WebRTC call vs in process, in one run.

The same scripted engines and policy answer the same user twice: once with the
user's frames fed straight onto the session bus, once over a WebRTC call on
this machine (aiortc server and caller in one process, Opus both ways). Each
trial interrupts the bot 1 s into a long reply. Stop latency is bot audio stop
minus user speech onset (Full-Duplex-Bench v1.5):

- in process: the end of the last frame written to the sink, minus the VAD's onset;
- WebRTC at the server: the end of the last frame the track handed to the sender,
  minus the VAD's onset, both on the session clock;
- WebRTC at the caller: when the bot falls silent in the received audio, minus when
  the caller sent the first frame of the interruption. It adds Opus, the network
  and both receivers' jitter buffers (aiortc holds 4 packets before decoding).

With ``--sessions N`` it instead measures concurrency: how many calls one server
process sustains in real time (see :func:`run_sessions` for the definition), and
the response and barge-in stop latencies each caller hears at that load.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import collections
import contextlib
import functools
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

from duplexer.actors.pipeline import start_pipeline
from duplexer.protocols.engine_factory import EngineFactory, scripted_engines
from duplexer.protocols.webrtc_call import Call, CallSettings
from duplexer.protocols.webrtc_client import SILENCE_DBFS, ReceivedAudio, WebRtcCaller
from duplexer.protocols.webrtc_server import ServerConfig, WebRtcServer
from duplexer.runtime.benchlog import DEFAULT_BENCH_LOG, append_benchmark
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
    caller_onset_s: float | None = None

    @property
    def stop_latency_ms(self) -> float:
        return self.stop_ms - self.onset_ms


@dataclass
class Run:
    mode: str
    trials: list[Trial] = field(default_factory=list)


class TimedSink:
    """The in-process speaker: when each reply's audio ends, cut short by a flush."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.end_ms: dict[str, float] = {}
        self._last: str | None = None

    def write(self, pcm: bytes, sample_rate_hz: int, reply_id: str, ts_ms: float) -> None:
        self.end_ms[reply_id] = ts_ms + 1000.0 * (len(pcm) // 2) / sample_rate_hz
        self._last = reply_id

    def flush(self) -> None:
        if self._last is not None:
            self.end_ms[self._last] = min(self.end_ms[self._last], self.clock.now_ms())


async def _next(sub: Subscription, kinds: tuple[type[Event], ...], reply_id: str | None = None) -> Event:
    async with asyncio.timeout(STEP_TIMEOUT_S):
        while True:
            event = await sub.get()
            if isinstance(event, kinds) and (reply_id is None or getattr(event, "reply_id", None) == reply_id):
                return event


Say = Callable[[bytes], Awaitable[float | None]]
"""Speak a clip as the user; returns when its first frame went out (caller's loop time, s), if known."""


async def _trials(
    sub: Subscription, say: Say, question: bytes, interruption: bytes, n: int, stop_of: Callable[[str], float]
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
        trial = Trial(started.reply_id, onset.speech_start_ms, stop_of(started.reply_id))
        trial.caller_onset_s = caller_onset_s
        trials.append(trial)
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
        trials = await _trials(sub, say, question, interruption, n, lambda reply_id: sink.end_ms[reply_id])
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

        def stop_of(reply_id: str) -> float:
            return call.track.replies[reply_id].last_sent_end_ms

        trials = await _trials(sub, say, question, interruption, n, stop_of)
        await asyncio.sleep(0.5)  # let the last reply's audio arrive
        at_caller = Run("WebRTC, at the caller")
        for trial in trials:
            onset_s = trial.caller_onset_s
            assert onset_s is not None
            silent_s = caller.audio.silence_from_s(onset_s)
            if silent_s is not None:
                at_caller.trials.append(Trial(trial.reply_id, 0.0, 1000.0 * (silent_s - onset_s)))
        return Run("WebRTC, at the server", trials), at_caller
    finally:
        with contextlib.suppress(Exception):
            await caller.close()
        await server.stop()


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    index = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(index), math.ceil(index)
    return ordered[low] + (ordered[high] - ordered[low]) * (index - low)


def _row(run: Run) -> list[object]:
    stops = [t.stop_latency_ms for t in run.trials]
    return [
        run.mode,
        len(stops),
        f"{_percentile(stops, 50):.0f}",
        f"{_percentile(stops, 90):.0f}",
        f"{statistics.fmean(stops):.0f}" if stops else "-",
    ]


async def bench(trials: int, question: bytes, interruption: bytes) -> tuple[Run, Run, Run]:
    engines = scripted_engines(transcripts=(), reply_for=lambda _: LONG_REPLY)
    in_process = await run_in_process(engines, question, interruption, trials)
    at_server, at_caller = await run_webrtc(engines, question, interruption, trials)
    return in_process, at_server, at_caller


# ------------------------------------------------------------------ concurrent sessions

SESSION_TRIALS = 3
"""Barge-ins per session in the concurrency search."""
PACE_BOUND_MS = 250.0
"""A caller's received audio keeps pace if no frame arrives more than this behind real time (:func:`pace_lag_ms`).

A single call on an idle machine already shows 80-140 ms: aiortc's receive path releases frames in bursts."""
PACE_WINDOW_S = 1.0
"""The sliding window of :func:`pace_lag_ms`."""
CONNECT_TIMEOUT_S = 30.0
CHILD_START_TIMEOUT_S = 30.0
POLL_S = 0.02


class HoleCounter:
    """Server side, per call: silent frames the track sent between two audio frames of the same reply."""

    def __init__(self, call: Call) -> None:
        self.call = call
        self.holes = 0
        self._reply: str | None = None
        self._gap = 0
        self._paused_in_gap = False
        track = call.track
        inner = track.recv

        def playout_paused() -> bool:
            actors = [a for a in call.session.supervisor.actors if a.name == "playout"]
            return bool(actors and getattr(actors[0], "paused", False))

        async def recv() -> av.AudioFrame:
            before = track.counts.audio_frames
            frame = await inner()
            if track.counts.audio_frames > before and track.replies:
                reply = next(reversed(track.replies))
                # Silence while the bot holds its reply for possible user speech is deliberate.
                if reply == self._reply and not self._paused_in_gap:
                    self.holes += self._gap
                self._reply, self._gap, self._paused_in_gap = reply, 0, False
            else:
                self._gap += 1
                self._paused_in_gap = self._paused_in_gap or playout_paused()
            return frame

        track.recv = recv  # type: ignore[method-assign]

    def stats(self) -> dict[str, float]:
        summary = self.call.summary()
        return {
            "track_holes": self.holes,
            "playout_underruns": self.call.session.metrics.count("playout.underrun"),
            "overflow_frames": summary["outbound"]["overflow_frames"],
            "inbound_resyncs": summary["inbound"]["resyncs"],
            "concealed_ms": summary["inbound"]["concealed_ms"],
        }


async def _serve_child(max_sessions: int) -> None:
    """The server process: scripted engines, 127.0.0.1, a free port; answers ``stats`` on stdin, quits on EOF."""
    from duplexer.runtime.logging import configure_logging

    configure_logging("ERROR")
    engines = scripted_engines(transcripts=(), reply_for=lambda _: LONG_REPLY)
    server = WebRtcServer(ServerConfig(host="127.0.0.1", port=0, max_sessions=max_sessions), engines)
    await server.start()
    watched: dict[str, HoleCounter] = {}
    loop = asyncio.get_running_loop()
    lag = {"max_ms": 0.0}

    async def watch() -> None:
        while True:
            for session_id, call in list(server.calls.items()):
                if session_id not in watched:
                    watched[session_id] = HoleCounter(call)
            before = loop.time()
            await asyncio.sleep(0.01)
            lag["max_ms"] = max(lag["max_ms"], 1000.0 * (loop.time() - before - 0.01))

    watcher = asyncio.create_task(watch())
    say(json.dumps({"url": server.url}))
    try:
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line or line.strip() == "quit":
                break
            calls = {sid: counter.stats() for sid, counter in watched.items()}
            say(json.dumps({"calls": calls, "cpu_s": time.process_time(), "loop_lag_max_ms": lag["max_ms"]}))
            lag["max_ms"] = 0.0
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await asyncio.wait_for(server.stop(), 20.0)


def serve_child_main() -> None:
    """Entry point of the server process (``python -c``); argv[1] is max sessions."""
    asyncio.run(_serve_child(int(sys.argv[1])))


class ServerProcess:
    """The server in its own process, so it gets a core of its own; always killed on exit."""

    def __init__(self, max_sessions: int) -> None:
        self.max_sessions = max_sessions
        self.proc: asyncio.subprocess.Process | None = None
        self.url = ""

    async def __aenter__(self) -> ServerProcess:
        code = "from duplexer.protocols.webrtc_bench import serve_child_main; serve_child_main()"
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            code,
            str(self.max_sessions),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            self.url = str((await self._reply(CHILD_START_TIMEOUT_S))["url"])
        except BaseException:
            await self._kill()
            raise
        return self

    async def _reply(self, timeout_s: float) -> dict[str, object]:
        assert self.proc is not None and self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout_s)
        if not line:
            raise RuntimeError("the server process exited")
        reply: dict[str, object] = json.loads(line)
        return reply

    async def stats(self) -> dict[str, object]:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(b"stats\n")
        await self.proc.stdin.drain()
        return await self._reply(10.0)

    async def _kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    async def __aexit__(self, *exc: object) -> None:
        assert self.proc is not None
        try:
            if self.proc.stdin is not None and self.proc.returncode is None:
                self.proc.stdin.write(b"quit\n")
                self.proc.stdin.close()
            await asyncio.wait_for(self.proc.wait(), 25.0)
        except (TimeoutError, OSError, ConnectionError):
            pass
        finally:
            await self._kill()


@dataclass
class SessionResult:
    response_ms: list[float] = field(default_factory=list)
    stop_ms: list[float] = field(default_factory=list)
    pace_lag_ms: float = 0.0
    error: str | None = None


@dataclass
class Level:
    sessions: int
    results: list[SessionResult] = field(default_factory=list)
    underruns: int = 0
    track_holes: int = 0
    playout_underruns: int = 0
    inbound_resyncs: int = 0
    server_cpu_pct: float = 0.0
    server_loop_lag_ms: float = 0.0
    error: str | None = None

    @property
    def worst_pace_lag_ms(self) -> float:
        return max((r.pace_lag_ms for r in self.results), default=math.nan)

    @property
    def failures(self) -> list[str]:
        reasons = [self.error] if self.error else []
        errors = [r.error for r in self.results if r.error]
        if errors:
            reasons.append(f"{len(errors)} session(s) failed: {errors[0]}")
        if self.underruns:
            reasons.append(f"{self.underruns} output underrun(s)")
        if self.results and self.worst_pace_lag_ms > PACE_BOUND_MS:
            reasons.append(f"received audio {self.worst_pace_lag_ms:.0f} ms behind real time")
        return reasons

    @property
    def sustained(self) -> bool:
        return not self.failures


def _first_loud(audio: ReceivedAudio, after_s: float) -> float | None:
    times, levels = audio.times_s, audio.levels_dbfs
    for i in range(bisect.bisect_left(times, after_s), min(len(times), len(levels))):
        if levels[i] > SILENCE_DBFS:
            return times[i]
    return None


def _silence_from(audio: ReceivedAudio, after_s: float, quiet_ms: float = 100.0) -> float | None:
    """Arrival of the first frame after ``after_s`` that begins ``quiet_ms`` of silence (as ReceivedAudio's)."""
    need = max(1, round(quiet_ms / FRAME_MS))
    times, levels = audio.times_s, audio.levels_dbfs
    run_start: float | None = None
    run = 0
    for i in range(bisect.bisect_left(times, after_s), min(len(times), len(levels))):
        if levels[i] > SILENCE_DBFS:
            run_start, run = None, 0
            continue
        if run_start is None:
            run_start = times[i]
        run += 1
        if run >= need:
            return run_start
    return None


def pace_lag_ms(times_s: Sequence[float], window_s: float = PACE_WINDOW_S) -> float:
    """How far the received stream fell behind real time: max over frames k of lag_k - min(lag_j, k - W <= j <= k).

    lag_k = arrival of frame k - arrival of frame 0 - k * 20 ms, and W is ``window_s`` of
    frames. A stream that keeps pace stays near 0 (network and jitter-buffer jitter only);
    a stall or a backlog shows as its length. The window lets the sender's schedule move
    by a frame at a reply's start (BotAudioTrack re-phasing) without it adding up.
    """
    if not times_s:
        return math.inf
    width = max(1, round(window_s * 1000.0 / FRAME_MS))
    lags = [t - times_s[0] - k * FRAME_MS / 1000.0 for k, t in enumerate(times_s)]
    window: collections.deque[int] = collections.deque()  # indices of increasing lags: a sliding minimum
    worst = 0.0
    for k, lag in enumerate(lags):
        while window and lags[window[-1]] >= lag:
            window.pop()
        window.append(k)
        if window[0] <= k - width:
            window.popleft()
        worst = max(worst, lag - lags[window[0]])
    return 1000.0 * worst


async def _wait_until(probe: Callable[[], float | None], timeout_s: float, what: str) -> float:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while (value := probe()) is None:
        if loop.time() > deadline:
            raise TimeoutError(f"no {what} within {timeout_s:.0f} s")
        await asyncio.sleep(POLL_S)
    return value


async def _session_script(
    caller: WebRtcCaller, question: bytes, interruption: bytes, trials: int, delay_s: float
) -> SessionResult:
    """Ask; then ``trials`` times: hear the reply start, interrupt it 1 s in, hear it stop."""
    result = SessionResult()
    loop = asyncio.get_running_loop()
    rate = INPUT_SAMPLE_RATE_HZ
    try:
        await asyncio.sleep(delay_s)
        onset_s = await caller.mic.say(question, rate)
        speech_end_s = onset_s + len(question) / 2 / rate
        for _ in range(trials):
            first_s = await _wait_until(
                functools.partial(_first_loud, caller.audio, speech_end_s), STEP_TIMEOUT_S, "bot audio"
            )
            result.response_ms.append(1000.0 * (first_s - speech_end_s))
            await asyncio.sleep(max(0.0, first_s + INTERRUPT_AFTER_S - loop.time()))
            onset_s = await caller.mic.say(interruption, rate)
            silent_s = await _wait_until(
                functools.partial(_silence_from, caller.audio, onset_s), STEP_TIMEOUT_S, "stop after the interruption"
            )
            result.stop_ms.append(1000.0 * (silent_s - onset_s))
            speech_end_s = onset_s + len(interruption) / 2 / rate
    except (TimeoutError, RuntimeError) as exc:
        result.error = str(exc) or type(exc).__name__
    return result


async def run_level(server: ServerProcess, sessions: int, question: bytes, interruption: bytes, trials: int) -> Level:
    """``sessions`` callers at once, starts spread over one second; every caller closed before returning."""
    level = Level(sessions)
    before = await server.stats()
    wall0 = time.monotonic()
    callers = [WebRtcCaller(server.url) for _ in range(sessions)]
    try:
        try:
            ids = await asyncio.wait_for(asyncio.gather(*(c.connect() for c in callers)), CONNECT_TIMEOUT_S)
        except (TimeoutError, RuntimeError, OSError) as exc:
            level.error = f"connecting {sessions} calls failed: {exc!r}"
            return level
        scripts = [_session_script(c, question, interruption, trials, i / sessions) for i, c in enumerate(callers)]
        level.results = list(await asyncio.gather(*scripts))
        await asyncio.sleep(0.5)  # the last frames in flight
        for caller, result in zip(callers, level.results, strict=True):
            result.pace_lag_ms = pace_lag_ms(caller.audio.times_s)
        after = await server.stats()
        calls = after["calls"]
        assert isinstance(calls, dict)
        for session_id in ids:
            stats = calls.get(session_id, {})
            level.track_holes += int(stats.get("track_holes", 0))
            level.playout_underruns += int(stats.get("playout_underruns", 0))
            level.underruns += int(stats.get("track_holes", 0) + stats.get("playout_underruns", 0))
            level.inbound_resyncs += int(stats.get("inbound_resyncs", 0))
        cpu = float(after["cpu_s"]) - float(before["cpu_s"])  # type: ignore[arg-type]
        level.server_cpu_pct = 100.0 * cpu / (time.monotonic() - wall0)
        level.server_loop_lag_ms = float(after["loop_lag_max_ms"])  # type: ignore[arg-type]
    finally:
        for caller in callers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(caller.close(), 5.0)
    return level


def session_levels(target: int) -> list[int]:
    """1, 2, 4, ... below ``target``, then ``target``."""
    levels, n = [], 1
    while n < target:
        levels.append(n)
        n *= 2
    return [*levels, target]


async def run_sessions(target: int, question: bytes, interruption: bytes, trials: int) -> list[Level]:
    """Search upward, stopping at the first level that is not sustained in real time.

    A level of N sessions is sustained in real time when every caller connects and
    completes its script (each reply heard within 15 s, each barge-in heard to stop),
    the server's output never underruns (the playout actor never starves mid-reply,
    and the outgoing track never sends a silent frame between two frames of the same
    reply), and every caller's received audio keeps pace: no frame arrives more than
    PACE_BOUND_MS behind the stream's real-time schedule (:func:`pace_lag_ms`).
    """
    levels: list[Level] = []
    async with ServerProcess(target) as server:
        for n in session_levels(target):
            level = await run_level(server, n, question, interruption, trials)
            levels.append(level)
            if not level.sustained:
                break
    return levels


def _p(values: Sequence[float], q: float) -> str:
    return f"{_percentile(values, q):.0f}" if values else "-"


def _level_row(level: Level) -> list[object]:
    response = [v for r in level.results for v in r.response_ms]
    stops = [v for r in level.results for v in r.stop_ms]
    return [
        level.sessions,
        "yes" if level.sustained else "no: " + "; ".join(level.failures),
        f"{level.underruns} ({level.playout_underruns} playout, {level.track_holes} track)",
        f"{level.worst_pace_lag_ms:.0f}" if level.results else "-",
        _p(response, 50),
        _p(response, 90),
        _p(stops, 50),
        _p(stops, 90),
        level.inbound_resyncs,
        f"{level.server_cpu_pct:.0f}",
    ]


def sessions_report(levels: list[Level], source: str, trials: int) -> tuple[list[str], list[list[object]], list[str]]:
    sustained = [level for level in levels if level.sustained]
    best = sustained[-1] if sustained else None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    header = [
        "sessions",
        "sustained",
        "underruns",
        "worst pace lag ms",
        "response p50 ms",
        "response p90 ms",
        "stop p50 ms",
        "stop p90 ms",
        "inbound resyncs",
        "server CPU %",
    ]
    notes = [
        f"one server process (scripted engines, 127.0.0.1) and N aiortc callers in this process, on {cores} cores; "
        "Opus both ways; search 1, 2, 4, ... up to N, stopping at the first level not sustained",
        "sustained in real time = every session completes, 0 output underruns at the server (playout actor "
        "starving mid-reply, or the track sending silence between two frames of one reply), and every caller's "
        f"received audio at most {PACE_BOUND_MS:.0f} ms behind real time (pace lag: a frame's arrival minus "
        f"20 ms x its index, above the least such lag of the previous {PACE_WINDOW_S:.0f} s)",
        f"each session: {source}, then {trials} barge-ins {INTERRUPT_AFTER_S:.0f} s into a reply; "
        "starts spread over 1 s",
        "response latency at the caller = first loud bot frame received - end of the user's speech sent; "
        "stop latency at the caller = start of 100 ms received silence - first frame of the interruption sent",
        "largest N sustained: "
        + (f"{best.sessions}" if best else "none")
        + (f" (first failure at {levels[-1].sessions})" if levels and not levels[-1].sustained else ""),
    ]
    return header, [_level_row(level) for level in levels], notes


def main(argv: Sequence[str]) -> int:
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
    parser.add_argument("--no-log", action="store_true", help=f"do not append the figures to {DEFAULT_BENCH_LOG}")
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
        return _main_sessions(args, argv, question, interruption, source)
    try:
        in_process, at_server, at_caller = asyncio.run(bench(args.trials, question, interruption))
    except (RuntimeError, TimeoutError) as exc:
        return fail(f"the benchmark did not complete: {exc}")
    p50_in = _percentile([t.stop_latency_ms for t in in_process.trials], 50)
    p50_server = _percentile([t.stop_latency_ms for t in at_server.trials], 50)
    p50_caller = _percentile([t.stop_latency_ms for t in at_caller.trials], 50)
    difference = p50_server - p50_in
    rows = [_row(in_process), _row(at_server), _row(at_caller)]
    notes = [
        "barge-in stop latency = bot audio stop - user speech onset (ms); scripted engines, EnergyVad, "
        "policy: bot audio pauses at speech onset, stops after min_barge_in_ms",
        f"user: {source}; the bot is interrupted {INTERRUPT_AFTER_S:.0f} s into a long reply",
        f"WebRTC at the server vs in process, p50: {difference:+.0f} ms ({difference / FRAME_MS:+.1f} frames), "
        f"ratio {p50_server / p50_in:.2f}",
        f"WebRTC at the caller adds Opus, loopback UDP and both aiortc jitter buffers: p50 {p50_caller:.0f} ms",
    ]
    header = ["path", "trials", "p50 ms", "p90 ms", "mean ms"]
    if args.no_log:
        from duplexer.runtime.benchlog import format_table

        text = format_table(header, rows) + "\n" + "\n".join(f"- {n}" for n in notes)
    else:
        text = append_benchmark("WebRTC barge-in stop latency", header, rows, notes, argv=["bench", "webrtc", *argv])
    say(text)
    return 0


def _main_sessions(
    args: argparse.Namespace, argv: Sequence[str], question: bytes, interruption: bytes, source: str
) -> int:
    from duplexer.cli_support import fail
    from duplexer.runtime.benchlog import format_table

    target = min(args.sessions, args.max_sessions)
    try:
        levels = asyncio.run(run_sessions(target, question, interruption, args.session_trials))
    except (RuntimeError, TimeoutError, OSError) as exc:
        return fail(f"the benchmark did not complete: {exc}")
    header, rows, notes = sessions_report(levels, source, args.session_trials)
    if target < args.sessions:
        notes.append(f"--sessions {args.sessions} capped at --max-sessions {args.max_sessions}")
    title = "WebRTC concurrent sessions sustained in real time"
    if args.no_log:
        text = format_table(header, rows) + "\n" + "\n".join(f"- {n}" for n in notes)
    else:
        text = append_benchmark(title, header, rows, notes, argv=["bench", "webrtc", *argv])
    say(text)
    return 0
