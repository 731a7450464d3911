"""The real models loaded once per process and shared by its sessions, and a session's engines built from them."""

from __future__ import annotations

import atexit
import threading
from dataclasses import dataclass, field

import numpy as np

from duplexer.actors.context import ContextManager
from duplexer.actors.engines import AudioSink, Engines, TurnDetectorEngine
from duplexer.actors.models.compute_gate import ComputeGate, Urgency, gated
from duplexer.actors.models.llama_llm import LlamaLlm, LlamaParams
from duplexer.actors.models.llama_turn_detector import LlamaTurnDetector, LlamaTurnDetectorParams
from duplexer.actors.models.piper_tts import DEFAULT_OUTPUT_RATE_HZ, PiperTts
from duplexer.actors.models.silero_vad import SileroVad
from duplexer.actors.models.smart_turn import SmartTurn
from duplexer.actors.models.whisper_asr import WhisperAsr
from duplexer.actors.turn_fusion import FusedTurnDetector
from duplexer.runtime.clock import Clock
from duplexer.runtime.events import INPUT_SAMPLE_RATE_HZ


@dataclass(frozen=True)
class RealEngineConfig:
    output_rate_hz: int = DEFAULT_OUTPUT_RATE_HZ
    llm: LlamaParams = field(default_factory=LlamaParams)
    tts_length_scale: float = 1.0
    turn_detector: LlamaTurnDetectorParams | None = field(default_factory=LlamaTurnDetectorParams)
    """None: no text turn detector."""
    audio_turn_detector: bool = True
    """Smart Turn v3.2 hears the turn's prosody; with the text detector too, the two are fused
    (:class:`FusedTurnDetector`). Neither: the end-of-turn wait is silence alone."""
    compute_gate: bool = True
    """Model steps take turns on the cores (:class:`ComputeGate`); off: they run side by side."""


@dataclass
class LoadedModels:
    """Models are loaded once per process and shared by its sessions (each gets its own VAD state)."""

    asr: WhisperAsr
    llm: LlamaLlm
    tts: PiperTts
    text_turn_detector: LlamaTurnDetector | None = None
    audio_turn_detector: SmartTurn | None = None

    @property
    def turn_detector(self) -> TurnDetectorEngine | None:
        """What a session's turn-detector actor asks: both detectors fused, or the one there is."""
        if self.text_turn_detector is not None and self.audio_turn_detector is not None:
            return FusedTurnDetector(self.text_turn_detector, self.audio_turn_detector)
        return self.text_turn_detector or self.audio_turn_detector

    def warm_up(self) -> None:
        """One small call per model at load, so the first user turn does not pay first-call costs
        (llama.cpp touches its memory-mapped weights, onnxruntime and CTranslate2 allocate):
        SmolLM2's first token took 290 ms cold against 20 ms warm. The LLM's call leaves the
        default system prompt and example turns in its KV cache, so a session's first reply evaluates only the
        user's words (llama.cpp reuses the longest prefix of the last prompt)."""
        self.asr.transcribe_audio(np.zeros(INPUT_SAMPLE_RATE_HZ, dtype=np.float32))
        with self.llm.lock, gated(self.llm.gate, Urgency.LLM):
            self.llm.model.create_chat_completion(
                messages=[{"role": role, "content": text} for role, text in ContextManager().prompt("Hi")],
                max_tokens=WARM_UP_LLM_TOKENS,
                temperature=0.0,
            )
        self.tts.synthesize_blocking("Hello.")
        if self.text_turn_detector is not None:
            self.text_turn_detector.probability_blocking("hello", (("assistant", "Hi!"),))
        if self.audio_turn_detector is not None:
            self.audio_turn_detector.probability_of_samples(np.zeros(INPUT_SAMPLE_RATE_HZ, dtype=np.float32))


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
        if models.text_turn_detector is not None:
            models.text_turn_detector.close()
    _loaded.clear()


def load_models(config: RealEngineConfig | None = None) -> LoadedModels:
    cfg = config or RealEngineConfig()
    with _load_lock:
        if cfg not in _loaded:
            gate = ComputeGate() if cfg.compute_gate else None
            detector = None if cfg.turn_detector is None else LlamaTurnDetector(params=cfg.turn_detector, gate=gate)
            models = LoadedModels(
                asr=WhisperAsr(gate=gate),
                llm=LlamaLlm(params=cfg.llm, gate=gate),
                tts=PiperTts(sample_rate_hz=cfg.output_rate_hz, length_scale=cfg.tts_length_scale, gate=gate),
                text_turn_detector=detector,
                audio_turn_detector=SmartTurn(gate=gate) if cfg.audio_turn_detector else None,
            )
            models.warm_up()
            _loaded[cfg] = models
        return _loaded[cfg]


def build_engines(clock: Clock, sink: AudioSink, config: RealEngineConfig | None = None) -> Engines:
    """The default real engines for one session; heavy models are shared across sessions."""
    models = load_models(config)
    return Engines(
        vad=SileroVad(), asr=models.asr, llm=models.llm, tts=models.tts, sink=sink, turn_detector=models.turn_detector
    )
