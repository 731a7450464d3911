"""The in-process ``sglang`` backend's adapter, against a test double of ``sglang.Engine``.

The double implements only what the adapter calls, as SGLang documents it:
``await engine.async_generate(prompt=, sampling_params=, stream=True, rid=)`` returning an
async iterator of ``{"text", "meta_info"}``, ``engine.tokenizer_manager.abort_request(rid)``,
``engine.tokenizer_manager.tokenizer.apply_chat_template(...)`` and ``engine.server_args``.
These tests check our side of that contract; they say nothing about SGLang itself (no GPU here).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from duplexer.actors.llm_http_client import LlmServerError, LlmServerTimeout, LlmStreamBroken, RequestOutcome, Timeouts
from duplexer.actors.llm_sglang import SglangEngineConfig, SglangInProcessLlm
from duplexer.actors.models.packages import ModelPackageMissing

REPLY_WORDS = ["Paris", " is", " the", " capital", " of", " France."]
MESSAGES = [("system", "Be brief."), ("user", "capital of france?")]


@dataclass
class FakeServerArgs:
    incremental_streaming_output: bool = False


class FakeTokenizer:
    def apply_chat_template(self, chat: list[dict[str, str]], tokenize: bool, add_generation_prompt: bool) -> str:
        assert tokenize is False and add_generation_prompt is True
        return "".join(f"[{m['role']}]{m['content']}" for m in chat) + "[assistant]"


@dataclass
class FakeTokenizerManager:
    aborted: list[str] = field(default_factory=list)
    tokenizer: FakeTokenizer = field(default_factory=FakeTokenizer)
    events: dict[str, asyncio.Event] = field(default_factory=dict)

    def abort_request(self, rid: str = "", abort_all: bool = False) -> None:
        self.aborted.append(rid)
        if rid in self.events:
            self.events[rid].set()


@dataclass
class FakeEngine:
    incremental: bool = False
    endless: bool = False
    stall_after: int | None = None
    finish_reason: str = "stop"
    token_interval_s: float = 0.005
    calls: list[dict[str, Any]] = field(default_factory=list)
    tokenizer_manager: FakeTokenizerManager = field(default_factory=FakeTokenizerManager)
    running: set[str] = field(default_factory=set)

    @property
    def server_args(self) -> FakeServerArgs:
        return FakeServerArgs(self.incremental)

    async def async_generate(self, **kwargs: Any) -> AsyncIterator[dict[str, Any]]:
        self.calls.append(kwargs)
        rid = kwargs["rid"]
        aborted = self.tokenizer_manager.events[rid] = asyncio.Event()
        return self._outputs(rid, aborted)

    async def _outputs(self, rid: str, aborted: asyncio.Event) -> AsyncIterator[dict[str, Any]]:
        self.running.add(rid)
        text, n = "", 0
        try:
            while True:
                if n == self.stall_after:
                    await aborted.wait()
                if aborted.is_set():
                    yield {"text": "" if self.incremental else text, "meta_info": {"finish_reason": {"type": "abort"}}}
                    return
                await asyncio.sleep(self.token_interval_s)
                word = REPLY_WORDS[n % len(REPLY_WORDS)]
                n += 1
                text += word
                last = n == len(REPLY_WORDS) and not self.endless
                meta = {
                    "id": rid,
                    "finish_reason": {"type": self.finish_reason} if last else None,
                    "prompt_tokens": 11,
                    "completion_tokens": n,
                    "cached_tokens": 4,
                }
                yield {"text": word if self.incremental else text, "meta_info": meta}
                if last:
                    return
        finally:
            self.running.discard(rid)


def engine_for(fake: FakeEngine, **config: Any) -> SglangInProcessLlm:
    return SglangInProcessLlm(SglangEngineConfig(**config), engine=fake)


async def collect(stream: AsyncIterator[str]) -> list[str]:
    return [piece async for piece in stream]


@pytest.mark.parametrize("incremental", [False, True])
def test_streams_the_reply_from_cumulative_or_incremental_output(incremental: bool) -> None:
    fake = FakeEngine(incremental=incremental)
    llm = engine_for(fake)
    assert asyncio.run(collect(llm.stream(MESSAGES, "t1r1"))) == REPLY_WORDS
    (call,) = fake.calls
    assert call["stream"] is True and call["rid"].startswith("dx-t1r1-")
    assert call["prompt"] == "[system]Be brief.[user]capital of france?[assistant]"  # the model's own template
    assert call["sampling_params"] == {"max_new_tokens": 80, "temperature": 0.3}
    record = llm.stats.recent[-1]
    assert record.outcome is RequestOutcome.COMPLETED
    assert (record.completion_tokens, record.prompt_tokens, record.cached_tokens) == (6, 11, 4)


def test_a_builtin_prompt_format_renders_here_and_stops_at_its_end_of_turn() -> None:
    fake = FakeEngine()
    asyncio.run(collect(engine_for(fake, prompt_format="step-audio").stream(MESSAGES, "t1r1")))
    (call,) = fake.calls
    assert call["prompt"].startswith("<|BOT|>system\nBe brief.<|EOT|>")
    assert call["sampling_params"]["stop"] == ["<|EOT|>"]


def test_closing_the_stream_aborts_the_request_in_the_tokenizer_manager() -> None:
    fake = FakeEngine(endless=True)
    llm = engine_for(fake)

    async def take_three() -> list[str]:
        stream = llm.stream(MESSAGES, "t1r1")
        pieces = []
        async for piece in stream:
            pieces.append(piece)
            if len(pieces) == 3:
                break
        await stream.aclose()  # type: ignore[attr-defined]
        return pieces

    assert len(asyncio.run(take_three())) == 3
    record = llm.stats.recent[-1]
    assert fake.tokenizer_manager.aborted == [record.request_id]
    assert not fake.running  # the engine's output iterator was closed too
    assert record.outcome is RequestOutcome.CANCELLED and record.aborted
    assert llm.stats.snapshot()["llm_server.tokens_discarded"] == 3


def test_no_first_token_in_time_is_a_timeout_and_the_request_is_aborted() -> None:
    fake = FakeEngine(stall_after=0)
    llm = engine_for(fake, timeouts=Timeouts(first_token_s=0.2))
    with pytest.raises(LlmServerTimeout, match="SGLang engine: no text within"):
        asyncio.run(collect(llm.stream(MESSAGES, "t1r1")))
    assert fake.tokenizer_manager.aborted == [llm.stats.recent[-1].request_id]


def test_an_abort_by_the_engine_itself_is_an_error() -> None:
    fake = FakeEngine(finish_reason="abort")
    with pytest.raises(LlmStreamBroken, match="aborted the request itself"):
        asyncio.run(collect(engine_for(fake).stream(MESSAGES, "t1r1")))


def test_an_engine_failure_becomes_a_clear_error() -> None:
    class Refusing(FakeEngine):
        async def async_generate(self, **kwargs: Any) -> AsyncIterator[dict[str, Any]]:
            raise ValueError("The input (9000 tokens) is longer than the model's context length (8192 tokens).")

    with pytest.raises(LlmServerError, match=r"SGLang engine failed the request: ValueError: The input \(9000"):
        asyncio.run(collect(engine_for(Refusing()).stream(MESSAGES, "t1r1")))


def test_without_sglang_installed_the_message_names_the_package_and_the_server_alternative(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "sglang", None)  # import fails even where sglang is installed
    llm = SglangInProcessLlm(SglangEngineConfig(model_path="stepfun-ai/Step-Audio-Chat"))
    with pytest.raises(ModelPackageMissing, match=r"pip install 'sglang\[all\]'.*sglang-server backend"):
        llm.start()


def test_a_missing_model_path_is_refused_before_anything_loads() -> None:
    with pytest.raises(ValueError, match="needs model_path"):
        SglangInProcessLlm(SglangEngineConfig()).start()
