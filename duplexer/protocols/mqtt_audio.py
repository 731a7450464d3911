"""A device's microphone stream on its way into the pipeline: sequence checks, loss, resampling, framing.

Frames travel at QoS 0, so some never arrive and, after an outage, some arrive
late. Each frame carries a sequence number (see mqtt_topics); this module puts
frames back in order within a small window, conceals short losses with silence
(so the pipeline's audio time keeps pace with the device's), skips long ones,
and counts every case. Audio at any device rate is resampled, seams-free across
frames, to the pipeline's 16 kHz, 20 ms frames.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from math import gcd

import numpy as np

from duplexer.protocols.mqtt_topics import (
    FLAG_DELAYED,
    SEQ_MODULUS,
    AudioFormat,
    AudioHeader,
    seq_distance,
)
from duplexer.runtime.events import FRAME_MS, FRAME_SAMPLES, INPUT_SAMPLE_RATE_HZ

RESAMPLER_HALF_TAPS = 16
"""Half the windowed-sinc kernel, in samples of the lower of the two rates."""
RESAMPLER_CUTOFF = 0.92
"""Pass band as a share of the lower Nyquist frequency; the rest is the transition band."""

DEFAULT_REORDER_WINDOW_FRAMES = 3
DEFAULT_MAX_CONCEAL_MS = 1000.0
"""Losses up to this long become silence; longer ones are skipped, moving audio time forward."""
MAX_LATE_FRAMES = 50
"""A frame further behind than this is not late: the device restarted its sequence."""
MAX_JUMP_FRAMES = 3000
"""A frame further ahead than this (60 s of 20 ms frames) also means a restarted sequence."""
RESYNC_LAG_MS = 1000.0
"""A live frame whose audio time lags the session clock by more than this follows a pause of the
microphone: audio time jumps to now, so silence timing is not thrown off by the pause."""


class StreamingResampler:
    """PCM16 mono from one rate to another, chunk by chunk, identical to resampling the whole stream.

    A polyphase windowed-sinc filter: one row of taps per output phase, so each
    output sample is one dot product. Output lags input by the kernel's half
    width (about 1 ms).
    """

    def __init__(self, in_rate_hz: int, out_rate_hz: int, half_taps: int = RESAMPLER_HALF_TAPS) -> None:
        if in_rate_hz <= 0 or out_rate_hz <= 0:
            raise ValueError(f"sample rates must be positive, got {in_rate_hz} -> {out_rate_hz}")
        g = gcd(in_rate_hz, out_rate_hz)
        self.in_rate_hz, self.out_rate_hz = in_rate_hz, out_rate_hz
        self.up, self.down = out_rate_hz // g, in_rate_hz // g
        self.passthrough = self.up == self.down
        scale = min(1.0, self.up / self.down)
        cutoff = RESAMPLER_CUTOFF * scale
        self.half = math.ceil(half_taps / scale)
        offsets = np.arange(-self.half + 1, self.half + 1)
        t = (np.arange(self.up) / self.up)[:, None] - offsets[None, :]
        window = np.where(np.abs(t) < self.half, 0.5 * (1.0 + np.cos(np.pi * t / self.half)), 0.0)
        table = cutoff * np.sinc(cutoff * t) * window
        self.table = table / table.sum(axis=1, keepdims=True)
        self.offsets = offsets
        self.buffer = np.zeros(self.half - 1, dtype=np.float64)
        self.buffer_start = -(self.half - 1)  # absolute input index of buffer[0]
        self.n_in = 0
        self.k_next = 0

    def process(self, pcm: bytes) -> bytes:
        if self.passthrough:
            return pcm
        samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
        self.buffer = np.concatenate((self.buffer, samples))
        self.n_in += samples.size
        k_end = ((self.n_in - self.half) * self.up - 1) // self.down + 1
        if k_end <= self.k_next:
            return b""
        out = self._filter(self.k_next, k_end)
        self.k_next = k_end
        keep_from = self.k_next * self.down // self.up - self.half + 1
        drop = keep_from - self.buffer_start
        if drop > 0:
            self.buffer = self.buffer[drop:]
            self.buffer_start = keep_from
        return np.clip(np.rint(out), -32768, 32767).astype("<i2").tobytes()

    def _filter(self, k_start: int, k_end: int) -> np.ndarray:
        """Output samples k_start..k_end-1: one dot product of a phase's taps and an input window each."""
        ks = np.arange(k_start, k_end, dtype=np.int64)
        n0 = ks * self.down // self.up
        index = (n0 - self.buffer_start)[:, None] + self.offsets[None, :]
        return np.einsum("ij,ij->i", self.buffer[index], self.table[ks * self.down % self.up])


