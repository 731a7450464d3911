"""Typed, immutable events: everything that crosses the bus.

Every event carries the session id, the turn id where one applies, and a
monotonic timestamp in milliseconds from the session clock. Control events
(``priority = Priority.CONTROL``) overtake queued data events such as audio.
The controller's actions are events too, so the pure state machine emits
exactly what the actors receive.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import ClassVar

INPUT_SAMPLE_RATE_HZ = 16_000
"""Sample rate of user audio inside the pipeline (VAD, ASR, tokenizer)."""

FRAME_MS = 20
"""Duration of one input audio frame."""

FRAME_SAMPLES = INPUT_SAMPLE_RATE_HZ * FRAME_MS // 1000


class Priority(enum.IntEnum):
    """Delivery class: CONTROL events are delivered before any queued DATA events."""

    CONTROL = 0
    DATA = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base of every bus event."""

    session_id: str
    ts_ms: float
    turn_id: int | None = None

    priority: ClassVar[Priority] = Priority.DATA
    is_user_audio: ClassVar[bool] = False

    @property
    def kind(self) -> str:
        return type(self).__name__


# ---------------------------------------------------------------- audio in/out


@dataclass(frozen=True, slots=True, kw_only=True)
class AudioFrame(Event):
    """One frame of user (microphone) audio: mono PCM16 little-endian bytes."""

    pcm: bytes
    sample_rate_hz: int
    seq: int
    """Frame ``seq`` covers session time ``[seq, seq + 1) * duration_ms``: the VAD times speech, and so
    every silence rule, from it. A source numbers its frames from the session clock, not from 0."""
    speech_gate: float = 1.0
    """How far the VAD may believe speech in this frame, in [0, 1]: below 1 while echo cancellation judges
    it to hold only the bot's own residual echo, 1 otherwise (and always without echo cancellation)."""
    is_user_audio: ClassVar[bool] = True

    @property
    def duration_ms(self) -> float:
        return 1000.0 * (len(self.pcm) // 2) / self.sample_rate_hz


# ---------------------------------------------------------------- perception


@dataclass(frozen=True, slots=True, kw_only=True)
class VadSpeechStart(Event):
    """The VAD heard user speech begin. ``speech_start_ms`` is when it began, before onset lag."""

    segment_id: int
    probability: float
    speech_start_ms: float


@dataclass(frozen=True, slots=True, kw_only=True)
class VadSpeechStop(Event):
    """The VAD heard user speech end. ``speech_end_ms`` is when it ended, before offset lag."""

    segment_id: int
    probability: float
    speech_end_ms: float


@dataclass(frozen=True, slots=True, kw_only=True)
class VadOnsetCandidate(Event):
    """The newest frames may hold speech (``active``), or no longer do: the VAD's raw probability
    crossed its candidate threshold while no speech was open. It comes before a :class:`VadSpeechStart`
    by the VAD's onset lag, so the controller can hold a commit that would land on a resuming user
    without reading every frame. ``since_ms`` is the first frame above the threshold."""

    active: bool
    probability: float
    since_ms: float
    # The data lane, as the VAD's other events: an ended candidate must not overtake the
    # VadSpeechStart that confirmed it, or a commit could slip in between.


@dataclass(frozen=True, slots=True, kw_only=True)
class VadOffsetCandidate(Event):
    """Speech may have ended at ``speech_end_ms``: the VAD has heard ``offset_candidate_ms`` of
    silence, short of the ``min_silence_ms`` that makes it a :class:`VadSpeechStop` (which, if it
    comes, carries the same end). The ASR starts the final transcript here, so it is ready sooner."""

    segment_id: int
    speech_end_ms: float


@dataclass(frozen=True, slots=True, kw_only=True)
class AsrPartial(Event):
    """Interim transcript of the speech segment in progress."""

    segment_id: int
    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AsrFinal(Event):
    """Final transcript of one speech segment (may be empty for noise)."""

    segment_id: int
    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class EndOfTurnProbability(Event):
    """A turn-end detector's belief that the user has finished their turn."""

    probability: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Tick(Event):
    """Timer tick, sent when the controller's next timing rule comes due, so timing rules fire
    without I/O in the controller."""

    priority: ClassVar[Priority] = Priority.CONTROL


# ---------------------------------------------------------------- controller actions


@dataclass(frozen=True, slots=True, kw_only=True)
class StartReply(Event):
    """Generate a reply to ``user_text``; speculative replies may later be cancelled."""

    reply_id: str
    user_text: str
    speculative: bool
    prerender: bool = True
    """Synthesize its audio before it is committed (the policy's ``speculative_tts``)."""
    priority: ClassVar[Priority] = Priority.CONTROL


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelReply(Event):
    """Abort a reply: stop generation and synthesis and drop its buffered audio."""

    reply_id: str
    reason: str
    priority: ClassVar[Priority] = Priority.CONTROL


@dataclass(frozen=True, slots=True, kw_only=True)
class CommitReply(Event):
    """The reply answers the user's finished turn; its user text enters history."""

    reply_id: str
    user_text: str
    priority: ClassVar[Priority] = Priority.CONTROL


@dataclass(frozen=True, slots=True, kw_only=True)
class StartPlayout(Event):
    """Play the reply's audio as soon as it is available."""

    reply_id: str
    priority: ClassVar[Priority] = Priority.CONTROL


@dataclass(frozen=True, slots=True, kw_only=True)
class StopPlayout(Event):
    """Stop playing at once and drop unsent audio (barge-in)."""

    reply_id: str
    priority: ClassVar[Priority] = Priority.CONTROL


@dataclass(frozen=True, slots=True, kw_only=True)
class PausePlayout(Event):
    """Hold playout while the user may be backchanneling."""

    reply_id: str
    priority: ClassVar[Priority] = Priority.CONTROL


@dataclass(frozen=True, slots=True, kw_only=True)
class ResumePlayout(Event):
    """Continue a held playout: the overlap was a backchannel."""

    reply_id: str
    priority: ClassVar[Priority] = Priority.CONTROL


@dataclass(frozen=True, slots=True, kw_only=True)
class TruncateHistory(Event):
    """Keep only what was played of an interrupted reply in the history."""

    reply_id: str
    played_ms: float
    priority: ClassVar[Priority] = Priority.CONTROL


@dataclass(frozen=True, slots=True, kw_only=True)
class SpeakRequest(Event):
    """Ask the bot to say fixed text on its own (a greeting); honoured only when nobody is speaking."""

    reply_id: str
    text: str
    priority: ClassVar[Priority] = Priority.CONTROL


@dataclass(frozen=True, slots=True, kw_only=True)
class SpeakText(Event):
    """Say this text as the given reply (no LLM); playout follows a StartPlayout for it."""

    reply_id: str
    text: str
    priority: ClassVar[Priority] = Priority.CONTROL


@dataclass(frozen=True, slots=True, kw_only=True)
class StateChanged(Event):
    """The controller moved between states."""

    old_state: str
    new_state: str
    reason: str
    priority: ClassVar[Priority] = Priority.CONTROL


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyUpdate(Event):
    """Change turn-taking policy parameters of a running session (a live update from a transport).

    ``overrides`` are ``(name, value)`` pairs of ``PolicyParams`` fields. It travels on the bus, so
    it reaches the controller wherever it runs, a Ray session host included. The controller actor
    applies it and confirms with a ``MetricEvent`` named ``policy_applied`` (labels: the new values),
    or refuses it, keeping its parameters, with an ``ErrorEvent``.
    """

    overrides: tuple[tuple[str, float | int | bool], ...]
    priority: ClassVar[Priority] = Priority.CONTROL


# ---------------------------------------------------------------- generation


@dataclass(frozen=True, slots=True, kw_only=True)
class PromptReady(Event):
    """The context manager's chat messages for one reply, ready for the LLM."""

    reply_id: str
    messages: tuple[tuple[str, str], ...]  # (role, content)
    earlier_replies: tuple[str, ...] = ()
    """The conversation's earlier replies, including those the prompt leaves out: the reply guard's
    references (a reply must not repeat one)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LlmToken(Event):
    """One streamed piece of reply text."""

    reply_id: str
    text: str
    index: int


@dataclass(frozen=True, slots=True, kw_only=True)
class LlmDone(Event):
    """The LLM finished a reply (not sent for cancelled replies)."""

    reply_id: str
    text: str
    n_tokens: int


@dataclass(frozen=True, slots=True, kw_only=True)
class LlmCancelled(Event):
    """A reply's generation stopped early; ``n_tokens`` were generated and discarded."""

    reply_id: str
    n_tokens: int


@dataclass(frozen=True, slots=True, kw_only=True)
class TtsAudio(Event):
    """One synthesized chunk of reply audio and the text it speaks."""

    reply_id: str
    seq: int
    pcm: bytes
    sample_rate_hz: int
    text: str
    duration_ms: float
    instructions: tuple[str, ...] = ()
    """Instruction tags of the reply (e.g. slow, happy), stripped from the spoken text."""
    unrendered_instructions: tuple[str, ...] = ()
    """The tags this engine could not render."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TtsDone(Event):
    """All of a reply's audio has been synthesized."""

    reply_id: str
    n_chunks: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplyReady(Event):
    """A reply has its first audio buffered and could start playing now."""

    reply_id: str
    priority: ClassVar[Priority] = Priority.CONTROL


# ---------------------------------------------------------------- playout


@dataclass(frozen=True, slots=True, kw_only=True)
class PlayoutStarted(Event):
    """The first frame of a reply's audio went out."""

    reply_id: str
    priority: ClassVar[Priority] = Priority.CONTROL


@dataclass(frozen=True, slots=True, kw_only=True)
class PlayoutProgress(Event):
    """How much of a reply has been played so far."""

    reply_id: str
    played_ms: float


@dataclass(frozen=True, slots=True, kw_only=True)
class PlayoutDone(Event):
    """A reply was played to its end."""

    reply_id: str
    played_ms: float
    priority: ClassVar[Priority] = Priority.CONTROL


@dataclass(frozen=True, slots=True, kw_only=True)
class PlayoutStopped(Event):
    """A reply's playout was cut off; ``played_ms`` of it reached the user."""

    reply_id: str
    played_ms: float
    priority: ClassVar[Priority] = Priority.CONTROL


# ---------------------------------------------------------------- context


@dataclass(frozen=True, slots=True, kw_only=True)
class HistoryUpdated(Event):
    """A message entered the text history."""

    role: str
    text: str


# ---------------------------------------------------------------- health


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorEvent(Event):
    """Something went wrong but the session goes on: one line naming the source and the fix."""

    source: str
    message: str
    fatal: bool = False
    priority: ClassVar[Priority] = Priority.CONTROL


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricEvent(Event):
    """A named measurement, such as a counter increment or a latency."""

    name: str
    value: float
    labels: tuple[tuple[str, str], ...] = field(default=())


# ---------------------------------------------------------------- tools


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolCallRequested(Event):
    """The LLM wrote a tool call in a reply's stream; its text was withheld from speech.

    ``arguments`` is the JSON text as the model wrote it; ``text_before`` is everything the
    reply had said before the call. ``parse_error`` is set when the call itself was malformed.
    """

    reply_id: str
    call_id: str
    name: str
    arguments: str
    text_before: str
    call_format: str
    parse_error: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolCallStarted(Event):
    """A tool began running; ``speculative`` when its reply was not yet committed."""

    reply_id: str
    call_id: str
    name: str
    read_only: bool
    speculative: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolCallDeferred(Event):
    """A side-effecting call waits until its reply has been played to the end, uninterrupted."""

    reply_id: str
    call_id: str
    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolResult(Event):
    """How a tool call ended: ok, error, timeout, invalid, cancelled or prevented; ``content`` is text."""

    reply_id: str
    call_id: str
    name: str
    status: str
    content: str
    latency_ms: float = 0.0


# ---------------------------------------------------------------- audio tokens


@dataclass(frozen=True, slots=True, kw_only=True)
class AudioTokens(Event):
    """User audio as Step-Audio LLM ids: whole 2:3 groups, 2 linguistic then 3 semantic ids per 120 ms.

    Groups are numbered from the start of tokenizer stream ``stream_id`` (a new stream starts
    only after a tokenizer failure), so consecutive events continue each other. The ids cover
    user audio ``start_ms``..``end_ms``, with the same time origin as ``AudioFrame.seq * duration``.
    """

    ids: tuple[int, ...]
    stream_id: int
    first_group: int
    start_ms: float
    end_ms: float
    is_user_audio: ClassVar[bool] = True
