"""Wav files in and out: any rate and channel count in, converted to mono PCM16 at the rate asked."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from duplexer.kernels.audio import float_to_pcm16, resample

SUPPORTED_SAMPLE_WIDTHS = {1: "u1", 2: "<i2", 4: "<i4"}


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


def read_wav_channels(path: Path) -> tuple[np.ndarray, int]:
    """Every channel of any PCM wav (8/16/32-bit) as float32 in [-1, 1], shape (channels, samples),
    at the file's own rate, which is returned with it: for scoring a two-party recording, where
    each side must be heard alone and its timing kept to the sample."""
    try:
        with wave.open(str(path), "rb") as wav:
            channels, width, rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
            raw = wav.readframes(wav.getnframes())
    except FileNotFoundError:
        raise WavError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise WavError(f"{path}: is a folder, not a wav file") from None
    except (wave.Error, EOFError) as exc:
        raise WavError(f"{path}: not a readable PCM wav file ({exc})") from None
    if width not in SUPPORTED_SAMPLE_WIDTHS:
        raise WavError(f"{path}: {8 * width}-bit samples are not supported (use 8, 16 or 32-bit PCM)")
    if channels < 1 or rate < 1000:
        raise WavError(f"{path}: implausible format ({channels} channels at {rate} Hz)")
    usable = len(raw) - len(raw) % (width * channels)
    if usable == 0:
        raise WavError(f"{path}: the file holds no audio")
    ints = np.frombuffer(raw[:usable], dtype=SUPPORTED_SAMPLE_WIDTHS[width])
    if width == 1:
        samples = (ints.astype(np.float32) - 128.0) / 128.0
    else:
        samples = ints.astype(np.float32) / float(2 ** (8 * width - 1))
    return np.ascontiguousarray(samples.reshape(-1, channels).T), rate