@dataclass
class InboundCounts:
    """What happened to one device's microphone frames; reported in stats events."""

    frames: int = 0
    """audio/in messages accepted."""
    delivered: int = 0
    """Device frames passed on in sequence."""
    lost: int = 0
    """Frames that never came in time: their time was concealed with silence or skipped."""
    late: int = 0
    """Frames that came after their time was concealed, or came twice: dropped."""
    reordered: int = 0
    """Frames that came after a later one but in time: put back in order."""
    delayed: int = 0
    """Frames the device held during an outage and sent late (FLAG_DELAYED): delivered, not lost."""
    concealed_ms: float = 0.0
    skipped_ms: float = 0.0
    resets: int = 0
    """Sequence restarts (a jump too far ahead or behind): treated as a new stream."""
    resyncs: int = 0
    """Live frames after a microphone pause over RESYNC_LAG_MS: audio time moved to the session clock."""
    pipeline_frames: int = 0
    """16 kHz, 20 ms frames handed to the pipeline."""

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


class InboundAudio:
    """One device's microphone stream: in-order 16 kHz pipeline frames out of numbered device frames.

    ``start_frame`` numbers the first pipeline frame, so pipeline audio time
    (frame number x 20 ms) lines up with the session clock.
    """

    def __init__(
        self,
        fmt: AudioFormat,
        start_frame: int = 0,
        reorder_window_frames: int = DEFAULT_REORDER_WINDOW_FRAMES,
        max_conceal_ms: float = DEFAULT_MAX_CONCEAL_MS,
        counts: InboundCounts | None = None,
    ) -> None:
        self.fmt = fmt
        self.reorder_window = max(0, reorder_window_frames)
        self.max_conceal_ms = max_conceal_ms
        self.counts = counts or InboundCounts()
        self.next_frame = start_frame
        self.expected: int | None = None
        self.pending: dict[int, tuple[bytes, float]] = {}  # seq -> (pcm, arrival ms)
        self._resampler = StreamingResampler(fmt.sample_rate_hz, INPUT_SAMPLE_RATE_HZ)
        self._carry = bytearray()
        self._silence = bytes(fmt.frame_bytes)

    def push(self, header: AudioHeader, pcm: bytes, now_ms: float) -> list[tuple[int, bytes]]:
        """Accept one device frame; return the pipeline frames (number, PCM) now ready, in order."""
        self.fmt.check_frame(pcm)
        counts = self.counts
        counts.frames += 1
        if header.flags & FLAG_DELAYED:
            counts.delayed += 1
        elif now_ms - self.next_frame * FRAME_MS > RESYNC_LAG_MS and not self.pending:
            counts.resyncs += 1
            self._skip(now_ms - self.next_frame * FRAME_MS)
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
        out: list[tuple[int, bytes]] = []
        if distance == 0 and self.pending:
            counts.reordered += 1
        self.pending[seq] = (pcm, now_ms)
        self._release(out, force=False)
        return out

    def expire(self, now_ms: float) -> list[tuple[int, bytes]]:
        """Give up waiting for a missing frame once a later one has waited the reorder window."""
        out: list[tuple[int, bytes]] = []
        if self.pending:
            oldest_ms = min(arrival for _, arrival in self.pending.values())
            if now_ms - oldest_ms >= (self.reorder_window + 1) * self.fmt.frame_ms:
                self._release(out, force=True)
        return out

    def _release(self, out: list[tuple[int, bytes]], force: bool) -> None:
        assert self.expected is not None
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
            gap_ms = gap * self.fmt.frame_ms
            if gap_ms <= self.max_conceal_ms:
                self.counts.concealed_ms += gap_ms
                for _ in range(gap):
                    self._feed(self._silence, out)
            else:
                self.counts.skipped_ms += gap_ms
                self._skip(gap_ms)
            self.expected = (self.expected + gap) % SEQ_MODULUS

    def _feed(self, pcm: bytes, out: list[tuple[int, bytes]]) -> None:
        self._carry += self._resampler.process(pcm)
        frame_bytes = 2 * FRAME_SAMPLES
        while len(self._carry) >= frame_bytes:
            out.append((self.next_frame, bytes(self._carry[:frame_bytes])))
            del self._carry[:frame_bytes]
            self.next_frame += 1
            self.counts.pipeline_frames += 1

    def _skip(self, gap_ms: float) -> None:
        """Move audio time forward over a long loss without feeding the pipeline made-up audio."""
        self._resampler = StreamingResampler(self.fmt.sample_rate_hz, INPUT_SAMPLE_RATE_HZ)
        self._carry.clear()
        self.next_frame += max(1, round(gap_ms / FRAME_MS))
