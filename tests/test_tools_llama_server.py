"""A real llama.cpp server (llama-cpp-python's) streams a tool call as ``delta.tool_calls`` to the OpenAI engine.

llama-cpp-python's server streams calls only when the request forces one: ``tool_choice`` naming a
function makes it constrain the reply with a grammar built from that function's JSON schema and
stream the arguments as ``tool_calls`` fragments (it refuses ``auto`` when streaming). With the
GGUF's own chat template (SmolLM2's ChatML renders any role), the ``tool`` message reaches the
model, so the continuation can answer from it. The tools come from examples/concierge_tools.yaml.
What SmolLM2 made of the result is printed (pytest -s shows it) and logged in the test's output.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest

from duplexer.actors.llm_http_client import Timeouts
from duplexer.actors.llm_openai import OpenAiLlm, OpenAiLlmConfig
from duplexer.actors.tool_config import load_tools
from duplexer.runtime.events import LlmDone, ToolCallRequested, ToolCallStarted, ToolResult
from tests.conftest import REPO
from tests.test_llm_helpers import LlamaServer
from tests.tool_session import tool_session

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    running = LlamaServer(tmp_path_factory.mktemp("llama-tools") / "server.log").start()
    try:
        yield running
    finally:
        running.stop()


def test_a_tool_call_streams_as_delta_tool_calls_runs_and_the_reply_continues_with_its_result(
    server: LlamaServer, monkeypatch: pytest.MonkeyPatch, record_property: Any
) -> None:
    toolset = load_tools(REPO / "examples" / "concierge_tools.yaml")
    import concierge_tools

    monkeypatch.setattr(concierge_tools, "WEATHER_DELAY_S", 0.05)
    config = OpenAiLlmConfig(
        base_url=server.base_url,
        tools=tuple(toolset.openai_tools()),
        tool_choice="get_weather",  # forced: the server streams calls only then
        max_tokens=40,
        temperature=0.0,
        timeouts=Timeouts(first_token_s=60.0, stall_s=30.0),
    )
    llm = OpenAiLlm(config)

    async def main() -> Any:
        try:
            return await tool_session(llm, toolset.registry, "what is the weather in paris", 25_000)
        finally:
            await llm.aclose()

    run = asyncio.run(main())
    requests = [r.tool_call_pieces for r in llm.stats.recent]
    [call] = run.of(ToolCallRequested)
    [result] = run.of(ToolResult)
    continuation = run.of(LlmDone)[-1].text
    said = {
        "smollm2_call": {"name": call.name, "arguments": call.arguments},
        "tool_result": result.content,
        "smollm2_reply_after_result": continuation,
        "tool_call_fragments_per_request": requests,
    }
    print(json.dumps(said))
    record_property("smollm2", json.dumps(said))  # in the JUnit XML report too
    assert requests[0] > 0, "the first request streamed no delta.tool_calls"
    assert call.call_format == "openai" and call.name == "get_weather" and not call.parse_error
    assert json.loads(call.arguments).get("city"), call.arguments  # the grammar gave schema-shaped arguments
    assert run.of(ToolCallStarted) and result.status == "ok", result.content
    assert len(requests) >= 2 and requests[-1] == 0  # a continuation was generated, in words
    assert ("tool", result.content) in run.history
    answer = run.history[-1]
    assert answer[0] == "assistant" and answer[1].strip(), run.history  # the reply went on after the result
    assert continuation.strip() and run.said().strip()
