"""A device whose microphone hears its own loudspeaker: the echo path, for tests and benchmarks.

What the bot plays goes through, in order:

1. the device's output latency (``delay_ms``, 20-300 ms on real devices) with clock drift
   (``drift_ppm``: the delay grows by that many millionths of the elapsed time);
2. a mildly nonlinear loudspeaker (soft clipping, ``tanh(drive * x) / drive``);
3. the room: an image-source impulse response (``pyroomacoustics`` shoebox rooms of several sizes
   and reverberation times) from a loudspeaker ``speaker_mic_m`` from the microphone;
4. a level: the echo's active-speech level is ``echo_db`` relative to the user's speech at the
   microphone (``USER_LEVEL_DBFS``), for a bot playing at ``BOT_LEVEL_DBFS``;

and is added to the user's speech and to noise ``noise_db`` below the user's speech.

:class:`EchoDevice` streams (one frame of played audio and of the user's voice in, one
microphone frame out), so a simulated device on MQTT can use it; :func:`render_mic` does
whole signals. A scenario names its path as ``EchoPath(room=ROOMS["living"], delay_ms=120)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt
from scipy.signal import lfilter

FloatArray = npt.NDArray[np.float64]

ECHO_SAMPLE_RATE = 16_000
USER_LEVEL_DBFS = -26.0
"""Active-speech RMS of the user's voice at the microphone."""
BOT_LEVEL_DBFS = -20.0
"""Active-speech RMS of what the bot plays."""
LOUDSPEAKER_DRIVE = 1.5
"""Soft-clipping drive: a -6 dBFS peak comes out 1.5 dB lower, a -20 dBFS one 0.1 dB lower."""
RIR_MAX_ORDER = 30
"""Image-source reflection order cap (late reverberation beyond it is weaker than the noise)."""


@dataclass(frozen=True)
class Room:
    name: str
    dims_m: tuple[float, float, float]
    rt60_s: float
    device_at: tuple[float, float, float]
    """Where the device (loudspeaker and microphone) stands."""


ROOMS: dict[str, Room] = {
    room.name: room
    for room in (
        Room("office", (3.5, 3.0, 2.6), 0.25, (1.2, 1.0, 0.9)),
        Room("living", (5.5, 4.5, 2.8), 0.45, (2.0, 1.4, 0.8)),
        Room("hall", (10.0, 7.5, 3.6), 0.8, (3.3, 2.9, 1.1)),
    )
}
"""Three rooms: small and dry, a living room, a large reverberant hall."""


@dataclass(frozen=True)
class EchoPath:
    """One device in one room: everything between the bot's playout and the microphone."""

    room: Room
    delay_ms: float = 120.0
    drift_ppm: float = 20.0
    echo_db: float = 0.0
    """Echo level relative to the user's speech at the microphone (0 or -10 in the benchmark)."""
    noise_db: float = -45.0
    """Noise level relative to the user's speech."""
    speaker_mic_m: float = 0.08
    drive: float = LOUDSPEAKER_DRIVE

    @property
    def name(self) -> str:
        return f"{self.room.name}/{self.delay_ms:.0f}ms/{self.echo_db:+.0f}dB"


@lru_cache(maxsize=16)
def room_impulse_response(room: Room, speaker_mic_m: float, rate: int = ECHO_SAMPLE_RATE) -> FloatArray:
    """Image-source impulse response from the device's loudspeaker to its microphone, unit energy."""
    import pyroomacoustics as pra

    absorption, max_order = pra.inverse_sabine(room.rt60_s, list(room.dims_m))
    shoebox = pra.ShoeBox(
        list(room.dims_m), fs=rate, materials=pra.Material(absorption), max_order=min(max_order, RIR_MAX_ORDER)
    )
    x, y, z = room.device_at
    shoebox.add_source([x, y, z])
    shoebox.add_microphone([x + speaker_mic_m, y, z])
    shoebox.compute_rir()
    rir = np.asarray(shoebox.rir[0][0], dtype=np.float64)
    rir /= np.sqrt(np.sum(rir**2))
    return rir


