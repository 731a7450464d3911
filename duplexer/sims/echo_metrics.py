"""Echo metrics: ERLE, and what the pipeline's own VAD and barge-in rule do with a microphone signal.

- **ERLE** (echo return loss enhancement, dB): microphone power over output power on frames where
  the bot's echo is present and the user is silent, after convergence. The linear filter's output
  and the total output (after residual suppression) are scored apart.
- **Barge-in replay**: the microphone signal the pipeline would see (raw, or after the echo
  canceller with its gate) goes through the real Silero VAD, the real :class:`VadActor` (its
  onset/offset hysteresis, :class:`VadParams`) and the real turn-taking controller (the live-call
  :class:`PolicyParams`), started in BotReplying for each reply. The controller's first
  ``PausePlayout`` is the audible stop (the bot falls silent at speech onset), its
  ``CancelReply(barge_in)`` the stop for good (``min_barge_in_ms`` of speech). A reply stopped
  before the user spoke (or with no user at all) is a self-interruption.
- **Stop latency**: user onset (first audible sample of the user's speech as heard at the
  microphone, before echo) to the end of the frame on which the controller pauses playout, plus
  one frame (``FRAME_MS``): the playout actor drops unsent audio within one frame.
- **Word error rate** of the user's speech during double-talk (Whisper, the ASR engine of the
  pipeline), on the same words with and without echo.
"""

from __future__ import annotations

import itertools
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from duplexer.actors.vad import VadActor, VadParams
from duplexer.policies.controller import CONTROLLER_INPUTS, Controller
from duplexer.policies.params import LIVE_CALL_POLICY, PolicyParams
from duplexer.runtime.actor import SessionContext
from duplexer.runtime.events import (
    FRAME_MS,
    INPUT_SAMPLE_RATE_HZ,
    AudioFrame,
    CancelReply,
    Event,
    PausePlayout,
    PlayoutStarted,
    SpeakRequest,
    StopPlayout,
    Tick,
)
from duplexer.sims.word_accuracy import normalize_words, word_edits

FloatArray = npt.NDArray[np.float64]

STOP_PATH_MS = float(FRAME_MS)
"""After the controller's stop, the playout actor drops unsent audio within one frame."""


def erle_db(mic: FloatArray, out: FloatArray) -> float:
    """10 log10 of microphone power over output power (same samples); nan when both are silent."""
    num, den = float(np.sum(mic**2)), float(np.sum(out**2))
    if num <= 0:
        return float("nan")
    return float(10 * np.log10(num / max(den, 1e-20)))


def word_error_rate(pairs: list[tuple[str, str]]) -> float:
    """Word edits over reference words, over (reference, hypothesis) pairs; nan for no words."""
    edits = words = 0
    for reference, hypothesis in pairs:
        ref = normalize_words(reference)
        edits += word_edits(ref, normalize_words(hypothesis))
        words += len(ref)
    return edits / words if words else float("nan")


class _ListBus:
    """Just enough of a bus for one actor driven by hand: published events are collected."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def publish(self, event: Event) -> None:
        self.events.append(event)


class _FrameClock:
    def __init__(self) -> None:
        self.ms = 0.0

    def now_ms(self) -> float:
        return self.ms


def _run_now(coro: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine that never awaits anything pending (the VAD actor's handler) to completion."""
    try:
        coro.send(None)
    except StopIteration:
        return
    coro.close()
    raise RuntimeError("the VAD actor's handler awaited: it cannot be driven frame by frame")


