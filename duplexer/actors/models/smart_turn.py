"""The audio end-of-turn model: Smart Turn v3.2 (ONNX, 8.7 MB, BSD-2) on onnxruntime.

It hears what a transcript cannot: the falling pitch and lengthened last syllable of a finished
question against the level, held voice of a speaker who pauses mid-sentence. The model file ships
inside the ``pipecat-ai`` wheel; it is found through that distribution's file list, so the framework
itself is never imported.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from duplexer.actors.engines import Message
from duplexer.actors.models.compute_gate import ComputeGate, Urgency, gated
from duplexer.actors.models.packages import ModelPackageMissing, require_module
from duplexer.kernels.audio import pcm16_to_float
from duplexer.kernels.log_mel import SAMPLE_RATE_HZ, log_mel_window

SMART_TURN_DISTRIBUTION = "pipecat-ai"
SMART_TURN_MODEL_FILE = "smart-turn-v3.2-cpu.onnx"
NO_AUDIO_PROBABILITY = 0.5
"""With no audio the model has nothing to say: the controller's "no opinion"."""
MIN_AUDIO_SAMPLES = SAMPLE_RATE_HZ // 10
"""Under 100 ms of audio there is no prosody to hear."""


def smart_turn_model_path() -> Path:
    """The ONNX file in the installed ``pipecat-ai`` distribution, found from its file list (no import)."""
    try:
        files = importlib.metadata.files(SMART_TURN_DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for file in files:
        if file.name == SMART_TURN_MODEL_FILE:
            path = Path(str(file.locate()))
            if path.is_file():
                return path
    raise ModelPackageMissing(
        f"the Smart Turn end-of-turn model ({SMART_TURN_MODEL_FILE}) comes from the package "
        f"{SMART_TURN_DISTRIBUTION}: pip install {SMART_TURN_DISTRIBUTION}"
    )


class SmartTurn:
    """P(turn complete) from the last 8 s of the user's turn (PCM16 mono at 16 kHz).

    One intra-op thread: a call is ~50 ms of CPU on one core, and the other core stays free for
    the ASR and the reply. The transcript is not read; :mod:`duplexer.actors.turn_fusion` combines
    this with the text detector.
    """

    def __init__(self, model_path: Path | None = None, gate: ComputeGate | None = None) -> None:
        ort = require_module("onnxruntime", "onnxruntime", "the Smart Turn end-of-turn model")
        options = ort.SessionOptions()
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
        options.intra_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        path = model_path or smart_turn_model_path()
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.lock = threading.Lock()
        self.gate = gate
        self.last_call_ms = 0.0
        """Wall time of the latest call (features and model), for benchmarks."""

    def probability_of_samples(self, samples: np.ndarray) -> float:
        """Blocking: P(complete) for float audio in [-1, 1) at 16 kHz (only the last 8 s are heard)."""
        if len(samples) < MIN_AUDIO_SAMPLES:
            return NO_AUDIO_PROBABILITY
        started = time.perf_counter()
        features = log_mel_window(samples)[None, :, :]
        with self.lock, gated(self.gate, Urgency.TURN_DETECTOR):
            (out,) = self.session.run(None, {self.input_name: features})[:1]
        self.last_call_ms = (time.perf_counter() - started) * 1000.0
        return float(np.asarray(out).reshape(-1)[0])

    def probability_blocking(self, pcm: bytes) -> float:
        """Blocking: P(complete) for PCM16 mono 16 kHz audio of the turn so far."""
        return self.probability_of_samples(pcm16_to_float(pcm[: len(pcm) - len(pcm) % 2]))

    async def end_of_turn_probability(self, transcript: str, context: Sequence[Message], audio: bytes = b"") -> float:
        """The :class:`~duplexer.actors.engines.TurnDetectorEngine` call: audio only, words ignored."""
        return await asyncio.to_thread(self.probability_blocking, audio)
