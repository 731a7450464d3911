"""Echo cancellation for one session, between the inbound audio and the VAD: alignment, health, fallback.

Theory of operation
-------------------
The transport hands each 16 kHz, 20 ms microphone frame (numbered in session
time) to :meth:`EchoControl.process` before it becomes an ``AudioFrame``. The
reference (:mod:`duplexer.protocols.echo_reference`) holds what the loudspeaker
was given, on the same time axis. Between the two lie the network, the device's
playout buffer and the room, a delay that drifts with the device's clock, so:

- A delay tracker correlates the raw microphone with the reference by GCC-PHAT
  (:func:`~duplexer.kernels.echo_delay.gcc_phat_delay`) over the last second, a
  few times a second until it has found the echo and once a second after. A
  confident estimate that differs from the applied delay by more than
  ``realign_ms`` moves the reference the canceller sees, ``lead_ms`` ahead of
  the echo's direct path, so the adaptive filter keeps the room's response
  within its taps; smaller drift the filter follows by itself.
- The canceller (:class:`Canceller`) subtracts the echo and says, as its speech
  gate, how far the frame's speech may be believed (1: the user stands out from
  the residual; towards 0: only the bot's echo is left). The gate travels on the
  ``AudioFrame`` to the VAD.

Bad reference input never silences the user: a loopback reference that stops,
arrives late or runs at the wrong rate, or a device whose echo drifts faster
than any clock would, turns cancellation off (the microphone passes unchanged,
gate 1) with a structured warning (``echo_reference_degraded``) and a counter
(``echo.degraded`` by reason) until the reference is healthy again.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from duplexer.kernels.echo_delay import gcc_phat_delay
from duplexer.protocols.echo_reference import SAMPLES_PER_MS, LoopbackReference, PlayedReference, ReferenceRing
from duplexer.runtime.events import FRAME_MS, FRAME_SAMPLES, INPUT_SAMPLE_RATE_HZ
from duplexer.runtime.logging import get_logger
from duplexer.runtime.metrics import Metrics


class Canceller(Protocol):
    """An acoustic echo canceller on 16 kHz, 20 ms int16 frames (the kernel in ``duplexer.kernels``)."""

    def process(self, mic_frame: np.ndarray, ref_frame: np.ndarray) -> np.ndarray: ...

    def reset(self) -> None: ...


CancellerFactory = Callable[[], Canceller]


def speech_gate_of(canceller: Canceller) -> float:
    """The canceller's speech gate for its last frame, in [0, 1]; 1 where it keeps none."""
    gate = getattr(canceller, "speech_gate", 1.0)
    return float(min(1.0, max(0.0, gate))) if isinstance(gate, (int, float)) else 1.0


@dataclass(frozen=True)
class EchoParams:
    """Every setting of the alignment and the fallback, with defaults in one place."""

    max_delay_ms: float = 600.0
    """Longest echo delay searched: network both ways, the device's playout buffer and the room."""
    min_delay_ms: float = -100.0
    """Earliest: a loopback stream may be numbered a little behind its microphone."""
    window_ms: float = 1000.0
    """Microphone audio each delay estimate correlates."""
    search_every_ms: float = 200.0
    """How often the delay is estimated until the echo is found; ``track_every_ms`` after."""
    track_every_ms: float = 1000.0
    min_confidence: float = 18.0
    """GCC-PHAT peak over its median level needed to trust an estimate (no echo reaches ~14 on speech)."""
    lead_ms: float = 4.0
    """The reference leads the echo's direct path by this much, so the filter sees it whole."""
    realign_ms: float = 4.0
    """A confident estimate this far from the applied delay moves the reference."""
    active_reference_dbfs: float = -45.0
    """The reference must be at least this loud over the window for an estimate to be tried."""
    late_tolerance_ms: float = 100.0
    """A loopback reference this far behind what a frame needs is missing: ``late`` while its frames still
    come, ``stopped`` when none came for as long."""
    first_reference_ms: float = 1000.0
    """Microphone audio a loopback reference may take to start before it counts as stopped."""
    rate_window_ms: float = 2000.0
    """Loopback audio is compared with microphone audio over windows this long."""
    rate_tolerance: float = 0.05
    """Loopback audio per microphone audio off by more than this share runs at the wrong rate."""
    max_drift_ppm: float = 5000.0
    """An echo delay moving faster than this (5 ms per second; clocks drift < 0.2 ms per second) means the
    device plays at another rate than it was sent."""
    drift_span_ms: float = 4000.0
    """Delay estimates spanning at least this long are needed to judge drift."""
    recover_frames: int = 25
    """Healthy frames in a row (500 ms) that end a degraded stretch."""


