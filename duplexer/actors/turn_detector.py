"""Turn-detector actor: how likely the user's turn is over, from the words said so far.

Silence alone cannot tell "Can you recommend ..." (a mid-turn pause) from "Can you
recommend a good book?" (a finished question). In the manner of LiveKit's turn
detector, a language model reads the user's transcript so far and gives the
probability that the user's message ends there. Each final transcript in the
user's turn becomes an :class:`EndOfTurnProbability`, which the controller turns
into the end-of-turn silence it waits for (see ``PolicyParams.effective_end_of_turn_ms``):
a confident end shortens the wait, an unfinished sentence lengthens it.

Which turn a final belongs to comes from the controller's :class:`StateChanged`
events (they carry its turn id): a final heard while the user holds the floor
(UserSpeaking, UserPaused) extends the current turn's transcript; a final heard
while the bot talks (a backchannel, noise) is not the user's turn and is ignored.
When the user resumes within a turn, the estimate made for the shorter transcript
no longer holds: it is withdrawn (p = 0.5, the policy's default wait) until the
next final, so a stale "finished" never commits a reply the moment a late final
arrives. An estimate that comes back after the turn or its transcript has moved
on is dropped.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from duplexer.actors.engines import Message, TurnDetectorEngine
from duplexer.runtime.actor import Actor, SessionContext
from duplexer.runtime.events import (
    AsrFinal,
    EndOfTurnProbability,
    ErrorEvent,
    Event,
    HistoryUpdated,
    StateChanged,
    VadSpeechStart,
)

USER_TURN_STATES = frozenset({"UserSpeaking", "UserPaused"})
"""Controller states (``Phase`` values) in which the user holds the floor."""
NEUTRAL_PROBABILITY = 0.5
"""The controller's "no opinion": it waits its default end-of-turn silence."""

_NOT_WORD = re.compile(r"[^\w']+")
_STRAY_APOSTROPHES = re.compile(r"(?<!\w)'+|'+(?!\w)")


def normalize_transcript(text: str) -> str:
    """ASR text as the detector reads it: lower case, no punctuation, single spaces.

    Whisper's punctuation is a guess made on the same audio ("Can you recommend?" for a
    sentence that goes on), so the detector decides from the words alone. Apostrophes
    inside words stay ("don't"); the typographic one becomes ASCII.
    """
    text = text.replace("\u2019", "'").lower()
    text = _NOT_WORD.sub(" ", text).replace("_", " ")
    text = _STRAY_APOSTROPHES.sub(" ", text)
    return " ".join(text.split())


@dataclass(frozen=True)
class TurnDetectorParams:
    context_bot_turn: bool = True
    """Give the detector the bot's last reply as context (an answer to a question reads differently)."""
    context_max_words: int = 30
    """Only the end of a long bot reply is given: it is what the user answers, and a short context
    keeps the detector's first call in a turn cheap (~2-3 ms per word of context on 2 cores)."""


class TurnDetectorActor(Actor):
    name = "turn_detector"
    subscribes = (StateChanged, VadSpeechStart, AsrFinal, HistoryUpdated)

    def __init__(
        self, ctx: SessionContext, engine: TurnDetectorEngine, params: TurnDetectorParams | None = None
    ) -> None:
        super().__init__(ctx)
        self.engine = engine
        self.params = params or TurnDetectorParams()
        self.state = "Silence"
        self.turn_id: int | None = None
        self.segments: dict[int, str] = {}
        self.last_bot_text = ""
        self.revision = 0
        """Bumped whenever the turn or its transcript changes, so late estimates are dropped."""

    @property
    def in_user_turn(self) -> bool:
        return self.state in USER_TURN_STATES

    def transcript(self) -> str:
        return " ".join(text for _, text in sorted(self.segments.items()) if text).strip()

    async def handle(self, event: Event) -> None:
        if isinstance(event, StateChanged):
            if event.new_state in USER_TURN_STATES and event.turn_id != self.turn_id:
                self.turn_id, self.segments = event.turn_id, {}
                self.revision += 1
            self.state = event.new_state
        elif isinstance(event, HistoryUpdated):
            if event.role == "assistant":
                self.last_bot_text = event.text
        elif isinstance(event, VadSpeechStart):
            if self.in_user_turn and self.segments:
                self.revision += 1
                self.emit(EndOfTurnProbability, turn_id=self.turn_id, probability=NEUTRAL_PROBABILITY)
        elif isinstance(event, AsrFinal):
            if not self.in_user_turn or not event.text.strip():
                return
            self.segments[event.segment_id] = event.text.strip()
            self.revision += 1
            self.spawn(self._estimate(self.turn_id, self.revision, self.transcript()), f"eot-{event.segment_id}")

    def _context(self) -> tuple[Message, ...]:
        words = self.last_bot_text.split()[-self.params.context_max_words :] if self.params.context_max_words else []
        if self.params.context_bot_turn and words:
            return (("assistant", " ".join(words)),)
        return ()

    async def _estimate(self, turn_id: int | None, revision: int, transcript: str) -> None:
        try:
            probability = float(await self.engine.end_of_turn_probability(transcript, self._context()))
            if not math.isfinite(probability):
                raise ValueError(f"probability {probability}")
        except Exception as exc:  # the turn goes on with the default wait
            self.emit(
                ErrorEvent,
                turn_id=turn_id,
                source=self.name,
                message=f"turn detector failed on turn {turn_id}: {type(exc).__name__}: {exc}; "
                "the default end-of-turn wait applies",
            )
            return
        if revision != self.revision or turn_id != self.turn_id:
            return  # the user went on, or a new turn began: this estimate is stale
        self.emit(EndOfTurnProbability, turn_id=turn_id, probability=min(1.0, max(0.0, probability)))
