"""A microphone stream on its way into the pipeline, from any transport: order, loss, resync, resampling, framing.

Both transports hand their microphone audio to :class:`InboundAudio`, which
turns it into the pipeline's 16 kHz, 20 ms mono frames, numbered in audio time
(``AudioFrame.seq`` x 20 ms) kept in step with the session clock; the controller
compares the two. What each transport brings differs, so each has its own way in:

- MQTT devices send numbered frames at QoS 0 (:meth:`InboundAudio.push`): some
  never arrive and, after an outage, some arrive late. Frames are put back in
  order within a small window; a sequence gap is a loss of exactly that much audio.
- WebRTC calls hand over decoded frames with timestamps (:meth:`InboundAudio.push_frame`),
  already ordered by aiortc's jitter buffer; a timestamp gap is a loss.

Either way a short loss is concealed with silence, so audio time keeps pace with
the sender's, and a stream that falls far behind the clock (a paused microphone)
jumps to it. Audio at any rate is resampled, seams-free across frames, by the
project's one resampler (:class:`~duplexer.kernels.audio.StreamingResampler`),
with its look-ahead paid up front so each 20 ms in gives 20 ms out at once: a
pipeline frame leaves as soon as its audio has ended, on the clock's "now".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from duplexer.kernels.audio import StreamingResampler, downmix
from duplexer.protocols.mqtt_topics import (
    FLAG_DELAYED,
    SEQ_MODULUS,
    AudioFormat,
    AudioHeader,
    seq_distance,
)
from duplexer.runtime.events import FRAME_MS, FRAME_SAMPLES, INPUT_SAMPLE_RATE_HZ

if TYPE_CHECKING:
    import av

DEFAULT_REORDER_WINDOW_FRAMES = 3
MAX_CONCEAL_MS = 1000.0
"""Losses up to this long become silence. Longer gaps in a numbered stream are skipped, moving audio time
forward; longer gaps in timestamps are left to the resync (a sender's clock can jump without a loss)."""
RESYNC_LAG_MS = MAX_CONCEAL_MS
"""A live chunk whose audio time lags the session clock by more than this follows a pause of the
microphone: audio time jumps to now, so silence timing is not thrown off by the pause.

One value for every transport, and the same as :data:`MAX_CONCEAL_MS`: a lag this short is the network
or the server being late, not a pause. Over MQTT, TCP retransmissions and the broker's queue deliver a
stalled device's frames in a burst after hundreds of milliseconds; over WebRTC, aiortc's receive path
releases frames in bursts too, and a server busy with models on two cores falls behind by as much (the
overloaded WebRTC benchmark resynced at a 500 ms threshold). A late burst is still the user's speech in
order: jumping audio time for it would number the rest of the burst ahead of the clock and shorten the
silence the controller measures. A real pause (mute, push-to-talk, a backgrounded tab) lasts seconds, so
1 s costs a paused stream at most one second of lag before it jumps, and never jumps on jitter."""
MAX_LATE_FRAMES = 50
"""A frame further behind than this is not late: the device restarted its sequence."""
MAX_JUMP_FRAMES = 3000
"""A frame further ahead than this (60 s of 20 ms frames) also means a restarted sequence."""

PipelineFrames = list[tuple[int, bytes]]
"""Pipeline frames ready to emit: (``AudioFrame.seq``, 16 kHz mono PCM16), in order."""


@dataclass
class InboundCounts:
    """What happened to one microphone stream; reported in stats events and call summaries."""

    frames: int = 0
    """Frames accepted from the transport."""
    delivered: int = 0
    """Numbered frames passed on in sequence."""
    lost: int = 0
    """Numbered frames that never came in time: their time was concealed with silence or skipped."""
    late: int = 0
    """Numbered frames that came after their time was concealed, or came twice: dropped."""
    reordered: int = 0
    """Numbered frames that came after a later one but in time: put back in order."""
    delayed: int = 0
    """Frames the device held during an outage and sent late (FLAG_DELAYED): delivered, not lost."""
    concealed_ms: float = 0.0
    skipped_ms: float = 0.0
    resets: int = 0
    """Sequence restarts (a jump too far ahead or behind): treated as a new stream."""
    resyncs: int = 0
    """Live audio after a microphone pause over RESYNC_LAG_MS: audio time moved to the session clock."""
    pipeline_frames: int = 0
    """16 kHz, 20 ms frames handed to the pipeline."""
    format_changes: int = 0
    """Changes of the input rate mid-stream (each starts a fresh resampler)."""

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


class InboundAudio:
    """One microphone stream: in-order 16 kHz pipeline frames, numbered in audio time, out of a transport's audio.

    ``fmt`` declares numbered frames' format (needed by :meth:`push` only).
    ``start_frame`` numbers the first pipeline frame; by default the first audio
    is numbered so that it ends at the session clock's now.
    """

    frame_bytes = 2 * FRAME_SAMPLES

    def __init__(
        self,
        fmt: AudioFormat | None = None,
        start_frame: int | None = None,
        reorder_window_frames: int = DEFAULT_REORDER_WINDOW_FRAMES,
        max_conceal_ms: float = MAX_CONCEAL_MS,
        resync_lag_ms: float = RESYNC_LAG_MS,
        counts: InboundCounts | None = None,
    ) -> None:
        self.fmt = fmt
        self.reorder_window = max(0, reorder_window_frames)
        self.max_conceal_ms, self.resync_lag_ms = max_conceal_ms, resync_lag_ms
        self.counts = counts or InboundCounts()
        self.next_frame: int | None = start_frame
        self.expected: int | None = None
        self.pending: dict[int, tuple[bytes, float]] = {}  # seq -> (pcm, arrival ms)
        self.expected_pts: int | None = None
        self._rate_hz: int | None = fmt.sample_rate_hz if fmt is not None else None
        self._resampler: StreamingResampler | None = None
        self._carry = bytearray()

    # ------------------------------------------------------------ numbered frames (MQTT)

    def push(self, header: AudioHeader, pcm: bytes, now_ms: float) -> PipelineFrames:
        """Accept one numbered device frame; return the pipeline frames now ready, in order."""
        fmt = self._format()
        fmt.check_frame(pcm)
        counts = self.counts
        counts.frames += 1
        self._start(now_ms, fmt.frame_ms)
        if header.flags & FLAG_DELAYED:
            counts.delayed += 1
        elif not self.pending:
            self._resync(now_ms, fmt.frame_ms)
        seq = header.seq
        if self.expected is None:
            self.expected = seq
        distance = seq_distance(seq, self.expected)
        if distance < -MAX_LATE_FRAMES or distance > MAX_JUMP_FRAMES:
            counts.resets += 1
            self.pending.clear()
            self.expected, distance = seq, 0
        if distance < 0 or seq in self.pending:
            counts.late += 1
            return []
        out: PipelineFrames = []
        if distance == 0 and self.pending:
            counts.reordered += 1
        self.pending[seq] = (pcm, now_ms)
        self._release(out, force=False)
        return out

    def expire(self, now_ms: float) -> PipelineFrames:
        """Give up waiting for a missing frame once a later one has waited the reorder window."""
        out: PipelineFrames = []
        if self.pending:
            oldest_ms = min(arrival for _, arrival in self.pending.values())
            if now_ms - oldest_ms >= (self.reorder_window + 1) * self._format().frame_ms:
                self._release(out, force=True)
        return out

    def position_ms(self, seq: int) -> float | None:
        """Session time at which numbered frame ``seq`` starts (or would), from where the stream is now."""
        if self.expected is None or self.next_frame is None or self.fmt is None:
            return None
        return self._audio_end_ms() + seq_distance(seq, self.expected) * self.fmt.frame_ms

    def _format(self) -> AudioFormat:
        if self.fmt is None:
            raise ValueError("numbered frames need the stream's AudioFormat")
        return self.fmt

    def _release(self, out: PipelineFrames, force: bool) -> None:
        assert self.expected is not None
        fmt = self._format()
        while self.pending:
            entry = self.pending.pop(self.expected, None)
            if entry is not None:
                self.counts.delivered += 1
                self._feed(entry[0], out)
                self.expected = (self.expected + 1) % SEQ_MODULUS
                continue
            gap = min(seq_distance(seq, self.expected) for seq in self.pending)
            if not force and len(self.pending) <= self.reorder_window and gap <= self.reorder_window:
                return
            self.counts.lost += gap
            gap_ms = gap * fmt.frame_ms
            if gap_ms <= self.max_conceal_ms:
                self._conceal(gap_ms, out)
            else:
                self.counts.skipped_ms += gap_ms
                self._skip(gap_ms)
            self.expected = (self.expected + gap) % SEQ_MODULUS

    # ------------------------------------------------------------ decoded, timestamped frames (WebRTC)

    def push_frame(self, frame: av.AudioFrame, now_ms: float) -> PipelineFrames:
        """Accept one decoded frame (any sample format, layout and rate); return the pipeline frames it completes.

        A gap in pts of more than half a frame, up to ``max_conceal_ms``, is lost audio and
        is concealed; a longer one is left to the resync.
        """
        self.counts.frames += 1
        rate = frame.sample_rate
        if self._rate_hz is not None and rate != self._rate_hz:
            self.counts.format_changes += 1
            self._resampler = None
        self._rate_hz = rate
        pcm = _mono_pcm16(frame)
        chunk_ms = 1000.0 * frame.samples / rate
        self._start(now_ms, chunk_ms)
        out: PipelineFrames = []
        pts = frame.pts
        if pts is None or frame.time_base is None or rate <= 0:
            self.expected_pts = None
        else:
            pts_samples = int(pts * frame.time_base * rate)
            if self.expected_pts is not None:
                gap_ms = 1000.0 * (pts_samples - self.expected_pts) / rate
                if FRAME_MS / 2 < gap_ms <= self.max_conceal_ms:
                    self._conceal(gap_ms, out)
            self.expected_pts = pts_samples + frame.samples
        self._resync(now_ms, chunk_ms)
        self._feed(pcm, out)
        return out

    # ------------------------------------------------------------ audio time, shared

    def _start(self, now_ms: float, chunk_ms: float) -> None:
        """Number the stream's first audio so that it ends at the clock's now."""
        if self.next_frame is None:
            self.next_frame = max(0, round((now_ms - chunk_ms) / FRAME_MS))

    def _audio_end_ms(self) -> float:
        """Audio time at the end of what has been resampled so far."""
        assert self.next_frame is not None
        return self.next_frame * FRAME_MS + 1000.0 * (len(self._carry) // 2) / INPUT_SAMPLE_RATE_HZ

    def _resync(self, now_ms: float, chunk_ms: float) -> None:
        """If audio time, with a live chunk of ``chunk_ms``, lags the clock by over the threshold: jump to it."""
        assert self.next_frame is not None
        lag_ms = now_ms - (self._audio_end_ms() + chunk_ms)
        if lag_ms > self.resync_lag_ms:
            self.counts.resyncs += 1
            self.next_frame += round(lag_ms / FRAME_MS)

    def _conceal(self, gap_ms: float, out: PipelineFrames) -> None:
        """Fill a short loss with silence, so audio time keeps pace with the sender's."""
        assert self._rate_hz is not None
        self.counts.concealed_ms += gap_ms
        self._feed(bytes(2 * round(gap_ms * self._rate_hz / 1000.0)), out)

    def _feed(self, pcm: bytes, out: PipelineFrames) -> None:
        assert self.next_frame is not None and self._rate_hz is not None
        if self._resampler is None:
            self._resampler = StreamingResampler(self._rate_hz, INPUT_SAMPLE_RATE_HZ, lead_in=True)
        self._carry += self._resampler.process(pcm)
        while len(self._carry) >= self.frame_bytes:
            out.append((self.next_frame, bytes(self._carry[: self.frame_bytes])))
            del self._carry[: self.frame_bytes]
            self.next_frame += 1
            self.counts.pipeline_frames += 1

    def _skip(self, gap_ms: float) -> None:
        """Move audio time forward over a long loss without feeding the pipeline made-up audio."""
        assert self.next_frame is not None
        self._resampler = None
        self._carry.clear()
        self.next_frame += max(1, round(gap_ms / FRAME_MS))


def _mono_pcm16(frame: av.AudioFrame) -> bytes:
    """A decoded frame's samples as mono PCM16, channels averaged."""
    data = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if frame.format.is_planar:
        samples = data.astype(np.float64).mean(axis=0) if channels > 1 else data.reshape(-1).astype(np.float64)
    else:
        samples = downmix(data.reshape(-1).astype(np.float64), channels)
    if data.dtype.kind == "f":
        samples = samples * 32768.0
    elif data.dtype.kind == "u":
        samples = (samples - 128.0) * 256.0
    elif data.dtype.itemsize > 2:
        samples = samples / float(2 ** (8 * data.dtype.itemsize - 16))
    return np.clip(np.rint(samples), -32768, 32767).astype("<i2").tobytes()
