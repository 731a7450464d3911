"""The turn recorder: one actor per live session that turns its bus events into service figures.

It watches the events every session already carries (the VAD's speech edges, the ASR's finals,
reply starts, commits and cancels, LLM tokens, playout) and, when a reply's playout ends, hands its
:class:`~duplexer.runtime.turn_timing.TurnTiming` to the server's
:class:`~duplexer.runtime.observability.Observability`. What the listener heard comes from the
transport, which alone knows when a sample left for them: ``heard(reply_id)`` gives the reply's
first and last audible sample sent (a WebRTC call's track, an MQTT device's :class:`SentAudio`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from duplexer.actors.engines import AudioSink
from duplexer.actors.playout import UNDERRUN_METRIC
from duplexer.kernels.loudness import audible_spans
from duplexer.runtime.actor import Actor, SessionContext
from duplexer.runtime.events import (
    AsrFinal,
    CancelReply,
    CommitReply,
    Event,
    LlmToken,
    PlayoutDone,
    PlayoutStarted,
    PlayoutStopped,
    StartReply,
    VadSpeechStart,
    VadSpeechStop,
)
from duplexer.runtime.observability import Observability
from duplexer.runtime.turn_timing import TurnTiming

KEPT = 64
"""Replies, transcripts and speech stretches remembered per session (older ones are long over)."""


class HeardReply(Protocol):
    """When a reply's audible samples left for the listener, on the session clock (None: none did)."""

    @property
    def first_audible_ms(self) -> float | None: ...

    @property
    def last_audible_end_ms(self) -> float | None: ...


HeardLookup = Callable[[str], HeardReply | None]


@dataclass
class ReplyHeard:
    """The audible part of one reply's audio as it was sent (see :class:`SentAudio`)."""

    first_audible_ms: float | None = None
    last_audible_end_ms: float | None = None


class SentAudio:
    """An :class:`AudioSink` in front of another that notes, per reply, when its audible samples were sent.

    A sample is sent at its frame's write time plus its offset in the frame: the playout writes each
    frame when it is due, and a sink such as an MQTT topic sends it at once."""

    def __init__(self, sink: AudioSink) -> None:
        self.sink = sink
        self.replies: OrderedDict[str, ReplyHeard] = OrderedDict()

    def write(self, pcm: bytes, sample_rate_hz: int, reply_id: str, ts_ms: float) -> None:
        heard = self.replies.get(reply_id)
        if heard is None:
            heard = self.replies[reply_id] = ReplyHeard()
            while len(self.replies) > KEPT:
                self.replies.popitem(last=False)
        spans = audible_spans(np.frombuffer(pcm, dtype=np.int16), sample_rate_hz)
        if spans:
            if heard.first_audible_ms is None:
                heard.first_audible_ms = ts_ms + spans[0][0]
            heard.last_audible_end_ms = ts_ms + spans[-1][1]
        self.sink.write(pcm, sample_rate_hz, reply_id, ts_ms)

    def flush(self) -> None:
        self.sink.flush()

    def heard(self, reply_id: str) -> ReplyHeard | None:
        return self.replies.get(reply_id)


@dataclass
class _Reply:
    turn_id: int | None
    started_ms: float
    speculative: bool
    first_token_ms: float | None = None
    committed: bool = False
    discarded: bool = False
    speech_end_ms: float | None = None
    segment_id: int | None = None
    barge_in_onset_ms: float | None = None


