"""Whisper-style log-mel features over a fixed 8 s window, the input of the Smart Turn v3 end-of-turn model.

The model was trained on Whisper's feature extractor at 16 kHz (80 Slaney mel bins, 25 ms Hann
frames every 10 ms) applied to the last 8 s of a turn. A turn shorter than that sits at the END of
the window with zeros before it (the end of the turn is what the model judges, so it always lands on
the same frames), and the whole 8 s window, padding included, is scaled to zero mean and unit
variance before the spectrogram, as the model saw in training.
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE_HZ = 16_000
N_FFT = 400
HOP_SAMPLES = 160
N_MELS = 80
WINDOW_S = 8
WINDOW_SAMPLES = SAMPLE_RATE_HZ * WINDOW_S
N_FRAMES = WINDOW_SAMPLES // HOP_SAMPLES
"""800 feature frames: the centred STFT yields one more, and Whisper drops the last."""
DYNAMIC_RANGE_LOG10 = 8.0
"""Log-power floor below the window's loudest bin (80 dB), as Whisper clamps."""
_POWER_FLOOR = 1e-10
_VARIANCE_EPS = 1e-7


def _hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """Slaney's mel scale: linear (3 mels per 200 Hz) below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = 3.0 * hz / 200.0
    logarithmic = 15.0 + np.log(np.maximum(hz, 1e-12) / 1000.0) * (27.0 / np.log(6.4))
    return np.where(hz >= 1000.0, logarithmic, linear)


def _mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    linear = 200.0 * mel / 3.0
    logarithmic = 1000.0 * np.exp((mel - 15.0) * (np.log(6.4) / 27.0))
    return np.where(mel >= 15.0, logarithmic, linear)


def mel_filters(n_mels: int = N_MELS, n_fft: int = N_FFT, sample_rate_hz: int = SAMPLE_RATE_HZ) -> np.ndarray:
    """Triangular filters, equally spaced in Slaney mels from 0 Hz to Nyquist, area-normalised:
    shape ``(n_mels, n_fft // 2 + 1)``."""
    edges_hz = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sample_rate_hz / 2.0), n_mels + 2))
    bins_hz = np.linspace(0.0, sample_rate_hz // 2, n_fft // 2 + 1)
    lower, centre, upper = edges_hz[:-2, None], edges_hz[1:-1, None], edges_hz[2:, None]
    rising = (bins_hz[None, :] - lower) / (centre - lower)
    falling = (upper - bins_hz[None, :]) / (upper - centre)
    triangles = np.maximum(0.0, np.minimum(rising, falling))
    return triangles * (2.0 / (upper - lower))


_FILTERS = mel_filters()
_HANN = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(N_FFT) / N_FFT)
"""Periodic Hann window (as torch.hann_window builds it)."""


def fit_window(samples: np.ndarray, window_samples: int = WINDOW_SAMPLES) -> np.ndarray:
    """The last ``window_samples`` of the audio, zero-padded at the start when shorter (right-aligned)."""
    samples = np.asarray(samples, dtype=np.float32)
    if len(samples) >= window_samples:
        return samples[len(samples) - window_samples :]
    return np.concatenate([np.zeros(window_samples - len(samples), dtype=np.float32), samples])


def log_mel_window(samples: np.ndarray) -> np.ndarray:
    """Features of float audio at 16 kHz (any length): ``(N_MELS, N_FRAMES)`` float32, roughly in [-1, 1].

    The audio is right-aligned in the 8 s window, normalised to zero mean and unit variance (in float32,
    padding included), framed with reflect padding at both ends, and turned into log10 mel power
    clamped to :data:`DYNAMIC_RANGE_LOG10` below its peak, then scaled as ``(x + 4) / 4``.
    """
    x = fit_window(samples)
    x = (x - x.mean()) / np.sqrt(x.var() + np.float32(_VARIANCE_EPS))
    half = N_FFT // 2
    padded = np.pad(x.astype(np.float64), (half, half), mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP_SAMPLES][:N_FRAMES]
    power = np.abs(np.fft.rfft(frames * _HANN, axis=-1)) ** 2
    log_power = np.log10(np.maximum(_FILTERS @ power.T, _POWER_FLOOR))
    log_power = np.maximum(log_power, log_power.max() - DYNAMIC_RANGE_LOG10)
    return ((log_power + 4.0) / 4.0).astype(np.float32)
