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

The detector also hears the turn (:class:`~duplexer.actors.engines.TurnDetectorEngine` takes its
audio): the actor keeps the user turn's last 8 s of microphone audio and asks again when a pause
starts (the VAD's speech stop while the user holds the floor), and optionally as the pause
lengthens (:attr:`TurnDetectorParams.pause_offsets_ms`). That is off by default: measured with
``duplexer bench eot``, Smart Turn hears the growing silence as an end (p > 0.5 at 17% of mid-turn
pauses at the stop, 61% 400 ms later), which would count the silence twice; the controller counts
it once, by its end-of-turn rule.
"""

from __future__ import annotations

import math
import re
from collections import deque
from dataclasses import dataclass

from duplexer.actors.engines import Message, TurnDetectorEngine
from duplexer.kernels.log_mel import WINDOW_S
from duplexer.runtime.actor import Actor, SessionContext
from duplexer.runtime.events import (
    INPUT_SAMPLE_RATE_HZ,
    AsrFinal,
    AudioFrame,
    EndOfTurnProbability,
    ErrorEvent,
    Event,
    HistoryUpdated,
    StateChanged,
    VadSpeechStart,
    VadSpeechStop,
)

USER_TURN_STATES = frozenset({"UserSpeaking", "UserPaused"})
"""Controller states (``Phase`` values) in which the user holds the floor."""
NEUTRAL_PROBABILITY = 0.5
"""The controller's "no opinion": it waits its default end-of-turn silence."""
TURN_AUDIO_MAX_MS = WINDOW_S * 1000.0
"""The turn audio kept for the detector: the audio model hears its last 8 s, no more."""
PAUSE_OFFSETS_MS = (200.0, 400.0)
"""Later asks into a pause (ms after the VAD's speech stop, itself ~100 ms after the speech ended)
that ``duplexer bench eot`` measures; the actor makes them only when configured to."""
TURN_LEAD_IN_MS = 500.0
"""Audio kept from before the controller saw the turn begin: the VAD's onset lag and the events'
delivery put the first speech up to a few hundred ms before that."""

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
    pause_offsets_ms: tuple[float, ...] = ()
    """Asks again this long into a pause (after the VAD's stop), with the pause's audio so far; for
    example :data:`PAUSE_OFFSETS_MS`. None by default: the audio model reads the silence as an end."""


class TurnDetectorActor(Actor):
    name = "turn_detector"
    subscribes = (StateChanged, VadSpeechStart, VadSpeechStop, AsrFinal, HistoryUpdated, AudioFrame)

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
        self.pause = 0
        """Bumped when a pause starts or ends, so the asks as it lengthens stop when it does."""
        self.requested = 0
        self.emitted = 0
        """Sequence numbers of the newest estimate asked for and the newest emitted: an older answer
        that comes back after a newer one is dropped."""
        self.estimated_in_turn = False
        self.audio: deque[tuple[float, bytes]] = deque()
        """(start ms, PCM16 16 kHz) frames, the last :data:`TURN_AUDIO_MAX_MS` of them at most."""
        self.pause_audio: bytes | None = None
        """The turn's audio when the current pause began (None while the user speaks)."""
        self.audio_ms = 0.0
        self.turn_audio_from_ms = -math.inf
        """Frames that end before this (session ms) are from before the user's turn."""

    @property
    def in_user_turn(self) -> bool:
        return self.state in USER_TURN_STATES

    def transcript(self) -> str:
        return " ".join(text for _, text in sorted(self.segments.items()) if text).strip()

    def turn_audio(self) -> bytes:
        """The current user turn's audio so far (its last 8 s), ending with the newest frame."""
        return b"".join(pcm for _, pcm in self.audio)

    def _keep_audio(self, frame: AudioFrame) -> None:
        if frame.sample_rate_hz != INPUT_SAMPLE_RATE_HZ:
            return  # user audio inside the pipeline is 16 kHz; anything else is not the microphone
        start_ms = frame.seq * frame.duration_ms
        if start_ms + frame.duration_ms <= self.turn_audio_from_ms:
            return
        self.audio.append((start_ms, frame.pcm))
        self.audio_ms += self._frame_ms(frame.pcm)
        while self.audio and self.audio_ms > TURN_AUDIO_MAX_MS:
            self.audio_ms -= self._frame_ms(self.audio.popleft()[1])

    @staticmethod
    def _frame_ms(pcm: bytes) -> float:
        return len(pcm) / 2 * 1000.0 / INPUT_SAMPLE_RATE_HZ

    def _start_turn_audio(self, turn_seen_ms: float) -> None:
        """A new user turn: forget audio from before it (the bot's turn, an old turn), keeping a lead-in."""
        self.turn_audio_from_ms = turn_seen_ms - TURN_LEAD_IN_MS
        while self.audio and self.audio[0][0] + self._frame_ms(self.audio[0][1]) <= self.turn_audio_from_ms:
            self.audio_ms -= self._frame_ms(self.audio.popleft()[1])

    async def handle(self, event: Event) -> None:
        if isinstance(event, AudioFrame):
            self._keep_audio(event)
        elif isinstance(event, StateChanged):
            if event.new_state in USER_TURN_STATES and event.turn_id != self.turn_id:
                self.turn_id, self.segments = event.turn_id, {}
                self.revision += 1
                self.pause += 1
                self.pause_audio = None
                self.estimated_in_turn = False
                self._start_turn_audio(event.ts_ms)
            self.state = event.new_state
        elif isinstance(event, HistoryUpdated):
            if event.role == "assistant":
                self.last_bot_text = event.text
        elif isinstance(event, VadSpeechStart):
            self.pause += 1
            self.pause_audio = None
            if self.in_user_turn and (self.segments or self.estimated_in_turn):
                self.revision += 1
                self.emit(EndOfTurnProbability, turn_id=self.turn_id, probability=NEUTRAL_PROBABILITY)
        elif isinstance(event, VadSpeechStop):
            if self.in_user_turn:
                self.pause += 1
                self.pause_audio = self.turn_audio()
                # the segment that just ended has no transcript yet: the words are left to its final
                self._ask(f"eot-stop-{event.segment_id}", transcript="")
                for offset_ms in self.params.pause_offsets_ms:
                    self.spawn(self._ask_later(self.pause, offset_ms), f"eot-pause-{event.segment_id}-{offset_ms:g}")
        elif isinstance(event, AsrFinal):
            if not self.in_user_turn or not event.text.strip():
                return
            self.segments[event.segment_id] = event.text.strip()
            self.revision += 1
            self._ask(f"eot-{event.segment_id}")

    def _ask(self, name: str, audio: bytes | None = None, transcript: str | None = None) -> None:
        """Estimate with the transcript so far and ``audio``: by default the audio heard when the pause
        began (a final landing in the pause changes the words, not what the pause sounded like, so the
        audio model's answer for it stands), else the turn's audio so far."""
        self.requested += 1
        self.estimated_in_turn = True
        if audio is None:
            audio = self.pause_audio if self.pause_audio is not None else self.turn_audio()
        words = self.transcript() if transcript is None else transcript
        self.spawn(self._estimate(self.turn_id, self.revision, self.requested, words, audio), name)

    async def _ask_later(self, pause: int, offset_ms: float) -> None:
        await self.ctx.clock.sleep_ms(offset_ms)
        if pause == self.pause and self.in_user_turn:
            self._ask(f"eot-pause-{offset_ms:g}", self.turn_audio())

    def _context(self) -> tuple[Message, ...]:
        words = self.last_bot_text.split()[-self.params.context_max_words :] if self.params.context_max_words else []
        if self.params.context_bot_turn and words:
            return (("assistant", " ".join(words)),)
        return ()

    async def _estimate(self, turn_id: int | None, revision: int, seq: int, transcript: str, audio: bytes) -> None:
        try:
            probability = float(await self.engine.end_of_turn_probability(transcript, self._context(), audio))
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
        if revision != self.revision or turn_id != self.turn_id or seq <= self.emitted:
            return  # the user went on, a new turn began, or a newer estimate is out: this one is stale
        self.emitted = seq
        self.emit(EndOfTurnProbability, turn_id=turn_id, probability=min(1.0, max(0.0, probability)))
