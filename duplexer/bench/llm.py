"""`duplexer bench llm`: the same SmolLM2 in process (llama.cpp) and behind llama-cpp-python's HTTP server.

One run measures both backends with the same prompts, one after the other (never at once, so
they do not share the CPU): time to first token and decode rate over ``--requests`` replies
after a warm-up, then how fast a cancel takes effect. The HTTP side goes through
:class:`~duplexer.actors.llm_openai.OpenAiLlm` to ``python -m llama_cpp.server`` started on a
free 127.0.0.1 port (``interrupt_requests`` off: one request at a time), always stopped.

Definitions (also written to the log's notes):

* time to first token: stream opened to the first non-empty piece, seen by the caller;
* decode rate: (pieces - 1) / (last piece - first piece); llama.cpp streams one token a piece;
* in-process cancel: the stream is closed after ``--cancel-after`` pieces of a long reply; the
  time from the close until ``LlamaLlm.lock`` can be taken (the generation thread has stopped);
* HTTP cancel, server log: the time from the close until the server's log shows its
  "Disconnected from client" line (printed when the disconnect cancels the request handler,
  which frees the model lock; the log is polled every 2 ms);
* HTTP cancel, next request: a one-token request sent right at the close waits for the server
  (one request at a time); its time to first token minus the same request's median time to
  first token right after the long prompt *completed* (``--cancel-after`` tokens, same KV cache
  state, so the same prompt work) is the time the cancelled request still held the server.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from duplexer.actors.engines import Message
from duplexer.actors.llm_http_client import Timeouts
from duplexer.actors.llm_openai import OpenAiLlm, OpenAiLlmConfig
from duplexer.actors.tool_calls import StreamPiece
from duplexer.bench.llm_serving import local_llama_server
from duplexer.bench.log import add_log_arguments, append_benchmark, format_table, log_path_from_args
from duplexer.cli_support import positive_int
from duplexer.runtime.console import say

SYSTEM = "You are a helpful voice assistant. Answer in two or three sentences."
QUESTIONS = (
    "What is the capital of France and why is it famous?",
    "How long does it take to fly from Paris to New York?",
    "Tell me one interesting fact about the Eiffel Tower.",
    "What should I pack for a weekend trip to Paris in spring?",
    "Recommend a short book to read on the plane.",
    "How do I say thank you very much in French?",
)
LONG: list[Message] = [("system", SYSTEM), ("user", "Count from one to two hundred in words, separated by commas.")]
TINY: list[Message] = [("user", "Hi")]
LONG_TOKENS = 256
"""Budget of the reply that gets cancelled; it is cut after a few pieces, long before this."""
REPEAT_PENALTY = 1.3
"""LlamaLlm's default; sent to the server too so both sample alike (temperature 0: greedy)."""
SERVER_START_TIMEOUT_S = 60.0
OBSERVE_TIMEOUT_S = 20.0
DISCONNECT_LINE = "Disconnected from client"

StreamFn = Callable[[Sequence[Message], str], AsyncIterator[StreamPiece]]


@dataclass
class Side:
    """Figures for one backend."""

    ttft_s: list[float] = field(default_factory=list)
    rate_tps: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    cancel_s: list[float] = field(default_factory=list)
    """In process: cancel → lock free. HTTP: cancel → disconnect line in the server log."""
    cancel_next_s: list[float] = field(default_factory=list)
    """HTTP only: follow-up's first token after the cancel minus its baseline time to first token."""


def prompts(n: int) -> list[list[Message]]:
    return [[("system", SYSTEM), ("user", QUESTIONS[i % len(QUESTIONS)])] for i in range(n)]


async def timed_reply(
    stream: AsyncIterator[StreamPiece], stop_after: int | None = None
) -> tuple[float | None, list[float]]:
    """Time to first piece and the arrival time of every piece (relative to the start); closes the stream."""
    start, stamps = time.monotonic(), []
    try:
        async for piece in stream:
            if piece:
                stamps.append(time.monotonic() - start)
            if stop_after is not None and len(stamps) >= stop_after:
                break
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
    return (stamps[0] if stamps else None), stamps


async def measure_replies(stream: StreamFn, n_requests: int, warmup: int, side: Side, tag: str) -> None:
    for i, messages in enumerate(prompts(warmup)):
        await timed_reply(stream(messages, f"{tag}-warm{i}"))
    for i, messages in enumerate(prompts(n_requests)):
        first, stamps = await timed_reply(stream(messages, f"{tag}-{i}"))
        if first is None:
            continue
        side.ttft_s.append(first)
        side.tokens.append(len(stamps))
        if len(stamps) >= 2 and stamps[-1] > stamps[0]:
            side.rate_tps.append((len(stamps) - 1) / (stamps[-1] - stamps[0]))


# ------------------------------------------------------------------ in process


