"""Where the bot's echo sits in the microphone: the delay between a reference signal and its echo, by GCC-PHAT.

Generalized cross-correlation with the phase transform whitens both spectra, so
the correlation peak marks the echo's direct path even through a reverberant
room and over the user's speech; its height over the correlation's typical
level says how sure the estimate is. Pure NumPy (a 1 s window is two 32k-point
FFTs, about a millisecond), run a few times a second per session.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PHAT_BAND_HZ = (200.0, 4000.0)
"""Frequencies the whitened correlation uses: where speech, and so the echo, has its energy."""


@dataclass(frozen=True)
class DelayEstimate:
    """The echo's delay behind the reference, in samples, and how far its peak stands out (peak / median |corr|)."""

    delay_samples: int
    confidence: float


def gcc_phat_delay(
    mic: np.ndarray,
    ref: np.ndarray,
    min_delay: int,
    max_delay: int,
    rate_hz: int,
) -> DelayEstimate:
    """The delay ``d`` in ``[min_delay, max_delay]`` for which ``mic[n]`` best matches ``ref[n + max_delay - d]``.

    ``ref`` starts ``max_delay`` samples before ``mic`` and is ``max_delay - min_delay`` samples longer,
    so every candidate delay sees the whole microphone window.
    """
    span = max_delay - min_delay
    if span < 0 or len(ref) < len(mic) + span or len(mic) == 0:
        raise ValueError(f"ref needs {len(mic) + max(span, 0)} samples for a {len(mic)}-sample mic window")
    nfft = 1 << int(np.ceil(np.log2(len(ref) + len(mic))))
    spec_mic = np.fft.rfft(np.asarray(mic, dtype=np.float64), nfft)
    spec_ref = np.fft.rfft(np.asarray(ref, dtype=np.float64), nfft)
    cross = np.conj(spec_mic) * spec_ref
    freqs = np.fft.rfftfreq(nfft, 1.0 / rate_hz)
    band = (freqs >= PHAT_BAND_HZ[0]) & (freqs <= PHAT_BAND_HZ[1])
    cross = np.where(band, cross / (np.abs(cross) + 1e-12), 0.0)
    corr = np.fft.irfft(cross, nfft)[: span + 1]  # corr[m] = sum mic[n] ref[n + m]
    magnitude = np.abs(corr)
    best = int(np.argmax(magnitude))
    floor = float(np.median(magnitude)) + 1e-12
    return DelayEstimate(delay_samples=max_delay - best, confidence=float(magnitude[best] / floor))
