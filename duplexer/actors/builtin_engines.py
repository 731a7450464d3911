"""The built-in engines as :class:`EnginePlugin` objects, so ``--vad/--asr/--llm/--tts/--turn-detector
NAME`` resolves a built-in exactly as it resolves a plug-in (:mod:`duplexer.actors.plugins`).

The real models come from the process's shared real set (:func:`duplexer.actors.models.loading.load_models`),
imported only when one is built: choosing ``--asr whisper`` loads that set once, and every session
shares it, as the real engines' sessions do. The model-free ones are built per session.
"""

from __future__ import annotations

import random
from typing import Any

from duplexer.actors.energy_vad import EnergyVad
from duplexer.actors.plugins import EnginePlugin
from duplexer.actors.scripted import ScriptedTts
from duplexer.runtime.clock import Clock


def _models() -> Any:
    from duplexer.actors.models.loading import load_models

    return load_models()


def _silero(clock: Clock) -> Any:
    from duplexer.actors.models.silero_vad import SileroVad

    return SileroVad()  # one per session: it keeps the stream's state


SILERO_VAD = EnginePlugin("vad", _silero, "Silero VAD (ONNX), the real models' VAD")
ENERGY_VAD = EnginePlugin("vad", lambda clock: EnergyVad(), "frame loudness against two thresholds; no model")
WHISPER_ASR = EnginePlugin("asr", lambda clock: _models().asr, "Whisper tiny.en (faster-whisper), short window")
LOCAL_LLM = EnginePlugin("llm", lambda clock: _models().llm, "SmolLM2-135M in llama.cpp, in this process")
PIPER_TTS = EnginePlugin("tts", lambda clock: _models().tts, "Piper, the joe voice")
SILENT_TTS = EnginePlugin(
    "tts", lambda clock: ScriptedTts(clock, random.Random(0)), "silence as long as the text would take; no model"
)
SMART_TURN = EnginePlugin(
    "turn_detector", lambda clock: _models().audio_turn_detector, "Smart Turn v3.2: the turn's audio"
)
SMOLLM2_TURN = EnginePlugin(
    "turn_detector", lambda clock: _models().text_turn_detector, "SmolLM2 on the transcript: the turn's words"
)
FUSED_TURN = EnginePlugin(
    "turn_detector", lambda clock: _models().turn_detector, "Smart Turn and the text detector fused (the default)"
)
NO_TURN_DETECTOR = EnginePlugin("turn_detector", lambda clock: None, "none: the end of turn is silence alone")
