"""Call audio between aiortc and the pipeline: inbound resampling and framing, the outbound paced track.

Inbound, Opus decodes to 48 kHz (Chromium sends stereo s16 frames of 960
samples). :class:`InboundAudio` turns those into the pipeline's 16 kHz, 20 ms
mono frames with a streaming resampler, and numbers them in audio time kept in
step with the session clock (the controller compares the two).

Outbound, :class:`BotAudioTrack` is both the session's
:class:`~duplexer.actors.engines.AudioSink` and the MediaStreamTrack aiortc
sends. aiortc's sender sends a frame as soon as ``recv`` returns one, so the
track paces itself by pts. The playout actor already paces replies in real time,
so the track holds at most a frame or two; ``flush`` (a barge-in) drops them at once.
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

from duplexer.runtime.clock import Clock
from duplexer.runtime.events import FRAME_MS, FRAME_SAMPLES, INPUT_SAMPLE_RATE_HZ

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
MAX_CONCEAL_MS = 1000.0
"""Inbound gaps (lost packets) up to this long are filled with silence, keeping audio time in step."""
RESYNC_LAG_MS = 500.0
"""Inbound audio time lagging the session clock by more than this jumps forward to it."""
REPLIES_KEPT = 32
TAIL_SAMPLES = OPUS_RATE_HZ // 400
"""A reply's leftover shorter than this (2.5 ms) is the resampler's tail, not audio worth a frame: dropped."""


class PcmResampler:
    """Streaming resampler to mono PCM16 at ``out_rate_hz``; filter state carries across chunks.

    libswresample's polyphase filter (through PyAV, which aiortc already uses), so
    chunk edges do not click. The filter's start-up delay is made up with leading
    silence, so 20 ms in gives 20 ms out from the first chunk on and framing adds no
    carry-over latency. A change of input rate or layout starts a fresh filter.
    """

    def __init__(self, out_rate_hz: int) -> None:
        self.out_rate_hz = out_rate_hz
        self._resampler: av.AudioResampler | None = None
        self._input: tuple[str, str, int] | None = None
        self._priming = True
        self._expected_out = 0.0
        self._produced_out = 0

    def reset(self) -> None:
        """Forget filter state, e.g. after dropping a reply's audio."""
        self._resampler, self._input = None, None
        self._priming, self._expected_out, self._produced_out = True, 0.0, 0

    def frame(self, frame: av.AudioFrame) -> bytes:
        """Resample one decoded frame (any format, layout and rate)."""
        key = (frame.format.name, frame.layout.name, frame.sample_rate)
        if key != self._input or self._resampler is None:
            self.reset()
            self._resampler = av.AudioResampler(format="s16", layout="mono", rate=self.out_rate_hz)
            self._input = key
        frame.pts = None  # gaps are handled by the caller, not by timestamp compensation
        out = b"".join(o.to_ndarray().astype("<i2", copy=False).tobytes() for o in self._resampler.resample(frame))
        if self._priming:
            self._expected_out += frame.samples * self.out_rate_hz / frame.sample_rate
            self._produced_out += len(out) // 2
            if out:
                self._priming = False
                out = bytes(2 * max(0, round(self._expected_out) - self._produced_out)) + out
        return out

    def pcm(self, pcm: bytes, sample_rate_hz: int) -> bytes:
        """Resample mono PCM16 bytes."""
        samples = np.frombuffer(pcm, dtype="<i2")
        if samples.size == 0:
            return b""
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = sample_rate_hz
        return self.frame(frame)


@dataclass
class InboundCounts:
    """What happened to a call's microphone audio."""

    frames_in: int = 0
    frames_out: int = 0
    concealed_ms: float = 0.0
    resyncs: int = 0
    format_changes: int = 0


class InboundAudio:
    """Decoded call audio to the pipeline's 16 kHz, 20 ms mono frames, numbered in audio time.

    The first frame is numbered so that its audio ends at the session clock's now;
    later frames follow on. Lost packets (a pts gap) are filled with silence, and
    audio time that falls far behind the clock (the microphone paused) jumps to it.
    """

    frame_bytes = 2 * FRAME_SAMPLES

    def __init__(self, max_conceal_ms: float = MAX_CONCEAL_MS, resync_lag_ms: float = RESYNC_LAG_MS) -> None:
        self.max_conceal_ms, self.resync_lag_ms = max_conceal_ms, resync_lag_ms
        self.resampler = PcmResampler(INPUT_SAMPLE_RATE_HZ)
        self.pending = bytearray()
        self.next_seq: int | None = None
        self.expected_pts: int | None = None
        self.input_key: tuple[str, int] | None = None
        self.counts = InboundCounts()

    def push(self, frame: av.AudioFrame, now_ms: float) -> list[tuple[int, bytes]]:
        """The pipeline frames (seq, pcm) that ``frame`` completes."""
        self.counts.frames_in += 1
        key = (frame.layout.name, frame.sample_rate)
        if self.input_key is not None and key != self.input_key:
            self.counts.format_changes += 1
        self.input_key = key
        self._conceal_gap(frame)
        self.pending += self.resampler.frame(frame)
        n = len(self.pending) // self.frame_bytes
        if n == 0:
            return []
        newest_seq = max(0, round(now_ms / FRAME_MS) - 1)
        if self.next_seq is None:
            self.next_seq = max(0, newest_seq - n + 1)
        elif (self.next_seq + n) * FRAME_MS < now_ms - self.resync_lag_ms:
            self.counts.resyncs += 1
            self.next_seq = max(self.next_seq, newest_seq - n + 1)
        out: list[tuple[int, bytes]] = []
        for i in range(n):
            out.append((self.next_seq, bytes(self.pending[i * self.frame_bytes : (i + 1) * self.frame_bytes])))
            self.next_seq += 1
        del self.pending[: n * self.frame_bytes]
        self.counts.frames_out += n
        return out

    def _conceal_gap(self, frame: av.AudioFrame) -> None:
        pts, rate = frame.pts, frame.sample_rate
        if pts is None or frame.time_base is None or rate <= 0:
            self.expected_pts = None
            return
        pts_samples = int(pts * frame.time_base * rate)
        if self.expected_pts is not None:
            gap_ms = 1000.0 * (pts_samples - self.expected_pts) / rate
            if FRAME_MS / 2 < gap_ms <= self.max_conceal_ms:
                self.pending += bytes(2 * round(gap_ms * INPUT_SAMPLE_RATE_HZ / 1000))
                self.counts.concealed_ms += gap_ms
        self.expected_pts = pts_samples + frame.samples


@dataclass
class ReplyAudio:
    """When one reply's audio left the track, on the session clock."""

    first_sent_ms: float
    last_sent_end_ms: float
    frames: int = 0


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
        self.resampler = PcmResampler(OPUS_RATE_HZ)
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
        self.partial += self.resampler.pcm(pcm, sample_rate_hz)
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
        self.resampler.reset()
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
            self._sent(reply_id, audio_ms)
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

    def _sent(self, reply_id: str, audio_ms: float) -> None:
        self.counts.audio_frames += 1
        now_ms = self.clock.now_ms()
        record = self.replies.get(reply_id)
        if record is None:
            record = self.replies[reply_id] = ReplyAudio(now_ms, now_ms)
            while len(self.replies) > REPLIES_KEPT:
                self.replies.popitem(last=False)
        record.last_sent_end_ms = now_ms + audio_ms
        record.frames += 1
