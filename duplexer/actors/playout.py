"""Playout actor: buffers each reply's audio and plays the committed one in real-time frames.

Audio is paced one frame per ``FRAME_MS`` on the session clock, so a stop takes
effect within one frame: on StopPlayout the unsent audio is dropped at once and
the sink is told to flush what it holds.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from duplexer.actors.engines import AudioSink
from duplexer.policies.reply import ReplyLedger
from duplexer.runtime.actor import Actor, SessionContext
from duplexer.runtime.events import (
    FRAME_MS,
    CancelReply,
    Event,
    PausePlayout,
    PlayoutDone,
    PlayoutProgress,
    PlayoutStarted,
    PlayoutStopped,
    ReplyReady,
    ResumePlayout,
    StartPlayout,
    StopPlayout,
    TtsAudio,
    TtsDone,
)

UNDERRUN_METRIC = "playout.underrun"
"""The session counter of gaps in a playing reply's audio (the service metrics export it)."""


@dataclass(frozen=True)
class PlayoutParams:
    progress_every_ms: float = 200.0


@dataclass
class _Buffer:
    turn_id: int | None
    sample_rate_hz: int = 0
    pending: bytearray = field(default_factory=bytearray)
    done: bool = False
    played_ms: float = 0.0
    announced_ready: bool = False
    starved: bool = False


class PlayoutActor(Actor):
    name = "playout"
    subscribes = (TtsAudio, TtsDone, StartPlayout, StopPlayout, PausePlayout, ResumePlayout, CancelReply)

    def __init__(self, ctx: SessionContext, sink: AudioSink, params: PlayoutParams | None = None) -> None:
        super().__init__(ctx)
        self.sink = sink
        self.params = params or PlayoutParams()
        self.lives = ReplyLedger()
        """Which replies were cancelled: their audio still queued on the data lane is dropped, not buffered."""
        self.buffers: dict[str, _Buffer] = {}
        self.playing: str | None = None
        self.paused = False
        self.wake = asyncio.Event()
        self.player: asyncio.Task[None] | None = None
        self.underruns = 0

    async def on_start(self) -> None:
        if self.player is None or self.player.done():
            self.player = self.spawn(self._play_forever(), "player")

    def _buffer(self, reply_id: str, turn_id: int | None) -> _Buffer:
        buf = self.buffers.get(reply_id)
        if buf is None:
            buf = self.buffers[reply_id] = _Buffer(turn_id)
        return buf

    async def handle(self, event: Event) -> None:
        if isinstance(event, CancelReply):
            self.lives.observe(event)
        elif isinstance(event, (TtsAudio, TtsDone, StartPlayout)) and not self.lives.may_run(event.reply_id):
            return  # audio of a reply cancelled after it was synthesized: nobody will play it
        if isinstance(event, TtsAudio):
            buf = self._buffer(event.reply_id, event.turn_id)
            buf.sample_rate_hz = event.sample_rate_hz
            buf.pending += event.pcm
            if not buf.announced_ready:
                buf.announced_ready = True
                self.emit(ReplyReady, turn_id=event.turn_id, reply_id=event.reply_id)
        elif isinstance(event, TtsDone):
            self._buffer(event.reply_id, event.turn_id).done = True
        elif isinstance(event, StartPlayout):
            self._buffer(event.reply_id, event.turn_id)
            self.playing, self.paused = event.reply_id, False
        elif isinstance(event, StopPlayout):
            if self.playing == event.reply_id:
                self._stop(event.reply_id)
        elif isinstance(event, CancelReply):
            if self.playing == event.reply_id:
                self._stop(event.reply_id)
            self.buffers.pop(event.reply_id, None)
        elif isinstance(event, PausePlayout):
            self.paused = self.playing == event.reply_id
        elif isinstance(event, ResumePlayout) and self.playing == event.reply_id:
            self.paused = False
        self.wake.set()

    def _stop(self, reply_id: str) -> None:
        buf = self.buffers.pop(reply_id, None)
        self.sink.flush()
        self.playing = None
        self.emit(
            PlayoutStopped,
            turn_id=buf.turn_id if buf else None,
            reply_id=reply_id,
            played_ms=buf.played_ms if buf else 0.0,
        )

    async def _play_forever(self) -> None:
        """One frame per FRAME_MS while a reply plays; sleeps on ``wake`` otherwise."""
        clock = self.ctx.clock
        next_frame_ms: float | None = None
        since_progress_ms = 0.0
        while True:
            reply_id = self.playing
            buf = self.buffers.get(reply_id) if reply_id else None
            if reply_id is None or buf is None or self.paused or (not buf.pending and not buf.done):
                if buf is not None and buf.played_ms > 0 and not self.paused and not buf.starved:
                    buf.starved = True  # one underrun per gap, however often we are woken
                    self.underruns += 1
                    self.ctx.metrics.incr(UNDERRUN_METRIC)
                self.wake.clear()
                await self.wake.wait()
                next_frame_ms = None
                continue
            if not buf.pending and buf.done:
                self.buffers.pop(reply_id, None)
                self.playing = None
                self.emit(PlayoutDone, turn_id=buf.turn_id, reply_id=reply_id, played_ms=buf.played_ms)
                continue
            frame_bytes = 2 * buf.sample_rate_hz * FRAME_MS // 1000
            frame = bytes(buf.pending[:frame_bytes])
            del buf.pending[:frame_bytes]
            now_ms = clock.now_ms()
            if buf.played_ms == 0.0:
                self.emit(PlayoutStarted, turn_id=buf.turn_id, reply_id=reply_id)
            self.sink.write(frame, buf.sample_rate_hz, reply_id, now_ms)
            buf.starved = False
            frame_ms = 1000.0 * (len(frame) // 2) / buf.sample_rate_hz
            buf.played_ms += frame_ms
            since_progress_ms += frame_ms
            if since_progress_ms >= self.params.progress_every_ms:
                since_progress_ms = 0.0
                self.emit(PlayoutProgress, turn_id=buf.turn_id, reply_id=reply_id, played_ms=buf.played_ms)
            next_frame_ms = (now_ms if next_frame_ms is None else next_frame_ms) + frame_ms
            await clock.sleep_ms(next_frame_ms - clock.now_ms())
