"""`bench conversation`'s figures: one live conversation scored from its audio, turn by turn.

Who spoke when comes from the two recorded channels alone (:func:`score_recording`, the project's
one scorer); the script only says which stretch of user speech is which turn. Engine events add
what audio cannot show: which reply was heard, whether it was speculative, and where the time
from the user's last audible sample to the bot's first went (the stage breakdown).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from duplexer.bench.conversation_input import Conversation
from duplexer.runtime.events import (
    INPUT_SAMPLE_RATE_HZ,
    AsrFinal,
    CancelReply,
    CommitReply,
    Event,
    LlmDone,
    LlmToken,
    PlayoutStarted,
    StartReply,
    TtsAudio,
    VadSpeechStop,
)
from duplexer.sims.audio_timeline import TurnWindow, score_recording
from duplexer.sims.live import LiveRun
from duplexer.sims.turn_metrics import TurnScore, percentiles, rate

STAGE_EVENTS: tuple[type[Event], ...] = (VadSpeechStop, AsrFinal, LlmToken, TtsAudio)
"""Kept in a benchmark's live run beside the usual ones, for the stage breakdown."""

STAGES: tuple[str, ...] = (
    "vad_stop",
    "asr_final",
    "speculative_start",
    "first_llm_token",
    "first_tts_chunk",
    "commit",
    "playout_start",
    "audible",
)
"""From the user's last audible sample (0 ms) to the bot's first: each stage's time, in order."""


@dataclass(frozen=True)
class Stamps:
    """A live run's engine events, indexed by reply."""

    events: Sequence[Event]

    def first(self, kind: type[Event], reply_id: str) -> Event | None:
        return next((e for e in self.events if isinstance(e, kind) and getattr(e, "reply_id", None) == reply_id), None)

    def last_before(self, kind: type[Event], ts_ms: float) -> Event | None:
        found = [e for e in self.events if isinstance(e, kind) and e.ts_ms <= ts_ms]
        return found[-1] if found else None


def reply_heard_at(live: LiveRun, onset_ms: float) -> str | None:
    """The reply whose played audio holds the audible onset at ``onset_ms``."""
    for played in live.run.bot_audio:
        if played.start_ms <= onset_ms + 1.0 and onset_ms < played.end_ms:
            return played.reply_id
    return None


def stage_times(live: LiveRun, reply_id: str, user_end_ms: float, audible_ms: float) -> dict[str, float | None]:
    """Each stage's time after the user's last audible sample, for the reply that answered."""
    stamps = Stamps(live.run.events)
    start = stamps.first(StartReply, reply_id)
    commit = stamps.first(CommitReply, reply_id)
    anchor = start.ts_ms if start is not None else (commit.ts_ms if commit is not None else audible_ms)
    found: dict[str, Event | None] = {
        "vad_stop": stamps.last_before(VadSpeechStop, anchor),
        "asr_final": stamps.last_before(AsrFinal, anchor),
        "speculative_start": start if isinstance(start, StartReply) and start.speculative else None,
        "first_llm_token": stamps.first(LlmToken, reply_id),
        "first_tts_chunk": stamps.first(TtsAudio, reply_id),
        "commit": commit,
        "playout_start": stamps.first(PlayoutStarted, reply_id),
    }
    times = {name: (None if e is None else round(e.ts_ms - user_end_ms, 1)) for name, e in found.items()}
    times["audible"] = round(audible_ms - user_end_ms, 1)
    return times


def _window_of(turn: TurnScore, windows: Sequence[TurnWindow]) -> int:
    overlaps = [min(turn.end_ms, w.end_ms) - max(turn.start_ms, w.start_ms) for w in windows]
    return max(range(len(windows)), key=lambda i: overlaps[i])


def turn_rows(live: LiveRun, conversation: Conversation, speculation: bool) -> list[dict[str, Any]]:
    """One row per turn of the conversation, scored from the recording's two channels."""
    steps = [s for s in live.run.steps if s.kind == "say"]
    windows = [TurnWindow(s.start_ms, s.end_ms) for s in steps]
    scored = score_recording(live.user_track, live.bot_track, INPUT_SAMPLE_RATE_HZ, windows)
    by_window = {_window_of(t, windows): t for t in scored.score.turns} if windows else {}
    replies = {e.reply_id: e.text for e in live.run.events if isinstance(e, LlmDone)}
    commits = {e.reply_id: e.user_text for e in live.run.events if isinstance(e, CommitReply)}
    rows: list[dict[str, Any]] = []
    for index, turn in enumerate(conversation.turns[: len(steps)]):
        t = by_window.get(index)
        row: dict[str, Any] = {
            "conversation": conversation.name,
            "speculation": speculation,
            "turn": index + 1,
            "name": turn.name,
            "form": turn.form,
            "interrupts": turn.interrupts,
            "user_said": turn.text,
            "heard": t is not None,
        }
        if t is None:  # the user's clip was not found in the audio: nothing to score
            rows.append(row)
            continue
        pause = None
        if turn.pause_ms is not None:
            pause = [round(t.start_ms + turn.pause_ms[0], 1), round(t.start_ms + turn.pause_ms[1], 1)]
        row.update(
            user_start_ms=round(t.start_ms, 1),
            user_end_ms=round(t.end_ms, 1),
            mid_turn_pause_ms=pause,
            response_latency_ms=t.response_latency_ms,
            talk_over_count=t.talk_over_count,
            talk_over_ms=round(t.talk_over_ms, 1),
            pause_taken_over=pause is not None and t.talk_over_count > 0,
            bot_speaking_at_onset=t.bot_speaking_at_onset,
            barge_in_stop_ms=t.barge_in_stop_ms,
        )
        reply_id = None
        if t.response_latency_ms is not None:
            audible = t.end_ms + t.response_latency_ms
            reply_id = reply_heard_at(live, audible)
            if reply_id is not None:
                row["stages_ms"] = stage_times(live, reply_id, t.end_ms, audible)
        start = Stamps(live.run.events).first(StartReply, reply_id) if reply_id else None
        row.update(
            reply_id=reply_id,
            reply_speculative=isinstance(start, StartReply) and start.speculative,
            user_transcript=commits.get(reply_id or ""),
            bot_reply=replies.get(reply_id or ""),
        )
        rows.append(row)
    return rows