async def measure_in_process(args: argparse.Namespace) -> Side:
    from duplexer.actors.models.llama_llm import LlamaLlm, LlamaParams

    side = Side()
    params = LlamaParams(  # sampled as the server is: no sentence limit, no presence or frequency penalty
        max_tokens=args.max_tokens,
        max_sentences=0,
        temperature=0.0,
        repeat_penalty=REPEAT_PENALTY,
        presence_penalty=0.0,
        frequency_penalty=0.0,
    )
    params = replace(params, n_threads=args.threads)
    llm = LlamaLlm(params=params)
    try:
        await measure_replies(llm.stream, args.requests, args.warmup, side, "inproc")
        llm.params = replace(params, max_tokens=LONG_TOKENS)
        lock = llm.lock

        def lock_free_at() -> float | None:
            if not lock.acquire(timeout=OBSERVE_TIMEOUT_S):
                return None
            at = time.monotonic()
            lock.release()
            return at

        for i in range(args.cancels):
            stream = llm.stream(LONG, f"inproc-cancel{i}")
            pieces = 0
            async for piece in stream:
                pieces += bool(piece)
                if pieces >= args.cancel_after:
                    break
            cancelled_at = time.monotonic()
            await stream.aclose()  # type: ignore[attr-defined]
            freed_at = await asyncio.to_thread(lock_free_at)
            if freed_at is not None and pieces >= args.cancel_after:
                side.cancel_s.append(freed_at - cancelled_at)
    finally:
        close = getattr(llm.model, "close", None)
        if close is not None:
            close()
    return side


# ------------------------------------------------------------------ HTTP server


def _disconnects(log_path: Path) -> int:
    return log_path.read_text(errors="replace").count(DISCONNECT_LINE)


async def _disconnect_seen_at(log_path: Path, before: int) -> float | None:
    end = time.monotonic() + OBSERVE_TIMEOUT_S
    while time.monotonic() < end:
        if _disconnects(log_path) > before:
            return time.monotonic()
        await asyncio.sleep(0.002)
    return None


async def _first_piece_at(stream: AsyncIterator[StreamPiece]) -> float | None:
    """When the first piece arrived; reads the (one-token) reply to its end, so the server logs no disconnect."""
    first = None
    try:
        async for piece in stream:
            if piece and first is None:
                first = time.monotonic()
        return first
    finally:
        await stream.aclose()  # type: ignore[attr-defined]


async def measure_http(args: argparse.Namespace, base_url: str, log_path: Path) -> tuple[Side, float | None]:
    side = Side()
    timeouts = Timeouts(first_token_s=60.0, stall_s=30.0)
    common = OpenAiLlmConfig(base_url=base_url, temperature=0.0, timeouts=timeouts)
    replies = OpenAiLlm(replace(common, max_tokens=args.max_tokens, extra_body={"repeat_penalty": REPEAT_PENALTY}))
    long_body = {"repeat_penalty": REPEAT_PENALTY, "min_tokens": LONG_TOKENS}
    long = OpenAiLlm(replace(common, max_tokens=LONG_TOKENS, extra_body=long_body))
    # The long prompt run to a natural end after as many tokens as a cancelled one streams: it leaves
    # the server's KV cache as a cancel does, so the follow-up's baseline pays the same prompt work.
    short_body = {"repeat_penalty": REPEAT_PENALTY}
    long_done = OpenAiLlm(replace(common, max_tokens=args.cancel_after, extra_body=short_body))
    tiny = OpenAiLlm(replace(common, max_tokens=1))
    engines = (replies, long, long_done, tiny)
    idle_tiny: list[float] = []
    try:
        await replies.wait_until_ready(30.0)
        await measure_replies(replies.stream, args.requests, args.warmup, side, "http")
        for i in range(max(3, args.cancels)):
            await timed_reply(long_done.stream(LONG, f"http-done{i}"))
            first, _ = await timed_reply(tiny.stream(TINY, f"http-tiny{i}"))
            if first is not None:
                idle_tiny.append(first)
        idle = statistics.median(idle_tiny) if idle_tiny else None
        for i in range(args.cancels):
            before = _disconnects(log_path)
            stream = long.stream(LONG, f"http-cancel{i}")
            pieces = 0
            async for piece in stream:
                pieces += bool(piece)
                if pieces >= args.cancel_after:
                    break
            cancelled_at = time.monotonic()
            await stream.aclose()  # type: ignore[attr-defined]
            # Both observers start at the close: the log watcher and the follow-up request.
            seen_at, next_at = await asyncio.gather(
                _disconnect_seen_at(log_path, before), _first_piece_at(tiny.stream(TINY, f"http-next{i}"))
            )
            if pieces < args.cancel_after:
                continue
            if seen_at is not None:
                side.cancel_s.append(seen_at - cancelled_at)
            if next_at is not None and idle is not None:
                side.cancel_next_s.append(next_at - cancelled_at - idle)
    finally:
        for engine in engines:
            await engine.aclose()
    return side, idle


# ------------------------------------------------------------------ report


def _ms(values: Sequence[float], how: Callable[[Sequence[float]], float] = statistics.median) -> str:
    return f"{1000 * how(values):.0f} ms" if values else "-"


def _tps(values: Sequence[float]) -> str:
    return f"{statistics.median(values):.1f} tok/s" if values else "-"


