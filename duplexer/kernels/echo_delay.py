"""Bulk delay between the reference (what the bot played) and its echo in the microphone.

A device adds its own output latency (20-300 ms) and its clock drifts, so the caller's alignment
is only coarse. Every ``interval`` frames, while the reference carries sound, the estimator
cross-correlates the last second of microphone audio with the reference over ``max_delay``
samples of lag (GCC-PHAT: the cross-spectrum whitened, so the direct path stands out as one
sharp peak whatever the speech's spectrum) and averages the whitened cross-spectra over
estimates. A lag is reported once two estimates in a row agree within ``agree`` samples and
the peak stands ``min_peak_ratio`` times above the correlation's mean magnitude.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

DELAY_WINDOW_S = 1.0
"""Microphone audio correlated per estimate."""
DELAY_INTERVAL_FRAMES = 25
"""Frames between estimates (0.5 s of 20 ms frames)."""
DELAY_MIN_PEAK_RATIO = 8.0
"""A correlation peak this many times the mean magnitude is an echo, not chance."""
DELAY_AGREE_SAMPLES = 16
"""Two estimates within 1 ms at 16 kHz agree."""
DELAY_ACTIVE_RMS = 1e-3
"""The reference must be louder than -60 dBFS (RMS over the window) for an estimate."""
DELAY_AVERAGING = 0.6
"""Weight of the earlier estimates' whitened cross-spectrum in each new one."""


class DelayEstimator:
    """Streaming GCC-PHAT estimate of the lag (samples) of the reference's echo in the microphone."""

    def __init__(self, sample_rate: int, frame_samples: int, max_delay: int) -> None:
        self.window = int(DELAY_WINDOW_S * sample_rate)
        self.max_delay = max_delay
        self.frame_samples = frame_samples
        self.nfft = 1 << int(np.ceil(np.log2(self.window + max_delay + frame_samples)))
        self.reset()

    def reset(self) -> None:
        self.mic = np.zeros(self.window)
        self.ref = np.zeros(self.window + self.max_delay)
        self.frames = 0
        self.cross: npt.NDArray[np.complex128] | None = None
        self.candidate: int | None = None
        self.delay: int | None = None
        self.peak_ratio = 0.0
        self.estimates = 0

    def push(self, mic: FloatArray, ref: FloatArray) -> int | None:
        """Take one frame of each; return the current lag (None until one is found)."""
        n = len(mic)
        self.mic = np.concatenate([self.mic[n:], mic])
        self.ref = np.concatenate([self.ref[n:], ref])
        self.frames += 1
        if self.frames % DELAY_INTERVAL_FRAMES == 0:
            self._estimate()
        return self.delay

    def _estimate(self) -> None:
        if np.sqrt(np.mean(self.ref[-self.window :] ** 2)) < DELAY_ACTIVE_RMS:
            return
        mic_spec = np.fft.rfft(self.mic, self.nfft)
        ref_spec = np.fft.rfft(self.ref, self.nfft)
        # mic[t] ~ ref[t + max_delay - lag] (ref is max_delay samples longer): correlate and shift.
        cross = mic_spec * np.conj(ref_spec)
        cross /= np.abs(cross) + 1e-12
        self.cross = cross if self.cross is None else DELAY_AVERAGING * self.cross + cross
        corr = np.fft.irfft(self.cross, self.nfft)
        # Lag L puts the echo of ref[j] at mic index j - max_delay + L; circular index (L - max_delay).
        lags = (np.arange(self.max_delay + 1) - self.max_delay) % self.nfft
        values = np.abs(corr[lags])
        best = int(np.argmax(values))
        self.peak_ratio = float(values[best] / (np.mean(np.abs(corr)) + 1e-12))
        self.estimates += 1
        if self.peak_ratio < DELAY_MIN_PEAK_RATIO:
            self.candidate = None
            return
        if self.candidate is not None and abs(best - self.candidate) <= DELAY_AGREE_SAMPLES:
            self.delay = best
        self.candidate = best