def _dbfs(mean_square: float) -> float:
    return 10.0 * float(np.log10(max(mean_square, 1e-12)))


class EchoControl:
    """One session's echo cancellation: reference, delay tracker, canceller, and the fallback when input is bad."""

    def __init__(
        self,
        reference: PlayedReference | LoopbackReference,
        canceller: Canceller,
        params: EchoParams | None = None,
        initial_delay_ms: float | None = None,
        metrics: Metrics | None = None,
        log: Any = None,
    ) -> None:
        self.reference = reference
        self.ring: ReferenceRing = reference.ring
        self.canceller = canceller
        self.params = p = params or EchoParams()
        self.metrics = metrics if metrics is not None else Metrics()
        self.log = log if log is not None else get_logger(component="echo")
        self.loopback = isinstance(reference, LoopbackReference)
        self.min_delay = round((p.min_delay_ms if self.loopback else 0.0) * SAMPLES_PER_MS)
        self.max_delay = round(p.max_delay_ms * SAMPLES_PER_MS)
        self.window = round(p.window_ms * SAMPLES_PER_MS)
        self.mic = ReferenceRing(round(p.window_ms + p.max_delay_ms + 1000))
        self.delay: int | None = None if initial_delay_ms is None else round(initial_delay_ms * SAMPLES_PER_MS)
        """The echo's estimated delay behind the reference, in samples; None until found (or hinted)."""
        self.locked = False
        self.estimates: deque[tuple[float, int]] = deque(maxlen=16)
        self.next_estimate_ms: float | None = None
        self.degraded: str | None = None
        self.healthy_run = 0
        self.counts: Counter[str] = Counter()
        self.process_ms_total = 0.0
        self.process_ms_max = 0.0
        self._rate_start: tuple[int, int] | None = None  # (mic samples, reference samples) at the window's start
        self._mic_samples = 0
        self._wrong_rate = False

    # ------------------------------------------------------------ per frame

    def process(self, seq: int, pcm: bytes, now_ms: float) -> tuple[bytes, float]:
        """One pipeline frame of microphone audio: the frame to pass on and its speech gate."""
        started = time.perf_counter()
        mic = np.frombuffer(pcm, dtype="<i2")
        start = seq * FRAME_SAMPLES
        self.mic.write_at(start, mic.astype(np.float32) / 32768.0)
        self._mic_samples += len(mic)
        self.counts["frames"] += 1
        if isinstance(self.reference, LoopbackReference):
            self.reference.expire(now_ms)  # give up on a loopback frame that is not coming
        self._track(start + len(mic), now_ms)
        problem = self._problem(start + len(mic), now_ms)
        if problem is None:
            self._healthy()
        else:
            self._degrade(problem)
        if self.degraded is not None or self.delay is None or not self._has_reference(start + len(mic)):
            self.counts["passed_through"] += 1
            out, gate = pcm, 1.0
        else:
            ref_start = start - self.delay + round(self.params.lead_ms * SAMPLES_PER_MS)
            ref = self.ring.read(ref_start, len(mic))
            ref16 = np.clip(np.rint(ref * 32768.0), -32768, 32767).astype(np.int16)
            cleaned = np.asarray(self.canceller.process(mic.astype(np.int16), ref16), dtype=np.int16)
            out, gate = cleaned.astype("<i2").tobytes(), speech_gate_of(self.canceller)
            self.counts["cancelled"] += 1
        elapsed_ms = 1000.0 * (time.perf_counter() - started)
        self.process_ms_total += elapsed_ms
        self.process_ms_max = max(self.process_ms_max, elapsed_ms)
        return out, gate

    # ------------------------------------------------------------ health

    def _problem(self, mic_end: int, now_ms: float) -> str | None:
        """What is wrong with the reference for the frame ending at ``mic_end``, or None."""
        if self.loopback:
            assert isinstance(self.reference, LoopbackReference)
            tolerance_ms = self.params.late_tolerance_ms
            last = self.reference.last_write_ms
            if last is None:  # not started yet: wait for it a while before calling it stopped
                return "stopped" if self.counts["frames"] * FRAME_MS > self.params.first_reference_ms else None
            flowing = now_ms - last < tolerance_ms
            if not flowing:
                self._rate_start, self._wrong_rate = None, False  # a stop is its own problem, not a rate
            elif self._check_rate():
                return "wrong_rate"
            written = self.ring.written_until
            if written is None or mic_end - (self.delay or 0) - written > tolerance_ms * SAMPLES_PER_MS:
                return "late" if flowing else "stopped"
        elif self._drifting():
            return "wrong_rate"
        return None

    def _has_reference(self, mic_end: int) -> bool:
        """Whether the whole reference for the frame ending at ``mic_end`` is there (a loopback one may lag)."""
        if not self.loopback:
            return True
        written = self.ring.written_until
        lead = round(self.params.lead_ms * SAMPLES_PER_MS)
        return written is not None and written >= mic_end - (self.delay or 0) + lead

    def _check_rate(self) -> bool:
        """Whether, over the last full window, loopback audio came at another rate than microphone audio."""
        written = self.ring.total_written
        if self._rate_start is None:
            self._rate_start = (self._mic_samples, written)
            return self._wrong_rate
        mic0, ref0 = self._rate_start
        mic_span = self._mic_samples - mic0
        if mic_span >= self.params.rate_window_ms * SAMPLES_PER_MS:
            ratio = (written - ref0) / mic_span
            self._wrong_rate = abs(ratio - 1.0) > self.params.rate_tolerance
            self._rate_start = (self._mic_samples, written)
        return self._wrong_rate

    def _drifting(self) -> bool:
        """Whether confident delay estimates move faster than a clock's drift could explain."""
        if len(self.estimates) < 3:
            return False
        times = np.array([t for t, _ in self.estimates])
        if times[-1] - times[0] < self.params.drift_span_ms:
            return False
        delays_ms = np.array([d for _, d in self.estimates]) / SAMPLES_PER_MS
        slope = float(np.polyfit(times - times[0], delays_ms, 1)[0])  # ms of delay per ms of time
        return abs(slope) * 1e6 > self.params.max_drift_ppm

    def _degrade(self, reason: str) -> None:
        self.healthy_run = 0
        self.counts[f"frames_{reason}"] += 1
        if self.degraded == reason:
            return
        self.degraded = reason
        self.counts[f"degraded_{reason}"] += 1
        self.metrics.incr("echo.degraded", reason=reason)
        self.log.warning(
            "echo_reference_degraded",
            reason=reason,
            mode="loopback" if self.loopback else "server",
            action="microphone passes without echo cancellation",
        )

    def _healthy(self) -> None:
        if self.degraded is None:
            return
        self.healthy_run += 1
        if self.healthy_run >= self.params.recover_frames:
            self.log.info("echo_reference_recovered", reason=self.degraded)
            self.metrics.incr("echo.recovered", reason=self.degraded)
            self.degraded = None
            self.canceller.reset()  # what it learnt may belong to another alignment

    # ------------------------------------------------------------ the delay

    def _track(self, mic_end: int, now_ms: float) -> None:
        """Estimate the echo delay now and then, and move the reference when it changed."""
        p = self.params
        if self.next_estimate_ms is None:
            self.next_estimate_ms = now_ms + p.search_every_ms
            return
        if now_ms < self.next_estimate_ms:
            return
        self.next_estimate_ms = now_ms + (p.track_every_ms if self.locked else p.search_every_ms)
        mic_start = mic_end - self.window
        ref_start = mic_start - self.max_delay
        ref = self.ring.read(ref_start, self.window + self.max_delay - self.min_delay)
        if _dbfs(float(np.mean(ref * ref))) < p.active_reference_dbfs:
            return
        estimate = gcc_phat_delay(
            self.mic.read(mic_start, self.window), ref, self.min_delay, self.max_delay, INPUT_SAMPLE_RATE_HZ
        )
        self.counts["estimates"] += 1
        if estimate.confidence < p.min_confidence:
            return
        self.counts["confident_estimates"] += 1
        self.estimates.append((now_ms, estimate.delay_samples))
        self.locked = True
        if self.delay is None or abs(estimate.delay_samples - self.delay) > p.realign_ms * SAMPLES_PER_MS:
            if self.delay is not None:
                self.counts["realigned"] += 1
            self.delay = estimate.delay_samples
            self.log.info("echo_delay", delay_ms=round(self.delay / SAMPLES_PER_MS, 1), confidence=estimate.confidence)

    # ------------------------------------------------------------ reports

    def stats(self) -> dict[str, Any]:
        """Counts and figures for the transport's stats (the MQTT ``stats`` event's ``echo``)."""
        frames = self.counts["frames"]
        return {
            "mode": "loopback" if self.loopback else "server",
            "delay_ms": None if self.delay is None else round(self.delay / SAMPLES_PER_MS, 1),
            "locked": self.locked,
            "degraded": self.degraded,
            "frames": frames,
            "cancelled": self.counts["cancelled"],
            "passed_through": self.counts["passed_through"],
            "degraded_episodes": {
                key.removeprefix("degraded_"): n for key, n in self.counts.items() if key.startswith("degraded_")
            },
            "process_ms_mean": round(self.process_ms_total / frames, 3) if frames else 0.0,
            "process_ms_max": round(self.process_ms_max, 3),
            "frame_ms": FRAME_MS,
        }
