"""Engines for every transport (WebRTC calls, MQTT devices): the real models, or model-free scripted ones.

A transport builds one session's engines with an :data:`EngineFactory`, on the
session's clock and playing into the transport's sink. The real models are
imported only when asked for, so the scripted engines need none of their packages.
By default the scripted bot hums instead of speaking silence, so a listener hears
when it talks and when it stops, and a test can detect its audio on the far side of Opus.
"""

from __future__ import annotations

import importlib
import math
import random
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence

import numpy as np

from duplexer.actors.asr import AsrParams
from duplexer.actors.energy_vad import EnergyVad
from duplexer.actors.engines import AudioSink, Engines
from duplexer.actors.llm import LlmParams
from duplexer.actors.pipeline import PipelineConfig
from duplexer.actors.reply_guard import ReplyGuardParams
from duplexer.actors.scripted import CannedAsr, ScriptedLlm, ScriptedTts, echo_reply
from duplexer.actors.tts import TtsParams
from duplexer.actors.vad import VadParams
from duplexer.policies.params import PolicyParams
from duplexer.runtime.clock import Clock

EngineFactory = Callable[[Clock, AudioSink], Engines]
"""Builds one session's engines on the session's clock, playing into the given sink."""

REAL_ENGINES_MODULE = "duplexer.actors.models.loading"
SCRIPTED_TTS_RATE_HZ = 22_050
"""Piper's rate, so scripted sessions exercise the same output resampling (and devices the same
non-16 kHz output) as real ones."""
HUM_HZ = 220.0
HUM_AMPLITUDE = 0.15
PIPER_LEAD_SILENCE_MS = 250.0
"""About the digital silence Piper opens each reply with (220-290 ms measured): benchmarks give
the humming voice this much so that latency as heard differs from the first chunk as it does live."""


class EnginesUnavailable(RuntimeError):
    """The requested engines cannot be built on this machine; the message says what to install."""


class HummingTts:
    """Scripted TTS timing (:class:`ScriptedTts`) with a soft, continuous tone instead of silence.

    ``lead_silence_ms`` of digital silence open each reply's first chunk, as a real TTS's do; the
    reply's later clauses start at once, so a barge-in never lands in a pause of the scripted voice.
    """

    def __init__(
        self,
        inner: ScriptedTts,
        hum_hz: float = HUM_HZ,
        amplitude: float = HUM_AMPLITUDE,
        lead_silence_ms: float = 0.0,
    ) -> None:
        self.inner = inner
        self.sample_rate_hz = inner.sample_rate_hz
        self.renderable_instructions = inner.renderable_instructions
        self.hum_hz, self.amplitude = hum_hz, amplitude
        self.lead_silence_ms = lead_silence_ms
        self._opened: deque[str] = deque(maxlen=64)
        """Replies whose first clause has been rendered (with the lead silence)."""

    async def synthesize(self, text: str, reply_id: str, instructions: Sequence[str] = ()) -> AsyncIterator[bytes]:
        step = 2.0 * math.pi * self.hum_hz / self.sample_rate_hz
        phase = 0.0
        lead = b""
        if reply_id not in self._opened:
            self._opened.append(reply_id)
            lead = bytes(2 * round(self.sample_rate_hz * self.lead_silence_ms / 1000.0))
        async for silence in self.inner.synthesize(text, reply_id, instructions):
            n = len(silence) // 2
            tone = self.amplitude * np.sin(phase + step * np.arange(n))
            phase = (phase + step * n) % (2.0 * math.pi)
            yield lead + (tone * 32767.0).astype("<i2").tobytes()
            lead = b""


def scripted_engines(
    transcripts: Sequence[str] = (),
    reply_for: Callable[[str], str] = echo_reply,
    seed: int = 0,
    llm_ttft_ms: float = 250.0,
    tts_rate_hz: int = SCRIPTED_TTS_RATE_HZ,
    hum: bool = True,
    lead_silence_ms: float = 0.0,
) -> EngineFactory:
    """Model-free engines: EnergyVad on the session's real audio, canned transcripts, scripted LLM and TTS.

    ``hum`` gives the scripted TTS a soft tone (:class:`HummingTts`) instead of silence, each reply
    opening with ``lead_silence_ms`` of digital silence (:data:`PIPER_LEAD_SILENCE_MS` is Piper's).
    """

    def build(clock: Clock, sink: AudioSink) -> Engines:
        rng = random.Random(seed)
        tts = ScriptedTts(clock, rng, sample_rate_hz=tts_rate_hz)
        return Engines(
            vad=EnergyVad(),
            asr=CannedAsr(clock, transcripts),
            llm=ScriptedLlm(clock, rng, ttft_ms=llm_ttft_ms, reply_for=reply_for),
            tts=HummingTts(tts, lead_silence_ms=lead_silence_ms) if hum else tts,
            sink=sink,
        )

    return build


WHISPER_ASR = AsrParams(partial_interval_ms=float("inf"))
"""No partials with Whisper: each call transcribes the whole segment again (~0.1-0.15 s with its short
window), so partials cannot make the final cheaper, and on 2 cores a running partial delays the
final, which starts at the VAD's speech stop, by up to one call."""


def real_pipeline(policy: PolicyParams, tts: TtsParams | None = None) -> PipelineConfig:
    """The actors' settings for the real models, on every command that runs them: Whisper without
    partials, and the reply guard (SmolLM2-135M repeats its own replies and echoes its prompt)."""
    llm = LlmParams(reply_guard=ReplyGuardParams())
    return PipelineConfig(policy=policy, vad=VadParams(), asr=WHISPER_ASR, llm=llm, tts=tts or TtsParams())


def real_engines() -> EngineFactory:
    """``duplexer.actors.models.loading.build_engines``, imported only when real engines are asked for."""
    try:
        module = importlib.import_module(REAL_ENGINES_MODULE)
    except ImportError as exc:
        raise EnginesUnavailable(
            f"--engines real needs {REAL_ENGINES_MODULE}, which cannot be imported ({exc}); "
            "install the real-model packages, or use --engines scripted"
        ) from None
    build = getattr(module, "build_engines", None)
    if not callable(build):
        raise EnginesUnavailable(
            f"--engines real needs {REAL_ENGINES_MODULE}.build_engines(clock, sink), which it does not define"
        )
    factory: EngineFactory = build
    return factory


def preload_real_models() -> None:
    """Load the real models now (blocking), so the first call does not wait and a missing package shows early."""
    module = importlib.import_module(REAL_ENGINES_MODULE)
    module.load_models()
