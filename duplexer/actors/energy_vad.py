"""A model-free VAD: frame loudness mapped to a speech probability.

Useful where no model is wanted (tests over real audio, constrained devices).
Silero VAD is the default for real conversations; this one cannot tell speech
from other loud sounds.
"""

from __future__ import annotations

import numpy as np

SILENCE_DBFS = -50.0
"""Frames at or below this level get probability 0."""
SPEECH_DBFS = -30.0
"""Frames at or above this level get probability 1."""


class EnergyVad:
    """Speech probability from a PCM16 frame's RMS level, linear between two dBFS levels."""

    def __init__(self, silence_dbfs: float = SILENCE_DBFS, speech_dbfs: float = SPEECH_DBFS) -> None:
        if speech_dbfs <= silence_dbfs:
            raise ValueError(f"speech_dbfs ({speech_dbfs}) must be above silence_dbfs ({silence_dbfs})")
        self.silence_dbfs, self.speech_dbfs = silence_dbfs, speech_dbfs

    def speech_probability(self, pcm: bytes, frame_start_ms: float) -> float:
        samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
        if samples.size == 0:
            return 0.0
        rms = float(np.sqrt(np.mean(samples * samples))) / 32768.0
        level_dbfs = 20.0 * np.log10(max(rms, 1e-9))
        span = self.speech_dbfs - self.silence_dbfs
        return float(min(1.0, max(0.0, (level_dbfs - self.silence_dbfs) / span)))
