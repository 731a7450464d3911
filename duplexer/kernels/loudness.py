"""Where audio is audible: the level a listener's ear (and Full-Duplex-Bench's onsets) start from.

Speech found by a VAD is refined with these: its onset is the first sample at or above
``AUDIBLE_DBFS``, its end the last, so a leading stretch of digital silence in a TTS chunk is not
counted as speech.
"""

from __future__ import annotations

import numpy as np

AUDIBLE_DBFS = -40.0
"""A sample at or above this peak level (relative to full scale) is audible."""
AUDIBLE_FRAME_MS = 10.0
"""Frames of this length are audible or not; spans are then made sample-exact at their edges."""


def _as_float(samples: np.ndarray) -> np.ndarray:
    if samples.dtype == np.int16:
        return samples.astype(np.float32) / 32768.0
    return samples.astype(np.float32, copy=False)


def audible_spans(
    samples: np.ndarray,
    rate_hz: int,
    threshold_dbfs: float = AUDIBLE_DBFS,
    max_gap_ms: float = 0.0,
) -> list[tuple[float, float]]:
    """(start_ms, end_ms) of the audible stretches of mono ``samples`` (int16 or float in [-1, 1]).

    Frames of ``AUDIBLE_FRAME_MS`` with a peak at or above ``threshold_dbfs`` are audible; runs of
    them separated by at most ``max_gap_ms`` are one stretch, whose edges are the first and last
    audible sample.
    """
    x = np.abs(_as_float(samples))
    level = 10.0 ** (threshold_dbfs / 20.0)
    frame = max(1, int(rate_hz * AUDIBLE_FRAME_MS / 1000.0))
    n = len(x) // frame + (1 if len(x) % frame else 0)
    if n == 0:
        return []
    padded = np.zeros(n * frame, dtype=np.float32)
    padded[: len(x)] = x
    loud = padded.reshape(n, frame).max(axis=1) >= level
    edges = np.flatnonzero(np.diff(np.concatenate(([0], loud.astype(np.int8), [0]))))
    runs = [(int(a), int(b)) for a, b in zip(edges[0::2], edges[1::2], strict=True)]
    merged: list[tuple[int, int]] = []
    gap_frames = max_gap_ms / AUDIBLE_FRAME_MS
    for a, b in runs:
        if merged and a - merged[-1][1] <= gap_frames:
            merged[-1] = (merged[-1][0], b)
        else:
            merged.append((a, b))
    spans: list[tuple[float, float]] = []
    for a, b in merged:
        first = a * frame + int(np.argmax(padded[a * frame : (a + 1) * frame] >= level))
        last_frame = padded[(b - 1) * frame : b * frame]
        last = (b - 1) * frame + int(len(last_frame) - 1 - np.argmax(last_frame[::-1] >= level))
        spans.append((1000.0 * first / rate_hz, 1000.0 * (last + 1) / rate_hz))
    return spans


def trim_quiet_pcm16(pcm: bytes, rate_hz: int, keep_lead_ms: float, keep_trail_ms: float) -> bytes:
    """Mono PCM16 ``pcm`` with its inaudible edges cut to at most ``keep_lead_ms`` before the first
    audible sample and ``keep_trail_ms`` after the last; ``b""`` when nothing in it is audible."""
    samples = np.frombuffer(pcm, dtype="<i2")
    spans = audible_spans(samples, rate_hz)
    if not spans:
        return b""
    first = round(spans[0][0] * rate_hz / 1000.0) - round(keep_lead_ms * rate_hz / 1000.0)
    last = round(spans[-1][1] * rate_hz / 1000.0) + round(keep_trail_ms * rate_hz / 1000.0)
    return samples[max(0, first) : min(len(samples), last)].tobytes()
