"""Fuzzing wav input: headers with random rates, channel counts, sample widths and formats, data
cut short or claiming more than there is, and garbage chunks, through the one wav reader and the
`talk` and `score` entry functions in process. The reader returns audio or raises WavError; the
commands exit 0, or 2 with one line naming the file; never a traceback, never a hang."""

from __future__ import annotations

import contextlib
import io
import random
import struct
import tempfile
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from duplexer.actors.energy_vad import EnergyVad
from duplexer.actors.engines import AudioSink, Engines
from duplexer.actors.scripted import CannedAsr, ScriptedLlm, ScriptedTts
from duplexer.cli import main
from duplexer.protocols.wav import WavError, read_wav, read_wav_channels, write_wav
from duplexer.runtime.clock import Clock
from tests.conftest import PHRASES, fuzz_settings, voiced
from tests.test_fuzz_scenarios import time_bound

pytestmark = pytest.mark.fuzz

EXAMPLE_LIMIT_S = 30
"""Longest one example may take; generated audio lasts at most about a second."""

RATES = st.one_of(
    st.sampled_from([0, 1, 1000, 7999, 8000, 16_000, 22_050, 44_100, 48_000, 192_000, 192_001, 2**32 - 1]),
    st.integers(0, 2**32 - 1),
)
CHANNELS = st.one_of(st.sampled_from([0, 1, 2, 3, 16, 17, 255, 65535]), st.integers(0, 65535))
BITS = st.one_of(st.sampled_from([0, 1, 8, 12, 16, 24, 32, 64]), st.integers(0, 65535))
FORMATS = st.one_of(st.sampled_from([1, 3, 6, 7, 0xFFFE]), st.integers(0, 65535))


SPEECH = voiced(16_000) if PHRASES.exists() else np.zeros(16_000)
"""Real voiced speech (VAP phrases); for an honest header at any rate it is a second or less of it."""


def chunk(tag: bytes, body: bytes, claimed: int | None = None) -> bytes:
    size = len(body) if claimed is None else claimed
    return tag + struct.pack("<I", size) + body + (b"\x00" if len(body) % 2 else b"")


