"""Tokenizer engines: log-mel features, the shipped test codebooks, and the step-audio loader's errors."""

from __future__ import annotations

import itertools
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from duplexer.actors.tokenizer_engines import (
    LINGUISTIC_TEST_SPEC,
    MEL_HOP,
    SEMANTIC_TEST_SPEC,
    STEP_AUDIO_KMEANS_FILE,
    STEP_AUDIO_PARAFORMER_DIR,
    STEP_AUDIO_SEMANTIC_ONNX,
    TEST_CODEBOOKS_RESOURCE,
    LogMelCodebooks,
    LogMelKMeansTestTokenizer,
    StepAudioTokenizer,
    StreamingLogMel,
    TokenizerLoadError,
    load_tokenizer_engine,
    mel_filterbank,
    whisper_log_mel,
)
from duplexer.kernels.tokens import LINGUISTIC_CODEBOOK_SIZE, SEMANTIC_CODEBOOK_SIZE
from duplexer.runtime.events import INPUT_SAMPLE_RATE_HZ
from tests.test_tokenizer import VAP, needs_vap, speech

# --------------------------------------------------------------------------- log-mel features


def test_mel_filters_match_whispers() -> None:
    feature_extractor = pytest.importorskip(
        "faster_whisper.feature_extractor",
        reason="faster-whisper (Whisper's filters in NumPy) is not installed",
    )
    for n_mels in (80, 128):
        theirs = feature_extractor.FeatureExtractor.get_mel_filters(INPUT_SAMPLE_RATE_HZ, 400, n_mels)
        np.testing.assert_allclose(mel_filterbank(n_mels), theirs, rtol=1e-6, atol=1e-9)


