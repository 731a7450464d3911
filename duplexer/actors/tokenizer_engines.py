"""Audio tokenizer engines: what the tokenizer actor wraps, one code stream per codebook and session.

Step-Audio tokenizes user audio twice, in parallel: a linguistic tokenizer (16.7 Hz, 1024 codes)
and a semantic tokenizer (25 Hz, 4096 codes). An engine opens, per session, one
:class:`CodeStream` for each; a stream takes consecutive fixed-length segments of 16 kHz mono
audio and returns the codes they complete, keeping whatever context it needs between segments.

Two engines:

- :class:`StepAudioTokenizer` (``step-audio``) loads Step-Audio's released tokenizer from a local
  directory: the streaming Paraformer encoder plus k-means centroids for linguistic codes, the
  CosyVoice ONNX tokenizer for semantic codes; on GPU when one is available.
- :class:`LogMelKMeansTestTokenizer` (``logmel-kmeans-test``) is a test engine, not a
  Step-Audio replacement: product k-means codebooks over log-mel features, fitted on real
  speech and shipped with the package, so rates, chunking and interleaving run on real audio
  without a model.
"""

from __future__ import annotations

import asyncio
import importlib
import io
import json
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt

from duplexer.kernels.tokens import (
    GROUP_DURATION_MS,
    LINGUISTIC_CODEBOOK_SIZE,
    LINGUISTIC_PER_GROUP,
    SEMANTIC_CODEBOOK_SIZE,
    SEMANTIC_PER_GROUP,
)
from duplexer.runtime.events import INPUT_SAMPLE_RATE_HZ

FloatArray = npt.NDArray[np.float64]
CodeArray = npt.NDArray[np.int64]

LINGUISTIC_TOKEN_MS: Final = GROUP_DURATION_MS // LINGUISTIC_PER_GROUP
"""Audio covered by one linguistic token (60 ms, 16.7 Hz)."""
SEMANTIC_TOKEN_MS: Final = GROUP_DURATION_MS // SEMANTIC_PER_GROUP
"""Audio covered by one semantic token (40 ms, 25 Hz)."""

MEL_N_FFT: Final = 400
"""STFT size of every log-mel feature here: 25 ms at 16 kHz (Whisper's)."""
MEL_HOP: Final = 160
"""STFT hop: 10 ms at 16 kHz, so 6 frames per linguistic and 4 per semantic token."""
MEL_HOP_MS: Final = 1000 * MEL_HOP // INPUT_SAMPLE_RATE_HZ
LOG_FLOOR: Final = 1e-10
"""Mel power below this is clamped before the log (Whisper's floor)."""


class TokenizerLoadError(RuntimeError):
    """A tokenizer engine cannot start; the message is one line naming what is missing and the fix."""


class CodeStream(Protocol):
    """One codebook's tokenizer for one session.

    ``encode`` takes the next segment of the session's audio (float samples in [-1, 1) at
    16 kHz) and returns the codes that segment completes, in order. Segments are consecutive
    and have the length the stream was opened with.
    """

    async def encode(self, samples: npt.NDArray[np.float32]) -> CodeArray: ...


class TokenizerEngine(Protocol):
    """Opens per-session code streams for Step-Audio's linguistic and semantic codebooks."""

    name: str

    def open_linguistic(self, segment_ms: int) -> CodeStream: ...

    def open_semantic(self, segment_ms: int) -> CodeStream: ...


# --------------------------------------------------------------------------- log-mel features


