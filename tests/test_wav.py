"""Wav input: any rate and channel count is converted; unusable files get one clear line."""

from __future__ import annotations

import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from duplexer.kernels.audio import frames, resample
from duplexer.protocols.wav import WavError, read_wav, write_wav


def tone(rate: int, seconds: float, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * hz * t) * 32767).astype("<i2")


def test_odd_rate_stereo_wav_becomes_16k_mono_of_the_same_length(tmp_path: Path) -> None:
    left = tone(44_100, 1.0)
    stereo = np.stack([left, left], axis=1).reshape(-1)
    path = tmp_path / "odd.wav"
    write_wav(path, stereo.tobytes(), 44_100, channels=2)
    pcm = read_wav(path, 16_000)
    samples = np.frombuffer(pcm, dtype="<i2")
    assert len(samples) == 16_000
    spectrum = np.abs(np.fft.rfft(samples))
    assert abs(np.argmax(spectrum) - 440) <= 1  # 1 Hz bins: the tone survived resampling


def test_8_bit_wav_is_read(tmp_path: Path) -> None:
    path = tmp_path / "u8.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(1)
        w.setframerate(8000)
        w.writeframes(bytes([128, 200, 56, 128] * 2000))
    assert len(read_wav(path, 16_000)) == 2 * 16_000


@pytest.mark.parametrize(
    ("content", "needle"),
    [(b"", "not a readable PCM wav"), (b"RIFF\x00\x00garbage-not-a-wav", "not a readable PCM wav")],
)
def test_corrupt_wav_is_refused_by_name(tmp_path: Path, content: bytes, needle: str) -> None:
    path = tmp_path / "bad.wav"
    path.write_bytes(content)
    with pytest.raises(WavError, match=needle) as info:
        read_wav(path, 16_000)
    assert str(path) in str(info.value)


def test_empty_wav_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    write_wav(path, b"", 16_000)
    with pytest.raises(WavError, match="no audio"):
        read_wav(path, 16_000)


def test_talk_with_a_corrupt_wav_exits_2_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.wav"
    path.write_bytes(b"not audio at all")
    result = subprocess.run(
        [sys.executable, "-m", "duplexer.cli", "talk", str(path), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "broken.wav" in result.stderr


def test_resampling_keeps_duration_and_framing_pads_the_last_frame() -> None:
    x = np.random.default_rng(0).standard_normal(22_050).astype(np.float32)
    assert len(resample(x, 22_050, 16_000)) == 16_000
    assert [len(f) for f in frames(b"\x01\x00" * 700, 320)] == [640, 640, 640]
