"""PCM helpers on the hot path: int16 conversion, downmixing, the project's one resampler, framing."""

from __future__ import annotations

import math
from math import gcd

import numpy as np
from numba import njit


def pcm16_to_float(pcm: bytes | np.ndarray) -> np.ndarray:
    """PCM16 little-endian bytes (or an int16 array) to float32 in [-1, 1)."""
    samples = np.frombuffer(pcm, dtype="<i2") if isinstance(pcm, bytes) else pcm
    return samples.astype(np.float32) / 32768.0


def float_to_pcm16(samples: np.ndarray) -> bytes:
    """Float samples in [-1, 1] to PCM16 little-endian bytes, clipping overs."""
    return (np.clip(samples, -1.0, 32767.0 / 32768.0) * 32768.0).astype("<i2").tobytes()


def downmix(samples: np.ndarray, channels: int) -> np.ndarray:
    """Interleaved multi-channel samples to mono by averaging channels."""
    if channels == 1:
        return samples
    usable = len(samples) - len(samples) % channels
    return samples[:usable].reshape(-1, channels).mean(axis=1).astype(samples.dtype)


RESAMPLER_HALF_TAPS = 16
"""Half the windowed-sinc kernel, in samples of the lower of the two rates."""
RESAMPLER_CUTOFF = 0.92
"""Pass band as a share of the lower Nyquist frequency; the rest is the transition band."""


class StreamingResampler:
    """Mono audio from one rate to another, chunk by chunk; the one resampler every part of the project uses.

    A polyphase windowed-sinc filter: one row of taps per output phase, so each
    output sample is one dot product. Feeding a stream in chunks gives exactly
    what feeding it at once gives, so chunk edges never click.

    The filter looks ``half`` input samples ahead (about 1 ms). Without
    ``lead_in``, output sample k sits at input time k * in / out and the last
    look-ahead's worth of output waits for the next chunk (or :meth:`finish`).
    With ``lead_in``, that look-ahead is paid up front as silence: every chunk
    gives its whole share of output at once (20 ms in, 20 ms out, from the first
    chunk on), and the output lags the input by the look-ahead. Live audio wants
    the lead-in: a frame held back for 1 ms would otherwise wait a whole frame.
    """

    def __init__(
        self, in_rate_hz: int, out_rate_hz: int, half_taps: int = RESAMPLER_HALF_TAPS, lead_in: bool = False
    ) -> None:
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
        lead = self.half if lead_in else 0
        self.buffer = np.zeros(self.half - 1 + lead, dtype=np.float64)
        self.buffer_start = -(self.half - 1)  # absolute input index of buffer[0]
        self.n_in = lead
        self.k_next = 0

    def process(self, pcm: bytes) -> bytes:
        """PCM16 in, the PCM16 output it completes."""
        if self.passthrough:
            return pcm
        out = self.push(np.frombuffer(pcm, dtype="<i2").astype(np.float64))
        return np.clip(np.rint(out), -32768, 32767).astype("<i2").tobytes()

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Float samples in (any scale), the float64 output they complete."""
        if self.passthrough:
            return np.asarray(samples, dtype=np.float64)
        self.buffer = np.concatenate((self.buffer, np.asarray(samples, dtype=np.float64)))
        self.n_in += len(samples)
        k_end = ((self.n_in - self.half) * self.up - 1) // self.down + 1
        if k_end <= self.k_next:
            return np.zeros(0, dtype=np.float64)
        out = self._filter(self.k_next, k_end)
        self.k_next = k_end
        keep_from = self.k_next * self.down // self.up - self.half + 1
        drop = keep_from - self.buffer_start
        if drop > 0:
            self.buffer = self.buffer[drop:]
            self.buffer_start = keep_from
        return out

    def finish(self, total_out: int) -> np.ndarray:
        """The output still held back, up to ``total_out`` samples in all, as if silence followed the input."""
        if self.passthrough or total_out <= self.k_next:
            return np.zeros(0, dtype=np.float64)
        last_needed = (total_out - 1) * self.down // self.up + self.half
        pad = last_needed + 1 - (self.buffer_start + len(self.buffer))
        if pad > 0:
            self.buffer = np.concatenate((self.buffer, np.zeros(pad)))
        out = self._filter(self.k_next, total_out)
        self.k_next = total_out
        return out

    def _filter(self, k_start: int, k_end: int) -> np.ndarray:
        """Output samples k_start..k_end-1: one dot product of a phase's taps and an input window each."""
        out: np.ndarray = _polyphase(
            self.buffer, self.table, self.up, self.down, self.buffer_start - self.offsets[0], k_start, k_end
        )
        return out


@njit(
    "float64[::1](float64[::1], float64[:, ::1], int64, int64, int64, int64, int64)",
    cache=True,
    nogil=True,
)  # type: ignore[untyped-decorator,misc]
def _polyphase(
    buffer: np.ndarray, table: np.ndarray, up: int, down: int, first_index: int, k_start: int, k_end: int
) -> np.ndarray:
    """The filter's inner loop: output k is phase (k * down) % up's taps dotted with the input from
    absolute index k * down // up - half + 1, which is ``buffer[k * down // up - first_index]``.

    Compiled when this module is imported (and cached on disk), so a live stream never waits for it.
    """
    taps = table.shape[1]
    out = np.empty(k_end - k_start)
    for i in range(k_end - k_start):
        k = k_start + i
        phase = (k * down) % up
        base = (k * down) // up - first_index
        acc = 0.0
        for j in range(taps):
            acc += table[phase, j] * buffer[base + j]
        out[i] = acc
    return out


def resample(samples: np.ndarray, from_hz: int, to_hz: int) -> np.ndarray:
    """A whole float buffer at another rate (:class:`StreamingResampler`, fed at once); exact length ratio.

    Suited to whole utterances and TTS sentences; the output has
    ``round(len * to_hz / from_hz)`` samples, aligned with the input.
    """
    if from_hz == to_hz or len(samples) == 0:
        return samples.astype(np.float32, copy=False)
    resampler = StreamingResampler(from_hz, to_hz)
    n_out = round(len(samples) * to_hz / from_hz)
    out = np.concatenate((resampler.push(samples), resampler.finish(n_out)))
    return out[:n_out].astype(np.float32)


def resample_pcm16(pcm: bytes, from_hz: int, to_hz: int) -> bytes:
    """Resample mono PCM16 bytes."""
    if from_hz == to_hz:
        return pcm
    return float_to_pcm16(resample(pcm16_to_float(pcm), from_hz, to_hz))


def frames(pcm: bytes, frame_samples: int) -> list[bytes]:
    """Split mono PCM16 into whole frames, zero-padding the last one."""
    frame_bytes = 2 * frame_samples
    if not pcm:
        return []
    padded = pcm + bytes(-len(pcm) % frame_bytes)
    return [padded[i : i + frame_bytes] for i in range(0, len(padded), frame_bytes)]