def mel_filterbank(
    n_mels: int,
    n_fft: int = MEL_N_FFT,
    sample_rate_hz: int = INPUT_SAMPLE_RATE_HZ,
    f_max_hz: float | None = None,
) -> FloatArray:
    """Triangular mel filters, shape (n_mels, n_fft // 2 + 1), on the Slaney mel scale with
    Slaney area normalisation (the filters Whisper's log-mel uses)."""
    top_hz = sample_rate_hz / 2 if f_max_hz is None else f_max_hz
    bin_hz = np.fft.rfftfreq(n_fft, d=1.0 / sample_rate_hz)
    edges_hz = _mel_to_hz(np.linspace(0.0, _hz_to_mel(top_hz), n_mels + 2))
    widths = np.diff(edges_hz)
    distance = edges_hz[:, None] - bin_hz[None, :]
    rising = -distance[:-2] / widths[:-1, None]
    falling = distance[2:] / widths[1:, None]
    filters = np.maximum(0.0, np.minimum(rising, falling))
    filters *= (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]
    return filters


# Slaney's mel scale: linear (200/3 Hz per mel) below 1 kHz, logarithmic above.
_SLANEY_HZ_PER_MEL = 200.0 / 3.0
_SLANEY_LOG_START_HZ = 1000.0
_SLANEY_LOG_START_MEL = _SLANEY_LOG_START_HZ / _SLANEY_HZ_PER_MEL
_SLANEY_LOG_STEP = math.log(6.4) / 27.0


def _hz_to_mel(hz: float) -> float:
    if hz < _SLANEY_LOG_START_HZ:
        return hz / _SLANEY_HZ_PER_MEL
    return _SLANEY_LOG_START_MEL + math.log(hz / _SLANEY_LOG_START_HZ) / _SLANEY_LOG_STEP


def _mel_to_hz(mels: FloatArray) -> FloatArray:
    linear = mels * _SLANEY_HZ_PER_MEL
    logarithmic = _SLANEY_LOG_START_HZ * np.exp(_SLANEY_LOG_STEP * (mels - _SLANEY_LOG_START_MEL))
    return np.where(mels >= _SLANEY_LOG_START_MEL, logarithmic, linear)


def hann_window(n_fft: int = MEL_N_FFT) -> FloatArray:
    """Periodic Hann window (as torch.hann_window and Whisper use)."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)


def _mel_power(frames: FloatArray, filters: FloatArray) -> FloatArray:
    """Mel power of windowed frames (rows); computed row by row so results never depend on batching."""
    spectrum = np.fft.rfft(frames * hann_window(frames.shape[1]), axis=1)
    power = spectrum.real**2 + spectrum.imag**2
    # einsum without optimisation avoids BLAS, whose blocking can change the last bits with the
    # number of rows; streamed and whole-buffer features must agree exactly.
    return np.einsum("fk,mk->fm", power, filters, optimize=False)


class StreamingLogMel:
    """Causal log10 mel power frames of a stream, one per 10 ms hop, however the stream is cut.

    Frame ``j`` covers the 25 ms of audio ending at sample ``160 * (j + 1)``; audio before the
    stream start counts as silence. Feeding a buffer whole or in any pieces gives the same frames.
    """

    def __init__(self, n_mels: int) -> None:
        self.n_mels = n_mels
        self._filters = mel_filterbank(n_mels)
        self._history: FloatArray = np.zeros(MEL_N_FFT - MEL_HOP)

    def push(self, samples: npt.ArrayLike) -> FloatArray:
        """Append samples; returns the (n_frames, n_mels) frames they complete."""
        buffer = np.concatenate((self._history, np.asarray(samples, dtype=np.float64)))
        n_frames = (buffer.shape[0] - (MEL_N_FFT - MEL_HOP)) // MEL_HOP
        if n_frames <= 0:
            self._history = buffer
            return np.empty((0, self.n_mels))
        frames = np.lib.stride_tricks.sliding_window_view(buffer, MEL_N_FFT)[::MEL_HOP][:n_frames]
        self._history = buffer[n_frames * MEL_HOP :]
        return np.log10(np.maximum(_mel_power(frames, self._filters), LOG_FLOOR))


def whisper_log_mel(samples: npt.ArrayLike, n_mels: int = 128) -> npt.NDArray[np.float32]:
    """Whisper's log-mel spectrogram of a whole buffer, shape (n_mels, len // 160).

    Centred 25 ms frames with reflect padding, the last frame dropped, log10 clamped to 8
    decades below the maximum, then scaled as ``(x + 4) / 4``: the input of CosyVoice's tokenizer.
    """
    audio = np.asarray(samples, dtype=np.float64)
    padded = np.pad(audio, MEL_N_FFT // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, MEL_N_FFT)[::MEL_HOP][:-1]
    log_mel = np.log10(np.maximum(_mel_power(frames, mel_filterbank(n_mels)), LOG_FLOOR)).T
    log_mel = np.maximum(log_mel, log_mel.max() - 8.0)
    return ((log_mel + 4.0) / 4.0).astype(np.float32)


# --------------------------------------------------------------------------- the test engine


@dataclass(frozen=True)
class LogMelTokenSpec:
    """How the test engine turns log-mel frames into one codebook's tokens."""

    name: str
    n_mels: int
    token_ms: int
    codebook_size: int

    @property
    def frames_per_token(self) -> int:
        return self.token_ms // MEL_HOP_MS

    @property
    def centroids_per_half(self) -> int:
        """Centroids of each half-vector codebook; their product is the codebook size."""
        root = math.isqrt(self.codebook_size)
        assert root * root == self.codebook_size, "product codebooks need a square size"
        return root


