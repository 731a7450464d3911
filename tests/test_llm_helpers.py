"""Helpers shared by the LLM backend tests: a real llama.cpp server process and a real-time session driver.

(No tests here: the name only keeps the LLM test files together.)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from duplexer.actors.context import ContextManager
from duplexer.actors.engines import Engines
from duplexer.actors.llm import LlmParams
from duplexer.actors.models.packages import smollm2_model_path
from duplexer.actors.pipeline import PipelineConfig, start_pipeline
from duplexer.actors.scripted import ScriptedAsr, ScriptedTts, ScriptedVad, SpeechSpan, SpeechTimeline
from duplexer.policies.controller import PolicyParams
from duplexer.runtime.clock import LoopClock
from duplexer.runtime.events import FRAME_MS, FRAME_SAMPLES, INPUT_SAMPLE_RATE_HZ, AudioFrame, Event
from duplexer.runtime.session import Session
from duplexer.sims.simulator import RecordingSink

SERVER_START_TIMEOUT_S = 90.0
SERVER_STOP_TIMEOUT_S = 10.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class LlamaServer:
    """``python -m llama_cpp.server`` with the bundled SmolLM2, on 127.0.0.1; its output goes to ``log_path``.

    ``interrupt_requests`` is off, so the server finishes one request before the next (it then
    serves one at a time: a request left running would hold up the next one).
    """

    log_path: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def launch(self) -> None:
        """Start the process without waiting for it to serve."""
        command = [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(smollm2_model_path()),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--n_threads",
            "2",
            "--interrupt_requests",
            "False",
        ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # its disconnect notices are prints
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout_s: float = SERVER_START_TIMEOUT_S) -> None:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"llama server exited with {self.process.returncode}: {self.log()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base_url}/models", timeout=1.0).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"llama server not ready within {timeout_s} s: {self.log()[-2000:]}")

    def start(self) -> LlamaServer:
        self.launch()
        self.wait_ready()
        return self

    def kill(self) -> None:
        """SIGKILL: the server dies at once, as a crashed one would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(SERVER_STOP_TIMEOUT_S)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(SERVER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def prefix_hits(self) -> list[tuple[int, int]]:
        """Per request, as llama.cpp logs it: (prompt tokens reused from its cache, prompt tokens evaluated)."""
        pattern = r"Llama\.generate: (\d+) prefix-match hit, remaining (\d+) prompt tokens to eval"
        return [(int(hit), int(rest)) for hit, rest in re.findall(pattern, self.log())]

    def disconnects(self) -> int:
        """Requests the server stopped because their client went away, as it logs them."""
        return self.log().count("Disconnected from client")


def words_at(start_ms: float, text: str, ms_per_word: float = 250.0) -> SpeechSpan:
    words = text.split()
    return SpeechSpan(
        start_ms,
        start_ms + ms_per_word * len(words),
        tuple((start_ms + i * ms_per_word, w) for i, w in enumerate(words)),
    )


@dataclass
class SessionRun:
    events: list[Event]
    context: ContextManager
    sink: RecordingSink

    def of(self, kind: type[Any]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    def assistant_texts(self) -> list[str]:
        return [text for role, text in self.context.history if role == "assistant"]


async def drive_session(
    spans: list[SpeechSpan],
    until_ms: float,
    llm: Any,
    llm_params: LlmParams | None = None,
    on_tick: Callable[[float, SpeechTimeline], bool] | None = None,
) -> SessionRun:
    """A whole pipeline on scripted VAD, ASR and TTS and the given LLM engine, in real time (real network).

    ``on_tick(now_ms, timeline)`` runs every frame; it may add speech to the timeline, and ends the
    session early by returning True.
    """
    clock = LoopClock()
    timeline = SpeechTimeline()
    for span in spans:
        timeline.add(span)
    sink = RecordingSink(clock)
    engines = Engines(
        vad=ScriptedVad(timeline),
        asr=ScriptedAsr(timeline, clock, random.Random(0)),
        llm=llm,
        tts=ScriptedTts(clock, random.Random(0)),
        sink=sink,
    )
    context = ContextManager()
    events: list[Event] = []
    config = PipelineConfig(policy=PolicyParams(), llm=llm_params or LlmParams())
    async with Session("llm-test", clock=clock) as session:
        everything = session.bus.subscribe("test", None, maxsize=1_000_000)
        start_pipeline(session, engines, config, context)
        seq = 0
        while clock.now_ms() < until_ms:
            session.ctx.emit(AudioFrame, pcm=bytes(2 * FRAME_SAMPLES), sample_rate_hz=INPUT_SAMPLE_RATE_HZ, seq=seq)
            if on_tick is not None and on_tick(clock.now_ms(), timeline):
                break
            seq += 1
            await clock.sleep_ms(seq * FRAME_MS - clock.now_ms())
        await asyncio.sleep(0)
        while (event := everything.get_nowait()) is not None:
            events.append(event)
    return SessionRun(events, context, sink)
