"""Echo cancellation for one session, between the inbound audio and the VAD: alignment, health, fallback.

Theory of operation
-------------------
The transport hands each 16 kHz, 20 ms microphone frame (numbered in session
time) to :meth:`EchoControl.process` before it becomes an ``AudioFrame``. The
reference (:mod:`duplexer.protocols.echo_reference`) holds what the loudspeaker
was given, on the same time axis. Between the two lie the network, the device's
playout buffer and the room, a delay that drifts with the device's clock, so:

- A delay tracker (the project's GCC-PHAT
  :class:`~duplexer.kernels.echo_delay.DelayEstimator`, over the last second,
  twice a second) finds the echo's delay behind the reference, up to
  ``max_delay_ms``. The reference the canceller sees is moved so that the echo
  comes ``canceller_delay_ms`` after it, well inside the delay the canceller
  finds and follows by itself (the device's clock drift); it is moved again
  only when the echo leaves ``canceller_window_ms``. Until the tracker has an
  estimate, a playout delay the device declared places it; or else nothing
  does, and the canceller learns in its own range while the microphone passes
  as it came (no output, no gate is trusted before the echo is found). A
  loopback reference needs none of this: it is numbered like the microphone.
- The canceller (:class:`Canceller`) subtracts the echo and says whether the
  frame's speech may be the user's (``user_speech_likely``: false while the bot
  speaks and nothing stands out from its residual echo by the margin it learned
  from the echo path). That gate travels on the ``AudioFrame`` to the VAD.

Bad reference input never silences the user: a loopback reference that stops,
arrives late or runs at the wrong rate, a device whose echo drifts faster than
any clock would (``wrong_rate``), or one whose echo is not found in seconds of
bot speech (``not_found``: it plays late, not at all, or something else) turns
cancellation off (the microphone passes unchanged, gate 1) with a structured
warning (``echo_reference_degraded``) and a counter (``echo.degraded`` by
reason) until the reference is healthy again.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from duplexer.kernels.echo_delay import DELAY_INTERVAL_FRAMES, DelayEstimator
from duplexer.protocols.echo_reference import SAMPLES_PER_MS, LoopbackReference, PlayedReference, ReferenceRing
from duplexer.runtime.events import FRAME_MS, FRAME_SAMPLES, INPUT_SAMPLE_RATE_HZ
from duplexer.runtime.logging import get_logger
from duplexer.runtime.metrics import Metrics


class Canceller(Protocol):
    """An acoustic echo canceller on 16 kHz, 20 ms int16 frames (:mod:`duplexer.kernels.echo_cancel`)."""

    def process(self, mic: np.ndarray, ref: np.ndarray) -> np.ndarray: ...

    def reset(self) -> None: ...


CancellerFactory = Callable[[], Canceller]


def speech_gate_of(canceller: Canceller) -> float:
    """The canceller's speech gate for its last frame: 0 when only its residual echo is left, else 1."""
    return 1.0 if getattr(canceller, "user_speech_likely", True) else 0.0


