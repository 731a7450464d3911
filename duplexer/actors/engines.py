"""Engine interfaces: what each actor wraps. Model-agnostic, async, streaming and cancellable.

Cancellation is task cancellation: an actor cancels the task that iterates an
engine's stream, and the engine must stop its work when the iterator is closed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

Message = tuple[str, str]
"""A chat message as (role, content)."""


class VadEngine(Protocol):
    """Speech probability for one input frame."""

    def speech_probability(self, pcm: bytes, frame_start_ms: float) -> float: ...


class AsrEngine(Protocol):
    """Transcribes one speech segment; called repeatedly with growing audio for partials."""

    async def transcribe(self, pcm: bytes, start_ms: float, end_ms: float, final: bool) -> str: ...


class LlmEngine(Protocol):
    """Streams reply text for chat messages; closing the iterator aborts generation."""

    def stream(self, messages: Sequence[Message], reply_id: str) -> AsyncIterator[str]: ...


class TtsEngine(Protocol):
    """Streams PCM16 mono audio for a piece of text at ``sample_rate_hz``.

    ``instructions`` are Step-Audio-style tags such as ``slow`` or ``happy``; the engine applies
    those named in ``renderable_instructions`` and ignores the rest (they are never spoken).
    """

    sample_rate_hz: int
    renderable_instructions: frozenset[str]

    def synthesize(self, text: str, reply_id: str, instructions: Sequence[str] = ()) -> AsyncIterator[bytes]: ...


class TurnDetectorEngine(Protocol):
    """The probability that the user has finished their turn, given what they said so far.

    ``transcript`` is the user's turn as transcribed so far (raw ASR text, all its segments);
    ``context`` is the conversation before it (for example the bot's last reply), oldest first;
    ``audio`` is the turn's audio so far (PCM16 mono at 16 kHz, at most its last 8 s, ending now, so
    a pause's silence is at its end): prosody a transcript cannot show. An engine reads what it can
    use and ignores the rest (a text detector ignores ``audio``, an audio one ``transcript``).
    """

    async def end_of_turn_probability(
        self, transcript: str, context: Sequence[Message], audio: bytes = b""
    ) -> float: ...


class AudioSink(Protocol):
    """Where played bot audio goes (a speaker, a WebRTC track, an MQTT topic, a recorder)."""

    def write(self, pcm: bytes, sample_rate_hz: int, reply_id: str, ts_ms: float) -> None: ...

    def flush(self) -> None:
        """Drop any audio the sink has queued but not yet played (barge-in)."""
        ...


@dataclass
class Engines:
    """The engines one session's pipeline runs on."""

    vad: VadEngine
    asr: AsrEngine
    llm: LlmEngine
    tts: TtsEngine
    sink: AudioSink
    turn_detector: TurnDetectorEngine | None = None
    """With one, a turn-detector actor joins the pipeline and tunes the end-of-turn wait."""


SHAREABLE = ("asr", "llm", "tts")
"""Engine kinds that may run as shared Ray Serve deployments (:mod:`duplexer.actors.ray_serve_engines`)."""
