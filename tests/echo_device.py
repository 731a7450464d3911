"""Test helpers for echo over MQTT: a bot that speaks real recorded speech, and a device whose microphone
hears its own loudspeaker through a simulated room (duplexer.sims.echo_path) on top of the user's voice."""

from __future__ import annotations

import asyncio
import functools
import io
import json
import random
import sys
import wave
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pytest

from duplexer.actors.energy_vad import EnergyVad
from duplexer.actors.engines import AudioSink, Engines
from duplexer.actors.scripted import CannedAsr, ScriptedLlm, ScriptedTts
from duplexer.kernels.audio import StreamingResampler, resample
from duplexer.kernels.loudness import audible_spans
from duplexer.protocols.engine_factory import SCRIPTED_TTS_RATE_HZ, EngineFactory
from duplexer.protocols.mqtt_device import DeviceClient, ReceivedAudio
from duplexer.runtime.clock import Clock
from duplexer.runtime.events import FRAME_MS
from duplexer.runtime.logging import configure_logging
from duplexer.sims.echo_path import BOT_LEVEL_DBFS, USER_LEVEL_DBFS, EchoDevice, EchoPath, at_level
from tests.conftest import PHRASES, VOICED_DBFS

MIC_RATE_HZ = 16_000
MIC_FRAME = MIC_RATE_HZ * FRAME_MS // 1000
BOT_VOICE = "*_long_male_en-US-Wavenet-B.wav"
"""The bot speaks these recordings (a voice no user in the tests has)."""


@pytest.fixture(name="log")
def captured_log() -> Iterator[io.StringIO]:
    """The fixture ``log``: the structured log lines (INFO and up) written during the test."""
    stream = io.StringIO()
    configure_logging("INFO", stream=stream)
    yield stream
    configure_logging(stream=sys.__stderr__)


def log_lines(log: io.StringIO, event: str) -> list[dict[str, Any]]:
    return [entry for entry in map(json.loads, log.getvalue().splitlines()) if entry.get("event") == event]


def _read(path: Any, rate_hz: int) -> np.ndarray:
    with wave.open(str(path), "rb") as wav:
        raw = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.float64) / 32768.0
        return resample(raw, wav.getframerate(), rate_hz)


@functools.cache
def bot_voice(rate_hz: int = SCRIPTED_TTS_RATE_HZ) -> np.ndarray:
    """Continuous real speech for the bot: the voiced stretches of its recordings, at ``BOT_LEVEL_DBFS``."""
    parts = []
    for path in sorted(PHRASES.glob(BOT_VOICE)):
        x = _read(path, rate_hz)
        parts += [
            x[int(s * rate_hz / 1000) : int(e * rate_hz / 1000)] for s, e in audible_spans(x, rate_hz, VOICED_DBFS)
        ]
    return at_level(np.concatenate(parts), BOT_LEVEL_DBFS)


def user_speech(name: str) -> np.ndarray:
    """A VAP phrase as the user says it at the microphone: 16 kHz, at ``USER_LEVEL_DBFS``."""
    return at_level(_read(PHRASES / name, MIC_RATE_HZ), USER_LEVEL_DBFS)


class SpeakingTts:
    """The scripted TTS's timing (:class:`ScriptedTts`) with real recorded speech in place of its silence."""

    def __init__(self, inner: ScriptedTts) -> None:
        self.inner = inner
        self.sample_rate_hz = inner.sample_rate_hz
        self.renderable_instructions = inner.renderable_instructions
        self.voice = bot_voice(inner.sample_rate_hz)
        self.position = 0

    async def synthesize(self, text: str, reply_id: str, instructions: Sequence[str] = ()) -> AsyncIterator[bytes]:
        async for silence in self.inner.synthesize(text, reply_id, instructions):
            n = len(silence) // 2
            take = np.take(self.voice, np.arange(self.position, self.position + n), mode="wrap")
            self.position = (self.position + n) % len(self.voice)
            yield np.clip(np.rint(take * 32768.0), -32768, 32767).astype("<i2").tobytes()


def speaking_engines(reply_for: Callable[[str], str]) -> EngineFactory:
    """Scripted engines (energy VAD on the real audio, canned ASR, scripted LLM) whose bot speaks real speech."""

    def build(clock: Clock, sink: AudioSink) -> Engines:
        rng = random.Random(0)
        tts = ScriptedTts(clock, rng, sample_rate_hz=SCRIPTED_TTS_RATE_HZ)
        return Engines(
            vad=EnergyVad(),
            asr=CannedAsr(clock),
            llm=ScriptedLlm(clock, rng, ttft_ms=250.0, reply_for=reply_for),
            tts=SpeakingTts(tts),
            sink=sink,
        )

    return build


PREBUFFER_FRAMES = 2
"""The loudspeaker starts a reply once this many of its frames are queued (a small jitter buffer)."""