@dataclass(frozen=True)
class EchoParams:
    """Every setting of the alignment and the fallback, with defaults in one place."""

    max_delay_ms: float = 600.0
    """Longest echo delay searched: network both ways, the device's playout buffer and the room."""
    canceller_delay_ms: float = 60.0
    """Where the echo is put behind the reference the canceller sees, once its delay is known."""
    canceller_window_ms: tuple[float, float] = (10.0, 300.0)
    """The echo may drift within this much behind the canceller's reference before the reference is moved:
    inside the delay the canceller finds by itself (400 ms), so it follows small drift without a jump."""
    active_reference_dbfs: float = -50.0
    """Reference frames at least this loud count as bot speech."""
    not_found_after_ms: float = 5000.0
    """Bot speech after which an echo never found (or lost) means the reference is not what the device plays."""
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
    drift_span_ms: float = 2000.0
    """Delay estimates spanning at least this long are needed to judge drift."""
    drift_estimates: int = 8
    """Most recent delay estimates the drift is judged on."""
    recover_frames: int = 25
    """Healthy frames in a row (500 ms) that end a degraded stretch."""
    idle_after_ms: float = 2000.0
    """The canceller rests (the microphone passes, ungated, at no cost) once the reference has been
    silent this long: longer than the echo's delay and the room's reverberation, so no echo is left."""


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
        self.tracker = DelayEstimator(INPUT_SAMPLE_RATE_HZ, FRAME_SAMPLES, round(p.max_delay_ms * SAMPLES_PER_MS))
        self.tracker.frames = DELAY_INTERVAL_FRAMES // 2  # its estimates fall between the canceller's own
        self.delay: int | None = None if initial_delay_ms is None else round(initial_delay_ms * SAMPLES_PER_MS)
        """The echo's delay behind the reference, in samples: estimated, or declared; None while unknown."""
        self.shift = 0 if self.delay is None else self._shift_for(self.delay)
        """How far behind the microphone the canceller's reference is read, in samples."""
        self.locked = False
        self.declared = initial_delay_ms is not None or self.loopback
        """Where the echo is was declared (a device's playout delay, a loopback's numbering): its output and
        gate are used from the first frame; otherwise only once the echo has been found."""
        self.estimates: deque[tuple[float, int]] = deque(maxlen=p.drift_estimates)
        self.active_ms = 0.0
        """Bot speech in the reference since the echo was last confirmed (or since the start)."""
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
        self.counts["frames"] += 1
        self._mic_samples += len(mic)
        sounding = self.ring.sounding_until
        idle = sounding is None or start - sounding > self.params.idle_after_ms * SAMPLES_PER_MS
        if isinstance(self.reference, LoopbackReference):
            self.reference.expire(now_ms)  # give up on a loopback frame that is not coming
        elif not idle:
            self._track(mic, self.ring.read(start, len(mic)), now_ms)
        problem = self._problem(start + len(mic), now_ms)
        if problem is None:
            self._healthy()
        else:
            self._degrade(problem)
        if idle and self.degraded is None:
            self.counts["idle"] += 1
            out, gate = pcm, 1.0
        elif self.degraded is not None or not self._has_reference(start + len(mic)):
            self.counts["passed_through"] += 1
            out, gate = pcm, 1.0
        else:
            ref = self.ring.read(start - self.shift, len(mic))
            ref16 = np.clip(np.rint(ref * 32768.0), -32768, 32767).astype(np.int16)
            cleaned = np.asarray(self.canceller.process(mic.astype(np.int16), ref16), dtype=np.int16)
            if self.locked or self.declared:
                out, gate = cleaned.astype("<i2").tobytes(), speech_gate_of(self.canceller)
                self.counts["cancelled"] += 1
            else:  # it learns, but nothing says yet that this reference is what the microphone hears
                out, gate = pcm, 1.0
                self.counts["learning"] += 1
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
            if written is None or mic_end - self.shift - written > tolerance_ms * SAMPLES_PER_MS:
                return "late" if flowing else "stopped"
        elif self._drifting():
            return "wrong_rate"
        elif self.active_ms > self.params.not_found_after_ms:
            return "not_found"
        return None

    def _has_reference(self, mic_end: int) -> bool:
        """Whether the whole reference for the frame ending at ``mic_end`` is there (a loopback one may lag)."""
        if not self.loopback:
            return True
        written = self.ring.written_until
        return written is not None and written >= mic_end - self.shift

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
        delays_ms = np.array([d for _, d in self.estimates]) / SAMPLES_PER_MS
        steps = np.diff(delays_ms)
        if times[-1] - times[0] < self.params.drift_span_ms or not (np.all(steps > 0) or np.all(steps < 0)):
            return False  # too short to tell, or a jump (a device re-buffering) rather than a steady drift
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

    def _shift_for(self, delay: int) -> int:
        return max(0, delay - round(self.params.canceller_delay_ms * SAMPLES_PER_MS))

    def _track(self, mic: np.ndarray, ref: np.ndarray, now_ms: float) -> None:
        """Estimate the echo's delay now and then; move the canceller's reference when the echo left its window."""
        p = self.params
        if _dbfs(float(np.mean(ref.astype(np.float64) ** 2))) >= p.active_reference_dbfs:
            self.active_ms += FRAME_MS
        estimates = self.tracker.estimates
        delay = self.tracker.push(mic.astype(np.float64) / 32768.0, ref.astype(np.float64))
        if delay is None or self.tracker.estimates == estimates or self.tracker.candidate != delay:
            return  # no new estimate, or one that does not confirm the delay
        self.counts["confident_estimates"] += 1
        self.estimates.append((now_ms, delay))
        self.locked, self.active_ms, self.delay = True, 0.0, delay
        low, high = (round(ms * SAMPLES_PER_MS) for ms in p.canceller_window_ms)
        if not low <= delay - self.shift <= high:
            self.counts["realigned"] += 1
            self.shift = self._shift_for(delay)
            self.log.info("echo_delay", delay_ms=delay / SAMPLES_PER_MS, shift_ms=self.shift / SAMPLES_PER_MS)

    # ------------------------------------------------------------ reports

    def stats(self) -> dict[str, Any]:
        """Counts and figures for the transport's stats (the MQTT ``stats`` event's ``echo``)."""
        frames = self.counts["frames"]
        canceller_stats = getattr(self.canceller, "stats", None)
        return {
            "mode": "loopback" if self.loopback else "server",
            "delay_ms": None if self.delay is None else round(self.delay / SAMPLES_PER_MS, 1),
            "shift_ms": round(self.shift / SAMPLES_PER_MS, 1),
            "locked": self.locked,
            "degraded": self.degraded,
            "frames": frames,
            "cancelled": self.counts["cancelled"],
            "passed_through": self.counts["passed_through"],
            "idle": self.counts["idle"],
            "learning": self.counts["learning"],
            "playout_reports": self.counts["playout_reports"],
            "degraded_episodes": {
                key.removeprefix("degraded_"): n for key, n in self.counts.items() if key.startswith("degraded_")
            },
            "erle_total_db": _rounded(getattr(canceller_stats, "erle_total_db", None)),
            "erle_linear_db": _rounded(getattr(canceller_stats, "erle_linear_db", None)),
            "drift_ppm": _rounded(getattr(canceller_stats, "drift_ppm", None)),
            "process_ms_mean": round(self.process_ms_total / frames, 3) if frames else 0.0,
            "process_ms_max": round(self.process_ms_max, 3),
            "frame_ms": FRAME_MS,
        }


def _rounded(value: Any) -> float | None:
    return round(float(value), 1) if isinstance(value, (int, float)) else None