def _ratio(http: Sequence[float], local: Sequence[float]) -> str:
    if not http or not local or statistics.median(local) <= 0:
        return "-"
    return f"{statistics.median(http) / statistics.median(local):.2f}x"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="duplexer bench llm",
        description="SmolLM2 in process (llama.cpp, LlamaLlm) against the same model behind llama-cpp-python's "
        "OpenAI-compatible HTTP server on 127.0.0.1 (OpenAiLlm): time to first token and decode rate over the "
        "same prompts after a warm-up, their HTTP/in-process ratios, and cancel latency (in process: until the "
        "model lock is free; HTTP: until the server logs the disconnect, and until a follow-up request is served). "
        "The backends run one after the other. Prints the figures and appends them to the benchmark log (--log).",
    )
    parser.add_argument("--requests", type=positive_int, default=8, help="measured replies per backend (default 8)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured replies first, per backend (default 1)")
    parser.add_argument("--max-tokens", type=positive_int, default=48, help="reply length budget (default 48)")
    parser.add_argument("--cancels", type=positive_int, default=5, help="cancel trials per backend (default 5)")
    parser.add_argument(
        "--cancel-after", type=positive_int, default=4, help="pieces of the long reply before the cancel (default 4)"
    )
    parser.add_argument("--threads", type=positive_int, default=2, help="llama.cpp threads, both sides (default 2)")
    parser.add_argument(
        "--server-start-timeout", type=float, default=SERVER_START_TIMEOUT_S, help="seconds (default 60)"
    )
    add_log_arguments(parser)
    return parser


def main(argv: Sequence[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(list(argv))
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    if args.server_start_timeout <= 0:
        parser.error("--server-start-timeout must be > 0")

    started = time.monotonic()
    local = asyncio.run(measure_in_process(args))
    server_log = Path(tempfile.gettempdir()) / "duplexer-bench-llm-server.log"  # kept for a look after a failure
    with local_llama_server(server_log, args.threads, args.server_start_timeout) as base_url:
        http, idle_tiny = asyncio.run(measure_http(args, base_url, server_log))
    elapsed = time.monotonic() - started

    rows = [
        ("time to first token (p50)", _ms(local.ttft_s), _ms(http.ttft_s), _ratio(http.ttft_s, local.ttft_s)),
        ("decode rate (p50)", _tps(local.rate_tps), _tps(http.rate_tps), _ratio(http.rate_tps, local.rate_tps)),
        (
            "tokens per reply (p50)",
            f"{statistics.median(local.tokens):.0f}" if local.tokens else "-",
            f"{statistics.median(http.tokens):.0f}" if http.tokens else "-",
            "",
        ),
        ("cancel: lock free / server logs disconnect (p50)", _ms(local.cancel_s), _ms(http.cancel_s), ""),
        ("cancel: same, max", _ms(local.cancel_s, max), _ms(http.cancel_s, max), ""),
        ("cancel: follow-up first token minus baseline (p50)", "", _ms(http.cancel_next_s), ""),
        ("cancel: same, max", "", _ms(http.cancel_next_s, max), ""),
        (
            "follow-up baseline: first token after a completed reply (p50)",
            "",
            _ms([idle_tiny] if idle_tiny else []),
            "",
        ),
    ]
    header = ("measure", "in-process", "HTTP server", "HTTP / in-process")
    say(f"{format_table(header, rows)}\n(run took {elapsed:.0f} s)")
    append_benchmark(
        "LLM backends: in-process llama.cpp vs its HTTP server",
        header,
        rows,
        notes=(
            f"SmolLM2-135M Q4_1 via llama-cpp-python, {args.threads} threads each, run one after the other; "
            f"HTTP = `python -m llama_cpp.server` on 127.0.0.1 (interrupt_requests off) through OpenAiLlm",
            f"{args.requests} measured replies per backend after {args.warmup} warm-up, same {len(QUESTIONS)} "
            f"rotating prompts, max {args.max_tokens} tokens, temperature 0, repeat_penalty {REPEAT_PENALTY}",
            "time to first token = stream opened to the first non-empty piece, on the caller's side; "
            "decode rate = (pieces - 1) / (last piece - first piece), one token per piece",
            f"cancel trials: {args.cancels} per backend, a long reply closed after {args.cancel_after} pieces; "
            "in-process = close until LlamaLlm.lock can be taken (generation thread stopped)",
            "HTTP server logs disconnect = close until its 'Disconnected from client' line appears in its "
            "log (polled every 2 ms; printed when the disconnect cancels its request handler, which then "
            "frees the model lock; a token already being computed on its worker thread may still finish)",
            "HTTP follow-up = a one-token request sent at the close; its first token time minus the same "
            "request's median right after the long prompt completed normally (same cache state); one request "
            "at a time, so this is how long the cancelled request still held the server (noise: +-tens of ms)",
            f"whole run {elapsed:.0f} s including model load and server start",
        ),
        log_path=log_path_from_args(args),
        argv=["bench", "llm", *argv],
    )
    return 0
