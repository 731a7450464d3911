"""When received bot audio was audible: each sample's time is its frame's arrival plus its offset in the frame.

A caller or device measures latency from what it heard: the first sample at or above
:data:`~duplexer.kernels.loudness.AUDIBLE_DBFS` (a TTS reply may open with digital silence that
arrives as frames, but is not heard), and, for a stop, the end of the last such sample. Each frame
is examined once as it is added, so queries are scans over per-frame facts, exact to the sample.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import numpy as np

from duplexer.kernels.loudness import audible_spans

DEFAULT_QUIET_MS = 100.0
"""A stop is heard once this much received audio in a row has nothing audible."""


@dataclass
class HeardAudio:
    """Received mono audio at ``rate_hz``, frame by frame: arrival (loop time, s) and audible part."""

    rate_hz: int
    arrivals_s: list[float] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)
    """Stream index of each frame's first sample."""
    audible: list[tuple[int, int] | None] = field(default_factory=list)
    """Per frame, the offsets of its first audible sample and just past its last; None when inaudible."""
    samples: int = 0

    def add(self, arrival_s: float, pcm: np.ndarray) -> None:
        """One received frame (int16 or float samples)."""
        spans = audible_spans(pcm, self.rate_hz)
        self.arrivals_s.append(arrival_s)
        self.starts.append(self.samples)
        self.audible.append(None if not spans else (self._offset(spans[0][0]), self._offset(spans[-1][1])))
        self.samples += len(pcm)

    def _offset(self, ms: float) -> int:
        return round(ms * self.rate_hz / 1000.0)

    def _time_s(self, frame: int, offset: int) -> float:
        return self.arrivals_s[frame] + offset / self.rate_hz

    def onset_s(self, after_s: float = 0.0) -> float | None:
        """When the first audible sample in frames arriving at or after ``after_s`` was heard."""
        for i in range(bisect.bisect_left(self.arrivals_s, after_s), len(self.audible)):
            part = self.audible[i]
            if part is not None:
                return self._time_s(i, part[0])
        return None

    def end_s(self, after_s: float, quiet_ms: float = DEFAULT_QUIET_MS) -> float | None:
        """When the last audible sample before the first ``quiet_ms`` heard from ``after_s`` on without any ended.

        Quiet counts in stream samples from the later of the last audible sample and the first frame
        arriving at or after ``after_s``. None until that quiet has been received, or if nothing
        audible came before it. Earlier than ``after_s`` when the audio was already quiet then.
        """
        first = bisect.bisect_left(self.arrivals_s, after_s)
        quiet = self._offset(quiet_ms)
        last: tuple[int, int] | None = None  # (frame, offset) just past the last audible sample so far
        for i in range(first - 1, -1, -1):
            part = self.audible[i]
            if part is not None:
                last = (i, part[1])
                break
        if first >= len(self.starts):
            return None
        for i in range(first, len(self.audible)):
            part = self.audible[i]
            if part is None:
                continue
            if self.starts[i] + part[0] - self._quiet_from(first, last) >= quiet:
                return None if last is None else self._time_s(*last)
            last = (i, part[1])
        if last is not None and self.samples - self._quiet_from(first, last) >= quiet:
            return self._time_s(*last)
        return None

    def _quiet_from(self, first: int, last: tuple[int, int] | None) -> int:
        start = self.starts[first]
        return start if last is None else max(start, self.starts[last[0]] + last[1])
