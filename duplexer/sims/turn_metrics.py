"""The one turn-taking scorer: every timing metric of docs/metrics.md, from who spoke when.

It takes the user's turns and the bot's speech as time intervals, whatever they came from: the
simulator's exact timelines, or speech found in audio (:mod:`duplexer.sims.audio_timeline`). The
demo, talk, serve, the benchmarks, ``duplexer score`` and ``duplexer eval fdb`` all report through
it, so a figure means the same thing wherever it is printed.

Definitions follow Full-Duplex-Bench (FDB) v1 and v1.5; docs/metrics.md states each one.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

USER_MERGE_GAP_MS = 600.0
"""FDB v1.5: user speech separated by at most this much silence is one stretch. A turn spans its
pauses anyway; the audio turn rule uses it to tell a backchannel from the start of a barge-in."""
BOT_MERGE_GAP_MS = 500.0
"""FDB v1.5: bot speech separated by at most this much silence is one stretch."""
TAKEOVER_MIN_SPAN_MS = 1000.0
"""FDB's takeover rule: the bot's words span at least this long ..."""
TAKEOVER_MIN_WORDS = 4
"""... or, when shorter, there are more than three of them."""
BACKCHANNEL_STOP_WINDOW_MS = 1000.0
"""A bot stretch that ends within this long after a backchannel ends was stopped by it."""
BACKCHANNEL_RESUME_MS = 1000.0
"""Where a cut-off is not known (audio): bot speech that resumes within this long after falling
silent over a backchannel paused for it, as a listener hears it, and was not stopped."""

TurnKind = Literal["turn", "backchannel"]


@dataclass(frozen=True)
class Word:
    text: str
    start_ms: float
    end_ms: float


@dataclass(frozen=True)
class Speech:
    """One stretch of one speaker's speech."""

    start_ms: float
    end_ms: float
    words: tuple[Word, ...] = ()
    stopped: bool | None = None
    """For bot speech: whether its reply was cut off (None: not known, as in a recording)."""

    @property
    def duration_ms(self) -> float:
        return self.end_ms - self.start_ms


@dataclass(frozen=True)
class UserTurn:
    """A user turn: its speech stretches in order; the gaps between them are mid-turn pauses.

    A backchannel ("mm-hm" over the bot) is a turn of kind ``backchannel``: it asks for no answer.
    """

    segments: tuple[tuple[float, float], ...]
    kind: TurnKind = "turn"
    text: str = ""

    @property
    def start_ms(self) -> float:
        return self.segments[0][0]

    @property
    def end_ms(self) -> float:
        return self.segments[-1][1]

    @property
    def pauses(self) -> list[tuple[float, float]]:
        return [(a[1], b[0]) for a, b in itertools.pairwise(self.segments)]