class EchoingDevice:
    """A robot with a loudspeaker and a microphone in one room: it plays the bot audio it receives through a
    small jitter buffer (flushing on ``playout_stopped``) and, when ``reports_playout``, tells the bridge when
    each stretch began to play (the ``played`` control); its microphone, sent in real time, carries that
    through the echo path plus whatever the user says (:meth:`say`)."""

    def __init__(self, path: EchoPath, reports_playout: bool = True) -> None:
        self.room = EchoDevice(path, MIC_RATE_HZ)
        self.reports_playout = reports_playout
        self.queue: deque[tuple[int, np.ndarray]] = deque()
        """Bot audio waiting for the loudspeaker: (audio/out seq, 16 kHz samples) per frame."""
        self.playing = False
        self.reports = 0
        self.resampler: StreamingResampler | None = None
        self.user = np.zeros(0)
        self.user_spans: list[tuple[float, float]] = []
        """Loop times (s) at which each thing the user said began and ended at the microphone."""
        self.client: DeviceClient | None = None
        self._said = asyncio.Event()

    def heard(self, frame: ReceivedAudio) -> None:
        """``on_audio``: bot audio from the bridge goes to the loudspeaker's queue."""
        rate = (self.client.out_rate_hz if self.client else None) or SCRIPTED_TTS_RATE_HZ
        if self.resampler is None or self.resampler.in_rate_hz != rate:
            self.resampler = StreamingResampler(rate, MIC_RATE_HZ, lead_in=True)
        pcm = np.frombuffer(self.resampler.process(frame.pcm), dtype="<i2").astype(np.float64) / 32768.0
        self.queue.append((frame.seq, pcm))

    def event(self, event: dict[str, Any]) -> None:
        """``on_event``: a stopped reply is flushed from the loudspeaker, as docs/mqtt.md asks."""
        if event.get("type") == "playout_stopped":
            self.queue.clear()
            self.playing = False

    def _play(self) -> np.ndarray:
        """The loudspeaker's next 20 ms: queued bot audio once the jitter buffer has filled, else silence."""
        assert self.client is not None
        out = np.zeros(MIC_FRAME)
        if not self.playing and len(self.queue) >= PREBUFFER_FRAMES:
            self.playing = True
            if self.reports_playout:  # this frame starts playing with the microphone frame sent next
                self.client.control("played", seq=self.queue[0][0], mic_seq=self.client.seq, mic_offset=0)
                self.reports += 1
        filled = 0
        while self.playing and filled < MIC_FRAME:
            if not self.queue:
                self.playing = False  # an underrun: the next stretch is reported again
                break
            seq, samples = self.queue.popleft()
            take = min(MIC_FRAME - filled, len(samples))
            out[filled : filled + take] = samples[:take]
            filled += take
            if take < len(samples):
                self.queue.appendleft((seq, samples[take:]))
        return out

    async def say(self, name: str) -> tuple[float, float]:
        """Say a VAP phrase into the microphone; returns when it has been said, with its span."""
        self.user = np.concatenate([self.user, user_speech(name)])
        self._said.clear()
        await self._said.wait()
        return self.user_spans[-1]

    async def run(self) -> None:
        """Send one microphone frame per 20 ms of loop time, for as long as the test runs."""
        assert self.client is not None
        loop = asyncio.get_running_loop()
        start_s, sent = loop.time(), 0
        speaking_since: float | None = None
        while True:
            now_s = loop.time()
            played = self._play()
            user, self.user = self._take(self.user)
            if np.any(user) and speaking_since is None:
                speaking_since = now_s
            if speaking_since is not None and not len(self.user):
                self.user_spans.append((speaking_since, now_s + FRAME_MS / 1000))
                speaking_since = None
                self._said.set()
            mic = self.room.mic_frame(played, user)
            self.client.send_frame(np.clip(np.rint(mic * 32768.0), -32768, 32767).astype("<i2").tobytes())
            sent += 1
            await asyncio.sleep(max(0.0, start_s + sent * FRAME_MS / 1000 - loop.time()))

    @staticmethod
    def _take(queue: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        frame = np.zeros(MIC_FRAME)
        frame[: min(MIC_FRAME, len(queue))] = queue[:MIC_FRAME]
        return frame, queue[MIC_FRAME:]


def self_interruptions(
    events: list[dict[str, Any]], arrivals_s: list[float], user_spans: list[tuple[float, float]]
) -> int:
    """Speech onsets the VAD reported while the user said nothing: the bot hearing itself."""
    onsets = [t for e, t in zip(events, arrivals_s, strict=True) if e["type"] == "speech_start"]
    return sum(1 for t in onsets if not any(start - 0.05 <= t <= end + 0.5 for start, end in user_spans))


def timeline(events: list[dict[str, Any]], arrivals_s: list[float], user_spans: list[tuple[float, float]]) -> str:
    """What happened when, for a failing assertion's message: user speech, VAD onsets, playout, states."""
    start = min([*arrivals_s, *(s for s, _ in user_spans)], default=0.0)
    lines = [f"user {a - start:6.2f}-{b - start:6.2f}" for a, b in user_spans]
    shown = ("speech_start", "playout_started", "playout_done", "playout_stopped", "state")
    for event, at in zip(events, arrivals_s, strict=True):
        if event["type"] in shown:
            lines.append(f"{at - start:6.2f} {event['type']} {event.get('reason', '')}")
    return "\n".join(lines)