@needs_vap
def test_whisper_log_mel_matches_whispers_feature_extractor() -> None:
    feature_extractor = pytest.importorskip(
        "faster_whisper.feature_extractor",
        reason="faster-whisper (Whisper's features in NumPy) is not installed",
    )
    audio = speech(6.0)[:7_680]
    theirs = feature_extractor.FeatureExtractor(feature_size=128)(audio, padding=0)
    ours = whisper_log_mel(audio)
    assert ours.shape == theirs.shape == (128, len(audio) // MEL_HOP)
    np.testing.assert_allclose(ours, theirs, atol=2e-4)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    cuts=st.lists(st.integers(0, 4_000), max_size=12),
)
def test_streaming_log_mel_frames_do_not_depend_on_how_the_stream_is_cut(seed: int, cuts: list[int]) -> None:
    audio = np.random.default_rng(seed).normal(0.0, 0.1, 4_000)
    whole = StreamingLogMel(40).push(audio)
    assert whole.shape == (len(audio) // MEL_HOP, 40)
    mel = StreamingLogMel(40)
    edges = [0, *sorted(cuts), len(audio)]
    pieces = [mel.push(audio[a:b]) for a, b in itertools.pairwise(edges)]
    np.testing.assert_array_equal(np.concatenate(pieces), whole)


# --------------------------------------------------------------------------- the test engine


def test_shipped_codebooks_are_small_and_cover_the_step_audio_code_ranges() -> None:
    path = Path(__file__).resolve().parent.parent / "duplexer" / "actors" / TEST_CODEBOOKS_RESOURCE
    assert path.stat().st_size < 100_000
    books = LogMelCodebooks.load()
    assert books.linguistic.size == LINGUISTIC_CODEBOOK_SIZE
    assert books.semantic.size == SEMANTIC_CODEBOOK_SIZE
    assert books.linguistic.low.shape == (32, LINGUISTIC_TEST_SPEC.n_mels // 2)
    assert books.semantic.high.shape == (64, SEMANTIC_TEST_SPEC.n_mels // 2)
    assert books.meta["files"] == 90 and "not Step-Audio" in books.meta["what"]


def test_unreadable_codebooks_name_the_file_and_the_fix(tmp_path: Path) -> None:
    broken = tmp_path / "books.npz"
    broken.write_bytes(b"not a zip")
    with pytest.raises(TokenizerLoadError, match=r"books.npz cannot be read .*tokenizer_fit"):
        LogMelCodebooks.load(broken)


@needs_vap
def test_refitting_on_the_vap_phrases_reproduces_the_shipped_codebooks() -> None:
    from duplexer.bench.tokenizer_fit import fit_codebooks

    shipped, refit = LogMelCodebooks.load(), fit_codebooks(VAP)
    assert refit.meta == shipped.meta
    for name in ("linguistic", "semantic"):
        for part in ("mean", "scale", "low", "high"):
            expected = getattr(getattr(shipped, name), part)
            np.testing.assert_allclose(getattr(getattr(refit, name), part), expected, rtol=1e-5, atol=1e-5)


@needs_vap
def test_test_engine_emits_4_linguistic_and_6_semantic_codes_per_240_ms_in_range() -> None:
    engine = LogMelKMeansTestTokenizer()
    audio = speech(6.0)
    ling = engine.open_linguistic(240).encode_now(audio)
    sem = engine.open_semantic(240).encode_now(audio)
    assert len(ling) == 6_000 // 60 and len(sem) == 6_000 // 40
    assert ling.min() >= 0 and ling.max() < LINGUISTIC_CODEBOOK_SIZE
    assert sem.min() >= 0 and sem.max() < SEMANTIC_CODEBOOK_SIZE
    # The codes follow the audio: speech spreads over many codes, digital silence is one code.
    assert len(set(ling.tolist())) > 40 and len(set(sem.tolist())) > 60
    silence = np.zeros(INPUT_SAMPLE_RATE_HZ, dtype=np.float32)
    assert len(set(engine.open_semantic(240).encode_now(silence).tolist())) == 1


@needs_vap
@pytest.mark.parametrize("segment_ms", [20, 40, 60, 120, 200, 240, 480, 990])
def test_test_engine_codes_do_not_depend_on_segment_length(segment_ms: int) -> None:
    engine = LogMelKMeansTestTokenizer()
    audio = speech(6.0)[: 3 * INPUT_SAMPLE_RATE_HZ]
    step = segment_ms * INPUT_SAMPLE_RATE_HZ // 1000
    for open_stream in (engine.open_linguistic, engine.open_semantic):
        whole = open_stream(240).encode_now(audio)
        stream = open_stream(segment_ms)
        pieces = [stream.encode_now(audio[i : i + step]) for i in range(0, len(audio), step)]
        np.testing.assert_array_equal(np.concatenate(pieces), whole)


def test_engines_are_found_by_name() -> None:
    assert isinstance(load_tokenizer_engine("logmel-kmeans-test"), LogMelKMeansTestTokenizer)
    with pytest.raises(TokenizerLoadError, match="unknown tokenizer engine 'paraformer'; choose one of step-audio"):
        load_tokenizer_engine("paraformer")


# --------------------------------------------------------------------------- step-audio: error paths


def complete_release(root: Path) -> Path:
    """A directory with every file name the released tokenizer has (contents are placeholders)."""
    paraformer = root / STEP_AUDIO_PARAFORMER_DIR
    paraformer.mkdir(parents=True)
    for name in ("config.yaml", "am.mvn", "model.pt"):
        (paraformer / name).write_bytes(b"placeholder")
    np.save(root / STEP_AUDIO_KMEANS_FILE, np.zeros((LINGUISTIC_CODEBOOK_SIZE, 512), np.float32))
    (root / STEP_AUDIO_SEMANTIC_ONNX).write_bytes(b"placeholder")
    return root


def test_step_audio_without_a_directory_asks_for_one() -> None:
    with pytest.raises(TokenizerLoadError, match=r"needs the directory of .*Step-Audio-Tokenizer"):
        load_tokenizer_engine("step-audio")


def test_step_audio_names_a_directory_that_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(TokenizerLoadError, match=r"directory .*nowhere does not exist"):
        StepAudioTokenizer(tmp_path / "nowhere")


def test_step_audio_lists_every_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TokenizerLoadError) as error:
        StepAudioTokenizer(tmp_path)
    message = str(error.value)
    assert "\n" not in message
    for name in (
        STEP_AUDIO_KMEANS_FILE,
        STEP_AUDIO_SEMANTIC_ONNX,
        "config.yaml",
        "am.mvn",
        "model.pt or model.pb",
    ):
        assert name in message


def test_step_audio_names_the_one_missing_file(tmp_path: Path) -> None:
    root = complete_release(tmp_path)
    (root / STEP_AUDIO_SEMANTIC_ONNX).unlink()
    with pytest.raises(TokenizerLoadError, match=r"lacks speech_tokenizer_v1\.onnx;"):
        StepAudioTokenizer(root)


def test_step_audio_rejects_centroids_of_the_wrong_shape(tmp_path: Path) -> None:
    root = complete_release(tmp_path)
    np.save(root / STEP_AUDIO_KMEANS_FILE, np.zeros((512, 8), np.float32))
    with pytest.raises(TokenizerLoadError, match=r"shape \(512, 8\); expected \(1024, encoder dim\)"):
        StepAudioTokenizer(root)


@pytest.mark.parametrize(
    "absent, named",
    [
        (("onnxruntime",), "onnxruntime-gpu (or onnxruntime)"),
        (("torch",), "torch"),
        (("funasr",), "funasr"),
        (("onnxruntime", "funasr"), "onnxruntime-gpu (or onnxruntime), funasr"),
    ],
)
def test_step_audio_names_every_missing_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, absent: tuple[str, ...], named: str
) -> None:
    for module in ("onnxruntime", "torch", "funasr"):
        # None makes the import raise ImportError; a bare module stands in for an installed one.
        monkeypatch.setitem(sys.modules, module, None if module in absent else types.ModuleType(module))
    with pytest.raises(TokenizerLoadError) as error:
        StepAudioTokenizer(complete_release(tmp_path))
    message = str(error.value)
    assert f"packages that are not installed: {named};" in message and "\n" not in message
