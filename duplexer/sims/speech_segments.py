"""Where speech is in a recording, by frame energy: what the demo and the VAP scenarios take as speech.

Speech segments are the frames within ``SPEECH_DB`` of the loudest frame, gaps shorter than
``MERGE_GAP_MS`` closed.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

SPEECH_DB = -35.0
MERGE_GAP_MS = 100.0
ENERGY_FRAME_MS = 20.0


def speech_segments(wav_path: Path) -> list[tuple[float, float]]:
    """(start_ms, end_ms) of speech in a PCM16 wav, by frame energy."""
    with wave.open(str(wav_path), "rb") as wav:
        rate, channels = wav.getframerate(), wav.getnchannels()
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16).astype(np.float64)
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1)
    return speech_segments_pcm(samples, rate)


def speech_segments_pcm(samples: np.ndarray, rate: int) -> list[tuple[float, float]]:
    """(start_ms, end_ms) of speech in mono samples, by frame energy relative to the loudest frame."""
    samples = samples.astype(np.float64)
    frame = int(rate * ENERGY_FRAME_MS / 1000)
    if len(samples) < frame:
        return []
    n = len(samples) // frame
    rms = np.sqrt((samples[: n * frame].reshape(n, frame) ** 2).mean(axis=1)) + 1e-9
    loud = 20 * np.log10(rms / rms.max()) > SPEECH_DB
    segments: list[tuple[float, float]] = []
    for i, is_loud in enumerate(loud):
        if not is_loud:
            continue
        start, end = i * ENERGY_FRAME_MS, (i + 1) * ENERGY_FRAME_MS
        if segments and start - segments[-1][1] < MERGE_GAP_MS:
            segments[-1] = (segments[-1][0], end)
        else:
            segments.append((start, end))
    return segments
