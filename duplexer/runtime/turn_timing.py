"""One reply's timing as a live session saw it: the marks of each stage and what the listener heard.

A :class:`TurnTiming` is made once per reply, when its playout ends (done or stopped by the user),
by the turn recorder (:mod:`duplexer.actors.turn_recorder`); the service metrics and the traces
read it. Every time is on the session clock, in ms. The headline figures follow docs/metrics.md
and the per-turn ``metrics`` message of a WebRTC call (docs/webrtc.md): response latency runs from
the end of the user's speech (the VAD) to the first *audible* bot sample sent to the listener, and
barge-in stop latency from the onset of the user's speech over the bot to the end of the last
audible bot sample sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ReplyOutcome = Literal["done", "stopped"]

STAGES = ("asr", "llm", "audio")
"""The stages of a turn, in order: VAD end → ASR final (``asr``) → first LLM token (``llm``) →
first audible bot sample (``audio``: TTS, the wait for the commit, and the way to the listener)."""


def response_latency(first_audible_ms: float | None, speech_end_ms: float | None) -> float | None:
    """From the end of the user's speech to the first audible bot sample sent (None without both)."""
    if first_audible_ms is None or speech_end_ms is None:
        return None
    return first_audible_ms - speech_end_ms


def barge_in_stop(last_audible_end_ms: float | None, barge_in_onset_ms: float | None) -> float | None:
    """From the user's onset over the bot to the end of the last audible bot sample sent: 0 when the
    bot was already silent (None without both)."""
    if last_audible_end_ms is None or barge_in_onset_ms is None:
        return None
    return max(0.0, last_audible_end_ms - barge_in_onset_ms)


@dataclass(frozen=True)
class StageSpan:
    """One stage of a turn: from the previous mark to this stage's mark, on the session clock."""

    stage: str
    start_ms: float
    end_ms: float

    @property
    def duration_ms(self) -> float:
        return self.end_ms - self.start_ms


@dataclass(frozen=True)
class TurnTiming:
    """The marks of one reply (None where the session never reached them)."""

    session_id: str
    turn_id: int | None
    reply_id: str
    speculative: bool
    outcome: ReplyOutcome
    reply_started_ms: float
    ended_ms: float
    """When its playout ended (done, or stopped)."""
    speech_end_ms: float | None = None
    """End of the user's speech before the commit, as the VAD placed it."""
    asr_final_ms: float | None = None
    """When the ASR's final transcript of that speech arrived."""
    first_token_ms: float | None = None
    first_audible_ms: float | None = None
    """The first bot sample at or above the audible level, as it left for the listener."""
    last_audible_end_ms: float | None = None
    barge_in_onset_ms: float | None = None
    """Onset of the user's speech while this reply played (the VAD's ``speech_start_ms``)."""
    talk_over: bool = False
    """The reply's first audible sample went out while the VAD heard the user speaking."""

    @property
    def response_latency_ms(self) -> float | None:
        return response_latency(self.first_audible_ms, self.speech_end_ms)

    @property
    def barge_in_stop_ms(self) -> float | None:
        """Overlap heard after the user came in: 0 when the bot was already silent; None unless stopped."""
        if self.outcome != "stopped":
            return None
        return barge_in_stop(self.last_audible_end_ms, self.barge_in_onset_ms)

    def stages(self) -> list[StageSpan]:
        """The stages reached, each from the previous mark reached to its own.

        A mark earlier than the one before it (a speculative reply that ran ahead of the final
        transcript) gives a stage of zero length at the earlier mark's time."""
        if self.speech_end_ms is None:
            return []
        spans: list[StageSpan] = []
        last_ms = self.speech_end_ms
        for stage, mark_ms in zip(STAGES, (self.asr_final_ms, self.first_token_ms, self.first_audible_ms), strict=True):
            if mark_ms is None:
                continue
            end_ms = max(mark_ms, last_ms)
            spans.append(StageSpan(stage, last_ms, end_ms))
            last_ms = end_ms
        return spans