@dataclass
class ReplyOutcome:
    """What the barge-in rule did with one bot reply."""

    start_ms: float
    end_ms: float
    user_onset_ms: float | None
    paused_ms: float | None = None
    stopped_ms: float | None = None

    @property
    def self_interrupted(self) -> bool:
        """Stopped for good with no user speech yet."""
        return self.stopped_ms is not None and (self.user_onset_ms is None or self.stopped_ms < self.user_onset_ms)

    @property
    def false_pause(self) -> bool:
        """Paused (fell silent for a moment) with no user speech yet."""
        return self.paused_ms is not None and (self.user_onset_ms is None or self.paused_ms < self.user_onset_ms)

    @property
    def stop_latency_ms(self) -> float | None:
        """User onset -> the bot audibly stops; None without a user or when the bot stopped first."""
        if self.user_onset_ms is None or self.paused_ms is None or self.paused_ms < self.user_onset_ms:
            return None
        return self.paused_ms - self.user_onset_ms + STOP_PATH_MS

    @property
    def confirm_latency_ms(self) -> float | None:
        """User onset -> the reply is stopped for good (barge-in after min_barge_in_ms)."""
        if self.user_onset_ms is None or self.stopped_ms is None or self.stopped_ms < self.user_onset_ms:
            return None
        return self.stopped_ms - self.user_onset_ms + STOP_PATH_MS


@dataclass
class BargeInReplay:
    """The pipeline's VAD actor and controller over one microphone stream, frame by frame.

    ``vad_engine`` is a :class:`~duplexer.actors.engines.VadEngine` (Silero in the benchmark).
    Call :meth:`start_reply` when a bot reply starts playing, :meth:`frame` for every 20 ms frame
    (with ``speech_gate``: the echo canceller's verdict, 1.0 for no gate)."""

    vad_engine: Any
    params: PolicyParams = LIVE_CALL_POLICY
    vad_params: VadParams = field(default_factory=VadParams)
    outcomes: list[ReplyOutcome] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.bus = _ListBus()
        self.clock = _FrameClock()
        ctx = SessionContext(session_id="echo", bus=self.bus, clock=self.clock)  # type: ignore[arg-type]
        self.vad = VadActor(ctx, self.vad_engine, self.vad_params)
        self.controller: Controller | None = None
        self.current: ReplyOutcome | None = None
        self.reply_ids = itertools.count(1)

    def start_reply(self, start_ms: float, end_ms: float, user_onset_ms: float | None) -> None:
        self.controller = Controller(session_id="echo", params=self.params)
        reply_id = f"r{next(self.reply_ids)}"
        self.controller.handle(SpeakRequest(session_id="echo", ts_ms=start_ms, reply_id=reply_id, text="..."), start_ms)
        self.controller.handle(PlayoutStarted(session_id="echo", ts_ms=start_ms, reply_id=reply_id), start_ms)
        self.current = ReplyOutcome(start_ms=start_ms, end_ms=end_ms, user_onset_ms=user_onset_ms)
        self.outcomes.append(self.current)

    def frame(self, seq: int, pcm: bytes, speech_gate: float = 1.0) -> None:
        """One 20 ms frame numbered ``seq`` (session time ``seq * FRAME_MS``), with the echo canceller's
        speech gate on the ``AudioFrame`` as the live path carries it (the VAD multiplies it in)."""
        end_ms = (seq + 1) * FRAME_MS
        self.clock.ms = end_ms
        self.bus.events.clear()
        frame = AudioFrame(
            session_id="echo",
            ts_ms=end_ms,
            pcm=pcm,
            sample_rate_hz=INPUT_SAMPLE_RATE_HZ,
            seq=seq,
            speech_gate=speech_gate,
        )
        _run_now(self.vad.handle(frame))
        if self.controller is None or self.current is None:
            return
        if end_ms > self.current.end_ms:
            self.controller = None
            return
        actions: list[Event] = []
        for event in [*self.bus.events, Tick(session_id="echo", ts_ms=end_ms)]:
            if isinstance(event, CONTROLLER_INPUTS):
                actions += self.controller.handle(event, end_ms)
        for action in actions:
            if isinstance(action, PausePlayout | StopPlayout) and self.current.paused_ms is None:
                self.current.paused_ms = end_ms
            if isinstance(action, CancelReply) and self.current.stopped_ms is None:
                self.current.stopped_ms = end_ms
                if self.current.paused_ms is None:
                    self.current.paused_ms = end_ms
