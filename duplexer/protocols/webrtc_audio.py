"""Call audio between aiortc and the pipeline: the outbound paced track, and the Opus constants.

Inbound, Opus decodes to 48 kHz (Chromium sends stereo s16 frames of 960
samples); :class:`~duplexer.protocols.inbound_audio.InboundAudio`, which the MQTT
bridge uses too, turns those into the pipeline's frames.

Outbound, :class:`BotAudioTrack` is both the session's
:class:`~duplexer.actors.engines.AudioSink` and the MediaStreamTrack aiortc
sends. aiortc's sender sends a frame as soon as ``recv`` returns one, so the
track paces itself by pts. The playout actor already paces replies in real time,
so the track holds at most a frame or two; ``flush`` (a barge-in) drops them at once.
The track also notes, per reply, when its first and last audible samples
(:data:`~duplexer.kernels.loudness.AUDIBLE_DBFS`) left: TTS replies often begin with
digital silence, and a listener's latency starts at the sound, not at the first frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
from collections import OrderedDict, deque
from dataclasses import dataclass

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from duplexer.kernels.audio import StreamingResampler
from duplexer.kernels.loudness import audible_spans
from duplexer.runtime.clock import Clock
from duplexer.runtime.events import FRAME_MS

OPUS_RATE_HZ = 48_000
"""WebRTC audio runs at 48 kHz (Opus)."""
OPUS_FRAME_SAMPLES = OPUS_RATE_HZ * FRAME_MS // 1000
OPUS_TIME_BASE = fractions.Fraction(1, OPUS_RATE_HZ)

DEFAULT_MAX_QUEUE_MS = 200.0
"""Outbound audio queued beyond this is dropped, oldest first: latency must not pile up."""
WRITER_WAIT_MS = float(FRAME_MS)
"""While a reply is flowing, how long past its deadline the track waits for the next frame before
sending silence; waiting follows the playout actor's phase instead of adding a frame of buffer."""
WRITER_ACTIVE_MS = 2.0 * FRAME_MS
"""A write this recent means a reply is flowing."""
REPLIES_KEPT = 32
TAIL_SAMPLES = OPUS_RATE_HZ // 400
"""A reply's leftover shorter than this (2.5 ms) is the resampler's tail, not audio worth a frame: dropped."""


@dataclass
class ReplyAudio:
    """When one reply's audio left the track, on the session clock.

    A sample leaves at its frame's send time plus its offset in the frame. The audible times are
    those of the first and last sample at or above AUDIBLE_DBFS; None while none was audible.
    """

    first_sent_ms: float
    last_sent_end_ms: float
    frames: int = 0
    first_audible_ms: float | None = None
    last_audible_end_ms: float | None = None


@dataclass
class OutboundCounts:
    audio_frames: int = 0
    silence_frames: int = 0
    flushed_frames: int = 0
    overflow_frames: int = 0
    max_queued_frames: int = 0
    rephased: int = 0
    """Replies that began between two silent frames and were sent at once, moving the schedule."""