def speculation_counts(live: LiveRun) -> dict[str, Any]:
    """Speculative replies started, committed and discarded, and the tokens the discarded ones cost."""
    events = live.run.events
    started = {e.reply_id for e in events if isinstance(e, StartReply) and e.speculative}
    committed = started & {e.reply_id for e in events if isinstance(e, CommitReply)}
    discarded = (started & {e.reply_id for e in events if isinstance(e, CancelReply)}) - committed
    tokens = sum(1 for e in events if isinstance(e, LlmToken) and e.reply_id in discarded)
    return {
        "started": len(started),
        "committed": len(committed),
        "discarded": len(discarded),
        "commit_rate": rate(len(committed), len(started)),
        "discarded_tokens": tokens,
    }


def reply_texts(live: LiveRun) -> list[str]:
    """The bot's replies as they entered the history, in order."""
    return [h.text.strip() for h in live.history_events if h.role == "assistant"]


def repeated_replies(texts: Sequence[str]) -> int:
    """Replies word for word the same as an earlier reply of the same conversation."""
    seen: set[str] = set()
    repeats = 0
    for text in texts:
        repeats += text in seen
        seen.add(text)
    return repeats


def exchanges(live: LiveRun) -> list[dict[str, str]]:
    """Question/answer pairs from the history: each user message and the reply that followed it."""
    pairs, question = [], None
    for role, text in live.history:
        if role == "user":
            question = text
        elif role == "assistant" and question is not None:
            pairs.append({"user": question, "bot": text})
            question = None
    return pairs


def saved_latency(on_rows: Sequence[dict[str, Any]], off_rows: Sequence[dict[str, Any]]) -> None:
    """Set each speculation-on row's ``latency_saved_ms``: the same turn's latency off minus on."""
    off = {(r["conversation"], r["turn"]): r.get("response_latency_ms") for r in off_rows}
    for row in on_rows:
        on_ms, off_ms = row.get("response_latency_ms"), off.get((row["conversation"], row["turn"]))
        row["latency_saved_ms"] = None if on_ms is None or off_ms is None else round(off_ms - on_ms, 1)


def _values(rows: Sequence[dict[str, Any]], key: str) -> list[float]:
    return [r[key] for r in rows if r.get(key) is not None]


def summarize(rows: Sequence[dict[str, Any]], runs: Sequence[LiveRun]) -> dict[str, Any]:
    """The figures of some turns (one conversation or all) and the runs they came from."""
    heard = [r for r in rows if r["heard"]]
    plain = [r for r in heard if not r["interrupts"]]
    short = [r for r in plain if r["form"] in ("short", "turn")]
    long = [r for r in plain if r["form"] == "long"]
    paused = [r for r in long if r["mid_turn_pause_ms"] is not None]
    barge = [r for r in heard if r["interrupts"] and r["bot_speaking_at_onset"]]
    spec = [speculation_counts(run) for run in runs]
    started, committed = sum(s["started"] for s in spec), sum(s["committed"] for s in spec)
    texts = [reply_texts(run) for run in runs]
    staged = [r["stages_ms"] for r in plain if "stages_ms" in r]
    return {
        "staged_turns": len(staged),
        "turns": len(rows),
        "heard": len(heard),
        "unanswered": sum(1 for r in plain if r["response_latency_ms"] is None),
        "response_latency_short_ms": percentiles(_values(short, "response_latency_ms"), (10, 50, 90)),
        "response_latency_long_ms": percentiles(_values(long, "response_latency_ms"), (10, 50, 90)),
        "pause_takeover_rate": rate(sum(r["pause_taken_over"] for r in paused), len(paused)),
        "pause_takeovers": f"{sum(r['pause_taken_over'] for r in paused)}/{len(paused)}",
        "talk_over_long": {
            "count": sum(r["talk_over_count"] for r in long),
            "total_ms": round(sum(r["talk_over_ms"] for r in long), 1),
        },
        "talk_over_all": {
            "count": sum(r["talk_over_count"] for r in heard),
            "total_ms": round(sum(r["talk_over_ms"] for r in heard), 1),
        },
        "barge_in_stop_ms": percentiles(_values(barge, "barge_in_stop_ms"), (50, 90)),
        "barge_ins": f"{len(barge)}/{sum(1 for r in heard if r['interrupts'])}",
        "speculation": {
            "started": started,
            "committed": committed,
            "commit_rate": rate(committed, started),
            "discarded_tokens": sum(s["discarded_tokens"] for s in spec),
        },
        "latency_saved_ms": percentiles(_values(plain, "latency_saved_ms"), (50,)),
        "replies": sum(len(t) for t in texts),
        "distinct_replies": sum(len(set(t)) for t in texts),
        "repeated_replies": sum(repeated_replies(t) for t in texts),
        "stages_p50_ms": {
            stage: percentiles([s[stage] for s in staged if s[stage] is not None], (50,))["p50"] for stage in STAGES
        },
    }
