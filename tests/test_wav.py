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
    [
        (b"", "the file is empty"),
        (b"RIFF\x00\x00garbage-not-a-wav", "not a wav file"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00", "the wav header is cut short"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", "it may be truncated"),
    ],
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


def _pcm16(path: Path, rate: int, samples: np.ndarray, channels: int = 1) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.astype("<i2").tobytes())
    return path


def _hostile_wavs(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, what the one-line error must say)."""
    (folder / "d.wav").mkdir()
    (folder / "empty.wav").write_bytes(b"")
    whole = _pcm16(folder / "whole.wav", 16_000, tone(16_000, 0.5)).read_bytes()
    (folder / "truncated.wav").write_bytes(whole[:30])
    return {
        "a folder named d.wav": (folder / "d.wav", "is a folder"),
        "an empty file": (folder / "empty.wav", "the file is empty (0 bytes)"),
        "a truncated header": (folder / "truncated.wav", "the wav header is cut short (30 bytes)"),
        "one sample at 192 kHz": (_pcm16(folder / "one.wav", 192_000, np.ones(1)), "holds 1 sample(s)"),
        "a 1 kHz rate": (_pcm16(folder / "slow.wav", 1000, tone(1000, 1.0)), "a sample rate of 1000 Hz"),
    }


@pytest.mark.parametrize(
    "case", ["a folder named d.wav", "an empty file", "a truncated header", "one sample at 192 kHz", "a 1 kHz rate"]
)
@pytest.mark.parametrize("command", ["talk", "score"])
def test_every_command_reading_wavs_refuses_a_bad_one_with_one_line_naming_it(
    case: str, command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from duplexer.cli import main

    path, expected = _hostile_wavs(tmp_path)[case]
    good = _pcm16(tmp_path / "good.wav", 16_000, tone(16_000, 0.5))
    argv = (
        ["talk", str(path), "--out", str(tmp_path / "o")]
        if command == "talk"
        else ["score", "--user", str(path), "--bot", str(good)]
    )
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"duplexer: error: {path}: ") and expected in err, err


def test_talk_refuses_an_all_zero_recording_at_once_instead_of_streaming_its_silence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """600 s of digital silence was once taken as 600 s of speech and streamed for 11 minutes."""
    import time

    from duplexer.cli import main

    path = _pcm16(tmp_path / "zeros.wav", 16_000, np.zeros(600 * 16_000))
    began = time.monotonic()
    assert main(["talk", str(path), "--out", str(tmp_path / "o")]) == 2
    assert time.monotonic() - began < 30.0
    err = capsys.readouterr().err.strip()
    assert err == f"duplexer: error: {path}: the recording is silent (every sample is zero): no user speech to answer"


def test_a_wav_longer_than_the_limit_is_refused_from_its_header(tmp_path: Path) -> None:
    from duplexer.protocols.wav import MAX_WAV_S

    path = _pcm16(tmp_path / "long.wav", 8000, np.zeros(8000))
    data = bytearray(path.read_bytes())
    frames = int(MAX_WAV_S * 8000) + 8000
    data[40:44] = (2 * frames).to_bytes(4, "little")  # the data chunk claims more than an hour
    path.write_bytes(bytes(data) + bytes(2 * frames))
    with pytest.raises(WavError, match="at most 3600 s"):
        read_wav(path, 16_000)
