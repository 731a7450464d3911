"""Smart Turn v3.2: features and probabilities as the model's own pipeline computes them, and the
direction of its answer at a finished question against the same words mid-turn."""

from __future__ import annotations

import importlib.metadata
import wave

import numpy as np
import pytest

from duplexer.actors.models.packages import ModelPackageMissing
from duplexer.kernels.audio import pcm16_to_float, resample_pcm16
from duplexer.kernels.log_mel import N_FRAMES, N_MELS, WINDOW_SAMPLES, fit_window, log_mel_window
from tests.conftest import PHRASES

pytestmark = pytest.mark.skipif(not PHRASES.exists(), reason="VAP phrases not beside the repo")

CLIPS = (
    "basketball_short_male_en-US-Wavenet-A",
    "experiment_long_female_en-US-Wavenet-F",  # longer than most: 3.5 s of speech
    "work_short_female_en-US-Wavenet-E",
)


def clip_pcm16(stem: str) -> bytes:
    with wave.open(str(PHRASES / f"{stem}.wav"), "rb") as wav:
        return resample_pcm16(wav.readframes(wav.getnframes()), wav.getframerate(), 16_000)


def test_the_window_keeps_the_last_8_s_and_pads_short_audio_at_the_start() -> None:
    short = np.ones(100, dtype=np.float32)
    fitted = fit_window(short)
    assert len(fitted) == WINDOW_SAMPLES and fitted[-100:].all() and not fitted[:-100].any()
    long = np.arange(WINDOW_SAMPLES + 5, dtype=np.float32)
    assert fit_window(long)[0] == 5.0 and fit_window(long)[-1] == WINDOW_SAMPLES + 4


@pytest.mark.parametrize("stem", CLIPS)
def test_features_match_the_reference_extractor(stem: str) -> None:
    reference = pytest.importorskip("pipecat.audio.turn.smart_turn._whisper_features")
    samples = pcm16_to_float(clip_pcm16(stem))
    ours = log_mel_window(samples)
    assert ours.shape == (N_MELS, N_FRAMES) and ours.dtype == np.float32
    # The reference expects the caller to right-align the audio in the window; it normalises the same way.
    theirs = reference.compute_whisper_log_mel_features(fit_window(samples), do_normalize=True)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_a_longer_clip_is_cut_to_its_last_8_s() -> None:
    reference = pytest.importorskip("pipecat.audio.turn.smart_turn._whisper_features")
    samples = np.tile(pcm16_to_float(clip_pcm16(CLIPS[1])), 4)  # ~14 s
    theirs = reference.compute_whisper_log_mel_features(samples[-WINDOW_SAMPLES:], do_normalize=True)
    np.testing.assert_allclose(log_mel_window(samples), theirs, atol=1e-5)


def test_the_model_is_found_in_the_distributions_file_list() -> None:
    from duplexer.actors.models.smart_turn import SMART_TURN_MODEL_FILE, smart_turn_model_path

    path = smart_turn_model_path()
    assert path.name == SMART_TURN_MODEL_FILE and path.stat().st_size > 1_000_000


def test_without_the_package_the_error_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from duplexer.actors.models import smart_turn

    def missing(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(smart_turn.importlib.metadata, "files", missing)
    with pytest.raises(ModelPackageMissing, match="pip install pipecat-ai"):
        smart_turn.smart_turn_model_path()


@pytest.fixture(scope="module")
def engine():  # type: ignore[no-untyped-def]
    from duplexer.actors.models.smart_turn import SmartTurn

    return SmartTurn()


@pytest.mark.slow
def test_probabilities_match_the_reference_analyzer(engine) -> None:  # type: ignore[no-untyped-def]
    v3 = pytest.importorskip("pipecat.audio.turn.smart_turn.local_smart_turn_v3")
    from duplexer.actors.models.smart_turn import smart_turn_model_path

    reference = v3.LocalSmartTurnAnalyzerV3(smart_turn_model_path=str(smart_turn_model_path()))
    for stem in CLIPS[:2]:
        pcm = clip_pcm16(stem)
        ours = engine.probability_blocking(pcm)
        theirs = reference._predict_endpoint(np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0)
        assert ours == pytest.approx(theirs["probability"], abs=1e-4)


@pytest.mark.slow
def test_finished_questions_sound_more_finished_than_the_same_words_mid_turn(engine) -> None:  # type: ignore[no-untyped-def]
    """At the VAD's stop (100 ms of silence after the words), over voice F's phrases: Smart Turn
    is not right on every clip, but on the whole it hears the difference the text cannot see."""
    from duplexer.bench.eot_pauses import VAD_STOP_LAG_MS, find_pauses, read_samples

    def at_stop(pause) -> float:  # type: ignore[no-untyped-def]
        speech = read_samples(pause.wav)[: round(pause.speech_end_ms * 16)]
        return engine.probability_of_samples(
            np.concatenate([speech, np.zeros(round(VAD_STOP_LAG_MS * 16), np.float32)])
        )

    pauses = find_pauses(PHRASES.parent, ["F"])
    ends = [at_stop(p) for p in pauses if p.kind == "short_end"]
    mids = [at_stop(p) for p in pauses if p.kind == "long_mid"]
    assert np.mean(ends) > np.mean(mids) + 0.3, (ends, mids)
    assert np.mean(np.array(mids) < 0.5) >= 0.7
    assert engine.last_call_ms > 0


def test_no_audio_is_no_opinion(engine) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    assert asyncio.run(engine.end_of_turn_probability("hello", (), b"")) == 0.5
