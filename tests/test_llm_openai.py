"""The ``openai`` backend against a real OpenAI-compatible server on loopback: llama-cpp-python's, with SmolLM2.

The server runs with ``interrupt_requests`` off, so it serves one request at a time: a request
left running after a cancel would hold up the next one. That, and its log (it notes each
client that went away, and how much of each prompt its prefix cache served), are what the
tests observe on the server side.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from duplexer.actors.engines import Message
from duplexer.actors.llm import LlmParams
from duplexer.actors.llm_http_client import (
    LlmServerTimeout,
    LlmServerUnavailable,
    LlmStreamBroken,
    RequestOutcome,
    RetryPolicy,
    Timeouts,
)
from duplexer.actors.llm_openai import OpenAiLlm, OpenAiLlmConfig
from duplexer.actors.models.packages import smollm2_model_path
from duplexer.actors.scripted import SpeechTimeline
from duplexer.runtime.events import ErrorEvent, LlmCancelled, LlmDone
from tests.test_llm_helpers import LlamaServer, drive_session, words_at

pytestmark = pytest.mark.slow

SYSTEM = "You are a helpful voice assistant. Answer in one short sentence."
QUESTION: list[Message] = [("system", SYSTEM), ("user", "What is the capital of France?")]
COUNTING: list[Message] = [("system", SYSTEM), ("user", "Count from one to one thousand in words.")]
LONG = {"max_tokens": 1500, "extra_body": {"min_tokens": 1500}}
"""A reply that cannot end early (llama-cpp-python's min_tokens holds back end-of-turn): minutes of work here."""
FREED_WITHIN_S = 20.0
"""A short request after a cancel must start within this; behind the long reply it would wait minutes."""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    running = LlamaServer(tmp_path_factory.mktemp("llama") / "server.log")
    try:
        yield running.start()
    finally:
        running.stop()


def engine_for(server: LlamaServer, **changes: Any) -> OpenAiLlm:
    options: dict[str, Any] = {"max_tokens": 12, "temperature": 0.0}
    options.update(changes)
    return OpenAiLlm(OpenAiLlmConfig(base_url=server.base_url, **options))


async def closing(engines: Sequence[OpenAiLlm], coroutine: Any) -> Any:
    try:
        return await coroutine
    finally:
        for engine in engines:
            await engine.aclose()


async def take_then_close(stream: AsyncIterator[str], n_pieces: int) -> list[str]:
    pieces = []
    async for piece in stream:
        pieces.append(piece)
        if len(pieces) == n_pieces:
            break
    await stream.aclose()  # type: ignore[attr-defined]
    return pieces


async def seconds_to_first_piece(engine: OpenAiLlm, messages: Sequence[Message]) -> float:
    start = time.monotonic()
    await take_then_close(engine.stream(messages, "probe"), 1)
    return time.monotonic() - start


def wait_for(condition: Any, timeout_s: float = 5.0) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_a_reply_streams_from_the_server_and_it_passes_the_health_check(server: LlamaServer) -> None:
    engine = engine_for(server)

    async def run() -> tuple[list[str], list[str]]:
        await engine.check_health()
        return await engine.models(), [piece async for piece in engine.stream(QUESTION, "t1r1")]

    models, pieces = asyncio.run(closing([engine], run()))
    assert str(smollm2_model_path()) in models
    assert len(pieces) > 1 and "".join(pieces).strip()
    record = engine.stats.recent[-1]
    assert record.outcome is RequestOutcome.COMPLETED and record.ttft_s is not None
    assert engine.stats.snapshot()["llm_server.tokens_completed"] == len(pieces)


def test_closing_the_stream_stops_the_generation_on_the_server(server: LlamaServer) -> None:
    long = engine_for(server, **LONG)
    short = engine_for(server, max_tokens=3, timeouts=Timeouts(first_token_s=FREED_WITHIN_S + 5))
    disconnects_before = server.disconnects()

    async def run() -> tuple[list[str], float]:
        pieces = await take_then_close(long.stream(COUNTING, "t1r1"), 3)
        return pieces, await seconds_to_first_piece(short, QUESTION)

    pieces, wait_s = asyncio.run(closing([long, short], run()))
    assert len(pieces) == 3
    assert wait_s < FREED_WITHIN_S, f"the next request waited {wait_s:.1f} s: the cancelled one kept running"
    assert wait_for(lambda: server.disconnects() >= disconnects_before + 1), "the server never saw the client leave"
    stats = long.stats.snapshot()
    assert stats["llm_server.cancelled"] == 1 and stats["llm_server.tokens_discarded"] == 3
    assert stats["llm_server.server_s_discarded"] > 0 and stats["llm_server.aborts_sent"] == 0  # no abort endpoint


def test_a_request_queued_behind_a_busy_server_times_out_and_the_server_recovers(server: LlamaServer) -> None:
    busy = engine_for(server, **LONG)
    impatient = engine_for(server, timeouts=Timeouts(first_token_s=1.5))
    later = engine_for(server, timeouts=Timeouts(first_token_s=FREED_WITHIN_S + 5))

    async def run() -> tuple[float, float]:
        generating = asyncio.Event()

        async def hog() -> None:
            async for _ in busy.stream(COUNTING, "t1r1"):
                generating.set()

        hogging = asyncio.create_task(hog())
        await generating.wait()
        start = time.monotonic()
        with pytest.raises(LlmServerTimeout, match=r"no text within 1\.5 s"):
            await take_then_close(impatient.stream(QUESTION, "t2r1"), 1)
        timed_out_after_s = time.monotonic() - start
        hogging.cancel()
        with pytest.raises(asyncio.CancelledError):
            await hogging
        return timed_out_after_s, await seconds_to_first_piece(later, QUESTION)

    timed_out_after_s, wait_s = asyncio.run(closing([busy, impatient, later], run()))
    assert 1.4 < timed_out_after_s < 5.0
    assert wait_s < FREED_WITHIN_S
    assert impatient.stats.recent[-1].outcome is RequestOutcome.FAILED
    assert busy.stats.recent[-1].outcome is RequestOutcome.CANCELLED


def test_a_server_killed_mid_stream_is_a_broken_stream_and_then_it_is_down(tmp_path: Path) -> None:
    own = LlamaServer(tmp_path / "server.log")
    try:
        own.start()
        engine = engine_for(own, **LONG, retry=RetryPolicy(max_attempts=2, backoff_initial_s=0.1))

        async def run() -> list[str]:
            pieces: list[str] = []
            with pytest.raises(LlmStreamBroken, match="went away mid-stream"):
                async for piece in engine.stream(COUNTING, "t1r1"):
                    pieces.append(piece)
                    if len(pieces) == 2:
                        own.kill()
            start = time.monotonic()
            with pytest.raises(LlmServerUnavailable, match=r"cannot connect .* after 2 attempt\(s\)"):
                await take_then_close(engine.stream(QUESTION, "t2r1"), 1)
            assert time.monotonic() - start < 3.0  # a server that is down fails fast: the fallback follows
            return pieces

        assert len(asyncio.run(closing([engine], run()))) == 2
    finally:
        own.stop()


def test_a_session_speaks_the_fallback_when_the_server_dies_and_recovers_once_it_is_back(tmp_path: Path) -> None:
    own = LlamaServer(tmp_path / "server.log")
    fallback = "Sorry, one moment."
    back = threading.Event()
    try:
        own.start()
        engine = engine_for(own, max_tokens=10, timeouts=Timeouts(first_token_s=30.0))

        class KillsTheServerMidReply:
            """The engine, except that the server is killed after the first reply's first piece, then restarted."""

            def __init__(self) -> None:
                self.killed = False

            async def stream(self, messages: Sequence[Message], reply_id: str) -> AsyncIterator[str]:
                async for piece in engine.stream(messages, reply_id):
                    yield piece
                    if not self.killed:
                        self.killed = True
                        own.kill()
                        own.launch()  # on the same port
                        threading.Thread(target=lambda: (own.wait_ready(), back.set()), daemon=True).start()

        turn_two_at: list[float] = []

        def user(now_ms: float, timeline: SpeechTimeline) -> bool:
            """The user asks again once the server is back (turn 1 played by then), and waits for the answer."""
            if back.is_set() and not turn_two_at and now_ms > 6000:
                turn_two_at.append(now_ms + 300)
                timeline.add(words_at(turn_two_at[0], "what is the capital of france"))
            return bool(turn_two_at) and now_ms > turn_two_at[0] + 10_000

        spans = [words_at(300, "hello there")]
        params = LlmParams(fallback_reply=fallback)
        run = asyncio.run(closing([engine], drive_session(spans, 60_000, KillsTheServerMidReply(), params, user)))
    finally:
        own.stop()
    assert turn_two_at, "the restarted server never came back"
    errors = [e for e in run.of(ErrorEvent) if e.source == "llm"]
    assert len(errors) == 1 and "went away mid-stream" in errors[0].message
    said = {e.reply_id: e.text for e in run.of(LlmDone)}
    played = {interval.reply_id for interval in run.sink.intervals}
    # Turn 1: the reply whose server died said its first piece, then the fallback, and was spoken.
    failed = errors[0].message.split("LLM failed on reply ")[1].split(":")[0]
    assert failed.startswith("t1") and said[failed].endswith(" " + fallback) and failed in played
    # Turn 2: answered by the model, and spoken.
    answers = [reply for reply in said if reply.startswith("t2") and reply in played]
    assert answers and said[answers[-1]].strip() and fallback not in said[answers[-1]]


def test_speculative_calls_hit_the_servers_prefix_cache_and_discards_are_counted(server: LlamaServer) -> None:
    # Replies that cannot end early, so the speculative one is still running when the user resumes.
    engine = engine_for(server, max_tokens=40, extra_body={"min_tokens": 40})
    spans = [
        words_at(300, "hello there"),
        words_at(5000, "what is the"),
        words_at(6200, "capital of france"),  # 450 ms pause first: a speculative reply is discarded
    ]
    requests_before = len(server.prefix_hits())
    run = asyncio.run(closing([engine], drive_session(spans, 12_000, engine)))
    stats = engine.stats.snapshot()
    assert run.of(LlmCancelled) and stats["llm_server.cancelled"] >= 1
    assert stats["llm_server.server_s_discarded"] > 0
    turn_two = [r for r in engine.stats.recent if r.reply_id.startswith("t2")]
    assert len(turn_two) >= 2
    # The server runs one request at a time, so the last to start generating is the committed reply of turn 2.
    assert len(server.prefix_hits()) > requests_before
    reused, evaluated = server.prefix_hits()[-1]
    # Everything up to the user's words came from the cache: the history, from the discarded call.
    assert reused >= 30 and evaluated <= 20, (reused, evaluated)


def test_a_changed_history_prefix_misses_the_cache_where_a_shared_one_hits(server: LlamaServer) -> None:
    """The control for the test above: the cache hit comes from the byte-identical history, not by chance."""
    engine = engine_for(server, max_tokens=1)
    history: list[Message] = [
        ("system", SYSTEM),
        ("user", "hello there"),
        ("assistant", "Hi! How can I help you today?"),
        ("user", "tell me about paris"),
        ("assistant", "Paris is the capital of France, famous for the Eiffel Tower."),
    ]

    async def run() -> None:
        await take_then_close(engine.stream(QUESTION, "t3r0"), 1)  # so that the cache is not empty
        await take_then_close(engine.stream([*history, ("user", "what is the")], "t3r1"), 1)
        await take_then_close(engine.stream([*history, ("user", "what is the weather like")], "t3r2"), 1)
        changed = [("system", "Today is day 2. " + SYSTEM), *history[1:], ("user", "what is the weather like")]
        await take_then_close(engine.stream(changed, "t3r3"), 1)

    requests_before = len(server.prefix_hits())
    asyncio.run(closing([engine], run()))
    assert wait_for(lambda: len(server.prefix_hits()) >= requests_before + 3)
    (_, _), (shared_hit, shared_eval), (changed_hit, changed_eval) = server.prefix_hits()[-3:]
    assert shared_hit > 4 * changed_hit and changed_eval > 4 * shared_eval, server.prefix_hits()[-3:]
