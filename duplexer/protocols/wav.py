"""Wav files in and out: any rate and channel count in, converted to mono PCM16 at the rate asked."""

from __future__ import annotations

import struct
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from duplexer.kernels.audio import float_to_pcm16, resample
from duplexer.runtime.events import FRAME_MS

SUPPORTED_SAMPLE_WIDTHS = {1: "u1", 2: "<i2", 4: "<i4"}
"""Bytes per sample -> how they are read: 8-bit unsigned, 16 and 32-bit signed PCM."""
MIN_RATE_HZ = 8_000
MAX_RATE_HZ = 192_000
"""Sample rates read: telephone speech to studio audio."""
MAX_CHANNELS = 16
MIN_WAV_MS = float(FRAME_MS)
"""Shortest wav read: one audio frame of the pipeline; shorter input has nothing to hear or score."""
MAX_WAV_S = 3600.0
"""Longest wav read (1 hour): ``talk`` streams it in real time, and a longer run is an accident."""
MAX_WAV_BYTES = 1 << 30
"""Most audio bytes read (1 GiB; 1 hour of 48 kHz 16-bit stereo is 0.69 GB)."""
WAV_HEADER_BYTES = 44
WAV_LIMITS = (
    f"PCM wav, 8, 16 or 32-bit integer samples, 1 to {MAX_CHANNELS} channels, {MIN_RATE_HZ} to {MAX_RATE_HZ} Hz, "
    f"{MIN_WAV_MS:g} ms to {MAX_WAV_S / 60:g} minutes, at most {MAX_WAV_BYTES >> 20} MiB of audio"
)
"""The limits of every wav input, as the docs and help texts state them."""


@dataclass(frozen=True)
class WavInfo:
    """A wav's format, from its header."""

    rate_hz: int
    frames: int
    channels: int
    width: int


class WavError(ValueError):
    """A wav file cannot be used; the message names the file and what is wrong."""


CHANNELS = {"left": 0, "right": 1}
"""The channels of a two-party (stereo) recording that can be taken alone, by name."""


def read_wav(path: Path, to_hz: int, channel: str | None = None) -> bytes:
    """Mono PCM16 at ``to_hz`` from any PCM wav (8/16/32-bit, any channels and rate): the channels
    mixed, or only ``channel`` (left or right) of a stereo recording, where the other is a partner
    who must not be heard as the same speaker."""
    if channel is not None and channel not in CHANNELS:
        raise WavError(f"{path}: no channel {channel!r} (choose {' or '.join(CHANNELS)})")
    per_channel, rate = read_wav_channels(path)
    channels = len(per_channel)
    if channel is None:
        mono = per_channel.mean(axis=0).astype(np.float32) if channels > 1 else per_channel[0]
    elif channels != len(CHANNELS):
        raise WavError(f"{path}: has {channels} channel(s), so it has no {channel} channel to take alone")
    else:
        mono = per_channel[CHANNELS[channel]]
    return float_to_pcm16(resample(mono, rate, to_hz))