LINGUISTIC_TEST_SPEC: Final = LogMelTokenSpec("linguistic", 40, LINGUISTIC_TOKEN_MS, LINGUISTIC_CODEBOOK_SIZE)
"""40 mel bands, 60 ms tokens, 32 x 32 = 1024 codes."""
SEMANTIC_TEST_SPEC: Final = LogMelTokenSpec("semantic", 80, SEMANTIC_TOKEN_MS, SEMANTIC_CODEBOOK_SIZE)
"""80 mel bands, 40 ms tokens, 64 x 64 = 4096 codes."""

TEST_CODEBOOKS_RESOURCE: Final = "data/test_tokenizer_codebooks.npz"
"""The shipped test codebooks, relative to this package (fitted by ``tokenizer_fit``)."""
_PACKAGE: Final = "duplexer.actors"


def pool_tokens(frames: FloatArray, frames_per_token: int) -> FloatArray:
    """Mean of each run of ``frames_per_token`` frames: one feature vector per token."""
    n_tokens = frames.shape[0] // frames_per_token
    usable = frames[: n_tokens * frames_per_token]
    return usable.reshape(n_tokens, frames_per_token, frames.shape[1]).mean(axis=1)


@dataclass(frozen=True)
class ProductCodebook:
    """Product k-means: one codebook for the low mel bands, one for the high ones.

    A standardised vector ``z = (x - mean) / scale`` gets code ``low * K + high``, where ``low``
    and ``high`` are the nearest centroids of its two halves and ``K`` the centroids per half,
    so K * K codes (the whole Step-Audio range) come from 2 K small centroids.
    """

    mean: FloatArray
    scale: FloatArray
    low: FloatArray
    high: FloatArray

    @property
    def size(self) -> int:
        return int(self.low.shape[0] * self.high.shape[0])

    @property
    def split(self) -> int:
        return int(self.low.shape[1])

    def quantize(self, vectors: FloatArray) -> CodeArray:
        """Codes of (n, dim) feature vectors."""
        z = (vectors - self.mean) / self.scale
        low = nearest(z[:, : self.split], self.low)
        high = nearest(z[:, self.split :], self.high)
        return low * self.high.shape[0] + high


