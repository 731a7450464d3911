"""`duplexer bench llm-serving`: what speculation costs and saves on an LLM server.

Each turn of a scripted conversation sends what the controller sends: speculative calls on
the partial transcript (discarded after a few pieces, as when the user resumes speaking),
then the call on the whole utterance, run to the end and added to the history. A control
call repeats the committed prompt with a changed first line, so no cached prefix applies.

Reported: speculative calls started and discarded, discarded tokens and the server time they
held, time to first piece with the shared prefix against the control, and how soon the
server serves the next call after a cancel. Without ``--base-url`` it starts llama-cpp-python's
OpenAI-compatible server with the bundled SmolLM2 on loopback (one request at a time).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from duplexer.actors.context import DEFAULT_SYSTEM_PROMPT
from duplexer.actors.engines import Message
from duplexer.actors.llm_http_client import StreamingHttpLlm, Timeouts
from duplexer.actors.llm_openai import OpenAiLlm, OpenAiLlmConfig
from duplexer.actors.llm_sglang_client import SglangServerConfig, SglangServerLlm
from duplexer.actors.tool_calls import StreamPiece
from duplexer.bench.log import add_log_arguments, append_benchmark, log_path_from_args
from duplexer.runtime.console import say

UTTERANCES = (
    "what is the capital of france and why is it famous",
    "how long does it take to fly from paris to new york",
    "tell me one interesting fact about the eiffel tower",
    "what should i pack for a weekend trip to paris in spring",
    "recommend a short book to read on the plane",
    "how do i say thank you very much in french",
)
SERVER_START_TIMEOUT_S = 120.0
SERVER_STOP_TIMEOUT_S = 10.0


@dataclass
class Figures:
    ttft_shared_s: list[float] = field(default_factory=list)
    ttft_control_s: list[float] = field(default_factory=list)
    next_after_cancel_s: list[float] = field(default_factory=list)


async def _first_pieces(stream: AsyncIterator[StreamPiece], n_pieces: int | None) -> tuple[list[str], float | None]:
    """Take ``n_pieces`` (None: all) and close the stream; also the time to the first piece (text pieces kept)."""
    start, first, pieces = time.monotonic(), None, []
    async for piece in stream:
        if first is None:
            first = time.monotonic() - start
        pieces.append(piece if isinstance(piece, str) else "")
        if len(pieces) == n_pieces:
            break
    await stream.aclose()  # type: ignore[attr-defined]
    return pieces, first


async def run_conversation(
    engine: StreamingHttpLlm, control: StreamingHttpLlm, turns: int, speculative: int, discard_after: int
) -> Figures:
    """Each turn: ``speculative`` discarded calls on growing partial text, the committed call, the control."""
    figures = Figures()
    history: list[Message] = [("system", DEFAULT_SYSTEM_PROMPT)]
    after_cancel = False  # the previous call on the server was cancelled mid-stream
    for turn in range(turns):
        words = UTTERANCES[turn % len(UTTERANCES)].split()
        for call in range(speculative):
            partial = " ".join(words[: max(1, len(words) * (call + 1) // (speculative + 1))])
            stream = engine.stream([*history, ("user", partial)], f"t{turn}r{call}")
            _, first = await _first_pieces(stream, discard_after)
            if after_cancel and first is not None:
                figures.next_after_cancel_s.append(first)
            after_cancel = True
        utterance = " ".join(words)
        pieces, first = await _first_pieces(
            engine.stream([*history, ("user", utterance)], f"t{turn}r{speculative}"), None
        )
        if first is not None:
            figures.ttft_shared_s.append(first)
            figures.next_after_cancel_s.append(first)
        changed = [("system", f"Session {turn + 1}. {DEFAULT_SYSTEM_PROMPT}"), *history[1:], ("user", utterance)]
        _, control_first = await _first_pieces(control.stream(changed, f"t{turn}c"), 1)
        if control_first is not None:
            figures.ttft_control_s.append(control_first)
        history += [("user", utterance), ("assistant", "".join(pieces).strip() or "Okay.")]
    return figures


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def local_llama_server(log_path: Path, threads: int, start_timeout_s: float = SERVER_START_TIMEOUT_S) -> Iterator[str]:
    """llama-cpp-python's server with the bundled SmolLM2 on a free loopback port; yields its base URL.

    It serves one request at a time (``--interrupt_requests False``), logs unbuffered (its disconnect
    notices are prints, read as they come), and is always stopped on exit.
    """
    from duplexer.actors.models.packages import smollm2_model_path

    port = _free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_model_path())]
    command += ["--host", "127.0.0.1", "--port", str(port), "--n_threads", str(threads)]
    command += ["--interrupt_requests", "False"]
    base_url = f"http://127.0.0.1:{port}/v1"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
    try:
        end = time.monotonic() + start_timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the llama server exited with {process.returncode}; see {log_path}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base_url}/models", timeout=1.0).status_code == 200:
                    break
            if time.monotonic() > end:
                raise RuntimeError(f"the llama server did not start within {start_timeout_s:.0f} s; see {log_path}")
            time.sleep(0.1)
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(SERVER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(SERVER_STOP_TIMEOUT_S)


def _engines(args: argparse.Namespace, base_url: str) -> tuple[StreamingHttpLlm, StreamingHttpLlm]:
    timeouts = Timeouts(first_token_s=60.0, stall_s=30.0)
    if args.backend == "sglang-server":
        config = SglangServerConfig(
            base_url=base_url, max_new_tokens=args.max_tokens, temperature=0.0, timeouts=timeouts
        )
        return SglangServerLlm(config), SglangServerLlm(config)
    openai = OpenAiLlmConfig(
        base_url=base_url, model=args.model, max_tokens=args.max_tokens, temperature=0.0, timeouts=timeouts
    )
    return OpenAiLlm(openai), OpenAiLlm(openai)


def _ms(values: Sequence[float]) -> str:
    return f"{1000 * statistics.median(values):.0f} ms" if values else "-"


async def _measure(args: argparse.Namespace, base_url: str) -> tuple[StreamingHttpLlm, Figures]:
    engine, control = _engines(args, base_url)
    try:
        await engine.wait_until_ready(30.0)
        figures = await run_conversation(engine, control, args.turns, args.speculative, args.discard_after)
    finally:
        await engine.aclose()
        await control.aclose()
    return engine, figures


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="duplexer bench llm-serving",
        description="Speculation on an LLM server: discarded tokens and server time, prefix-cache effect on "
        "time to first piece, and how soon a cancelled request frees the server. Prints the figures and "
        "appends them to the benchmark log (--log).",
    )
    parser.add_argument("--backend", choices=("openai", "sglang-server"), default="openai")
    parser.add_argument("--base-url", help="a running server (default: start llama-cpp-python's with SmolLM2)")
    parser.add_argument("--model", default="", help="openai: the model name to ask for")
    parser.add_argument("--turns", type=int, default=5, help="conversation turns (default 5)")
    parser.add_argument("--speculative", type=int, default=2, help="discarded speculative calls per turn (default 2)")
    parser.add_argument("--discard-after", type=int, default=3, help="pieces a discarded call streams (default 3)")
    parser.add_argument("--max-tokens", type=int, default=24, help="length of a committed reply (default 24)")
    parser.add_argument("--threads", type=int, default=2, help="threads of the local llama server (default 2)")
    add_log_arguments(parser)
    args = parser.parse_args(list(argv))
    if args.turns < 1 or args.speculative < 1 or args.discard_after < 1 or args.max_tokens < 1:
        parser.error("--turns, --speculative, --discard-after and --max-tokens must be >= 1")
    if args.backend == "sglang-server" and not args.base_url:
        parser.error("--backend sglang-server needs --base-url of a running SGLang server")

    with contextlib.ExitStack() as stack:
        if args.base_url:
            base_url, where = args.base_url, args.base_url
        else:
            server_log = Path(os.environ.get("TMPDIR", "/tmp")) / "duplexer-bench-llm-server.log"
            base_url = stack.enter_context(local_llama_server(server_log, args.threads))
            where = f"llama-cpp-python server, SmolLM2-135M Q4_1, {args.threads} threads, loopback"
        engine, figures = asyncio.run(_measure(args, base_url))

    counters = engine.stats.counters
    discarded, committed = counters["cancelled"], counters["completed"]
    held_discarded, held_committed = counters["server_s_discarded"], counters["server_s_completed"]
    rows = [
        ("calls: committed / discarded", f"{committed:.0f} / {discarded:.0f}"),
        ("discarded tokens (total)", f"{counters['tokens_discarded']:.0f}"),
        ("discarded tokens per discarded call", f"{counters['tokens_discarded'] / max(discarded, 1):.1f}"),
        ("server time held by discarded calls", f"{held_discarded:.2f} s"),
        ("server time held by committed calls", f"{held_committed:.2f} s"),
        ("share of server time discarded", f"{100 * held_discarded / max(held_discarded + held_committed, 1e-9):.0f}%"),
        ("first piece, shared prefix (median)", _ms(figures.ttft_shared_s)),
        ("first piece, changed prefix (median)", _ms(figures.ttft_control_s)),
        ("next call's first piece after a cancel (median)", _ms(figures.next_after_cancel_s)),
        ("prompt tokens served from cache (server-reported)", f"{counters['cached_tokens']:.0f}"),
    ]
    for name, value in rows:
        say(f"{name:52} {value:>12}")
    append_benchmark(
        "LLM serving: speculation's cost and prefix reuse",
        ("measure", "value"),
        rows,
        notes=(
            f"server: {where}; backend {args.backend}",
            f"{args.turns} turns, {args.speculative} discarded speculative call(s) per turn after "
            f"{args.discard_after} piece(s), committed replies of {args.max_tokens} tokens, temperature 0",
            "server time = request sent to the server letting go (abort acknowledged or connection closed), "
            "measured on the client; tokens = pieces received before the cancel (a lower bound)",
            "changed prefix = the committed prompt with a different first line, so no cached prefix applies",
        ),
        log_path=log_path_from_args(args),
        argv=["bench", "llm-serving", *argv],
    )
    return 0