class BotAudioTrack(MediaStreamTrack):
    """The bot's voice as an outgoing WebRTC track, paced by pts, and the session's AudioSink.

    ``write`` resamples bot PCM to 48 kHz and queues 20 ms frames; ``flush`` drops
    every unsent one. ``recv`` returns one frame per 20 ms of pts: queued audio as
    soon as its time has come (catching up after a stall, as the playout actor
    does), silence otherwise, never ahead of time. While a reply flows, a frame that
    is due but not yet written is waited for, up to ``writer_wait_ms``, so the
    track follows the playout actor's phase rather than buffering a frame behind it.
    """

    kind = "audio"

    def __init__(
        self,
        clock: Clock,
        max_queue_ms: float = DEFAULT_MAX_QUEUE_MS,
        writer_wait_ms: float = WRITER_WAIT_MS,
    ) -> None:
        super().__init__()
        self.clock = clock
        self.max_queue_frames = max(1, int(max_queue_ms // FRAME_MS))
        self.writer_wait_s = writer_wait_ms / 1000.0
        self.resampler: StreamingResampler | None = None
        """Bot PCM to 48 kHz, for the rate being written; a new rate or a flush starts a fresh one."""
        self.queue: deque[tuple[bytes, str, float]] = deque()
        """Frames to send: PCM, reply id, and how much of the frame is audio (ms)."""
        self.partial = bytearray()
        self.partial_reply: str | None = None
        self.replies: OrderedDict[str, ReplyAudio] = OrderedDict()
        self.counts = OutboundCounts()
        self._written = asyncio.Event()
        self._last_write_s: float | None = None
        self._start_s: float | None = None
        self._pts = 0
        self._idle = True

    # ------------------------------------------------------------ AudioSink

    def write(self, pcm: bytes, sample_rate_hz: int, reply_id: str, ts_ms: float) -> None:
        if self.partial and reply_id != self.partial_reply:
            self._queue_partial()
        if self.resampler is None or self.resampler.in_rate_hz != sample_rate_hz:
            self.resampler = StreamingResampler(sample_rate_hz, OPUS_RATE_HZ, lead_in=True)
        self.partial += self.resampler.process(pcm)
        self.partial_reply = reply_id
        frame_bytes = 2 * OPUS_FRAME_SAMPLES
        while len(self.partial) >= frame_bytes:
            self.queue.append((bytes(self.partial[:frame_bytes]), reply_id, float(FRAME_MS)))
            del self.partial[:frame_bytes]
        while len(self.queue) > self.max_queue_frames:
            self.queue.popleft()
            self.counts.overflow_frames += 1
        self.counts.max_queued_frames = max(self.counts.max_queued_frames, len(self.queue))
        self._last_write_s = asyncio.get_running_loop().time()
        self._written.set()

    def flush(self) -> None:
        """Drop every unsent frame now (barge-in); the next frame sent is silence."""
        self.counts.flushed_frames += len(self.queue) + (1 if self.partial else 0)
        self.queue.clear()
        self.partial.clear()
        self.partial_reply = None
        self.resampler = None
        self._last_write_s = None

    # ------------------------------------------------------------ the track

    def _queue_partial(self) -> None:
        """Pad a reply's last, partial frame and queue it; a mere resampler tail is dropped."""
        samples = len(self.partial) // 2
        if samples >= TAIL_SAMPLES and self.partial_reply is not None:
            padded = bytes(self.partial) + bytes(2 * OPUS_FRAME_SAMPLES - len(self.partial))
            self.queue.append((padded, self.partial_reply, 1000.0 * samples / OPUS_RATE_HZ))
        self.partial.clear()
        self.partial_reply = None

    def _writer_active(self, now_s: float) -> bool:
        return self._last_write_s is not None and now_s - self._last_write_s <= WRITER_ACTIVE_MS / 1000.0

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        if self._start_s is None:
            self._start_s = loop.time()
        else:
            self._pts += OPUS_FRAME_SAMPLES
        deadline_s = self._start_s + self._pts / OPUS_RATE_HZ
        if deadline_s > loop.time():
            if self._idle:
                await self._wait_for_frame(until_s=deadline_s)
                if self.queue and deadline_s > loop.time():
                    # A reply begins between two silent frames: send it now and move the
                    # schedule to the playout actor's phase, rather than hold it up to a frame.
                    self._start_s -= deadline_s - loop.time()
                    deadline_s = loop.time()
                    self.counts.rephased += 1
            else:
                await asyncio.sleep(deadline_s - loop.time())
        if not self.queue and self._writer_active(loop.time()):
            await self._wait_for_frame(until_s=loop.time() + self.writer_wait_s)
        if not self.queue and len(self.partial) // 2 >= TAIL_SAMPLES:
            self._queue_partial()  # the writer went quiet mid-frame: the end of a reply, or a pause
        if self.readyState != "live":
            raise MediaStreamError
        now_s = loop.time()
        self._idle = not self.queue
        if self.queue:
            pcm, reply_id, audio_ms = self.queue.popleft()
            self._sent(reply_id, audio_ms, pcm)
        else:
            pcm = bytes(2 * OPUS_FRAME_SAMPLES)
            self.counts.silence_frames += 1
            if now_s - deadline_s > FRAME_MS / 1000.0:
                self._start_s = now_s - self._pts / OPUS_RATE_HZ  # idle and late: do not burst silence
        frame = av.AudioFrame.from_ndarray(np.frombuffer(pcm, dtype="<i2").reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = OPUS_RATE_HZ
        frame.pts = self._pts
        frame.time_base = OPUS_TIME_BASE
        return frame

    async def _wait_for_frame(self, until_s: float) -> None:
        """Until a whole frame is queued, or the loop's clock reaches ``until_s``."""
        loop = asyncio.get_running_loop()
        while not self.queue and loop.time() < until_s:
            self._written.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._written.wait(), until_s - loop.time())

    def _sent(self, reply_id: str, audio_ms: float, pcm: bytes) -> None:
        self.counts.audio_frames += 1
        now_ms = self.clock.now_ms()
        record = self.replies.get(reply_id)
        if record is None:
            record = self.replies[reply_id] = ReplyAudio(now_ms, now_ms)
            while len(self.replies) > REPLIES_KEPT:
                self.replies.popitem(last=False)
        record.last_sent_end_ms = now_ms + audio_ms
        record.frames += 1
        samples = np.frombuffer(pcm, dtype="<i2")[: round(OPUS_RATE_HZ * audio_ms / 1000.0)]
        spans = audible_spans(samples, OPUS_RATE_HZ)
        if spans:
            if record.first_audible_ms is None:
                record.first_audible_ms = now_ms + spans[0][0]
            record.last_audible_end_ms = now_ms + spans[-1][1]