def write_wav(path: Path, pcm: bytes, rate_hz: int, channels: int = 1) -> None:
    """Write interleaved PCM16 to a wav file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(2)
        wav.setframerate(rate_hz)
        wav.writeframes(pcm)


def interleave_stereo(left: np.ndarray, right: np.ndarray) -> bytes:
    """Two int16 tracks (padded to the longer) as interleaved stereo PCM16."""
    n = max(len(left), len(right))
    out = np.zeros((n, 2), dtype="<i2")
    out[: len(left), 0] = left
    out[: len(right), 1] = right
    return out.tobytes()


def wav_info(path: Path) -> WavInfo:
    """The format of a PCM wav, checked against the limits (``WAV_LIMITS``) before any audio is read;
    a WavError naming the file says what is wrong (a folder, empty, cut short, not PCM, out of range)."""
    if path.is_dir():
        raise WavError(f"{path}: is a folder, not a wav file")
    try:
        size = path.stat().st_size
        with wave.open(str(path), "rb") as wav:
            info = WavInfo(wav.getframerate(), wav.getnframes(), wav.getnchannels(), wav.getsampwidth())
    except FileNotFoundError:
        raise WavError(f"{path}: no such file") from None
    except OSError as exc:
        raise WavError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except EOFError:
        raise WavError(_cut_short(path)) from None
    except (wave.Error, struct.error, ZeroDivisionError, ValueError, OverflowError) as exc:
        raise WavError(f"{path}: {_why_not_wav(exc)}") from None
    if not 1 <= info.channels <= MAX_CHANNELS:
        raise WavError(f"{path}: {info.channels} channels (a wav read here has 1 to {MAX_CHANNELS})")
    if info.width not in SUPPORTED_SAMPLE_WIDTHS:
        raise WavError(f"{path}: {8 * info.width}-bit samples are not supported (use 8, 16 or 32-bit PCM)")
    if not MIN_RATE_HZ <= info.rate_hz <= MAX_RATE_HZ:
        raise WavError(
            f"{path}: a sample rate of {info.rate_hz} Hz (a wav read here has {MIN_RATE_HZ} to {MAX_RATE_HZ})"
        )
    frame_bytes = info.width * info.channels
    frames = min(info.frames, max(0, size - WAV_HEADER_BYTES) // frame_bytes)  # a header may claim more than there is
    if frames * frame_bytes > MAX_WAV_BYTES or frames > MAX_WAV_S * info.rate_hz:
        raise WavError(
            f"{path}: {frames / info.rate_hz:.0f} s of audio in {frames * frame_bytes} bytes "
            f"(a wav read here holds at most {MAX_WAV_S:.0f} s and {MAX_WAV_BYTES} bytes)"
        )
    return info


def _cut_short(path: Path) -> str:
    try:
        size = path.stat().st_size
    except OSError:
        size = -1
    if size == 0:
        return f"{path}: the file is empty (0 bytes), not a wav file"
    return f"{path}: the wav header is cut short ({size} bytes): the file is truncated or not a wav file"


def _why_not_wav(exc: Exception) -> str:
    """What a wave-module error means to whoever made the file."""
    text = str(exc)
    if "RIFF" in text or "WAVE" in text:
        return "not a wav file (it does not start with a RIFF/WAVE header)"
    if text.startswith("unknown format"):
        code = text.rsplit(":", 1)[-1].strip()
        return f"sample format {code} is not integer PCM (float, compressed and extensible wavs are not read)"
    if "chunk" in text:
        return f"not a usable wav file ({text}); it may be truncated"
    return f"not a readable PCM wav file ({text or type(exc).__name__})"


def read_wav_channels(path: Path) -> tuple[np.ndarray, int]:
    """Every channel of any PCM wav (8/16/32-bit) as float32 in [-1, 1], shape (channels, samples),
    at the file's own rate, which is returned with it: for scoring a two-party recording, where
    each side must be heard alone and its timing kept to the sample. The one reader of wav input:
    every command reads wavs through it, within ``WAV_LIMITS``."""
    info = wav_info(path)
    try:
        with wave.open(str(path), "rb") as wav:
            raw = wav.readframes(min(info.frames, int(MAX_WAV_S * info.rate_hz)))
    except (OSError, EOFError, wave.Error, struct.error) as exc:
        raise WavError(f"{path}: cannot read its audio ({exc})") from None
    frame_bytes = info.width * info.channels
    usable = len(raw) - len(raw) % frame_bytes
    if usable == 0:
        raise WavError(f"{path}: the file holds no audio (its data chunk is empty)")
    frames = usable // frame_bytes
    if frames < MIN_WAV_MS * info.rate_hz / 1000.0:
        raise WavError(
            f"{path}: holds {frames} sample(s), {1000.0 * frames / info.rate_hz:.2f} ms of audio "
            f"(at least {MIN_WAV_MS:g} ms is needed)"
        )
    ints = np.frombuffer(raw[:usable], dtype=SUPPORTED_SAMPLE_WIDTHS[info.width])
    if info.width == 1:
        samples = (ints.astype(np.float32) - 128.0) / 128.0
    else:
        samples = ints.astype(np.float32) / float(2 ** (8 * info.width - 1))
    return np.ascontiguousarray(samples.reshape(-1, info.channels).T), info.rate_hz
