"""`duplexer bench executors`, its settings and pure helpers: ramps, percentiles and when a level is sustained."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from duplexer.runtime.events import FRAME_MS

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


def fmt(value: float, digits: int = 0) -> str:
    return "-" if not math.isfinite(value) else f"{round(value, digits) + 0.0:.{digits}f}"


def cpu_times() -> tuple[float, float] | None:
    """(busy, total) jiffies of the whole machine (Linux /proc/stat); None elsewhere."""
    try:
        fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    total = sum(fields[:8])
    return total - idle, total


def machine_cpu_pct(before: tuple[float, float] | None, after: tuple[float, float] | None) -> float:
    if before is None or after is None or after[1] <= before[1]:
        return math.nan
    return 100.0 * (after[0] - before[0]) / (after[1] - before[1])
