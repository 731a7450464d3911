"""One live session on scripted audio engines and a given LLM engine and tools: every event and the history.

Shared by the OpenAI tool-calling tests (a stand-in server and a real llama.cpp server), with the
stand-in servers' loopback setup.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from duplexer.actors.context import ContextManager
from duplexer.actors.engines import Engines
from duplexer.actors.pipeline import PipelineConfig, start_pipeline
from duplexer.actors.scripted import ScriptedAsr, ScriptedTts, ScriptedVad, SpeechSpan, SpeechTimeline
from duplexer.actors.tool_registry import ToolRegistry
from duplexer.runtime.clock import LoopClock
from duplexer.runtime.events import (
    FRAME_MS,
    FRAME_SAMPLES,
    INPUT_SAMPLE_RATE_HZ,
    AudioFrame,
    Event,
    PlayoutDone,
    ToolResult,
    TtsAudio,
)
from duplexer.runtime.session import Session
from duplexer.sims.simulator import RecordingSink


async def serve_chat_completions(
    chat: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> tuple[web.AppRunner, str]:
    """Serve ``chat`` at ``/v1/chat/completions`` on a free loopback port: the runner and the base URL."""
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}/v1"


@dataclass
class ToolSession:
    events: list[Event]
    history: list[tuple[str, str]]

    def of(self, kind: type[Any]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    def said(self) -> str:
        return " ".join(e.text for e in self.of(TtsAudio) if e.text)


def _played_after_a_tool(events: list[Event]) -> bool:
    """A reply that called a tool has been played to its end: the session has shown what it can."""
    tool_replies = {e.reply_id for e in events if isinstance(e, ToolResult)}
    return any(isinstance(e, PlayoutDone) and e.reply_id in tool_replies for e in events)


async def tool_session(llm: Any, registry: ToolRegistry, question: str, until_ms: float) -> ToolSession:
    """The user asks ``question`` at 300 ms; the session runs in real time until a reply that called a tool
    has been played to its end, or ``until_ms``.

    The tools come in through ``PipelineConfig.tool_registry``, the way ``--tools FILE`` and personas give them.
    """
    clock = LoopClock()
    timeline = SpeechTimeline()
    words = question.split()
    timeline.add(SpeechSpan(300, 300 + 250 * len(words), tuple((300 + 250 * i, w) for i, w in enumerate(words))))
    rng = random.Random(0)
    engines = Engines(
        ScriptedVad(timeline),
        ScriptedAsr(timeline, clock, rng),
        llm,
        ScriptedTts(clock, rng, rtf=0.05),
        RecordingSink(clock),
    )
    context = ContextManager()
    events: list[Event] = []
    async with Session("tools-openai", clock=clock) as session:
        everything = session.bus.subscribe("test", None, maxsize=1_000_000)
        start_pipeline(session, engines, PipelineConfig(tool_registry=registry), context=context)
        seq = 0
        while clock.now_ms() < until_ms and not _played_after_a_tool(events):
            session.ctx.emit(AudioFrame, pcm=bytes(2 * FRAME_SAMPLES), sample_rate_hz=INPUT_SAMPLE_RATE_HZ, seq=seq)
            seq += 1
            await clock.sleep_ms(seq * FRAME_MS - clock.now_ms())
            while (event := everything.get_nowait()) is not None:
                events.append(event)
        while (event := everything.get_nowait()) is not None:
            events.append(event)
    return ToolSession(events, list(context.history))
