"""The echo canceller's reference: what the device's loudspeaker played, at 16 kHz on the session's time axis.

The microphone's pipeline frames are numbered in session time (frame ``seq``
covers ``[seq, seq + 1) * 20 ms``, see :mod:`duplexer.protocols.inbound_audio`),
so the reference is kept on the same axis, one sample per 1/16 ms, in a ring
(:class:`ReferenceRing`) that reads zeros wherever nothing was played. It is
filled in one of two ways:

- :class:`PlayedReference` (echo mode ``server``): the bot audio the session
  sent to the device, placed at the session time it was sent. The device plays
  it later; the echo canceller finds that delay itself.
- :class:`LoopbackReference` (echo mode ``loopback``): the device's own capture
  of its loudspeaker, numbered frames on ``audio/ref`` like its microphone's, put
  in order and resampled by the same inbound path, so it follows the device's
  audio clock as the microphone does.
"""

from __future__ import annotations

import numpy as np

from duplexer.kernels.audio import StreamingResampler
from duplexer.protocols.inbound_audio import InboundAudio, InboundCounts
from duplexer.protocols.mqtt_topics import AudioFormat, AudioHeader
from duplexer.runtime.events import FRAME_MS, FRAME_SAMPLES, INPUT_SAMPLE_RATE_HZ

SAMPLES_PER_MS = INPUT_SAMPLE_RATE_HZ // 1000
DEFAULT_RING_MS = 6000
"""Reference kept: the longest delay searched plus the estimator's window, with room to spare."""
CONTIGUOUS_SLACK_MS = 60.0
"""Played audio written within this much of where the last write ended continues it sample for sample;
further off (a new reply, a stall) it is placed at its own send time."""


def session_sample(ms: float) -> int:
    """The reference sample at session time ``ms``."""
    return round(ms * SAMPLES_PER_MS)


class ReferenceRing:
    """16 kHz float samples indexed by absolute session sample; reads outside what was written give zeros."""

    def __init__(self, capacity_ms: int = DEFAULT_RING_MS) -> None:
        self.capacity = capacity_ms * SAMPLES_PER_MS
        self.samples = np.zeros(self.capacity, dtype=np.float32)
        self.written_until: int | None = None
        """One past the newest sample written; None before the first write."""
        self.total_written = 0
        """Samples written since the start (for rate checks)."""

    def write_at(self, start: int, samples: np.ndarray) -> None:
        """Write ``samples`` from absolute sample ``start`` on; a jump forward leaves silence behind it."""
        n = len(samples)
        if n == 0:
            return
        end = start + n
        if self.written_until is not None and start > self.written_until:
            self._fill(self.written_until, min(start, self.written_until + self.capacity), 0.0)
        if n > self.capacity:
            samples, start = samples[-self.capacity :], end - self.capacity
        index = np.arange(start, end) % self.capacity
        self.samples[index] = samples
        self.written_until = end if self.written_until is None else max(self.written_until, end)
        self.total_written += n

    def _fill(self, start: int, end: int, value: float) -> None:
        if end > start:
            self.samples[np.arange(start, end) % self.capacity] = value

    def read(self, start: int, n: int) -> np.ndarray:
        """Samples ``[start, start + n)``: zeros before the ring's memory and after the newest write."""
        out = np.zeros(n, dtype=np.float32)
        if self.written_until is None or n <= 0:
            return out
        lo = max(start, self.written_until - self.capacity)
        hi = min(start + n, self.written_until)
        if hi > lo:
            out[lo - start : hi - start] = self.samples[np.arange(lo, hi) % self.capacity]
        return out

    def energy(self, start: int, n: int) -> float:
        """Mean square of ``[start, start + n)``."""
        part = self.read(start, n)
        return float(np.mean(part * part)) if n > 0 else 0.0


class PlayedReference:
    """The bot audio a session sent to its device, as an :class:`~duplexer.actors.engines.AudioSink` tap."""

    def __init__(self, ring: ReferenceRing | None = None) -> None:
        self.ring = ring or ReferenceRing()
        self._resampler: StreamingResampler | None = None
        self._cursor: int | None = None
        self.last_write_ms: float | None = None

    def write(self, pcm: bytes, sample_rate_hz: int, ts_ms: float) -> None:
        """One frame of bot audio, sent at session time ``ts_ms``."""
        if self._resampler is None or self._resampler.in_rate_hz != sample_rate_hz:
            self._resampler = StreamingResampler(sample_rate_hz, INPUT_SAMPLE_RATE_HZ, lead_in=True)
        samples = np.frombuffer(self._resampler.process(pcm), dtype="<i2").astype(np.float32) / 32768.0
        at = session_sample(ts_ms)
        if self._cursor is None or abs(at - self._cursor) > CONTIGUOUS_SLACK_MS * SAMPLES_PER_MS:
            self._cursor = at
        self.ring.write_at(self._cursor, samples)
        self._cursor += len(samples)
        self.last_write_ms = ts_ms

    def flush(self) -> None:
        """Playout stopped: nothing more of this reply plays (the next one starts at its own time)."""
        self._resampler = None
        self._cursor = None


class LoopbackReference:
    """A device's loopback stream (numbered frames at its microphone's format), on the session's time axis.

    Its frame ``n`` is what the loudspeaker played while the microphone recorded its frame ``n``, so the
    stream starts where the microphone stream puts that number; it follows on by its own numbering.
    """

    def __init__(self, fmt: AudioFormat, ring: ReferenceRing | None = None) -> None:
        self.fmt = fmt
        self.ring = ring or ReferenceRing()
        self.counts = InboundCounts()
        self.inbound: InboundAudio | None = None
        self.last_write_ms: float | None = None

    def push(self, header: AudioHeader, pcm: bytes, now_ms: float, mic: InboundAudio | None = None) -> None:
        """One loopback frame as it arrived; raises WireError(WRONG_FRAME_SIZE) if it breaks the format.

        ``mic`` is the microphone's stream, which places the first frame; without it, the first frame
        is placed to end at ``now_ms``."""
        if self.inbound is None:
            start_ms = mic.position_ms(header.seq) if mic is not None else None
            start = None if start_ms is None else max(0, round(start_ms / FRAME_MS))
            self.inbound = InboundAudio(self.fmt, start_frame=start, counts=self.counts)
        self._write(self.inbound.push(header, pcm, now_ms), now_ms)

    def expire(self, now_ms: float) -> None:
        if self.inbound is not None:
            self._write(self.inbound.expire(now_ms), now_ms)

    def _write(self, frames: list[tuple[int, bytes]], now_ms: float) -> None:
        for seq, pcm in frames:
            samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
            self.ring.write_at(seq * FRAME_SAMPLES, samples)
            self.last_write_ms = now_ms
