"""Acoustic echo cancellation for one session: the bot's own playout is the reference.

Interface (stable; one :class:`EchoCanceller` per session, 16 kHz mono, 20 ms frames)::

    aec = EchoCanceller(sample_rate=16000, frame_samples=320, tail_ms=200, max_delay_ms=400)
    out = aec.process(mic, ref)     # int16[frame_samples] each -> int16[frame_samples]
    aec.user_speech_likely          # gate for the VAD: False while the bot speaks and nothing
                                    # stands out from the residual echo by the learned margin
    aec.gate_probability(p)         # the VAD's speech probability, gated (0.0 when not likely)
    aec.stats                       # EchoStats: ERLE (linear, total), double-talk, levels, delay, drift
    aec.reset()

``ref`` is the audio the bot played for the same 20 ms as ``mic`` (zeros while the bot is
silent), aligned by the caller to the device's clock to within ``max_delay_ms``: the canceller
finds the rest of the delay itself (:mod:`duplexer.kernels.echo_delay`) and follows slow drift.
The output lags the microphone by ``latency_samples`` (10 ms, the suppressor's overlap-add).

How it works (docs/echo.md has the figures):

1. **Linear filter**: a partitioned-block frequency-domain adaptive filter (Speex's MDF design,
   :mod:`duplexer.kernels.echo_filter`) of ``tail_ms`` after the estimated bulk delay, with two
   copies: the background filter always adapts, the foreground filter (the one whose echo is
   subtracted) takes the background's weights only when it is measurably better, and the
   background falls back to the foreground when it diverges. Double-talk cannot drag the
   output filter along with it.
2. **Step size**: the optimal NLMS rate per bin from the estimated residual echo (the "leak",
   the regression of error power on echo-estimate power), so near-end speech lowers it; a
   double-talk detector (near-end stands out of the residual by the learned margin) slows it
   tenfold more. Adaptation never stops, so a changed echo path is learned again.
3. **Never amplifies**: a frame whose linear error is louder than the microphone is passed
   through unfiltered, and the suppressor's gains are at most 1.
4. **Residual echo suppression**: on a 20 ms window / 10 ms hop STFT, the residual echo per bin
   is the leak times the echo estimate's power, held over a reverberant decay; spectral
   subtraction of twice that, floored at ``suppression_floor_db``.
5. **Echo-aware gate**: while the reference carries sound, the linear error's power is compared
   with the predicted residual (leak x echo estimate + the still-unmodelled coupling x reference
   power + noise). The margin it must exceed is learned from the echo path: the running 98th
   percentile of that ratio over bot-speech frames (frames more than 6 dB above it, clear near-end
   speech, are left out), plus 3 dB (plus up to 10 dB over the first 8 s of bot speech, while
   the filter converges). The gate holds open 120 ms after
   the last frame above it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from duplexer.kernels.echo_delay import DelayEstimator, DriftCompensator
from duplexer.kernels.echo_filter import KERNELS, POWER_FLOOR, Backend

FloatArray = npt.NDArray[np.float64]
Int16Array = npt.NDArray[np.int16]

AEC_SAMPLE_RATE = 16_000
AEC_FRAME_SAMPLES = 320
"""The pipeline's inbound frame: 20 ms at 16 kHz."""
AEC_TAIL_MS = 200
"""Echo tail the linear filter models after the bulk delay; later reverberation is suppressed."""
AEC_MAX_DELAY_MS = 400
"""Largest device delay the canceller searches for."""
PRE_DELAY_MS = 4.0
"""Filter taps kept before the estimated direct path, so drift towards shorter delays stays inside."""
REALIGN_MS = 3.0
"""A new delay estimate further than this from the current bulk delay shifts the filter."""
MU_MAX = 0.5
DOUBLE_TALK_MU_SCALE = 0.1
INITIAL_RATE = 0.25
"""NLMS rate until the filter has adapted enough for the leak estimate to steer it."""
SUPPRESSION_OVER = 3.0
SUPPRESSION_FLOOR_DB = -40.0
REVERB_DECAY_PER_HOP = 0.75
"""Residual echo power held from one 10 ms hop to the next: a decay of ~1.2 dB per 10 ms."""
GATE_QUANTILE = 0.98
GATE_QUANTILE_STEP_DB = 0.1
GATE_LEARN_SPAN_DB = 6.0
GATE_EXTRA_DB = 3.0
GATE_INITIAL_MARGIN_DB = 6.0
GATE_MARGIN_RANGE_DB = (0.0, 20.0)
GATE_STARTUP_EXTRA_DB = 10.0
GATE_STARTUP_FRAMES = 400
"""While the filter is still converging (its first 8 s of bot speech) the margin is higher, by 10 dB
at first and nothing after 400 frames: the residual is least predictable then."""
GATE_HOLD_FRAMES = 6
REF_ACTIVE_POWER = 1e-7
"""Mean square of the reference above which the bot counts as speaking (-70 dBFS)."""
COUPLING_INITIAL = 1.0
"""Unmodelled echo coupling assumed before any is measured: echo as loud as the reference."""
STATS_SMOOTHING = 0.05
COUPLING_FALL = 0.1
COUPLING_BLOCKS = 4
"""The per-bin coupling compares the error with the loudest of the last 4 reference blocks (80 ms)."""
COUPLING_EXCITED = 1e-4
"""Bins more than 40 dB under the reference's loudest learn no coupling (nothing to learn from)."""
COUPLING_RISE = 0.003
NOISE_PSD_SMOOTHING = 0.8
NOISE_RISE_PER_HOP = 1.003
"""The noise floor follows the smoothed spectrum's minimum and rises ~1.3 dB/s."""
BAND_SMOOTHING = 0.9
BAND_NOISE_BIAS = 2.5
"""The band's noise floor (minimum of its smoothed power) sits ~4 dB under the power of a noise-only
frame; the gate measures against the floor times this."""
NOISE_BIAS = 1.5
"""A smoothed spectrum's minimum sits below its mean; this brings the floor back up."""
LEAK_FLOOR = 0.03
"""The residual echo is never predicted below 3% (-15 dB) of the echo estimate's power: a stretch
of echo unlike what the filter learned from is not taken for the user."""
BIN_LEAK_FALL = 0.2
BIN_LEAK_RISE = 0.01
"""Per frame, each bin's leak follows the measured share of echo left in the error: fast down, slowly
up, so near-end speech the double-talk detector missed barely raises it."""


