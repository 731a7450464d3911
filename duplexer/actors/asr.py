"""ASR actor: collects each speech segment's audio and transcribes it asynchronously.

Partials run while the user speaks (one at a time, never queued), so the final
transcript at a pause only has the tail left to do. Finals run in their own
tasks, so audio keeps flowing while a transcript is computed.

A final is started early, when the VAD says speech may have ended
(:class:`VadOffsetCandidate`, ~40 ms into the silence), not when it is sure
(:class:`VadSpeechStop`, ~100 ms in): if the stop then confirms that end, the early
transcript is the final (the audio differs only by trailing silence), and the reply
that waits on it starts ~60 ms plus the VAD's window sooner. If the user goes on
instead, the early transcript is dropped.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass

from duplexer.actors.engines import AsrEngine
from duplexer.runtime.actor import Actor, SessionContext
from duplexer.runtime.events import (
    FRAME_MS,
    AsrFinal,
    AsrPartial,
    AudioFrame,
    ErrorEvent,
    Event,
    VadOffsetCandidate,
    VadSpeechStart,
    VadSpeechStop,
)


@dataclass(frozen=True)
class AsrParams:
    partial_interval_ms: float = 500.0
    preroll_ms: float = 300.0
    """Audio kept from before the VAD onset, so the first syllable is not cut."""


@dataclass
class _Segment:
    segment_id: int
    start_ms: float
    frames: list[bytes]
    end_ms: float | None = None
    last_partial_ms: float = 0.0
    early: tuple[float, asyncio.Task[str | None]] | None = None
    """A final started at an offset candidate: the speech end it assumed, and its transcript."""


class AsrActor(Actor):
    name = "asr"
    subscribes = (AudioFrame, VadSpeechStart, VadOffsetCandidate, VadSpeechStop)

    def __init__(self, ctx: SessionContext, engine: AsrEngine, params: AsrParams | None = None) -> None:
        super().__init__(ctx)
        self.engine = engine
        self.params = params or AsrParams()
        # the preroll plus a second: the VAD's speech start can reach this actor after later frames
        self.recent: deque[tuple[float, bytes]] = deque(maxlen=int((self.params.preroll_ms + 1000.0) // FRAME_MS))
        self.segment: _Segment | None = None
        self.last_end_ms = float("-inf")
        self.partial_task: asyncio.Task[None] | None = None

    async def handle(self, event: Event) -> None:
        if isinstance(event, AudioFrame):
            frame_start_ms = event.seq * event.duration_ms
            self.recent.append((frame_start_ms, event.pcm))
            seg = self.segment
            if seg is not None:
                seg.frames.append(event.pcm)
                now = frame_start_ms + event.duration_ms
                if now - seg.last_partial_ms >= self.params.partial_interval_ms and (
                    self.partial_task is None or self.partial_task.done()
                ):
                    seg.last_partial_ms = now
                    self.partial_task = self.spawn(self._partial(seg, now), "partial")
        elif isinstance(event, VadSpeechStart):
            # the preroll, but never audio of the previous segment: its words are in its own transcript
            since_ms = max(event.speech_start_ms - self.params.preroll_ms, self.last_end_ms)
            frames = [pcm for start, pcm in self.recent if start >= since_ms]
            self.segment = _Segment(event.segment_id, event.speech_start_ms, frames, None, event.speech_start_ms)
        elif isinstance(event, VadOffsetCandidate):
            seg = self.segment
            if seg is None or seg.segment_id != event.segment_id:
                return
            if seg.early is None or seg.early[1].done():  # one early final at a time per segment
                audio = b"".join(seg.frames)
                task = self.spawn(self._early(audio, seg.start_ms, event.speech_end_ms), "early-final")
                seg.early = (event.speech_end_ms, task)
        elif isinstance(event, VadSpeechStop):
            seg = self.segment
            if seg is None or seg.segment_id != event.segment_id:
                return
            seg.end_ms = self.last_end_ms = event.speech_end_ms
            self.segment = None
            self.spawn(self._final(seg), "final")

    async def _partial(self, seg: _Segment, until_ms: float) -> None:
        try:
            text = await self.engine.transcribe(b"".join(seg.frames), seg.start_ms, until_ms, final=False)
        except Exception as exc:
            self.log.warning("asr_partial_failed", error=repr(exc))
            return
        if text and self.segment is seg:
            self.emit(AsrPartial, segment_id=seg.segment_id, text=text)

    async def _early(self, pcm: bytes, start_ms: float, end_ms: float) -> str | None:
        """A final transcript ahead of the stop; None if it failed (the final then runs as usual)."""
        try:
            return await self.engine.transcribe(pcm, start_ms, end_ms, final=True)
        except Exception as exc:
            self.log.warning("asr_early_final_failed", error=repr(exc))
            return None

    async def _final(self, seg: _Segment) -> None:
        assert seg.end_ms is not None
        try:
            text = None
            if seg.early is not None and seg.early[0] == seg.end_ms:  # the end it assumed is the end
                text = await seg.early[1]
            if text is None:
                text = await self.engine.transcribe(b"".join(seg.frames), seg.start_ms, seg.end_ms, final=True)
        except Exception as exc:  # a failed transcript must not hang the turn: report, send empty
            self.emit(ErrorEvent, source=self.name, message=f"ASR failed on segment {seg.segment_id}: {exc}")
            text = ""
        self.emit(AsrFinal, segment_id=seg.segment_id, text=text)
