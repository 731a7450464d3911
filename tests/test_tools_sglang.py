"""Tools with the SGLang engines: the model's own chat template is shown the tools, and its text calls are read.

SGLang's native generation has no tools channel, so the in-process engine hands the OpenAI ``tools``
and the history's calls and results (in OpenAI's shape) to the model's chat template, and the model
writes its calls as text; Qwen and Hermes templates ask for ``<tool_call>{"name", "arguments"}</tool_call>``,
which the text filter reads like Step-Audio's form. (An SGLang server's OpenAI endpoint streams
``delta.tool_calls``: that is the OpenAI engine's path.) The engine here is the test double of
test_llm_sglang_engine.py; no GPU.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from duplexer.actors.llm_sglang import SglangEngineConfig, SglangInProcessLlm
from duplexer.actors.tool_calls import call_text, parse_stream
from duplexer.actors.tool_config import load_tools
from tests.conftest import REPO
from tests.test_llm_sglang_engine import FakeEngine, FakeTokenizerManager


class RecordingTokenizer:
    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    def apply_chat_template(self, chat: list[dict[str, Any]], **kwargs: Any) -> str:
        self.seen.append({"chat": chat, **kwargs})
        return "prompt"


def test_the_in_process_engine_gives_the_tools_and_the_calls_to_the_models_template() -> None:
    tools = tuple(load_tools(REPO / "examples" / "concierge_tools.yaml").openai_tools())
    tokenizer = RecordingTokenizer()
    fake = FakeEngine(tokenizer_manager=FakeTokenizerManager(tokenizer=tokenizer))  # type: ignore[arg-type]
    llm = SglangInProcessLlm(SglangEngineConfig(tools=tools), engine=fake)
    history = [
        ("user", "weather in paris?"),
        ("assistant", "Let me check. " + call_text("get_weather", '{"city": "Paris"}')),
        ("tool", "sunny"),
    ]

    async def drain() -> None:
        async for _ in llm.stream(history, "t1r1"):
            pass

    asyncio.run(drain())
    [seen] = tokenizer.seen
    assert seen["tools"] == [dict(t) for t in tools] and seen["add_generation_prompt"] is True
    assert seen["chat"][1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert seen["chat"][2] == {"role": "tool", "content": "sunny", "tool_call_id": "call_1"}


def test_tools_need_the_models_own_template() -> None:
    with pytest.raises(ValueError, match="prompt_format to model"):
        SglangEngineConfig(prompt_format="chatml", tools=({"type": "function"},))


@pytest.mark.parametrize(
    ("body", "arguments"),
    [
        ('{"name": "get_weather", "arguments": {"city": "Paris"}}', {"city": "Paris"}),
        ('{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}', {"city": "Paris"}),
        ('{"name": "get_weather"}', {}),
    ],
)
def test_a_hermes_style_json_call_in_the_text_is_read_and_never_spoken(body: str, arguments: dict[str, Any]) -> None:
    text = "Let me check. <tool_call>\n" + body + "\n</tool_call>"
    pieces = [text[i : i + 3] for i in range(0, len(text), 3)]
    spoken, [call] = parse_stream(pieces)
    assert spoken == "Let me check. " and call.name == "get_weather" and not call.error
    assert json.loads(call.arguments or "{}") == arguments


@pytest.mark.parametrize("body", ['{"arguments": {}}', '{"name": "a b"}', '{"name": "f", "arguments": [1]}', "{oops"])
def test_a_malformed_json_call_is_an_error_not_an_exception(body: str) -> None:
    _, [call] = parse_stream([f"<tool_call>{body}</tool_call>"])
    assert call.error
