"""Protocol-conformance tests: our SGLang and OpenAI backends against a server that speaks SGLang's documented API.

The server (tests/sglang_conformance_server.py) follows SGLang's request and response shapes;
it is not SGLang, so these tests show that we speak the protocol (streaming, abort, health,
retries), not that SGLang works.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from duplexer.actors.engines import Message
from duplexer.actors.llm import LlmParams
from duplexer.actors.llm_http_client import (
    LlmRequestRejected,
    LlmServerError,
    LlmServerTimeout,
    LlmServerUnavailable,
    LlmStreamBroken,
    RequestOutcome,
    RetryPolicy,
    Timeouts,
)
from duplexer.actors.llm_openai import OpenAiLlm, OpenAiLlmConfig
from duplexer.actors.llm_prompt import history_prefix
from duplexer.actors.llm_sglang_client import SglangServerConfig, SglangServerLlm
from duplexer.runtime.events import ErrorEvent, LlmCancelled, PromptReady
from tests.sglang_conformance_server import ConformanceServer
from tests.test_llm_helpers import drive_session, free_port, words_at

REPLY = "Paris is the capital of France, and it is lovely in spring."
MESSAGES: list[Message] = [("system", "Be brief."), ("user", "hello"), ("assistant", "Hi."), ("user", "capital?")]
FAST_RETRY = RetryPolicy(max_attempts=3, backoff_initial_s=0.05, backoff_max_s=0.2)


@pytest.fixture
def server() -> Iterator[ConformanceServer]:
    with ConformanceServer(reply=REPLY) as running:
        yield running


def sglang(server: ConformanceServer, **changes: Any) -> SglangServerLlm:
    return SglangServerLlm(SglangServerConfig(base_url=server.base_url, retry=FAST_RETRY, **changes))


async def collect(stream: AsyncIterator[str]) -> list[str]:
    return [piece async for piece in stream]


async def take_then_close(stream: AsyncIterator[str], n_pieces: int) -> list[str]:
    pieces = []
    async for piece in stream:
        pieces.append(piece)
        if len(pieces) == n_pieces:
            break
    await stream.aclose()  # type: ignore[attr-defined]
    return pieces


async def run_and_close(engine: Any, coroutine: Any) -> Any:
    try:
        return await coroutine
    finally:
        await engine.aclose()


# ------------------------------------------------------------------ /generate streaming


@pytest.mark.parametrize("incremental", [False, True])
def test_generate_streams_the_reply_whether_the_server_sends_cumulative_or_incremental_text(
    incremental: bool,
) -> None:
    with ConformanceServer(reply=REPLY, incremental=incremental) as server:
        engine = sglang(server)
        pieces = asyncio.run(run_and_close(engine, collect(engine.stream(MESSAGES, "t1r1"))))
    assert "".join(pieces) == REPLY
    assert len(pieces) == len(REPLY.split())  # one piece per streamed step, nothing repeated
    assert engine.incremental is incremental  # read from /get_server_info


def test_generate_request_has_sglangs_shape_and_a_unique_request_id(server: ConformanceServer) -> None:
    engine = sglang(server, max_new_tokens=7, temperature=0.0, sampling_params={"top_p": 0.9})
    asyncio.run(run_and_close(engine, collect(engine.stream(MESSAGES, "t1r1"))))
    (request,) = server.generate_requests()
    body = request.json()
    assert list(body) == ["sampling_params", "stream", "text", "rid"]
    assert body["sampling_params"] == {"max_new_tokens": 7, "temperature": 0.0, "stop": ["<|im_end|>"], "top_p": 0.9}
    assert body["stream"] is True
    assert body["text"].endswith("<|im_start|>user\ncapital?<|im_end|>\n<|im_start|>assistant\n")
    record = engine.stats.recent[-1]
    assert body["rid"] == record.request_id and record.request_id.startswith("dx-t1r1-")
    assert record.outcome is RequestOutcome.COMPLETED and record.completion_tokens == 7


def test_an_explicit_text_mode_overrides_the_server_info() -> None:
    with ConformanceServer(reply=REPLY, incremental=True) as server:
        engine = sglang(server, text_mode="incremental")
        pieces = asyncio.run(run_and_close(engine, collect(engine.stream(MESSAGES, "t1r1"))))
        assert not [r for r in server.requests if r.path == "/get_server_info"]
    assert "".join(pieces) == REPLY


# ------------------------------------------------------------------ cancel and abort


def test_closing_the_stream_posts_abort_request_and_nothing_keeps_running(server: ConformanceServer) -> None:
    server.endless = True
    engine = sglang(server, max_new_tokens=10_000)
    pieces = asyncio.run(run_and_close(engine, take_then_close(engine.stream(MESSAGES, "t1r1"), 3)))
    assert len(pieces) == 3
    record = engine.stats.recent[-1]
    assert server.aborts == [record.request_id]
    assert record.aborted and record.outcome is RequestOutcome.CANCELLED
    assert server.wait_idle(), f"still generating: {server.running}"
    stats = engine.stats.snapshot()
    assert stats["llm_server.cancelled"] == 1 and stats["llm_server.aborts_sent"] == 1
    assert stats["llm_server.tokens_discarded"] >= 3 and stats["llm_server.server_s_discarded"] > 0


def test_cancelling_the_consuming_task_aborts_as_the_llm_actor_does(server: ConformanceServer) -> None:
    server.endless = True
    engine = sglang(server, max_new_tokens=10_000)

    async def consume_then_cancel() -> None:
        started = asyncio.Event()

        async def consume() -> None:
            async for _ in engine.stream(MESSAGES, "t1r1"):
                started.set()

        task = asyncio.create_task(consume())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run_and_close(engine, consume_then_cancel()))
    assert server.aborts == [engine.stats.recent[-1].request_id]
    assert server.wait_idle()


def test_openai_backend_calls_sglangs_abort_endpoint_with_the_request_id(server: ConformanceServer) -> None:
    server.endless = True
    config = OpenAiLlmConfig(
        base_url=server.base_url + "/v1", abort_url=server.base_url + "/abort_request", max_tokens=10_000
    )
    engine = OpenAiLlm(config)
    asyncio.run(run_and_close(engine, take_then_close(engine.stream(MESSAGES, "t1r1"), 2)))
    (request,) = server.generate_requests()
    assert request.path == "/v1/chat/completions"
    rid = request.json()["rid"]
    assert server.aborts == [rid] == [engine.stats.recent[-1].request_id]
    assert server.wait_idle()


def test_openai_step_audio_prompt_goes_to_completions_as_one_prompt(server: ConformanceServer) -> None:
    engine = OpenAiLlm(OpenAiLlmConfig(base_url=server.base_url + "/v1", prompt_format="step-audio"))
    pieces = asyncio.run(run_and_close(engine, collect(engine.stream(MESSAGES, "t1r1"))))
    assert "".join(pieces) == REPLY
    (request,) = server.generate_requests()
    body = request.json()
    assert request.path == "/v1/completions" and body["stop"] == ["<|EOT|>"]
    assert body["prompt"] == (
        "<|BOT|>system\nBe brief.<|EOT|><|BOT|>human\nhello<|EOT|><|BOT|>assistant\nHi.<|EOT|>"
        "<|BOT|>human\ncapital?<|EOT|><|BOT|>assistant\n"
    )


# ------------------------------------------------------------------ health, retries, failures


def test_health_check_passes_and_a_server_that_is_down_is_named() -> None:
    with ConformanceServer() as server:
        engine = sglang(server)
        asyncio.run(run_and_close(engine, engine.check_health()))
        asyncio.run(run_and_close(engine, engine.check_health(generate=True)))
        assert [r.path for r in server.requests] == ["/health", "/health_generate"]
    down = SglangServerLlm(SglangServerConfig(base_url=f"http://127.0.0.1:{free_port()}", retry=FAST_RETRY))
    with pytest.raises(LlmServerUnavailable, match=r"SGLang server http://127\.0\.0\.1:\d+: health check"):
        asyncio.run(run_and_close(down, down.check_health()))
    with pytest.raises(LlmServerUnavailable, match=r"cannot connect .* after 3 attempt\(s\)"):
        asyncio.run(run_and_close(down, collect(down.stream(MESSAGES, "t1r1"))))
    assert down.stats.snapshot()["llm_server.retries"] == 2


def test_busy_statuses_are_retried_with_backoff_then_served(server: ConformanceServer) -> None:
    server.fail_statuses = [503, 429]
    engine = sglang(server)
    pieces = asyncio.run(run_and_close(engine, collect(engine.stream(MESSAGES, "t1r1"))))
    assert "".join(pieces) == REPLY
    assert len(server.generate_requests()) == 3
    assert engine.stats.recent[-1].attempts == 3 and engine.stats.snapshot()["llm_server.retries"] == 2


def test_a_rejected_request_is_not_retried(server: ConformanceServer) -> None:
    server.fail_statuses = [401]
    engine = sglang(server)
    with pytest.raises(LlmRequestRejected, match="HTTP 401 injected status 401; check the API key"):
        asyncio.run(run_and_close(engine, collect(engine.stream(MESSAGES, "t1r1"))))
    assert len(server.generate_requests()) == 1


def test_no_first_token_in_time_is_a_timeout_and_the_request_is_aborted(server: ConformanceServer) -> None:
    server.stall_after_tokens = 0
    engine = sglang(server, timeouts=Timeouts(first_token_s=0.3))
    with pytest.raises(LlmServerTimeout, match=r"no text within 0\.3 s"):
        asyncio.run(run_and_close(engine, collect(engine.stream(MESSAGES, "t1r1"))))
    assert server.aborts == [engine.stats.recent[-1].request_id]
    assert server.wait_idle()
    assert engine.stats.snapshot()["llm_server.failed"] == 1


def test_a_stream_that_stalls_mid_reply_times_out(server: ConformanceServer) -> None:
    server.stall_after_tokens = 2
    engine = sglang(server, timeouts=Timeouts(stall_s=0.3))
    pieces: list[str] = []

    async def run() -> None:
        async for piece in engine.stream(MESSAGES, "t1r1"):
            pieces.append(piece)

    with pytest.raises(LlmServerTimeout, match=r"stalled for 0\.3 s"):
        asyncio.run(run_and_close(engine, run()))
    assert pieces == ["Paris", " is"]
    assert server.wait_idle()


@pytest.mark.parametrize(
    ("fault", "error", "message"),
    [
        ("drop_after_tokens", LlmStreamBroken, "went away mid-stream"),
        ("error_after_tokens", LlmServerError, "reported an error mid-stream: injected failure"),
        ("self_abort_after_tokens", LlmStreamBroken, "aborted the request itself after 2 piece"),
    ],
)
def test_a_stream_that_breaks_mid_reply_raises_a_clear_error(
    server: ConformanceServer, fault: str, error: type[Exception], message: str
) -> None:
    setattr(server, fault, 2)
    engine = sglang(server)
    with pytest.raises(error, match=message):
        asyncio.run(run_and_close(engine, collect(engine.stream(MESSAGES, "t1r1"))))
    assert engine.stats.recent[-1].pieces == 2


def test_the_server_reports_prefix_cache_hits_for_a_shared_history(server: ConformanceServer) -> None:
    engine = sglang(server)
    early = [*MESSAGES[:-1], ("user", "what is the")]
    late = [*MESSAGES[:-1], ("user", "what is the capital of france")]

    async def both() -> None:
        await collect(engine.stream(early, "t2r1"))
        await collect(engine.stream(late, "t2r2"))

    asyncio.run(run_and_close(engine, both()))
    first, second = engine.stats.recent
    assert second.cached_tokens is not None and second.cached_tokens >= len(history_prefix("chatml", late))
    assert engine.stats.snapshot()["llm_server.cached_tokens"] == (first.cached_tokens or 0) + second.cached_tokens


# ------------------------------------------------------------------ in a session


SHORT_REPLY = "Paris is lovely in spring."


def two_turns_with_a_mid_turn_pause() -> list[Any]:
    """Turn 1, then turn 2 with a 450 ms pause (> pause_ms, < end_of_turn_ms): a speculative reply is discarded."""
    return [
        words_at(300, "hello there"),
        words_at(4000, "what is the"),
        words_at(5200, "capital of france"),
    ]


def common_prefix_len(a: bytes, b: bytes) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


@pytest.mark.parametrize("backend", ["sglang-server", "openai"])
def test_speculative_calls_of_a_turn_send_byte_identical_history_and_discarded_ones_are_aborted(
    backend: str,
) -> None:
    with ConformanceServer(reply=SHORT_REPLY, token_interval_s=0.15) as server:
        engine: SglangServerLlm | OpenAiLlm
        if backend == "sglang-server":
            engine = sglang(server)
        else:
            config = OpenAiLlmConfig(base_url=server.base_url + "/v1", abort_url=server.base_url + "/abort_request")
            engine = OpenAiLlm(config)
        run = asyncio.run(run_and_close(engine, drive_session(two_turns_with_a_mid_turn_pause(), 9500, engine)))
        assert server.wait_idle(), f"still generating after the session: {server.running}"
        requests = server.generate_requests()
    prompts = run.of(PromptReady)
    turn_two = [p for p in prompts if p.turn_id == 2]
    assert len(turn_two) >= 2, [p.messages[-1] for p in prompts]
    # Only the last user message changes between the speculative calls of turn 2.
    assert len({p.messages[:-1] for p in turn_two}) == 1
    assert ("user", "hello there") in turn_two[0].messages[:-1]
    assert turn_two[0].messages[-1][1] != turn_two[-1].messages[-1][1]
    by_rid = {r.json()["rid"]: r for r in requests}
    bodies = [by_rid[rec.request_id].body for rec in engine.stats.recent if rec.reply_id.startswith("t2")]
    assert len(bodies) == len(turn_two)
    last_user = turn_two[-1].messages[-1][1].encode()
    for body in bodies[:-1]:
        # The raw bytes agree up to where the user text starts.
        assert common_prefix_len(body, bodies[-1]) >= bodies[-1].index(last_user)
    if backend == "sglang-server":
        shared = history_prefix("chatml", turn_two[-1].messages)
        assert all(json.loads(body)["text"].startswith(shared) for body in bodies)
    # The discarded speculative call was cancelled mid-stream and aborted on the server.
    cancelled = [rec for rec in engine.stats.recent if rec.outcome is RequestOutcome.CANCELLED]
    assert cancelled and run.of(LlmCancelled)
    assert {rec.request_id for rec in cancelled} <= set(server.aborts) | set(server.disconnects)
    assert all(rec.aborted for rec in cancelled)
    assert engine.stats.snapshot()["llm_server.tokens_discarded"] >= 1
    assert run.assistant_texts()[-1] == SHORT_REPLY


def test_a_server_dropping_mid_reply_gets_the_fallback_spoken_and_the_next_turn_recovers() -> None:
    fallback = "Sorry, my model is not answering."
    with ConformanceServer(reply=SHORT_REPLY, token_interval_s=0.05) as server:
        server.drop_after_tokens, server.faulty_requests = 2, 1
        engine = sglang(server)
        spans = [words_at(300, "hello there"), words_at(5000, "tell me more")]
        run = asyncio.run(
            run_and_close(engine, drive_session(spans, 10_000, engine, LlmParams(fallback_reply=fallback)))
        )
    errors = [e for e in run.of(ErrorEvent) if e.source == "llm"]
    assert len(errors) == 1 and "went away mid-stream" in errors[0].message
    first, second = run.assistant_texts()
    assert first.endswith(fallback) and first.startswith("Paris is")
    assert second == SHORT_REPLY
    assert {interval.reply_id.split("r")[0] for interval in run.sink.intervals} == {"t1", "t2"}  # both turns spoken


def test_a_server_down_at_start_gets_the_fallback_spoken_quickly() -> None:
    port = free_port()
    engine = SglangServerLlm(SglangServerConfig(base_url=f"http://127.0.0.1:{port}", retry=FAST_RETRY))
    run = asyncio.run(run_and_close(engine, drive_session([words_at(300, "hello there")], 7000, engine)))
    errors = [e for e in run.of(ErrorEvent) if e.source == "llm"]
    assert errors and "unavailable: cannot connect" in errors[0].message
    assert run.assistant_texts() == [LlmParams().fallback_reply]
    assert engine.stats.recent[-1].attempts == 3
