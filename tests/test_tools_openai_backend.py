"""The tool path through the OpenAI-compatible backend: a server streams a Step-Audio 2 tool call.

SmolLM2-135M does not write tool calls (see examples/check_smollm2_tools.py), so the server here
is a scripted stand-in on loopback that streams chat-completion chunks; everything else is the
real engine, actors and tool registry.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

from duplexer.actors.context import ContextManager
from duplexer.actors.engines import Engines
from duplexer.actors.llm_openai import OpenAiLlm, OpenAiLlmConfig
from duplexer.actors.pipeline import start_pipeline
from duplexer.actors.scripted import ScriptedAsr, ScriptedTts, ScriptedVad, SpeechSpan, SpeechTimeline
from duplexer.runtime.clock import LoopClock
from duplexer.runtime.events import (
    FRAME_MS,
    FRAME_SAMPLES,
    INPUT_SAMPLE_RATE_HZ,
    AudioFrame,
    Event,
    ToolResult,
    TtsAudio,
)
from duplexer.runtime.session import Session
from duplexer.sims.simulator import RecordingSink
from tests.tool_session import serve_chat_completions

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from tools import build_registry

PREFACE = "Let me check that for you."
CALL = '<tool_call>function\nget_weather\n{"city": "Paris"}</tool_call>'


async def stand_in_server(requests: list[dict[str, Any]]) -> tuple[web.AppRunner, str]:
    """Streams the preface and a tool call first; after a tool message, answers from its content."""

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        requests.append(body)
        tool_messages = [m for m in body["messages"] if m["role"] == "tool"]
        text = PREFACE + " " + CALL if not tool_messages else "It is " + tool_messages[-1]["content"][:60] + "."
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i in range(0, len(text), 7):  # arbitrary chunking, tool-call text split across chunks
            chunk = {"choices": [{"index": 0, "delta": {"content": text[i : i + 7]}, "finish_reason": None}]}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            await asyncio.sleep(0.005)
        final = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        await response.write(f"data: {json.dumps(final)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        return response

    return await serve_chat_completions(chat)


def test_a_tool_call_streamed_by_an_openai_compatible_server_runs_and_the_reply_uses_its_result() -> None:
    async def main() -> tuple[list[Event], list[tuple[str, str]], list[dict[str, Any]]]:
        requests: list[dict[str, Any]] = []
        runner, base_url = await stand_in_server(requests)
        llm = OpenAiLlm(OpenAiLlmConfig(base_url=base_url))
        clock = LoopClock()
        timeline = SpeechTimeline()
        words = ["what", "is", "the", "weather", "in", "paris"]
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
        try:
            async with Session("tools-openai", clock=clock) as session:
                everything = session.bus.subscribe("test", None, maxsize=1_000_000)
                start_pipeline(session, engines, context=context, tools=build_registry(weather_delay_s=0.3))
                seq = 0
                while clock.now_ms() < 9000:
                    session.ctx.emit(
                        AudioFrame, pcm=bytes(2 * FRAME_SAMPLES), sample_rate_hz=INPUT_SAMPLE_RATE_HZ, seq=seq
                    )
                    seq += 1
                    await clock.sleep_ms(seq * FRAME_MS - clock.now_ms())
                while (event := everything.get_nowait()) is not None:
                    events.append(event)
        finally:
            await llm.aclose()
            await runner.cleanup()
        return events, list(context.history), requests

    events, history, requests = asyncio.run(main())
    results = [e for e in events if isinstance(e, ToolResult) and e.status == "ok"]
    assert [r.name for r in results] == ["get_weather"], [
        (e.name, e.status) for e in events if isinstance(e, ToolResult)
    ]
    assert "sunny" in results[0].content
    assert any(m["role"] == "tool" for m in requests[-1]["messages"])  # the continuation carried the result
    said = " ".join(e.text for e in events if isinstance(e, TtsAudio) and e.text)
    assert said.startswith(PREFACE) and "sunny" in said
    assert "<tool_call>" not in said and "get_weather" not in said  # the call is never spoken
    remembered = " ".join(text for role, text in history if role == "assistant")
    assert "<tool_call>" in remembered and "sunny" in remembered  # history keeps call and answer as text
