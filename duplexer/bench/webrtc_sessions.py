"""`duplexer bench webrtc --sessions N`: how many concurrent calls one server process sustains in real time.

The server runs in a child process; this process places the calls. See :func:`run_sessions` for
what "sustained" means, and :mod:`duplexer.bench.webrtc` for the barge-in figures of one call.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import functools
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import av

from duplexer.bench.log import append_benchmark, log_path_from_args
from duplexer.bench.webrtc import INTERRUPT_AFTER_S, LONG_REPLY, STEP_TIMEOUT_S, percentile
from duplexer.protocols.engine_factory import PIPER_LEAD_SILENCE_MS, scripted_engines
from duplexer.protocols.webrtc_call import Call
from duplexer.protocols.webrtc_client import WebRtcCaller
from duplexer.protocols.webrtc_server import ServerConfig, WebRtcServer
from duplexer.runtime.console import say
from duplexer.runtime.events import FRAME_MS, INPUT_SAMPLE_RATE_HZ

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
    engines = scripted_engines(transcripts=(), reply_for=lambda _: LONG_REPLY, lead_silence_ms=PIPER_LEAD_SILENCE_MS)
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
        code = "from duplexer.bench.webrtc_sessions import serve_child_main; serve_child_main()"
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
    """Heard at the caller: first audible bot sample received - end of the user's speech sent."""
    stop_ms: list[float] = field(default_factory=list)
    """Heard at the caller: last audible bot sample received - first frame of the interruption sent."""
    engine_first_chunk_ms: list[float] = field(default_factory=list)
    """The server's breakdown (its metrics messages): first bot frame sent - end of the user's speech."""
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
                functools.partial(caller.audio.heard.onset_s, speech_end_s), STEP_TIMEOUT_S, "bot audio"
            )
            result.response_ms.append(1000.0 * (first_s - speech_end_s))
            await asyncio.sleep(max(0.0, first_s + INTERRUPT_AFTER_S - loop.time()))
            onset_s = await caller.mic.say(interruption, rate)
            end_s = await _wait_until(
                functools.partial(caller.audio.heard.end_s, onset_s), STEP_TIMEOUT_S, "stop after the interruption"
            )
            result.stop_ms.append(1000.0 * (end_s - onset_s))
            speech_end_s = onset_s + len(interruption) / 2 / rate
    except (TimeoutError, RuntimeError) as exc:
        result.error = str(exc) or type(exc).__name__
    metrics = [m for m in caller.messages if m.get("type") == "metrics"]
    result.engine_first_chunk_ms = [float(v) for m in metrics if (v := m.get("engine_first_chunk_ms")) is not None]
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
    return f"{percentile(values, q):.0f}" if values else "-"


def _level_row(level: Level) -> list[object]:
    response = [v for r in level.results for v in r.response_ms]
    stops = [v for r in level.results for v in r.stop_ms]
    engine = [v for r in level.results for v in r.engine_first_chunk_ms]
    return [
        level.sessions,
        "yes" if level.sustained else "no: " + "; ".join(level.failures),
        f"{level.underruns} ({level.playout_underruns} playout, {level.track_holes} track)",
        f"{level.worst_pace_lag_ms:.0f}" if level.results else "-",
        _p(response, 50),
        _p(response, 90),
        _p(engine, 50),
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
        "heard response p50 ms",
        "heard response p90 ms",
        "engine first chunk p50 ms",
        "heard stop p50 ms",
        "heard stop p90 ms",
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
        "heard at the caller, to the sample (a received sample's time = its frame's arrival + its offset): "
        "response = first audible bot sample (>= -40 dBFS) received - end of the user's speech sent; "
        "stop = last audible bot sample received before 100 ms with none - first frame of the interruption sent",
        f"engine first chunk = the server's figure (metrics message): first bot frame sent - end of the user's "
        f"speech (VAD); each reply opens with {PIPER_LEAD_SILENCE_MS:.0f} ms of digital silence, as Piper's do",
        "largest N sustained: "
        + (f"{best.sessions}" if best else "none")
        + (f" (first failure at {levels[-1].sessions})" if levels and not levels[-1].sustained else ""),
    ]
    return header, [_level_row(level) for level in levels], notes


def main_sessions(
    args: argparse.Namespace, argv: Sequence[str], question: bytes, interruption: bytes, source: str
) -> int:
    from duplexer.cli_support import fail

    target = min(args.sessions, args.max_sessions)
    try:
        levels = asyncio.run(run_sessions(target, question, interruption, args.session_trials))
    except (RuntimeError, TimeoutError, OSError) as exc:
        return fail(f"the benchmark did not complete: {exc}")
    header, rows, notes = sessions_report(levels, source, args.session_trials)
    if target < args.sessions:
        notes.append(f"--sessions {args.sessions} capped at --max-sessions {args.max_sessions}")
    title = "WebRTC concurrent sessions sustained in real time"
    text = append_benchmark(
        title, header, rows, notes, log_path=log_path_from_args(args), argv=["bench", "webrtc", *argv]
    )
    say(text)
    return 0