@st.composite
def wav_files(draw: st.DrawFn) -> bytes:
    """A wav file whose every header field may be honest or hostile, possibly truncated."""
    fmt, channels, rate, bits = draw(FORMATS), draw(CHANNELS), draw(RATES), draw(BITS)
    if draw(st.integers(0, 9)) < 6:  # an honest header most of the time, so audio gets read too
        fmt, channels, rate, bits = 1, draw(st.integers(1, 3)), draw(st.sampled_from([8000, 16_000, 44_100])), 16
    block = (channels * bits // 8) & 0xFFFF
    byte_rate = (rate * block) & 0xFFFFFFFF
    fmt_body = struct.pack("<HHIIHH", fmt, channels, rate & 0xFFFFFFFF, byte_rate, block, bits)
    if draw(st.integers(0, 9)) == 0:
        fmt_body = fmt_body[: draw(st.integers(0, len(fmt_body)))]
    data = draw(st.binary(max_size=4000)) if draw(st.booleans()) else draw(st.binary(min_size=3000, max_size=12_000))
    sound = draw(st.integers(0, 9))
    if sound < 4:  # a tone instead of noise
        n = len(data) // 2
        data = (np.sin(np.arange(n) / 3.0) * 12_000).astype("<i2").tobytes()
    elif sound == 4 and (fmt, channels, bits) == (1, 1, 16):  # a second of real speech: talk runs a session
        data = (SPEECH[:rate] * 32767).astype("<i2").tobytes()
    claimed = draw(st.one_of(st.none(), st.none(), st.integers(0, 2**32 - 1)))
    chunks = [chunk(b"fmt ", fmt_body)]
    for _ in range(draw(st.integers(0, 2))):  # garbage chunks before the data
        garbage = chunk(draw(st.binary(min_size=4, max_size=4)), draw(st.binary(max_size=50)))
        chunks.insert(draw(st.integers(0, len(chunks))), garbage)
    chunks.append(chunk(b"data", data, claimed))
    body = b"WAVE" + b"".join(chunks)
    riff = b"RIFF" if draw(st.integers(0, 9)) < 8 else draw(st.sampled_from([b"RIFX", b"RF64", b"\x00\x00\x00\x00"]))
    whole = riff + struct.pack("<I", draw(st.sampled_from([len(body)] * 8 + [0, 2**32 - 1]))) + body
    if draw(st.integers(0, 9)) == 0:
        whole = whole[: draw(st.integers(0, len(whole)))]
    return whole


def short_replies(clock: Clock, sink: AudioSink) -> Engines:
    rng = random.Random(0)
    llm = ScriptedLlm(clock, rng, reply_for=lambda _: "Sure.")
    return Engines(EnergyVad(), CannedAsr(clock), llm, ScriptedTts(clock, rng), sink)


def run_command(argv: list[str]) -> tuple[int, str]:
    """A command in process, with scripted engines for talk: exit code and stderr."""
    from duplexer.sims import demo_cli

    err, out = io.StringIO(), io.StringIO()
    with (
        mock.patch.object(demo_cli, "demo_engines", lambda args: (short_replies, None)),
        time_bound(EXAMPLE_LIMIT_S),
        contextlib.redirect_stderr(err),
        contextlib.redirect_stdout(out),
    ):
        code = main(argv)
    return code, err.getvalue()


def assert_clean(code: int, err: str, path: Path) -> None:
    event(f"exit {code}")
    assert code in (0, 2), (code, err[-2000:])
    lines = [line for line in err.strip().splitlines() if not line.startswith("duplexer: warning:")]
    if code == 2:
        assert len(lines) == 1 and lines[0].startswith("duplexer: error: "), err[-2000:]
        assert str(path) in lines[0], lines[0]
    assert "Traceback" not in err


@fuzz_settings()
@given(wav_files())
def test_the_wav_reader_returns_audio_or_a_wav_error_naming_the_file(content: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.wav"
        path.write_bytes(content)
        with time_bound(EXAMPLE_LIMIT_S):
            try:
                audio, rate_hz = read_wav_channels(path)
                pcm = read_wav(path, 16_000)
            except WavError as exc:
                event("refused")
                assert str(exc).startswith(f"{path}: ") and "\n" not in str(exc)
                return
        event("read")
        assert audio.ndim == 2 and audio.shape[1] > 0 and np.isfinite(audio).all()
        assert len(pcm) % 2 == 0 and len(pcm) > 0 and 8000 <= rate_hz <= 192_000


@fuzz_settings()
@given(wav_files())
def test_talk_on_any_wav_runs_or_exits_2_with_one_line(content: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.wav"
        path.write_bytes(content)
        code, err = run_command(["talk", str(path), "--out", str(Path(folder) / "out")])
        assert_clean(code, err, path)


@fuzz_settings()
@given(wav_files(), st.booleans())
def test_score_on_any_wav_runs_or_exits_2_with_one_line(content: bytes, as_conversation: bool) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.wav"
        path.write_bytes(content)
        other = Path(folder) / "bot.wav"
        write_wav(other, (np.sin(np.arange(8000) / 3.0) * 8000).astype("<i2").tobytes(), 16_000)
        argv = ["score", str(path)] if as_conversation else ["score", "--user", str(path), "--bot", str(other)]
        code, err = run_command(argv)
        assert_clean(code, err, path)


@fuzz_settings()
@given(wav_files())
def test_eval_fdb_scoring_any_output_wav_scores_or_skips_it_with_its_reason(content: bytes) -> None:
    """A sample whose output.wav is unusable is skipped with a line naming it; with no sample left
    the command ends with one error line and exit 2."""
    with tempfile.TemporaryDirectory() as folder:
        sample = Path(folder) / "tree" / "p1"
        sample.mkdir(parents=True)
        write_wav(sample / "input.wav", bytes(2 * 16_000), 16_000)
        (sample / "pause.json").write_text('[{"text": "[PAUSE]", "timestamp": [0.2, 0.6]}]')
        (sample / "output.wav").write_bytes(content)
        argv = ["eval", "fdb", str(sample.parent), "--score-only", "--engines", "scripted", "--quiet"]
        code, err = run_command([*argv, "--out", str(Path(folder) / "out")])
        event(f"exit {code}")
        assert code in (0, 2) and "Traceback" not in err, (code, err[-2000:])
        lines = err.strip().splitlines()
        if code == 2:
            assert lines[-1].startswith("duplexer: error: ") and len(lines) == 2, err[-2000:]
            assert lines[0].startswith("skipped p1: ") and "output.wav" in lines[0], lines[0]
