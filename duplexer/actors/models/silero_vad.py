"""Voice activity: Silero VAD's ONNX model (package ``silero-vad``) on onnxruntime, 32 ms windows at 16 kHz."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from duplexer.actors.models.packages import require_module, silero_model_path
from duplexer.kernels.audio import pcm16_to_float
from duplexer.runtime.events import INPUT_SAMPLE_RATE_HZ

SILERO_WINDOW_SAMPLES = 512
SILERO_CONTEXT_SAMPLES = 64


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
