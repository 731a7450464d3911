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
DRIFT_MIN_ESTIMATES = 8
"""Sub-sample lags needed (spanning DRIFT_MIN_SPAN_S) before a drift rate is fitted to them."""
DRIFT_MIN_SPAN_S = 4.0
DRIFT_KEEP = 40
"""The drift rate is the slope of a line through the last this many lags (20 s)."""
DRIFT_MAX_PPM = 300.0
"""A fitted drift beyond this is not a clock: ignored."""


class DelayEstimator:
    """Streaming GCC-PHAT estimate of the lag (samples) of the reference's echo in the microphone."""

    def __init__(self, sample_rate: int, frame_samples: int, max_delay: int) -> None:
        self.window = int(DELAY_WINDOW_S * sample_rate)
        self.max_delay = max_delay
        self.frame_samples = frame_samples
        self.nfft = 1 << int(np.ceil(np.log2(self.window + max_delay + frame_samples)))
        self.reset()

    def reset(self) -> None:
        self.mic = np.zeros(self.window)  # ring buffers: the oldest sample at ``pos``, written in place
        self.ref = np.zeros(self.window + self.max_delay)
        self.mic_pos = self.ref_pos = 0
        self.frames = 0
        self.cross: npt.NDArray[np.complex128] | None = None
        self.candidate: int | None = None
        self.delay: int | None = None
        self.peak_ratio = 0.0
        self.estimates = 0
        self.fine: list[tuple[int, float]] = []  # (frame, sub-sample lag) of confident estimates
        self.drift = 0.0
        """Fitted drift: lag samples gained per sample of time (ppm x 1e-6)."""

    def push(self, mic: FloatArray, ref: FloatArray) -> int | None:
        """Take one frame of each; return the current lag (None until one is found)."""
        self.mic_pos = _ring_write(self.mic, self.mic_pos, mic)
        self.ref_pos = _ring_write(self.ref, self.ref_pos, ref)
        self.frames += 1
        if self.frames % DELAY_INTERVAL_FRAMES == 0:
            self._estimate()
        return self.delay

    def _estimate(self) -> None:
        mic, ref = np.roll(self.mic, -self.mic_pos), np.roll(self.ref, -self.ref_pos)  # oldest first
        if np.sqrt(np.mean(ref[-self.window :] ** 2)) < DELAY_ACTIVE_RMS:
            return
        mic_spec = np.fft.rfft(mic, self.nfft)
        ref_spec = np.fft.rfft(ref, self.nfft)
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
        if 0 < best < self.max_delay:  # parabolic interpolation of the peak: the lag to a fraction of a sample
            a, b, c = values[best - 1], values[best], values[best + 1]
            curve = a - 2 * b + c
            offset = 0.5 * (a - c) / curve if curve < 0 else 0.0
            self._fit_drift(best + float(np.clip(offset, -0.5, 0.5)))
        if self.candidate is not None and abs(best - self.candidate) <= DELAY_AGREE_SAMPLES:
            self.delay = best
        self.candidate = best

    def _fit_drift(self, lag: float) -> None:
        """The slope of the recent sub-sample lags against time: how fast the device's clock drifts."""
        self.fine = [*self.fine[-(DRIFT_KEEP - 1) :], (self.frames, lag)]
        frames = np.array([f for f, _ in self.fine], dtype=np.float64)
        if len(self.fine) < DRIFT_MIN_ESTIMATES or (frames[-1] - frames[0]) * self.frame_samples < (
            DRIFT_MIN_SPAN_S * self.window / DELAY_WINDOW_S
        ):
            return
        lags = np.array([lag for _, lag in self.fine])
        if np.ptp(lags) > 4 * DELAY_AGREE_SAMPLES:  # the path changed: start the fit again
            self.fine = self.fine[-1:]
            return
        slope = float(np.polyfit(frames * self.frame_samples, lags, 1)[0])
        self.drift = slope if abs(slope) <= DRIFT_MAX_PPM * 1e-6 else 0.0


def _ring_write(ring: FloatArray, pos: int, frame: FloatArray) -> int:
    """Write ``frame`` over the oldest samples of ``ring`` (oldest at ``pos``); the new oldest position.
    Per frame this touches the frame's samples only, not the whole window."""
    size, n = len(ring), len(frame)
    if n >= size:
        ring[:] = frame[n - size :]
        return 0
    first = min(n, size - pos)
    ring[pos : pos + first] = frame[:first]
    ring[: n - first] = frame[first:]
    return (pos + n) % size


DRIFT_PHASE_START = 64.0
"""The compensator delays the reference by this many samples to begin with (4 ms), so a clock that
drifts the other way (echo arriving earlier) can be followed too, for 64 samples' worth."""
DRIFT_TAIL = 2 * int(DRIFT_PHASE_START) + 4


class DriftCompensator:
    """Delays the reference by a slowly changing fraction of a sample, so the echo path the adaptive
    filter sees stands still while the device's clock drifts: the reference is read at positions
    ``n - phase`` (cubic interpolation), and ``phase`` grows by the drift rate every sample, within
    [2, 2 x DRIFT_PHASE_START] samples (beyond, the filter follows the drift on its own)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.tail = np.zeros(DRIFT_TAIL)  # raw samples before the frame
        self.phase = DRIFT_PHASE_START
        self.rate = 0.0

    def push(self, raw: FloatArray) -> FloatArray:
        n = len(raw)
        buf = np.concatenate([self.tail, raw])
        phases = np.clip(self.phase + self.rate * np.arange(1, n + 1), 2.0, DRIFT_TAIL - 4.0)
        self.phase = float(phases[-1])
        whole = np.floor(phases).astype(np.int64)
        t = 1.0 - (phases - whole)  # position between base and base + 1
        base = DRIFT_TAIL + np.arange(n) - whole - 1
        p0, p1, p2, p3 = buf[base - 1], buf[base], buf[base + 1], buf[base + 2]
        out: FloatArray = p1 + 0.5 * t * (
            p2 - p0 + t * (2.0 * p0 - 5.0 * p1 + 4.0 * p2 - p3 + t * (3.0 * (p1 - p2) + p3 - p0))
        )
        self.tail = buf[-DRIFT_TAIL:]
        return out
