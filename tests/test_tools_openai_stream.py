"""OpenAI function calling through the OpenAI-compatible engine: ``tools`` out, ``delta.tool_calls`` in.

A stand-in server on loopback streams calls the way OpenAI and vLLM do (the name once, the arguments
in pieces) and the way llama-cpp-python's server does (the whole name again in every fragment); the
engine, actors and the tools from examples/concierge_tools.yaml are real. The real llama.cpp server
is in test_tools_llama_server.py.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp import web

from duplexer.actors.llm_openai import OpenAiLlm, OpenAiLlmConfig, openai_tool_messages
from duplexer.actors.tool_calls import OpenAiToolCallAssembler, ToolCallChunk, call_text
from duplexer.actors.tool_config import load_tools
from duplexer.runtime.events import ToolCallRequested, ToolResult
from tests.conftest import REPO
from tests.tool_session import serve_chat_completions, tool_session

PREFACE = "Let me check that for you."
ARGUMENTS = '{"city": "Paris"}'


def test_history_calls_become_tool_calls_and_results_carry_their_ids() -> None:
    messages = [
        ("system", "s"),
        ("user", "weather in paris and london?"),
        ("assistant", PREFACE + " " + call_text("get_weather", ARGUMENTS) + call_text("get_weather", "")),
        ("tool", "sunny"),
        ("tool", "rain"),
        ("assistant", "Sunny in Paris, rain in London."),
        ("user", "and tokyo?"),
        ("assistant", call_text("get_weather", '{"city": "Tokyo"}')),
        ("tool", "cloudy"),
    ]
    out = openai_tool_messages(messages)
    assert out[2] == {
        "role": "assistant",
        "content": PREFACE,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ARGUMENTS}},
            {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}},
        ],
    }
    assert out[3] == {"role": "tool", "content": "sunny", "tool_call_id": "call_1"}
    assert out[4] == {"role": "tool", "content": "rain", "tool_call_id": "call_2"}
    assert out[5] == {"role": "assistant", "content": "Sunny in Paris, rain in London."}
    assert out[7]["content"] == "" and out[7]["tool_calls"][0]["id"] == "call_3"
    assert out[8]["tool_call_id"] == "call_3"
    assert openai_tool_messages(messages) == out  # the same history, the same bytes: prefix reuse


def test_a_name_repeated_in_every_fragment_is_taken_once() -> None:
    assembler = OpenAiToolCallAssembler()
    for piece in ('{"city"', ': "Par', 'is"}'):
        assembler.feed(ToolCallChunk(index=0, name="get_weather", arguments=piece, id="call_0"))
    [call] = assembler.finish()
    assert (call.name, call.arguments, call.error) == ("get_weather", ARGUMENTS, "")


def _sse(delta: dict[str, Any], finish: str | None = None) -> bytes:
    chunk = {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return f"data: {json.dumps(chunk)}\n\n".encode()


async def stand_in(requests: list[dict[str, Any]], repeat_name: bool) -> tuple[web.AppRunner, str]:
    """First pass: a preface, then a streamed call; after a tool message: an answer from its content."""

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        requests.append(body)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        last = body["messages"][-1]
        if last["role"] == "tool":
            answer = "It is " + json.loads(last["content"])["forecast"] + " in Paris."
            for i in range(0, len(answer), 5):
                await response.write(_sse({"content": answer[i : i + 5]}))
            await response.write(_sse({}, "stop"))
        else:
            await response.write(_sse({"role": "assistant", "content": PREFACE}))
            for i in range(0, len(ARGUMENTS), 4):
                function = {"arguments": ARGUMENTS[i : i + 4]}
                if i == 0 or repeat_name:
                    function["name"] = "get_weather"
                call = {"index": 0, "function": function, **({"id": "call_x", "type": "function"} if i == 0 else {})}
                await response.write(_sse({"tool_calls": [call]}))
                await asyncio.sleep(0.002)
            await response.write(_sse({}, "tool_calls"))
        await response.write(b"data: [DONE]\n\n")
        return response

    return await serve_chat_completions(chat)


@pytest.mark.parametrize("repeat_name", [False, True], ids=["openai", "llama-cpp-python"])
def test_a_streamed_tool_call_from_config_tools_runs_and_the_reply_continues_with_its_result(
    repeat_name: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    toolset = load_tools(REPO / "examples" / "concierge_tools.yaml")
    import concierge_tools

    monkeypatch.setattr(concierge_tools, "WEATHER_DELAY_S", 0.05)

    async def main() -> tuple[Any, list[dict[str, Any]], OpenAiLlm]:
        requests: list[dict[str, Any]] = []
        runner, base_url = await stand_in(requests, repeat_name)
        llm = OpenAiLlm(OpenAiLlmConfig(base_url=base_url, tools=tuple(toolset.openai_tools())))
        try:
            run = await tool_session(llm, toolset.registry, "what is the weather in paris", 6000)
        finally:
            await llm.aclose()
            await runner.cleanup()
        return run, requests, llm

    run, requests, llm = asyncio.run(main())
    [request] = run.of(ToolCallRequested)
    assert (request.call_format, request.name, request.arguments) == ("openai", "get_weather", ARGUMENTS)
    assert [(r.name, r.status) for r in run.of(ToolResult)] == [("get_weather", "ok")]
    first, continuation = requests[0], requests[-1]
    assert [t["function"]["name"] for t in first["tools"]] == ["get_weather", "send_message"]
    assert first["tool_choice"] == "auto" and "tool_choice" not in continuation
    assert continuation["messages"][-2]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": ARGUMENTS}
    assert continuation["messages"][-1]["tool_call_id"] == continuation["messages"][-2]["tool_calls"][0]["id"]
    assert any(record.tool_call_pieces > 0 for record in llm.stats.recent)  # the engine saw delta.tool_calls
    assert run.said() == f"{PREFACE} It is sunny in Paris."