@dataclass
class TurnScore:
    """One user turn's figures: a row of ``summary.json``'s ``per_turn`` and of score's table."""

    turn: int
    kind: TurnKind
    start_ms: float
    end_ms: float
    pauses: int
    bot_speaking_at_onset: bool
    response_latency_ms: float | None = None
    talk_over_count: int = 0
    talk_over_ms: float = 0.0
    pause_taken_over: bool = False
    barge_in_stop_ms: float | None = None
    backchannel_stopped_bot: bool | None = None
    takeover: bool = False
    """FDB's takeover: the bot spoke words between this turn's start (its end, for a turn that began
    over the bot) and the next turn's start that span at least 1 s, or fewer but more than three words
    (judged by seconds of speech when the words are unknown)."""

    def row(self) -> dict[str, Any]:
        return {k: (round(v, 1) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


@dataclass
class Score:
    turns: list[TurnScore] = field(default_factory=list)

    def of_kind(self, kind: TurnKind) -> list[TurnScore]:
        return [t for t in self.turns if t.kind == kind]


def merge_gaps(spans: Iterable[tuple[float, float]], max_gap_ms: float) -> list[tuple[float, float]]:
    """Sorted spans with every gap of at most ``max_gap_ms`` closed."""
    merged: list[tuple[float, float]] = []
    for start, end in sorted(spans):
        if merged and start - merged[-1][1] <= max_gap_ms:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def merge_speech(speech: Iterable[Speech], max_gap_ms: float = BOT_MERGE_GAP_MS) -> list[Speech]:
    """Bot speech with short gaps closed (FDB v1.5); words and the stopped flag carry over."""
    merged: list[Speech] = []
    for s in sorted(speech, key=lambda s: s.start_ms):
        if merged and s.start_ms - merged[-1].end_ms <= max_gap_ms:
            last = merged[-1]
            merged[-1] = Speech(last.start_ms, max(last.end_ms, s.end_ms), last.words + s.words, s.stopped)
        else:
            merged.append(s)
    return merged


def is_takeover(speech: Sequence[Speech], start_ms: float, end_ms: float) -> bool:
    """FDB's rule, over the bot speech inside [start_ms, end_ms): its words span >= 1 s, or more
    than three words. Where words are not known, the speech itself must last >= 1 s."""
    words = [w for s in speech for w in s.words if start_ms <= w.start_ms < end_ms]
    if words:
        span = max(w.end_ms for w in words) - min(w.start_ms for w in words)
        return span >= TAKEOVER_MIN_SPAN_MS or len(words) >= TAKEOVER_MIN_WORDS
    inside = [s for s in speech if not s.words and s.end_ms > start_ms and s.start_ms < end_ms]
    return sum(min(s.end_ms, end_ms) - max(s.start_ms, start_ms) for s in inside) >= TAKEOVER_MIN_SPAN_MS


def score_turns(user: Sequence[UserTurn], bot: Iterable[Speech]) -> Score:
    """Every user turn's figures against the bot's speech (merged as FDB v1.5 merges it)."""
    stretches = merge_speech(bot)
    turns = sorted(user, key=lambda t: t.start_ms)
    score = Score()
    for i, turn in enumerate(turns):
        nxt = next((t.start_ms for t in turns[i + 1 :] if t.kind == "turn"), float("inf"))
        score.turns.append(_score_turn(i + 1, turn, nxt, stretches))
    return score


def _score_turn(number: int, turn: UserTurn, next_turn_ms: float, bot: Sequence[Speech]) -> TurnScore:
    onset, end = turn.start_ms, turn.end_ms
    ongoing = next((s for s in bot if s.start_ms <= onset < s.end_ms), None)
    result = TurnScore(number, turn.kind, onset, end, len(turn.pauses), ongoing is not None)
    if turn.kind == "backchannel":
        if ongoing is not None:
            stop_by = end + BACKCHANNEL_STOP_WINDOW_MS
            cut = ongoing.stopped
            if cut is None:
                cut = not any(ongoing.end_ms < s.start_ms <= ongoing.end_ms + BACKCHANNEL_RESUME_MS for s in bot)
            result.backchannel_stopped_bot = ongoing.end_ms <= stop_by and cut
        return result
    if ongoing is not None:
        result.barge_in_stop_ms = ongoing.end_ms - onset
    # Talk-over: bot speech that began after the user came in, while the turn is still going.
    for s in bot:
        if s is ongoing or not onset <= s.start_ms < end:
            continue
        result.talk_over_count += 1
        result.talk_over_ms += min(s.end_ms, end) - s.start_ms
    result.pause_taken_over = bool(turn.pauses) and result.talk_over_count > 0
    answers = [s.start_ms for s in bot if end <= s.start_ms < next_turn_ms]
    if answers:
        result.response_latency_ms = answers[0] - end
    # FDB judges an interruption by what the bot says after it ends, so speech already going does not count.
    result.takeover = is_takeover(bot, end if ongoing is not None else onset, next_turn_ms)
    return result


def percentiles(values: Sequence[float], qs: Iterable[int]) -> dict[str, float | None]:
    """``{"p50": ...}``; None where there are no values."""
    if not values:
        return {f"p{q}": None for q in qs}
    arr = np.asarray(values, dtype=float)
    return {f"p{q}": round(float(np.percentile(arr, q)), 1) for q in qs}


def rate(hits: int, total: int) -> float | None:
    return None if total == 0 else round(hits / total, 4)


def summarize_turns(turns: Sequence[TurnScore]) -> dict[str, Any]:
    """The timing block of a summary: the same keys wherever the turns came from."""
    said = [t for t in turns if t.kind == "turn"]
    backchannels = [t for t in turns if t.kind == "backchannel" and t.bot_speaking_at_onset]
    latencies = [t.response_latency_ms for t in said if t.response_latency_ms is not None]
    stops = [t.barge_in_stop_ms for t in said if t.barge_in_stop_ms is not None]
    with_pause = [t for t in said if t.pauses]
    return {
        "response_latency_ms": percentiles(latencies, (10, 50, 90)),
        "barge_in_stop_ms": percentiles(stops, (50, 90)),
        "talk_over": {
            "count": sum(t.talk_over_count for t in said),
            "turns": sum(1 for t in said if t.talk_over_count),
            "total_ms": round(sum(t.talk_over_ms for t in said), 1),
        },
        "pause_takeover_rate": rate(sum(t.pause_taken_over for t in with_pause), len(with_pause)),
        "takeover_rate": rate(sum(t.takeover for t in said), len(said)),
        "backchannel_false_stop_rate": rate(
            sum(bool(t.backchannel_stopped_bot) for t in backchannels), len(backchannels)
        ),
        "turns": {
            "said": len(said),
            "answered": len(latencies),
            "unanswered": len(said) - len(latencies),
            "with_mid_turn_pause": len(with_pause),
            "backchannels_over_bot": len(backchannels),
            "barge_ins": len(stops),
        },
    }