def active_rms(signal: FloatArray, rate: int = ECHO_SAMPLE_RATE, frame_ms: float = 20.0) -> float:
    """RMS over the frames within 30 dB of the loudest: the level of the speech, not of its pauses."""
    n = max(1, int(rate * frame_ms / 1000))
    frames = signal[: len(signal) // n * n].reshape(-1, n)
    if not len(frames):
        return 0.0
    power = np.mean(frames**2, axis=1)
    active = power[power >= power.max() * 1e-3]
    return float(np.sqrt(np.mean(active))) if len(active) else 0.0


def at_level(signal: FloatArray, dbfs: float) -> FloatArray:
    """``signal`` scaled so its active-speech RMS is ``dbfs``."""
    rms = active_rms(signal)
    out: FloatArray = signal * (10 ** (dbfs / 20) / rms) if rms > 0 else signal.copy()
    return out


class EchoDevice:
    """A streaming device: :meth:`mic_frame` takes what the bot played in a frame (played by the
    device after its latency) and the user's voice at the microphone, and returns the microphone."""

    def __init__(self, path: EchoPath, rate: int = ECHO_SAMPLE_RATE, seed: int = 0) -> None:
        self.path = path
        self.rate = rate
        self.rir = room_impulse_response(path.room, path.speaker_mic_m, rate)
        # The bot at BOT_LEVEL_DBFS through a unit-energy RIR comes out near that level: scale to the target.
        self.gain = 10 ** ((USER_LEVEL_DBFS + path.echo_db - BOT_LEVEL_DBFS) / 20)
        self.noise_rms = 10 ** ((USER_LEVEL_DBFS + path.noise_db) / 20)
        self.rng = np.random.default_rng(seed)
        self.played = np.zeros(0)  # clipped playout, from absolute sample `played_start`
        self.played_start = 0
        self.speaker = np.zeros(len(self.rir) - 1)  # loudspeaker output history for the convolution
        self.n = 0  # microphone samples produced
        self.noise_state = np.zeros(1)

    def _speaker_out(self, count: int) -> FloatArray:
        """The loudspeaker's output for the next ``count`` microphone samples (delay with drift)."""
        t = self.n + np.arange(count, dtype=np.float64)
        delay = self.path.delay_ms * self.rate / 1000 + self.path.drift_ppm * 1e-6 * t
        pos = t - delay - self.played_start
        base = np.floor(pos).astype(np.int64)
        frac = pos - base
        out = np.zeros(count)
        ok = (base >= 0) & (base + 1 < len(self.played))
        out[ok] = (1 - frac[ok]) * self.played[base[ok]] + frac[ok] * self.played[base[ok] + 1]
        keep_from = max(0, int(base.min()) - 2) if len(base) else 0
        if keep_from > 0:
            self.played = self.played[keep_from:]
            self.played_start += keep_from
        return out

    def mic_frame(self, played: FloatArray, user: FloatArray) -> FloatArray:
        """One microphone frame (float, full scale 1.0) for ``played`` (what the bot sent for this
        frame, float) and ``user`` (the user's voice at the microphone, same length)."""
        count = len(user)
        d = self.path.drive
        self.played = np.concatenate([self.played, np.tanh(d * np.asarray(played, dtype=np.float64)) / d])
        speaker = self._speaker_out(count)
        hist = np.concatenate([self.speaker, speaker])
        size = 1 << int(np.ceil(np.log2(len(hist) + len(self.rir))))
        conv = np.fft.irfft(np.fft.rfft(hist, size) * np.fft.rfft(self.rir, size), size)
        echo = conv[len(self.rir) - 1 : len(hist)] * self.gain
        self.speaker = hist[count:]
        self.n += count
        white = self.rng.standard_normal(count) * self.noise_rms
        # One-pole lowpass: a fan-like noise, not white hiss; 4.36 restores the RMS the filter takes away.
        noise, self.noise_state = lfilter([0.1 * 4.36], [1.0, -0.9], white, zi=self.noise_state)
        out: FloatArray = user + echo + noise
        return out


def render_mic(
    path: EchoPath, played: FloatArray, user: FloatArray, seed: int = 0, frame_samples: int = 4000
) -> tuple[FloatArray, FloatArray]:
    """Whole signals: (microphone, echo alone at the microphone) for the bot's ``played`` audio and
    the user's voice (both float, equal length). The echo alone is what the microphone holds with
    no user and no noise: the ERLE's numerator."""
    device = EchoDevice(path, seed=seed)
    quiet = EchoDevice(EchoPath(**{**path.__dict__, "noise_db": -300.0}), seed=seed)
    total = len(user)
    mic, echo = np.zeros(total), np.zeros(total)
    for start in range(0, total, frame_samples):
        stop = min(total, start + frame_samples)
        mic[start:stop] = device.mic_frame(played[start:stop], user[start:stop])
        echo[start:stop] = quiet.mic_frame(played[start:stop], np.zeros(stop - start))
    return mic, echo
