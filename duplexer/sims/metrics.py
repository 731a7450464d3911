"""Turn-taking metrics from a simulator run, as defined in ARCHITECTURE.md section 5.

- response latency: bot first audio - user turn end (p10/p50/p90 over answered turns);
- barge-in stop latency: bot audio stop - user speech onset, for speech over the bot
  that interrupted it (p50/p90);
- pause takeover rate: share of mid-turn user pauses in which the bot starts speaking;
- backchannel false-stop rate: share of backchannels over bot speech that stop the bot;
- speculation: started, committed, discarded, commit rate, discarded tokens;
- latency saved: the same turn's latency with speculation off minus on, both in one run.

Tool calls (only in runs that have them): the calls and failures; each call's latency and how
much of it was hidden behind bot speech; dead air, the total gap in the bot audio of a reply
that called a tool; and side-effecting calls that ran, or were prevented (after a barge-in, or
because their reply was discarded otherwise).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from duplexer.actors.tool_calls import ToolStatus
from duplexer.runtime.events import (
    CancelReply,
    CommitReply,
    ErrorEvent,
    LlmCancelled,
    LlmDone,
    PlayoutStopped,
    StartReply,
    ToolCallRequested,
    ToolCallStarted,
    ToolResult,
)
from duplexer.sims.simulator import BotInterval, SimRun

BACKCHANNEL_STOP_WINDOW_MS = 1000.0
"""A bot stop within this long after a backchannel ends is blamed on the backchannel."""


def _round(value: float) -> float:
    return round(float(value), 1)


def percentiles(values: Sequence[float], qs: Iterable[int]) -> dict[str, float | None]:
    """``{"p50": ...}``; None where there are no values."""
    if not values:
        return {f"p{q}": None for q in qs}
    arr = np.asarray(values, dtype=float)
    return {f"p{q}": _round(np.percentile(arr, q)) for q in qs}


def _rate(hits: int, total: int) -> float | None:
    return None if total == 0 else round(hits / total, 4)


@dataclass
class TurnFacts:
    """Raw per-run facts, pooled across scenarios for the aggregate."""

    latencies_ms: dict[int, float] = field(default_factory=dict)  # say-step index -> latency
    barge_in_stops_ms: dict[int, float] = field(default_factory=dict)  # say-step index -> stop latency
    pauses: int = 0
    pause_takeovers: int = 0
    backchannels: int = 0
    backchannel_stops: int = 0
    spec_started: int = 0
    spec_committed: int = 0
    spec_discarded: int = 0
    discarded_tokens: int = 0
    unanswered_turns: int = 0
    errors: int = 0
    underruns: float = 0.0
    tool_calls: int = 0
    tool_failures: int = 0
    tool_latencies_ms: list[float] = field(default_factory=list)
    tool_hidden_ms: list[float] = field(default_factory=list)
    tool_dead_air_ms: list[float] = field(default_factory=list)
    side_effects_run: int = 0
    side_effects_prevented_barge_in: int = 0
    side_effects_prevented_other: int = 0


def turn_facts(run: SimRun) -> TurnFacts:
    facts = TurnFacts(underruns=run.underruns)
    audio = run.bot_audio
    steps = run.steps
    stopped_at = [e.ts_ms for e in run.events if isinstance(e, PlayoutStopped)]

    for i, step in enumerate(steps):
        next_start = steps[i + 1].start_ms if i + 1 < len(steps) else float("inf")
        if step.kind == "say":
            # response: the first bot audio to start after the turn ends, before the user's next step
            starts = [a.start_ms for a in audio if step.end_ms <= a.start_ms < next_start]
            if starts:
                facts.latencies_ms[i] = starts[0] - step.end_ms
            else:
                facts.unanswered_turns += 1
            for (_, pause_start), (pause_end, _) in zip(step.segments, step.segments[1:], strict=False):
                facts.pauses += 1
                if any(pause_start <= a.start_ms < pause_end for a in audio):
                    facts.pause_takeovers += 1
        if step.kind == "say" and step.bot_speaking_at_onset:
            onset = step.start_ms
            playing = [a.reply_id for a in audio if a.start_ms <= onset < a.end_ms]
            if playing and any(onset <= t <= step.end_ms for t in stopped_at):
                # the stopped reply's last audio, however many stretches it was played in
                ended = max(a.end_ms for a in audio if a.reply_id == playing[0])
                facts.barge_in_stops_ms[i] = ended - onset
        if step.kind == "backchannel" and step.bot_speaking_at_onset:
            facts.backchannels += 1
            window_end = step.end_ms + BACKCHANNEL_STOP_WINDOW_MS
            if any(step.start_ms <= t <= window_end for t in stopped_at):
                facts.backchannel_stops += 1

    speculative: set[str] = set()
    committed: set[str] = set()
    tokens: dict[str, int] = {}
    cancelled: set[str] = set()
    for event in run.events:
        if isinstance(event, StartReply) and event.speculative:
            speculative.add(event.reply_id)
        elif isinstance(event, CommitReply):
            committed.add(event.reply_id)
        elif isinstance(event, CancelReply):
            cancelled.add(event.reply_id)
        elif isinstance(event, (LlmDone, LlmCancelled)):
            tokens[event.reply_id] = event.n_tokens
        elif isinstance(event, ErrorEvent):
            facts.errors += 1
    discarded = (speculative & cancelled) - committed
    facts.spec_started = len(speculative)
    facts.spec_committed = len(speculative & committed)
    facts.spec_discarded = len(discarded)
    facts.discarded_tokens = sum(tokens.get(r, 0) for r in discarded)
    _tool_facts(run, facts)
    return facts


def _overlap_ms(start_ms: float, end_ms: float, audio: Sequence[BotInterval]) -> float:
    return sum(max(0.0, min(end_ms, a.end_ms) - max(start_ms, a.start_ms)) for a in audio)


def reply_gaps_ms(reply_id: str, audio: Sequence[BotInterval]) -> list[float]:
    """The silences inside one reply's audio, between its first and last sound."""
    spans = sorted((a.start_ms, a.end_ms) for a in audio if a.reply_id == reply_id)
    return [later[0] - earlier[1] for earlier, later in itertools.pairwise(spans)]


