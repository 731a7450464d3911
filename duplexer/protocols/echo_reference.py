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

from collections import OrderedDict

import numpy as np

from duplexer.kernels.audio import StreamingResampler
from duplexer.protocols.inbound_audio import InboundAudio, InboundCounts
from duplexer.protocols.mqtt_topics import AudioFormat, AudioHeader
from duplexer.runtime.events import FRAME_MS, FRAME_SAMPLES, INPUT_SAMPLE_RATE_HZ

SAMPLES_PER_MS = INPUT_SAMPLE_RATE_HZ // 1000
DEFAULT_RING_MS = 6000
"""Reference kept: the longest delay searched plus the estimator's window, with room to spare."""
MAX_PLACED_FRAMES = 1000
"""Frames of bot audio kept to be moved by a playout report: 20 s, far longer than any device buffers."""
SOUND_LEVEL = 1.0 / 32768.0
"""Reference samples above this (one PCM16 step) are sound; a stretch without any is silence."""
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
        self.sounding_until: int | None = None
        """One past the newest sample written that was not silence; None while all was silence."""

    def write_at(self, start: int, samples: np.ndarray) -> None:
        """Write ``samples`` from absolute sample ``start`` on; a jump forward leaves silence behind it."""
        n = len(samples)
        if n == 0:
            return
        end = start + n
        if self.written_until is not None and start > self.written_until:
            self._fill(self.written_until, min(start, self.written_until + self.capacity), 0.0)
        oldest = max(end, self.written_until or end) - self.capacity  # older samples are out of the ring's memory
        if start < oldest:
            samples, start = samples[max(0, oldest - start) :], max(start, oldest)
            if start >= end:
                return
        index = np.arange(start, end) % self.capacity
        self.samples[index] = samples
        self.written_until = end if self.written_until is None else max(self.written_until, end)
        self.total_written += n
        if np.any(np.abs(samples) > SOUND_LEVEL):
            self.sounding_until = end if self.sounding_until is None else max(self.sounding_until, end)

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
    """The bot audio a session sent to its device, as an :class:`~duplexer.actors.engines.AudioSink` tap.

    Each frame is placed at the session time it was sent, and the next ones follow it sample for sample.
    Where the device reports when a frame began to play (:meth:`played_at`, on its microphone's clock),
    that frame and the ones after it move there: the echo then sits a fixed acoustic delay behind the
    reference, whatever the network's jitter and the device's playout phase did to this reply.
    """

    def __init__(self, ring: ReferenceRing | None = None, max_frames: int = MAX_PLACED_FRAMES) -> None:
        self.ring = ring or ReferenceRing()
        self._resampler: StreamingResampler | None = None
        self._cursor: int | None = None
        self._anchored = False
        self.frames: OrderedDict[int, tuple[int, np.ndarray]] = OrderedDict()
        """Recent frames by audio/out number: where each was placed, and its 16 kHz samples."""
        self.max_frames = max_frames
        self.reports = 0
        self.last_write_ms: float | None = None

    def write(self, pcm: bytes, sample_rate_hz: int, ts_ms: float, seq: int | None = None) -> None:
        """One frame of bot audio (audio/out number ``seq``), sent at session time ``ts_ms``."""
        if self._resampler is None or self._resampler.in_rate_hz != sample_rate_hz:
            self._resampler = StreamingResampler(sample_rate_hz, INPUT_SAMPLE_RATE_HZ, lead_in=True)
        samples = np.frombuffer(self._resampler.process(pcm), dtype="<i2").astype(np.float32) / 32768.0
        at = session_sample(ts_ms)
        if self._cursor is None or (
            not self._anchored and abs(at - self._cursor) > CONTIGUOUS_SLACK_MS * SAMPLES_PER_MS
        ):
            self._cursor, self._anchored = at, False
        self.ring.write_at(self._cursor, samples)
        if seq is not None:
            self.frames[seq] = (self._cursor, samples)
            while len(self.frames) > self.max_frames:
                self.frames.popitem(last=False)
        self._cursor += len(samples)
        self.last_write_ms = ts_ms

    def played_at(self, seq: int, position_ms: float) -> bool:
        """The device says frame ``seq`` began to play at session time ``position_ms``: move it (and what
        follows) there. False for a frame no longer (or never) known."""
        placed = self.frames.get(seq)
        if placed is None:
            return False
        self.reports += 1
        offset = session_sample(position_ms) - placed[0]
        if offset == 0:
            return True
        later = [s for s in self.frames if s == seq or (s - seq) % (1 << 32) < (1 << 31)]
        end = self._cursor if self._cursor is not None else placed[0]
        self.ring.write_at(placed[0], np.zeros(max(0, end - placed[0]), dtype=np.float32))  # it did not play there
        for s in later:
            start, samples = self.frames[s]
            self.ring.write_at(start + offset, samples)
            self.frames[s] = (start + offset, samples)
        self._cursor, self._anchored = end + offset, True
        return True

    def flush(self) -> None:
        """Playout stopped: nothing more of this reply plays (the next one starts at its own time)."""
        self._resampler = None
        self._cursor, self._anchored = None, False


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