@dataclass(frozen=True)
class EchoStats:
    """Read-only figures of one canceller, updated every frame."""

    erle_linear_db: float
    """Echo return loss enhancement of the linear filter (mic / linear error power, bot-only frames)."""
    erle_total_db: float
    """ERLE after residual suppression (mic / output power, bot-only frames)."""
    double_talk: bool
    """The latest frame held near-end speech over the bot's (adaptation slowed)."""
    ref_active: bool
    """The bot's audio was heard in the latest frame (or within the delay window)."""
    residual_db: float
    """Predicted residual echo power in the linear error, dBFS."""
    gate_margin_db: float
    """How far above the predicted residual a frame must be to count as the user's."""
    delay_ms: float | None
    """Estimated bulk delay of the echo; None until found."""
    drift_ppm: float
    """Fitted clock drift the reference is being compensated for (0 until 4 s of delay estimates)."""
    frames: int


def _db(power: float) -> float:
    return float(10.0 * np.log10(max(power, 1e-12)))


class EchoCanceller:
    """One session's echo canceller: int16 frames of microphone and reference in, int16 out."""

    def __init__(
        self,
        sample_rate: int = AEC_SAMPLE_RATE,
        frame_samples: int = AEC_FRAME_SAMPLES,
        tail_ms: int = AEC_TAIL_MS,
        max_delay_ms: int = AEC_MAX_DELAY_MS,
        suppression_floor_db: float = SUPPRESSION_FLOOR_DB,
        backend: Backend = "numba",
    ) -> None:
        if sample_rate <= 0 or frame_samples <= 0 or frame_samples % 2 or tail_ms <= 0 or max_delay_ms < 0:
            raise ValueError("echo canceller needs a positive rate, an even frame size and a positive tail")
        self.sample_rate = sample_rate
        self.n = frame_samples
        self.partitions = max(1, int(np.ceil(tail_ms * sample_rate / 1000 / frame_samples)))
        self.max_delay = int(max_delay_ms * sample_rate / 1000)
        self.pre_delay = int(PRE_DELAY_MS * sample_rate / 1000)
        self.realign = int(REALIGN_MS * sample_rate / 1000)
        self.floor = 10.0 ** (suppression_floor_db / 20.0)
        self.hop = frame_samples // 2
        self.latency_samples = self.hop
        self._echo_spectrum, self._gradient, self._step_sizes, self._gain = KERNELS[backend]
        self._window = np.sqrt(np.hanning(2 * self.hop + 1)[:-1])  # periodic sqrt-Hann: a tight frame at 50%
        self.reset()

    # ------------------------------------------------------------------ state

    def reset(self) -> None:
        n, m = self.n, self.partitions
        bins = n + 1
        self.ring = np.zeros(self.max_delay + (m + 2) * n)  # raw reference, newest last
        self.bulk = 0
        self.delay = DelayEstimator(self.sample_rate, n, self.max_delay)
        self.drift = DriftCompensator()
        self.history = np.zeros((m, bins), dtype=np.complex128)
        self.w_fg = np.zeros((m, bins), dtype=np.complex128)
        self.w_bg = np.zeros((m, bins), dtype=np.complex128)
        self.ref_power = np.zeros(bins)
        self.e_smooth = np.zeros(bins)
        self.y_smooth = np.zeros(bins)
        self.pey = 1e-12
        self.pyy = 1e-12
        self.leak = 1.0
        self.bin_leak = np.ones(bins)
        self.adapted = 0.0  # sum of early fixed rates; the optimal-rate control takes over past partitions
        self.residual_ratio = 0.5
        self.davg1 = self.davg2 = self.dvar1 = self.dvar2 = 0.0
        self.coupling = COUPLING_INITIAL
        self.bin_coupling = np.full(bins, COUPLING_INITIAL)
        self.ref_spec = np.zeros(bins)
        self.noise = np.full(self.hop + 1, 1e3)  # falls to the first frames' level at once
        self.psd = np.zeros(self.hop + 1)
        self.band = 0.0
        self.band_noise = 1e3
        self.noise_frames = 0
        self.res_prev = np.zeros(self.hop + 1)
        self.e_tail = np.zeros(self.hop)  # last half-window of linear error / echo estimate, for the STFT
        self.y_tail = np.zeros(self.hop)
        self.ola = np.zeros(self.hop)
        self.margin_db = GATE_INITIAL_MARGIN_DB
        self.quantile_db = GATE_INITIAL_MARGIN_DB - GATE_EXTRA_DB
        self.hold = 0
        self.frames = 0
        self.ref_env = np.zeros(max(1, self.max_delay // n + 2))
        self.mic_avg = self.lin_avg = self.out_avg = 0.0
        self.double_talk = False
        self.gate_ratio_db = 0.0
        self.active_frames = 0  # frames of bot speech heard so far
        self.ref_active = False
        self.residual_power = 0.0
        self.passthrough_frames = 0
        self.linear_frame = np.zeros(self.n)
        """The latest frame after the linear filter alone (float, full scale 1.0; not delayed)."""

    # ------------------------------------------------------------------ public

    @property
    def user_speech_likely(self) -> bool:
        """False while the bot speaks and nothing in the last 120 ms stood out from its echo."""
        return not self.ref_active or self.hold > 0

    def gate_probability(self, probability: float) -> float:
        """The VAD's speech probability for the latest frame, gated by :attr:`user_speech_likely`."""
        return probability if self.user_speech_likely else 0.0

    def compile_kernels(self) -> None:
        """Run each per-bin kernel once on tiny inputs of the types :meth:`process` passes, so numba compiles
        (or loads from its cache) all four now: silent frames reach only one of them, bot speech the others."""
        spectra, powers = np.zeros((1, 2), dtype=np.complex128), np.zeros(2)
        self._echo_spectrum(spectra, spectra)
        self._gradient(spectra, spectra[0], powers)
        self._step_sizes(powers, powers, powers, powers, 0.5, 1, MU_MAX)
        self._gain(powers, powers, powers, SUPPRESSION_OVER, self.floor)

    @property
    def stats(self) -> EchoStats:
        return EchoStats(
            erle_linear_db=_db(self.mic_avg) - _db(self.lin_avg),
            erle_total_db=_db(self.mic_avg) - _db(self.out_avg),
            double_talk=self.double_talk,
            ref_active=self.ref_active,
            residual_db=_db(self.residual_power),
            gate_margin_db=self.margin_db,
            delay_ms=None if self.delay.delay is None else 1000.0 * self.delay.delay / self.sample_rate,
            drift_ppm=self.delay.drift * 1e6,
            frames=self.frames,
        )

    def process(self, mic: Int16Array, ref: Int16Array) -> Int16Array:
        """One frame: ``mic`` and ``ref`` int16 of ``frame_samples`` -> the cancelled int16 frame."""
        n = self.n
        if len(mic) != n or len(ref) != n:
            raise ValueError(f"echo canceller frames are {n} samples, got {len(mic)} and {len(ref)}")
        d = np.asarray(mic, dtype=np.float64) / 32768.0
        x_raw = np.asarray(ref, dtype=np.float64) / 32768.0
        if not (np.all(np.isfinite(d)) and np.all(np.isfinite(x_raw))):
            raise ValueError("echo canceller frames must be finite")
        self.frames += 1
        lag = self.delay.push(d, x_raw)
        self.drift.rate = self.delay.drift
        self.ring[:-n] = self.ring[n:]  # in place: the ring is ~10k samples
        self.ring[-n:] = self.drift.push(x_raw)
        if lag is not None:  # the lag of the echo behind the drift-compensated reference
            target = max(0, lag - round(self.drift.phase) - self.pre_delay)
            if abs(target - self.bulk) > self.realign:
                self._realign(target)
        x_prev, x = self._ref_block(0), self._ref_block(1)
        self.history[1:] = self.history[:-1]  # in place, oldest block dropped
        self.history[0] = np.fft.rfft(np.concatenate([x_prev, x]))
        sdd = float(d @ d)
        sxx = float(x @ x)
        e_fg, y_fg = self._filter(self.w_fg, d)
        e_bg, _ = self._filter(self.w_bg, d)
        e_fg, e_bg = self._foreground_background(d, e_fg, e_bg)
        see = float(e_fg @ e_fg)
        if see > sdd:  # the filter would add energy: pass the microphone through
            e_fg, y_fg, see = d.copy(), np.zeros(n), sdd
            self.passthrough_frames += 1
        spec_e = np.fft.rfft(np.concatenate([np.zeros(n), e_fg]))
        spec_y = np.fft.rfft(np.concatenate([np.zeros(n), y_fg]))
        e_pow, y_pow = np.abs(spec_e) ** 2, np.abs(spec_y) ** 2
        self._update_leak(e_pow, y_pow, see, float(y_fg @ y_fg), sxx)
        self._reference_activity(see, e_pow, y_pow)
        self.linear_frame = e_fg
        out, residual = self._suppress(e_fg, y_fg)
        self._gate(float(out @ out), residual)
        self._adapt(x, e_bg, e_pow, y_pow)
        self._track(sdd, see, float(out @ out))
        return np.clip(np.round(out * 32768.0), -32768, 32767).astype(np.int16)

    # ------------------------------------------------------------------ steps

    def _ref_block(self, back: int) -> FloatArray:
        """The reference block ``back`` blocks before the newest, delayed by the bulk delay (1 = newest)."""
        end = len(self.ring) - self.bulk - (1 - back) * self.n
        return self.ring[end - self.n : end]

    def _realign(self, target: int) -> None:
        """Move the filters' taps by the change of bulk delay and rebuild the reference history."""
        shift = target - self.bulk
        n, m = self.n, self.partitions
        for w in (self.w_fg, self.w_bg):
            taps = np.fft.irfft(w, axis=1)[:, :n].reshape(-1)
            moved = np.zeros_like(taps)
            if shift >= 0:
                moved[: len(taps) - shift] = taps[shift:] if shift < len(taps) else 0.0
            else:
                moved[-shift:] = taps[: len(taps) + shift] if -shift < len(taps) else 0.0
            blocks = np.concatenate([moved.reshape(m, n), np.zeros((m, n))], axis=1)
            w[:] = np.fft.rfft(blocks, axis=1)
        self.bulk = min(target, self.max_delay)
        if abs(shift) > n:  # a new echo path, not drift: start adapting again at the start-up rate
            self.adapted = 0.0
        for i in range(m):  # history[i]: the block i frames back and the one before it
            end = len(self.ring) - self.bulk - i * n
            self.history[i] = np.fft.rfft(self.ring[end - 2 * n : end])

    def _filter(self, weights: npt.NDArray[np.complex128], d: FloatArray) -> tuple[FloatArray, FloatArray]:
        y = np.fft.irfft(self._echo_spectrum(weights, self.history), 2 * self.n)[self.n :]
        return d - y, y

    def _foreground_background(
        self, d: FloatArray, e_fg: FloatArray, e_bg: FloatArray
    ) -> tuple[FloatArray, FloatArray]:
        """Speex's two-filter rule: copy the background into the foreground when it is reliably better,
        reset the background to the foreground when it is reliably worse."""
        sff, see = float(e_fg @ e_fg), float(e_bg @ e_bg)
        diff = e_fg - e_bg
        dbf = float(diff @ diff) + 1e-12
        delta = sff - see
        self.davg1 = 0.6 * self.davg1 + 0.4 * delta
        self.davg2 = 0.85 * self.davg2 + 0.15 * delta
        self.dvar1 = 0.36 * self.dvar1 + 0.16 * sff * dbf
        self.dvar2 = 0.7225 * self.dvar2 + 0.0225 * sff * dbf
        better = (
            delta * abs(delta) > sff * dbf
            or self.davg1 * abs(self.davg1) > 0.5 * self.dvar1
            or self.davg2 * abs(self.davg2) > 0.25 * self.dvar2
        )
        if better:
            self.w_fg[:] = self.w_bg
            self.davg1 = self.davg2 = self.dvar1 = self.dvar2 = 0.0
            return e_bg, e_bg
        worse = (
            -delta * abs(delta) > 4.0 * sff * dbf
            or -self.davg1 * abs(self.davg1) > 4.0 * self.dvar1
            or -self.davg2 * abs(self.davg2) > 4.0 * self.dvar2
        )
        if worse:
            self.w_bg[:] = self.w_fg
            self.davg1 = self.davg2 = self.dvar1 = self.dvar2 = 0.0
            return e_fg, e_fg
        return e_fg, e_bg

    def _update_leak(self, e_pow: FloatArray, y_pow: FloatArray, see: float, syy: float, sxx: float) -> None:
        """The leak (share of the echo estimate's power left in the error) and the residual-to-error
        ratio, as Speex's MDF estimates them."""
        ss = 0.35 / self.partitions
        self.e_smooth = (1 - ss) * self.e_smooth + ss * e_pow
        self.y_smooth = (1 - ss) * self.y_smooth + ss * y_pow
        de, dy = e_pow - self.e_smooth, y_pow - self.y_smooth
        alpha = min(0.5, 0.05 * syy / (see + POWER_FLOOR)) if syy > 0 else 0.0
        self.pey = (1 - alpha) * self.pey + alpha * float(de @ dy)
        self.pyy = (1 - alpha) * self.pyy + alpha * float(dy @ dy)
        self.pyy = max(self.pyy, POWER_FLOOR)
        self.pey = max(self.pey, 0.0005 * self.pyy)
        self.leak = min(1.0, self.pey / self.pyy)
        if self.ref_active and self.hold == 0 and syy > 0:  # no near-end speech within the hold
            measured = np.minimum(e_pow / (y_pow + POWER_FLOOR), 1.0)
            rate = np.where(measured > self.bin_leak, BIN_LEAK_RISE, BIN_LEAK_FALL)
            self.bin_leak += rate * (measured - self.bin_leak)
        ratio = (0.0001 * sxx + 3.0 * self.leak * syy) / (see + POWER_FLOOR)
        self.residual_ratio = min(0.5, ratio)

    def _reference_activity(self, see: float, e_pow: FloatArray, y_pow: FloatArray) -> None:
        """Is the bot's echo (possibly) in this frame, and how much of it is not modelled yet?"""
        n = self.n
        ref_now = float(self.ring[-n:] @ self.ring[-n:]) / n
        self.ref_env[1:] = self.ref_env[:-1]
        self.ref_env[0] = ref_now
        recent = self._recent_ref_power()
        self.ref_active = recent > REF_ACTIVE_POWER
        delayed = self._delayed_ref_power()
        if self.ref_active and self.hold == 0 and delayed > REF_ACTIVE_POWER:  # the unmodelled coupling
            modelled = float(self.bin_leak @ y_pow) / n
            r = min(max(see - modelled, 0.0) / (delayed * n), COUPLING_INITIAL)
            rate = COUPLING_RISE if r > self.coupling else COUPLING_FALL
            self.coupling += rate * (r - self.coupling)
        # Per bin, once the delay is known: the echo the filter does not model yet in each band (a sound
        # unlike what it learned from, say a first hiss after vowels), relative to the recent reference.
        self.ref_spec = (np.abs(self.history[:COUPLING_BLOCKS]) ** 2).max(axis=0)
        if self.delay.delay is not None and self.ref_active and self.hold == 0:
            excited = self.ref_spec > COUPLING_EXCITED * max(float(self.ref_spec.max()), POWER_FLOOR)
            r_bins = np.minimum(
                np.maximum(e_pow - self.bin_leak * y_pow, 0.0) / (self.ref_spec + POWER_FLOOR), COUPLING_INITIAL
            )
            rate_bins = np.where(r_bins > self.bin_coupling, COUPLING_RISE, COUPLING_FALL) * excited
            self.bin_coupling += rate_bins * (r_bins - self.bin_coupling)

    def _gate(self, out_power: float, residual_power: float) -> None:
        """Double-talk detector and echo-aware gate: does the suppressed output stand out of the
        predicted residual echo by the learned margin?"""
        self.residual_power = residual_power / self.n
        if not self.ref_active:
            self.double_talk = False
            self.hold = 0
            self.gate_ratio_db = 0.0
            return
        ratio_db = _db(out_power) - _db(residual_power)
        self.gate_ratio_db = ratio_db
        self.active_frames += 1
        startup = GATE_STARTUP_EXTRA_DB * max(0.0, 1.0 - self.active_frames / GATE_STARTUP_FRAMES)
        self.double_talk = ratio_db > self.margin_db + startup
        if self.double_talk:
            self.hold = GATE_HOLD_FRAMES
        elif self.hold > 0:
            self.hold -= 1
        # The margin: a running high quantile of the ratio over bot-speech frames, plus a safety margin;
        # frames far above the margin (clear near-end speech) do not move it.
        if ratio_db < self.quantile_db + GATE_LEARN_SPAN_DB:
            up = ratio_db > self.quantile_db
            self.quantile_db += GATE_QUANTILE_STEP_DB * (GATE_QUANTILE if up else GATE_QUANTILE - 1.0)
        lo, hi = GATE_MARGIN_RANGE_DB
        self.margin_db = float(np.clip(self.quantile_db + GATE_EXTRA_DB, lo, hi))

    def _adapt(self, x: FloatArray, e_bg: FloatArray, e_pow: FloatArray, y_pow: FloatArray) -> None:
        n = self.n
        ss = 0.35 / self.partitions
        self.ref_power = (1 - ss) * self.ref_power + ss * np.abs(self.history[0]) ** 2
        if not np.any(x):
            return
        if self.adapted < self.partitions:  # start-up: a fixed rate, lower while the error is not echo
            sxx, see = float(x @ x), float(e_bg @ e_bg)
            rate = INITIAL_RATE * min(1.0, sxx / (see + POWER_FLOOR)) if sxx > 0 else 0.0
            self.adapted += rate
            step = rate / (self.partitions * self.ref_power + POWER_FLOOR)
        else:
            step = self._step_sizes(e_pow, y_pow, self.ref_power, self.bin_leak, self.residual_ratio, 1, MU_MAX)
            step = step / self.partitions
        if self.double_talk:
            step = step * DOUBLE_TALK_MU_SCALE
        spec_e = np.fft.rfft(np.concatenate([np.zeros(n), e_bg]))
        grad = np.fft.irfft(self._gradient(self.history, spec_e, step), 2 * n, axis=1)
        grad[:, n:] = 0.0  # the gradient constraint: taps beyond one block would wrap around
        self.w_bg += np.fft.rfft(grad, axis=1)

    def _suppress(self, e: FloatArray, y: FloatArray) -> tuple[FloatArray, float]:
        """Residual echo suppression on a 10 ms-hop STFT: one frame, ``latency_samples`` late, and the
        predicted residual echo's energy in it (before suppression)."""
        out = np.empty(self.n)
        residual = 0.0
        leak = np.maximum(self.bin_leak[:: self.n // self.hop], LEAK_FLOOR)  # the same for both hops
        coupling_floor = self._coupling_floor()
        for h in range(self.n // self.hop):
            seg_e = e[h * self.hop : (h + 1) * self.hop]
            seg_y = y[h * self.hop : (h + 1) * self.hop]
            win_e = np.concatenate([self.e_tail, seg_e]) * self._window
            win_y = np.concatenate([self.y_tail, seg_y]) * self._window
            self.e_tail, self.y_tail = seg_e, seg_y
            spec = np.fft.rfft(win_e)
            e_pow = np.abs(spec) ** 2
            res = np.maximum(leak * np.abs(np.fft.rfft(win_y)) ** 2, REVERB_DECAY_PER_HOP * self.res_prev)
            res = np.maximum(res, coupling_floor)
            self.res_prev = res
            if self.noise_frames == 0:  # the smoothed spectra start from the first hop, not from zero
                self.psd, self.band = e_pow.copy(), float(e_pow.sum()) / self.hop
            self.noise_frames += 1
            self.psd = NOISE_PSD_SMOOTHING * self.psd + (1 - NOISE_PSD_SMOOTHING) * e_pow
            self.noise = np.maximum(np.minimum(self.noise * NOISE_RISE_PER_HOP, NOISE_BIAS * self.psd), 1e-12)
            # The floor the gate measures against: the whole band's power has far less spread per hop
            # than one bin's, so its minimum is a fair estimate of the noise.
            total = float(e_pow.sum()) / self.hop
            self.band = BAND_SMOOTHING * self.band + (1 - BAND_SMOOTHING) * total
            self.band_noise = max(min(self.band_noise * NOISE_RISE_PER_HOP, self.band), 1e-12)
            residual += float(res.sum()) / self.hop + BAND_NOISE_BIAS * self.band_noise
            gain = self._gain(e_pow, res, self.noise, SUPPRESSION_OVER, self.floor) if self.ref_active else 1.0
            frame = np.fft.irfft(spec * gain, 2 * self.hop) * self._window
            out[h * self.hop : (h + 1) * self.hop] = self.ola + frame[: self.hop]
            self.ola = frame[self.hop :]
        return out, residual

    def _coupling_floor(self) -> FloatArray | float:
        """Residual power per STFT bin still unmodelled by the filter: per bin (coupling x recent
        reference spectrum) once the delay is known, one figure for the whole band before."""
        if self.delay.delay is None:
            return self.coupling * self._delayed_ref_power() * self.hop
        # A 2N-point spectrum of N error samples against one of 2N reference samples: the STFT bin
        # (window energy = hop) holds half of coupling x reference per 2N-point bin.
        floor: FloatArray = 0.5 * (self.bin_coupling * self.ref_spec)[:: self.n // self.hop]
        return floor

    def _delayed_ref_power(self) -> float:
        """The loudest reference frame (mean square) within the filter's reach of the estimated delay;
        the whole search window while no delay is known."""
        if self.delay.delay is None:
            return float(self.ref_env.max())
        first = max(0, self.bulk // self.n - 1)
        return float(self.ref_env[first : first + self.partitions + 2].max())

    def _recent_ref_power(self) -> float:
        """The loudest reference frame (mean square) whose echo may still be arriving."""
        return float(self.ref_env[: max(1, (self.bulk + self.pre_delay) // self.n + 3)].max())

    def _track(self, sdd: float, see: float, sout: float) -> None:
        if not self.ref_active or self.double_talk:
            return
        a = STATS_SMOOTHING
        self.mic_avg = (1 - a) * self.mic_avg + a * sdd
        self.lin_avg = (1 - a) * self.lin_avg + a * see
        self.out_avg = (1 - a) * self.out_avg + a * sout