def _tool_facts(run: SimRun, facts: TurnFacts) -> None:
    started: dict[str, ToolCallStarted] = {}
    cancel_reasons = {e.reply_id: e.reason for e in run.events if isinstance(e, CancelReply)}
    tool_replies: list[str] = []
    for event in run.events:
        if isinstance(event, ToolCallRequested):
            facts.tool_calls += 1
            if event.reply_id not in tool_replies:
                tool_replies.append(event.reply_id)
        elif isinstance(event, ToolCallStarted):
            started[event.call_id] = event
            facts.side_effects_run += not event.read_only
        elif isinstance(event, ToolResult):
            status = ToolStatus(event.status)
            facts.tool_failures += status.failed
            if status is ToolStatus.PREVENTED:
                if cancel_reasons.get(event.reply_id) == "barge_in":
                    facts.side_effects_prevented_barge_in += 1
                else:
                    facts.side_effects_prevented_other += 1
            start = started.get(event.call_id)
            if start is not None and status in (ToolStatus.OK, ToolStatus.ERROR, ToolStatus.TIMEOUT):
                facts.tool_latencies_ms.append(event.ts_ms - start.ts_ms)
                facts.tool_hidden_ms.append(_overlap_ms(start.ts_ms, event.ts_ms, run.bot_audio))
    for reply_id in tool_replies:
        if any(a.reply_id == reply_id for a in run.bot_audio):
            facts.tool_dead_air_ms.append(sum(reply_gaps_ms(reply_id, run.bot_audio)))


def summarize(facts: Sequence[TurnFacts], saved_ms: Sequence[float]) -> dict[str, Any]:
    """The summary.json block for one scenario or for the aggregate of several."""
    latencies = [v for f in facts for _, v in sorted(f.latencies_ms.items())]
    stops = [v for f in facts for v in f.barge_in_stops_ms.values()]
    started = sum(f.spec_started for f in facts)
    committed = sum(f.spec_committed for f in facts)
    return {
        "response_latency_ms": percentiles(latencies, (10, 50, 90)),
        "barge_in_stop_ms": percentiles(stops, (50, 90)),
        "pause_takeover_rate": _rate(sum(f.pause_takeovers for f in facts), sum(f.pauses for f in facts)),
        "backchannel_false_stop_rate": _rate(
            sum(f.backchannel_stops for f in facts), sum(f.backchannels for f in facts)
        ),
        "speculation": {
            "started": started,
            "committed": committed,
            "discarded": sum(f.spec_discarded for f in facts),
            "commit_rate": _rate(committed, started),
            "discarded_tokens": sum(f.discarded_tokens for f in facts),
        },
        "latency_saved_ms": percentiles(list(saved_ms), (50,)),
        "turns": {
            "answered": len(latencies),
            "unanswered": sum(f.unanswered_turns for f in facts),
            "mid_turn_pauses": sum(f.pauses for f in facts),
            "backchannels_over_bot": sum(f.backchannels for f in facts),
            "barge_ins": len(stops),
        },
        "errors": sum(f.errors for f in facts),
        "output_underruns": int(sum(f.underruns for f in facts)),
        **_tools_summary(facts),
    }


def _tools_summary(facts: Sequence[TurnFacts]) -> dict[str, Any]:
    """The "tools" block, only where a run called tools (runs without tools report as before)."""
    if not any(f.tool_calls for f in facts):
        return {}
    latencies = [v for f in facts for v in f.tool_latencies_ms]
    hidden = [v for f in facts for v in f.tool_hidden_ms]
    dead_air = [v for f in facts for v in f.tool_dead_air_ms]
    return {
        "tools": {
            "calls": sum(f.tool_calls for f in facts),
            "failed": sum(f.tool_failures for f in facts),
            "latency_ms": percentiles(latencies, (50, 90)),
            "hidden_behind_speech_ms": percentiles(hidden, (50, 90)),
            "hidden_share": None if not sum(latencies) else round(sum(hidden) / sum(latencies), 4),
            "dead_air_ms": {**percentiles(dead_air, (50, 90)), "max": _round(max(dead_air)) if dead_air else None},
            "side_effects": {
                "run": sum(f.side_effects_run for f in facts),
                "prevented_after_barge_in": sum(f.side_effects_prevented_barge_in for f in facts),
                "prevented_other": sum(f.side_effects_prevented_other for f in facts),
            },
        }
    }


def latency_saved(with_spec: TurnFacts, without_spec: TurnFacts) -> list[float]:
    """Per turn answered in both runs: latency with speculation off minus on."""
    shared = sorted(set(with_spec.latencies_ms) & set(without_spec.latencies_ms))
    return [without_spec.latencies_ms[i] - with_spec.latencies_ms[i] for i in shared]
