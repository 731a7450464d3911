"""The real embedded models, from their PyPI packages, on this CPU (slow; they run in CI too)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from duplexer.actors.models.loading import load_models
from duplexer.actors.models.packages import ModelPackageMissing, package_dir
from duplexer.actors.models.piper_tts import LEAD_KEEP_MS, SENTENCE_GAP_MS
from duplexer.actors.models.silero_vad import SileroVad
from duplexer.kernels.loudness import audible_spans
from duplexer.protocols.wav import read_wav
from duplexer.runtime.events import FRAME_SAMPLES, INPUT_SAMPLE_RATE_HZ
from tests.conftest import SHARED

pytestmark = pytest.mark.slow
PHRASES = SHARED / "data" / "vap_phrases" / "audio"
needs_phrases = pytest.mark.skipif(not PHRASES.exists(), reason="VAP phrases not beside the repo")


@pytest.fixture(scope="module")
def models():  # type: ignore[no-untyped-def]
    return load_models()


def test_a_missing_model_package_names_what_to_install() -> None:
    with pytest.raises(ModelPackageMissing, match="pip install no-such-voice"):
        package_dir("no_such_voice", "the voice")


@needs_phrases
def test_silero_hears_the_phrase_and_not_the_silence() -> None:
    pcm = read_wav(PHRASES / "basketball_short_female_en-US-Wavenet-C.wav", INPUT_SAMPLE_RATE_HZ)
    padded = bytes(2 * INPUT_SAMPLE_RATE_HZ) + pcm + bytes(2 * INPUT_SAMPLE_RATE_HZ)
    vad = SileroVad()
    probs = [
        vad.speech_probability(padded[i : i + 2 * FRAME_SAMPLES], 0.0) for i in range(0, len(padded), 2 * FRAME_SAMPLES)
    ]
    one_second = INPUT_SAMPLE_RATE_HZ // FRAME_SAMPLES
    assert max(probs[: one_second - 5]) < 0.3  # leading silence
    assert max(probs[one_second:-one_second]) > 0.8  # the phrase


@needs_phrases
def test_whisper_transcribes_a_real_phrase(models) -> None:  # type: ignore[no-untyped-def]
    pcm = read_wav(PHRASES / "basketball_long_male_en-US-Wavenet-A.wav", INPUT_SAMPLE_RATE_HZ)
    text = asyncio.run(models.asr.transcribe(pcm, 0.0, 2500.0, final=True)).lower()
    assert "basketball" in text and "thursday" in text


SHORT_WINDOW_PHRASES = (
    "basketball_long_male_en-US-Wavenet-A",
    "live_short_female_en-US-Wavenet-E",
    "student_short_female_en-US-Wavenet-C",
    "experiment_long_female_en-US-Wavenet-F",
)
"""Phrases on which a short window without its silence states loops ("Are you a student? Are you ...")."""


@needs_phrases
@pytest.mark.parametrize("name", SHORT_WINDOW_PHRASES)
def test_whisper_short_window_hears_every_reference_word_once(models, name: str) -> None:  # type: ignore[no-untyped-def]
    from duplexer.sims.word_accuracy import normalize_words

    assert models.asr.window == "short"
    pcm = read_wav(PHRASES / f"{name}.wav", INPUT_SAMPLE_RATE_HZ)
    text = asyncio.run(models.asr.transcribe(pcm, 0.0, 0.0, final=True))
    reference = normalize_words((PHRASES / f"{name}.txt").read_text())
    assert normalize_words(text) == reference, text


@needs_phrases
def test_whisper_short_and_full_windows_agree(models) -> None:  # type: ignore[no-untyped-def]
    from duplexer.kernels.audio import pcm16_to_float
    from duplexer.sims.word_accuracy import normalize_words

    audio = pcm16_to_float(read_wav(PHRASES / "work_long_male_en-US-Wavenet-B.wav", INPUT_SAMPLE_RATE_HZ))
    short = models.asr.transcribe_audio(audio, "short")
    full = models.asr.transcribe_audio(audio, "full")
    assert normalize_words(short) == normalize_words(full)


def test_llm_streams_and_stops_when_the_stream_is_closed(models) -> None:  # type: ignore[no-untyped-def]
    messages = [("system", "Answer briefly."), ("user", "Count from one to fifty in words.")]

    async def take_two_then_close() -> list[str]:
        pieces = []
        stream = models.llm.stream(messages, "r1")
        async for piece in stream:
            pieces.append(piece)
            if len(pieces) == 2:
                break
        await stream.aclose()
        return pieces

    assert len(asyncio.run(take_two_then_close())) == 2
    deadline = time.monotonic() + 1.0
    while not models.llm.lock.acquire(blocking=False):  # the generation thread let go of the model
        assert time.monotonic() < deadline, "generation kept running after the stream was closed"
        time.sleep(0.02)
    models.llm.lock.release()


def test_piper_speaks_at_the_output_rate_and_renders_slow(models) -> None:  # type: ignore[no-untyped-def]
    plain = models.tts.synthesize_blocking("The capital of France is Paris.")
    slow = models.tts.synthesize_blocking("The capital of France is Paris.", ("slow",))
    seconds = len(plain) / 2 / models.tts.sample_rate_hz
    assert models.tts.sample_rate_hz == INPUT_SAMPLE_RATE_HZ
    assert 1.0 < seconds < 4.0
    assert len(slow) > 1.1 * len(plain)
    assert np.abs(np.frombuffer(plain, dtype="<i2")).max() > 3000


def test_piper_streams_sentences_from_their_first_audible_sample(models) -> None:  # type: ignore[no-untyped-def]
    """Piper opens "I'm ..." with ~280 ms of near-silence; the stream starts at the voice instead."""

    async def chunks() -> list[bytes]:
        return [pcm async for pcm in models.tts.synthesize("I'm a sports advisor. I love it.", "r")]

    rate = models.tts.sample_rate_hz
    for pcm in asyncio.run(chunks()):
        spans = audible_spans(np.frombuffer(pcm, dtype="<i2"), rate)
        assert spans[0][0] <= LEAD_KEEP_MS + 1.0
        assert 1000.0 * len(pcm) / 2 / rate - spans[-1][1] <= SENTENCE_GAP_MS + 1.0


def test_demo_holds_a_real_conversation(tmp_path: Path) -> None:
    """The README's main job, without the speculation-off rerun: turns heard, answered, in time."""
    result = subprocess.run(
        [sys.executable, "-m", "duplexer.cli", "demo", "--no-compare", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    demo = json.loads((tmp_path / "demo.json").read_text())
    turns = demo["turns"]
    assert len(turns) == 3
    heard = [(t["user_transcript"] or "").lower() for t in turns]
    assert "capital" in heard[0] and "france" in heard[0]
    assert "book" in heard[1]
    assert "cats" in heard[2]
    assert all(t["bot_reply"] for t in turns), "the bot did not reply in every turn"
    assert "paris" in turns[0]["bot_reply"].lower()
    assert all(0 < t["response_latency_ms"] < 5000 for t in turns)
    assert turns[2]["barge_in_stop_ms"] is not None and turns[2]["barge_in_stop_ms"] < 1000
    assert demo["summary"]["errors"] == []
    for name in ("demo.wav", "demo_timeline.png"):
        assert (tmp_path / name).stat().st_size > 10_000