def nearest(vectors: FloatArray, centroids: FloatArray) -> CodeArray:
    """Index of the nearest centroid of each row (squared Euclidean distance; row-independent)."""
    if vectors.shape[0] == 0:
        return np.empty(0, dtype=np.int64)
    distance = ((vectors[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2)
    return np.argmin(distance, axis=1).astype(np.int64)


@dataclass(frozen=True)
class LogMelCodebooks:
    """The test engine's two product codebooks, with how they were fitted (``meta``)."""

    linguistic: ProductCodebook
    semantic: ProductCodebook
    meta: dict[str, Any] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        arrays: dict[str, Any] = {"meta": np.array(json.dumps(self.meta, sort_keys=True))}
        for name, book in (("linguistic", self.linguistic), ("semantic", self.semantic)):
            for part in ("mean", "scale", "low", "high"):
                arrays[f"{name}_{part}"] = np.asarray(getattr(book, part), dtype=np.float32)
        with path.open("wb") as out:
            np.savez_compressed(out, **arrays)

    @classmethod
    def load(cls, path: Path | None = None) -> LogMelCodebooks:
        """Load from ``path``, or the codebooks shipped with the package."""
        try:
            if path is None:
                data = resources.files(_PACKAGE).joinpath(TEST_CODEBOOKS_RESOURCE).read_bytes()
            else:
                data = path.read_bytes()
            with np.load(io.BytesIO(data)) as npz:
                arrays = {key: npz[key] for key in npz.files}
        except (OSError, ValueError) as exc:
            where = path or f"duplexer/actors/{TEST_CODEBOOKS_RESOURCE}"
            raise TokenizerLoadError(
                f"test tokenizer codebooks {where} cannot be read ({exc}); "
                "regenerate them with python -m duplexer.bench.tokenizer_fit"
            ) from exc

        def book(name: str) -> ProductCodebook:
            parts = {part: arrays[f"{name}_{part}"].astype(np.float64) for part in ("mean", "scale", "low", "high")}
            return ProductCodebook(**parts)

        return cls(book("linguistic"), book("semantic"), json.loads(str(arrays["meta"])))


class _LogMelKMeansStream:
    """Streaming log-mel frames, pooled per token, quantised by a product codebook."""

    def __init__(self, spec: LogMelTokenSpec, codebook: ProductCodebook) -> None:
        self.spec = spec
        self.codebook = codebook
        self._mel = StreamingLogMel(spec.n_mels)
        self._frames: FloatArray = np.empty((0, spec.n_mels))

    def encode_now(self, samples: npt.ArrayLike) -> CodeArray:
        """Synchronous ``encode``: codes of the tokens completed by these samples."""
        frames = np.concatenate((self._frames, self._mel.push(samples)))
        k = self.spec.frames_per_token
        n_tokens = frames.shape[0] // k
        self._frames = frames[n_tokens * k :]
        return self.codebook.quantize(pool_tokens(frames[: n_tokens * k], k))

    async def encode(self, samples: npt.NDArray[np.float32]) -> CodeArray:
        return self.encode_now(samples)


class LogMelKMeansTestTokenizer:
    """Test engine: fixed product k-means codebooks over log-mel features. Not Step-Audio.

    Linguistic: 40-band log-mel averaged over each 60 ms, 1024 codes (32 x 32). Semantic:
    80-band log-mel averaged over each 40 ms, 4096 codes (64 x 64). The codebooks were fitted on
    the VAP phrase recordings (``python -m duplexer.bench.tokenizer_fit``). Codes depend only on
    the audio, never on how it is segmented, and computing them costs well under 1 % of real time.
    """

    name = "logmel-kmeans-test"

    def __init__(self, codebooks: LogMelCodebooks | None = None) -> None:
        self.codebooks = codebooks or LogMelCodebooks.load()

    def open_linguistic(self, segment_ms: int) -> _LogMelKMeansStream:
        return _LogMelKMeansStream(LINGUISTIC_TEST_SPEC, self.codebooks.linguistic)

    def open_semantic(self, segment_ms: int) -> _LogMelKMeansStream:
        return _LogMelKMeansStream(SEMANTIC_TEST_SPEC, self.codebooks.semantic)


# --------------------------------------------------------------------------- Step-Audio


STEP_AUDIO_PARAFORMER_DIR: Final = "dengcunqin/speech_paraformer-large_asr_nat-zh-cantonese-en-16k-vocab8501-online"
"""The streaming Paraformer (FunASR format) inside the tokenizer directory."""
STEP_AUDIO_KMEANS_FILE: Final = "linguistic_tokenizer.npy"
"""The 1024 k-means centroids over Paraformer encoder outputs."""
STEP_AUDIO_SEMANTIC_ONNX: Final = "speech_tokenizer_v1.onnx"
"""CosyVoice's 25 Hz speech tokenizer (4096 codes)."""
PARAFORMER_CONFIG_FILE: Final = "config.yaml"
PARAFORMER_CMVN_FILE: Final = "am.mvn"
PARAFORMER_WEIGHT_FILES: Final = ("model.pt", "model.pb")
"""FunASR model directories ship their weights under one of these names."""
PARAFORMER_LOOKAHEAD_FRAMES: Final = 5
"""Encoder lookahead, in 60 ms frames: Step-Audio's streaming chunk setting is [0, 4, 5]."""
PARAFORMER_ENCODER_LOOK_BACK: Final = 4
PARAFORMER_DECODER_LOOK_BACK: Final = 1
STEP_AUDIO_PACKAGES: Final = (
    ("onnxruntime", "onnxruntime-gpu (or onnxruntime)"),
    ("torch", "torch"),
    ("funasr", "funasr"),
)
"""(import name, pip name) of what the step-audio engine needs beyond duplexer's own dependencies."""


def step_audio_missing_files(model_dir: Path) -> list[str]:
    """Paths, relative to ``model_dir``, that the released tokenizer has and ``model_dir`` lacks."""
    paraformer = model_dir / STEP_AUDIO_PARAFORMER_DIR
    missing = [
        name
        for name in (
            STEP_AUDIO_KMEANS_FILE,
            STEP_AUDIO_SEMANTIC_ONNX,
            f"{STEP_AUDIO_PARAFORMER_DIR}/{PARAFORMER_CONFIG_FILE}",
            f"{STEP_AUDIO_PARAFORMER_DIR}/{PARAFORMER_CMVN_FILE}",
        )
        if not (model_dir / name).is_file()
    ]
    if not any((paraformer / weights).is_file() for weights in PARAFORMER_WEIGHT_FILES):
        missing.append(f"{STEP_AUDIO_PARAFORMER_DIR}/{' or '.join(PARAFORMER_WEIGHT_FILES)}")
    return missing


def _import_packages() -> dict[str, Any]:
    """Import the step-audio engine's packages, or fail naming every missing one."""
    modules: dict[str, Any] = {}
    missing: list[str] = []
    for module_name, pip_name in STEP_AUDIO_PACKAGES:
        try:
            modules[module_name] = importlib.import_module(module_name)
        except ImportError:
            missing.append(pip_name)
    if missing:
        raise TokenizerLoadError(
            f"step-audio tokenizer needs packages that are not installed: {', '.join(missing)}; "
            f"pip install {' '.join(name.split(' ')[0] for name in missing)}"
        )
    return modules


def _load_kmeans(path: Path) -> npt.NDArray[np.float32]:
    try:
        centroids = np.load(path)
    except (OSError, ValueError) as exc:
        raise TokenizerLoadError(f"step-audio tokenizer: {path} is not a NumPy array file ({exc})") from exc
    if centroids.ndim != 2 or centroids.shape[0] != LINGUISTIC_CODEBOOK_SIZE:
        raise TokenizerLoadError(
            f"step-audio tokenizer: {path} holds an array of shape {centroids.shape}; expected "
            f"({LINGUISTIC_CODEBOOK_SIZE}, encoder dim) k-means centroids"
        )
    return centroids.astype(np.float32)


class StepAudioTokenizer:
    """Step-Audio's released dual-codebook tokenizer, loaded from a local directory.

    Expected layout (as released in ``stepfun-ai/Step-Audio-Tokenizer``)::

        MODEL_DIR/linguistic_tokenizer.npy          1024 k-means centroids (linguistic codes)
        MODEL_DIR/speech_tokenizer_v1.onnx          CosyVoice tokenizer (semantic codes)
        MODEL_DIR/dengcunqin/speech_paraformer-large_asr_nat-zh-cantonese-en-16k-vocab8501-online/
            config.yaml, am.mvn, model.pt           streaming Paraformer (FunASR)

    Needs ``onnxruntime`` (``onnxruntime-gpu`` for CUDA), ``torch`` and ``funasr``. Linguistic
    codes: each 240 ms chunk goes through the streaming Paraformer encoder (chunk [0, 4, 5] with
    its encoder cache), and each 60 ms encoder frame gets its nearest centroid. Semantic codes:
    Whisper's 128-band log-mel of each window goes through the ONNX tokenizer (one code per
    40 ms). Step-Audio's offline path tokenizes whole utterances; tokenizing windows
    independently trades some semantic context for latency, so prefer windows of 480 ms or more
    when latency allows. Model calls run in worker threads, one at a time per model.

    Raises :class:`TokenizerLoadError` with a one-line message when the directory, a file or a
    package is missing. Not exercised against the real weights in this repository's tests.
    """

    name = "step-audio"

    def __init__(self, model_dir: str | Path | None, device: str = "auto") -> None:
        if model_dir is None or str(model_dir) == "":
            raise TokenizerLoadError(
                "step-audio tokenizer needs the directory of Step-Audio's released tokenizer "
                "(stepfun-ai/Step-Audio-Tokenizer); pass its local path"
            )
        root = Path(model_dir).expanduser()
        if not root.is_dir():
            raise TokenizerLoadError(
                f"step-audio tokenizer directory {root} does not exist; download "
                "stepfun-ai/Step-Audio-Tokenizer there or pass the right path"
            )
        missing = step_audio_missing_files(root)
        if missing:
            raise TokenizerLoadError(
                f"step-audio tokenizer directory {root} lacks {', '.join(missing)}; "
                "it must hold the complete stepfun-ai/Step-Audio-Tokenizer release"
            )
        self.model_dir = root
        self.kmeans = _load_kmeans(root / STEP_AUDIO_KMEANS_FILE)
        modules = _import_packages()
        self._torch = modules["torch"]
        self.device = ("cuda" if self._torch.cuda.is_available() else "cpu") if device == "auto" else device
        self._semantic = self._load_semantic(modules["onnxruntime"], root / STEP_AUDIO_SEMANTIC_ONNX)
        self._paraformer = self._load_paraformer(modules["funasr"], root / STEP_AUDIO_PARAFORMER_DIR)
        self._centroids = self._torch.from_numpy(self.kmeans).to(self.device)
        self._linguistic_lock = threading.Lock()
        self._semantic_lock = threading.Lock()

    def _load_semantic(self, ort: Any, path: Path) -> Any:
        wanted = ["CUDAExecutionProvider"] if self.device.startswith("cuda") else []
        providers = [p for p in wanted if p in ort.get_available_providers()] + ["CPUExecutionProvider"]
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = 1
        try:
            return ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:
            raise TokenizerLoadError(f"step-audio tokenizer: cannot load {path}: {exc}") from exc

    def _load_paraformer(self, funasr: Any, path: Path) -> Any:
        try:
            model = funasr.AutoModel(model=str(path), device=self.device, disable_update=True)
        except Exception as exc:
            raise TokenizerLoadError(f"step-audio tokenizer: cannot load the Paraformer in {path}: {exc}") from exc
        for method in ("init_cache", "encode_chunk"):
            if not hasattr(model.model, method):
                raise TokenizerLoadError(
                    f"step-audio tokenizer: the model in {path} has no {method}(); it must be FunASR's "
                    "streaming Paraformer (ParaformerStreaming)"
                )
        model.model.eval()
        return model

    def open_linguistic(self, segment_ms: int) -> CodeStream:
        if segment_ms % LINGUISTIC_TOKEN_MS:
            raise ValueError(f"linguistic segments must be whole 60 ms encoder frames, got {segment_ms} ms")
        return _ParaformerKMeansStream(self, segment_ms // LINGUISTIC_TOKEN_MS)

    def open_semantic(self, segment_ms: int) -> CodeStream:
        return _CosyVoiceStream(self)

    def _linguistic_codes(self, samples: npt.NDArray[np.float32], cache: dict[str, Any]) -> CodeArray:
        torch = self._torch
        from funasr.utils.load_utils import extract_fbank

        model, config = self._paraformer.model, self._paraformer.kwargs
        with self._linguistic_lock, torch.no_grad():
            speech, lengths = extract_fbank(
                [torch.from_numpy(samples)],
                data_type="sound",
                frontend=config["frontend"],
                cache=cache["frontend"],
                is_final=False,
            )
            if speech.shape[1] == 0:
                return np.empty(0, dtype=np.int64)
            encoded, _ = model.encode_chunk(
                speech.to(self.device), lengths.to(self.device), cache=cache, is_final=False
            )
            frames = encoded[0, -int(lengths[0]) :].float()
            codes = torch.cdist(frames, self._centroids).argmin(dim=1)
            return codes.cpu().numpy().astype(np.int64)

    def _new_paraformer_cache(self, chunk_frames: int) -> dict[str, Any]:
        cache: dict[str, Any] = {}
        settings = {
            **self._paraformer.kwargs,
            "chunk_size": [0, chunk_frames, PARAFORMER_LOOKAHEAD_FRAMES],
            "encoder_chunk_look_back": PARAFORMER_ENCODER_LOOK_BACK,
            "decoder_chunk_look_back": PARAFORMER_DECODER_LOOK_BACK,
        }
        self._paraformer.model.init_cache(cache, **settings)
        return cache

    def _semantic_codes(self, samples: npt.NDArray[np.float32]) -> CodeArray:
        features = whisper_log_mel(samples)[None]
        inputs = self._semantic.get_inputs()
        with self._semantic_lock:
            tokens = self._semantic.run(
                None,
                {
                    inputs[0].name: features,
                    inputs[1].name: np.array([features.shape[2]], dtype=np.int32),
                },
            )[0]
        return np.asarray(tokens, dtype=np.int64).reshape(-1)


class _ParaformerKMeansStream:
    """Linguistic codes of one session: the streaming encoder's cache lives here."""

    def __init__(self, engine: StepAudioTokenizer, chunk_frames: int) -> None:
        self._engine = engine
        self._cache = engine._new_paraformer_cache(chunk_frames)

    async def encode(self, samples: npt.NDArray[np.float32]) -> CodeArray:
        return await asyncio.to_thread(self._engine._linguistic_codes, samples, self._cache)


class _CosyVoiceStream:
    """Semantic codes of one session: each window is tokenized on its own."""

    def __init__(self, engine: StepAudioTokenizer) -> None:
        self._engine = engine

    async def encode(self, samples: npt.NDArray[np.float32]) -> CodeArray:
        return await asyncio.to_thread(self._engine._semantic_codes, samples)


# --------------------------------------------------------------------------- by name

TOKENIZER_ENGINES: Final[dict[str, Callable[..., TokenizerEngine]]] = {
    StepAudioTokenizer.name: StepAudioTokenizer,
    LogMelKMeansTestTokenizer.name: lambda model_dir=None, device="auto": LogMelKMeansTestTokenizer(),
}
"""Engine name -> factory taking (model_dir, device)."""


def load_tokenizer_engine(name: str, model_dir: str | Path | None = None, device: str = "auto") -> TokenizerEngine:
    """The named engine; ``model_dir`` is the Step-Audio tokenizer directory for ``step-audio``."""
    factory = TOKENIZER_ENGINES.get(name)
    if factory is None:
        raise TokenizerLoadError(f"unknown tokenizer engine {name!r}; choose one of {', '.join(TOKENIZER_ENGINES)}")
    return factory(model_dir, device)