class TurnRecorderActor(Actor):
    """Counts a session and its replies into the server's metrics, and traces each turn."""

    name = "turn_recorder"
    subscribes = (
        VadSpeechStart,
        VadSpeechStop,
        AsrFinal,
        StartReply,
        CommitReply,
        CancelReply,
        LlmToken,
        PlayoutStarted,
        PlayoutDone,
        PlayoutStopped,
    )
    queue_size = 8192

    def __init__(self, ctx: SessionContext, observability: Observability, heard: HeardLookup) -> None:
        super().__init__(ctx)
        self.observability = observability
        self.metrics = observability.metrics
        self.heard = heard
        self.replies: OrderedDict[str, _Reply] = OrderedDict()
        self.finals_ms: OrderedDict[int, float] = OrderedDict()
        self.user_speech: list[tuple[float, float | None]] = []
        """The user's speech stretches, ``[start_ms, end_ms]`` (end None while it goes on)."""
        self.last_stop: tuple[int, float] | None = None
        self.playing: str | None = None
        self.underruns_seen = 0.0
        self.started = False
        self.stopped = False

    async def on_start(self) -> None:
        if not self.started:  # on_start runs again after a restart: one session is counted once
            self.started = True
            self.metrics.sessions.inc()
            self.metrics.sessions_active.inc()

    async def on_stop(self) -> None:
        self._count_underruns()
        if self.started and not self.stopped:
            self.stopped = True
            self.metrics.sessions_active.dec()

    async def handle(self, event: Event) -> None:
        if isinstance(event, VadSpeechStart):
            self.user_speech.append((event.speech_start_ms, None))
            del self.user_speech[:-KEPT]
            reply = self.replies.get(self.playing) if self.playing else None
            if reply is not None and reply.barge_in_onset_ms is None:
                reply.barge_in_onset_ms = event.speech_start_ms
        elif isinstance(event, VadSpeechStop):
            self.last_stop = (event.segment_id, event.speech_end_ms)
            if self.user_speech and self.user_speech[-1][1] is None:
                self.user_speech[-1] = (self.user_speech[-1][0], event.speech_end_ms)
        elif isinstance(event, AsrFinal):
            self.finals_ms[event.segment_id] = event.ts_ms
            while len(self.finals_ms) > KEPT:
                self.finals_ms.popitem(last=False)
        elif isinstance(event, StartReply):
            self.replies[event.reply_id] = _Reply(event.turn_id, event.ts_ms, event.speculative)
            while len(self.replies) > KEPT:
                self.replies.popitem(last=False)
            if event.speculative:
                self.metrics.speculation("started")
        else:
            self._reply_event(event)

    def _reply_event(self, event: Event) -> None:
        reply_id: str | None = getattr(event, "reply_id", None)
        reply = self.replies.get(reply_id) if reply_id is not None else None
        if reply is None or reply_id is None:
            return
        if isinstance(event, LlmToken):
            if reply.first_token_ms is None:
                reply.first_token_ms = event.ts_ms
        elif isinstance(event, CommitReply):
            reply.committed = True
            if self.last_stop is not None:
                reply.segment_id, reply.speech_end_ms = self.last_stop
            if reply.speculative:
                self.metrics.speculation("committed")
        elif isinstance(event, CancelReply):
            if reply.speculative and not reply.committed and not reply.discarded:
                reply.discarded = True
                self.metrics.speculation("discarded")
        elif isinstance(event, PlayoutStarted):
            self.playing = reply_id
        elif isinstance(event, (PlayoutDone, PlayoutStopped)):
            if self.playing == reply_id:
                self.playing = None
            del self.replies[reply_id]
            self._count_underruns()
            timing = self._timing(reply_id, reply, event)
            self.observability.turn_ended(timing, self.ctx.clock.now_ms())

    def _timing(self, reply_id: str, reply: _Reply, event: Event) -> TurnTiming:
        heard = self.heard(reply_id)
        first_ms = heard.first_audible_ms if heard is not None else None
        asr_ms = self.finals_ms.get(reply.segment_id) if reply.segment_id is not None else None
        return TurnTiming(
            session_id=self.ctx.session_id,
            turn_id=reply.turn_id,
            reply_id=reply_id,
            speculative=reply.speculative,
            outcome="stopped" if isinstance(event, PlayoutStopped) else "done",
            reply_started_ms=reply.started_ms,
            ended_ms=event.ts_ms,
            speech_end_ms=reply.speech_end_ms,
            asr_final_ms=asr_ms,
            first_token_ms=reply.first_token_ms,
            first_audible_ms=first_ms,
            last_audible_end_ms=heard.last_audible_end_ms if heard is not None else None,
            barge_in_onset_ms=reply.barge_in_onset_ms,
            talk_over=first_ms is not None and self._user_speaking_at(first_ms),
        )

    def _user_speaking_at(self, t_ms: float) -> bool:
        return any(start <= t_ms and (end is None or t_ms < end) for start, end in self.user_speech)

    def _count_underruns(self) -> None:
        total = self.ctx.metrics.count(UNDERRUN_METRIC)
        if total > self.underruns_seen:
            self.metrics.underruns.inc(total - self.underruns_seen)
            self.underruns_seen = total
