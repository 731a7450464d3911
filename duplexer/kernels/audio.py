"""PCM helpers on the hot path: int16 conversion, downmixing, band-limited resampling, framing."""

from __future__ import annotations

from math import gcd

import numpy as np


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


def resample(samples: np.ndarray, from_hz: int, to_hz: int) -> np.ndarray:
    """Band-limited resampling of a whole float buffer (FFT method); exact length ratio.

    Suited to whole utterances and TTS sentences; the output has
    ``round(len * to_hz / from_hz)`` samples.
    """
    if from_hz == to_hz or len(samples) == 0:
        return samples.astype(np.float32, copy=False)
    if from_hz <= 0 or to_hz <= 0:
        raise ValueError(f"sample rates must be positive, got {from_hz} -> {to_hz}")
    n_in = len(samples)
    n_out = round(n_in * to_hz / from_hz)
    spectrum = np.fft.rfft(samples.astype(np.float64))
    keep = min(len(spectrum), n_out // 2 + 1)
    out_spectrum = np.zeros(n_out // 2 + 1, dtype=np.complex128)
    out_spectrum[:keep] = spectrum[:keep]
    out = np.fft.irfft(out_spectrum, n=n_out) * (n_out / n_in)
    return out.astype(np.float32)


def resample_pcm16(pcm: bytes, from_hz: int, to_hz: int) -> bytes:
    """Resample mono PCM16 bytes."""
    if from_hz == to_hz:
        return pcm
    return float_to_pcm16(resample(pcm16_to_float(pcm), from_hz, to_hz))


def ratio(from_hz: int, to_hz: int) -> tuple[int, int]:
    """The reduced up/down factors between two rates, e.g. 22050 -> 16000 is (320, 441)."""
    g = gcd(from_hz, to_hz)
    return to_hz // g, from_hz // g


def frames(pcm: bytes, frame_samples: int) -> list[bytes]:
    """Split mono PCM16 into whole frames, zero-padding the last one."""
    frame_bytes = 2 * frame_samples
    if not pcm:
        return []
    padded = pcm + bytes(-len(pcm) % frame_bytes)
    return [padded[i : i + frame_bytes] for i in range(0, len(padded), frame_bytes)]
