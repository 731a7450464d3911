"""Turn-taking metrics of a simulator run: its exact timelines scored by :mod:`duplexer.sims.turn_metrics`.

The timing metrics (response latency, talk-over, pause takeover, barge-in stop, backchannel false
stop) come from the one scorer, fed the user's speech as the script placed it and the bot's audio
as it was played. What only events know comes from the events:

- speculation: started, committed, discarded, commit rate, discarded tokens;
- latency saved: the same turn's latency with speculation off minus on, both in one run;
- engine breakdown: from the end of the user's speech to the first TTS chunk the playout received;
- end-of-turn commit: from the end of the user's speech to the controller's commit of the answer
  (the silence its end-of-turn rule waited, plus the VAD's lag): what a turn detector changes.

Tool calls (only in runs that have them): the calls and failures; each call's latency and how
much of it was hidden behind bot speech; dead air, the total gap in the bot audio of a reply
that called a tool; and side-effecting calls that ran, or were prevented (after a barge-in, or
because their reply was discarded otherwise).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from duplexer.actors.tool_calls import ToolStatus
from duplexer.policies.reply import RESUMED_AFTER_COMMIT
from duplexer.runtime.events import (
    CancelReply,
    CommitReply,
    EndOfTurnProbability,
    ErrorEvent,
    LlmCancelled,
    LlmDone,
    PlayoutStarted,
    PlayoutStopped,
    StartReply,
    ToolCallRequested,
    ToolCallStarted,
    ToolResult,
)
from duplexer.sims.simulator import BotInterval, SimRun
from duplexer.sims.turn_metrics import (
    Speech,
    TurnKind,
    TurnScore,
    UserTurn,
    percentiles,
    rate,
    score_turns,
    summarize_turns,
)

USER_STOPPED_REASONS = frozenset({"barge_in", RESUMED_AFTER_COMMIT})
"""Cancel reasons that mean the user's speech stopped the reply: a barge-in, or speech just after
the commit that continued the user's turn."""


def _round(value: float) -> float:
    return round(float(value), 1)


@dataclass
class TurnFacts:
    """Raw per-run facts, pooled across scenarios for the aggregate."""

    turns: list[TurnScore] = field(default_factory=list)
    """Every user turn's scored figures, in order."""
    step_of_turn: list[int] = field(default_factory=list)
    """The script step each of ``turns`` came from."""
    latencies_ms: dict[int, float] = field(default_factory=dict)  # say-step index -> latency
    barge_in_stops_ms: dict[int, float] = field(default_factory=dict)  # say-step index -> stop latency
    first_chunk_ms: dict[int, float] = field(default_factory=dict)  # say-step index -> engine time to first chunk
    commit_ms: dict[int, float] = field(default_factory=dict)  # say-step index -> end of speech to commit
    detector_estimates: int = 0
    """End-of-turn probabilities the turn detector gave the controller."""
    paused_turns: int = 0
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


def user_turns(run: SimRun) -> tuple[list[UserTurn], list[int]]:
    """The simulated user's turns and backchannels as the script placed them, with their step index."""
    turns: list[UserTurn] = []
    steps: list[int] = []
    for step in run.steps:
        if step.kind in ("say", "backchannel") and step.end_ms > step.start_ms:
            segments = tuple(step.segments) or ((step.start_ms, step.end_ms),)
            kind: TurnKind = "turn" if step.kind == "say" else "backchannel"
            turns.append(UserTurn(segments, kind, step.text))
            steps.append(step.index)
    return turns, steps


def bot_speech(run: SimRun) -> list[Speech]:
    """The bot's played audio as speech, each stretch marked with whether its reply was cut off."""
    stopped = {e.reply_id for e in run.events if isinstance(e, PlayoutStopped)}
    return [Speech(a.start_ms, a.end_ms, stopped=a.reply_id in stopped) for a in run.bot_audio]


def turn_facts(run: SimRun) -> TurnFacts:
    facts = TurnFacts(underruns=run.underruns)
    turns, steps = user_turns(run)
    facts.turns = score_turns(turns, bot_speech(run)).turns
    facts.step_of_turn = steps
    chunk_at = {e.reply_id: e.ts_ms for e in reversed(run.events) if isinstance(e, PlayoutStarted)}
    commits = [e.ts_ms for e in run.events if isinstance(e, CommitReply)]
    facts.detector_estimates = sum(isinstance(e, EndOfTurnProbability) for e in run.events)
    starts = [t.start_ms for t in facts.turns]
    for n, (index, scored) in enumerate(zip(steps, facts.turns, strict=True)):
        if scored.kind == "turn":
            next_start = min(starts[n + 1 :], default=float("inf"))
            commit = next((t for t in commits if scored.end_ms <= t < next_start), None)
            if commit is not None:
                facts.commit_ms[index] = commit - scored.end_ms
        if scored.kind == "backchannel":
            if scored.backchannel_stopped_bot is not None:
                facts.backchannels += 1
                facts.backchannel_stops += scored.backchannel_stopped_bot
            continue
        if scored.response_latency_ms is None:
            facts.unanswered_turns += 1
        else:
            facts.latencies_ms[index] = scored.response_latency_ms
            answer_ms = scored.end_ms + scored.response_latency_ms  # the answering stretch's first audio
            reply = next((a.reply_id for a in run.bot_audio if abs(a.start_ms - answer_ms) < 0.5), None)
            if reply in chunk_at:
                facts.first_chunk_ms[index] = chunk_at[reply] - scored.end_ms
        if scored.barge_in_stop_ms is not None:
            facts.barge_in_stops_ms[index] = scored.barge_in_stop_ms
        facts.paused_turns += scored.pauses > 0
        facts.pause_takeovers += scored.pause_taken_over

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
                if cancel_reasons.get(event.reply_id) in USER_STOPPED_REASONS:
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
    started = sum(f.spec_started for f in facts)
    committed = sum(f.spec_committed for f in facts)
    timing = summarize_turns([t for f in facts for t in f.turns])
    first_chunk = [v for f in facts for _, v in sorted(f.first_chunk_ms.items())]
    return {
        **timing,
        "engine_first_chunk_ms": percentiles(first_chunk, (50,)),
        "end_of_turn_commit_ms": percentiles([v for f in facts for _, v in sorted(f.commit_ms.items())], (50, 90)),
        "speculation": {
            "started": started,
            "committed": committed,
            "discarded": sum(f.spec_discarded for f in facts),
            "commit_rate": rate(committed, started),
            "discarded_tokens": sum(f.discarded_tokens for f in facts),
        },
        "latency_saved_ms": percentiles(list(saved_ms), (50,)),
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


def per_turn_rows(facts: TurnFacts) -> list[dict[str, Any]]:
    """Every user turn's row of ``summary.json``'s ``per_turn``: its scored figures and its end-of-turn commit."""
    return [
        {**turn.row(), "end_of_turn_commit_ms": None if (ms := facts.commit_ms.get(step)) is None else round(ms, 1)}
        for turn, step in zip(facts.turns, facts.step_of_turn, strict=True)
    ]


def score_run(run: SimRun) -> dict[str, Any]:
    """One simulated run's figures, as ``summary.json`` gives a scenario's (docs/metrics.md), with its
    turns' rows under ``per_turn``; latency saved needs a second run and is left empty."""
    facts = turn_facts(run)
    return {**summarize([facts], []), "per_turn": per_turn_rows(facts)}
