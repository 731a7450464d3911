"""`duplexer bench demo`: the demo conversation with real models, speculation on and off, in one run."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from typing import Any

from duplexer.cli_support import fail, positive_int
from duplexer.runtime.console import progress, say
from duplexer.sims.demo_cli import demo_engines

BENCH_REPEATS = 3
"""`bench demo` plays the conversation this many times with speculation on and off: nine turns give a
median, where one run's p50 is just its middle turn."""


def main(argv: Sequence[str]) -> int:
    """`duplexer bench demo`: the demo conversation with speculation on and off, in one run."""
    from duplexer.actors.models.packages import ModelPackageMissing
    from duplexer.bench.log import add_log_arguments, append_benchmark, log_path_from_args
    from duplexer.sims.demo import pooled_figures, run_demo, table

    parser = argparse.ArgumentParser(
        prog="duplexer bench demo",
        description="Run the demo conversation with real models in real time, with speculation on and "
        "off in the same run, --repeat times (alternating which goes first); print and append response "
        "latency as heard (from the audible onset of the bot's audio; the engine's first chunk beside it), "
        "talk-over, latency saved, barge-in stop latency and output underruns, pooled over every turn, to "
        "the benchmark log (--log). Also reports how long the first audio takes after the turn is committed: "
        "with speculation off that is the generation time speculation can save at most.",
    )
    parser.add_argument(
        "--repeat",
        type=positive_int,
        default=BENCH_REPEATS,
        help=f"times to play the conversation each way, ~45 s per time (default {BENCH_REPEATS})",
    )
    add_log_arguments(parser)
    args = parser.parse_args(list(argv))
    try:
        make_engines, synthesize = demo_engines()
    except ModelPackageMissing as exc:
        return fail(str(exc))

    async def repetitions() -> list[tuple[list[dict[str, Any]], dict[str, Any]]]:
        results = []
        for k in range(args.repeat):
            first = "on" if k % 2 == 0 else "off"
            progress(f"bench demo: run {k + 1}/{args.repeat}, speculation {first} first")
            _, _, records, summary = await run_demo(make_engines, synthesize, speculation_first=k % 2 == 0)
            say(table(records, summary))
            results.append((records, summary))
        return results

    results = asyncio.run(repetitions())
    figures = pooled_figures(results)
    lat, saved, stop = figures["response_latency_ms"], figures["latency_saved_ms"], figures["barge_in_stop_ms"]
    rows = [
        ("response latency p50 as heard (audible onset), speculation on", lat["p50"], "<= 800 ms"),
        ("response latency p90 as heard, speculation on", lat["p90"], ""),
        ("engine breakdown: first TTS chunk p50, speculation on", figures["engine_first_chunk_ms"]["p50"], ""),
        ("latency saved by speculation p50", saved["p50"], ">= 300 ms"),
        ("barge-in stop latency p50", stop["p50"], "<= 150 ms"),
        ("talk-over, total ms (all runs, speculation on)", figures["talk_over_ms"], "0"),
        ("output underruns (all runs)", figures["output_underruns"], "0"),
        (
            "first audio after commit p50, speculation off (most it can save)",
            figures["audio_after_commit_off_ms"]["p50"],
            "",
        ),
        ("first audio after commit p50, speculation on", figures["audio_after_commit_on_ms"]["p50"], ""),
    ]
    say("")
    say(f"pooled over {figures['turns']} turns of {args.repeat} runs:")
    for name, value, target in rows:
        say(f"  {name}: {value}{f'  (target {target})' if target else ''}")
    per_turn = [[r["latency_saved_ms"] for r in records] for records, _ in results]
    append_benchmark(
        "demo: real models in real time (Silero, Whisper tiny.en, SmolLM2-135M, Piper)",
        ("measure (pooled over every turn)", "value (ms or count)", "target"),
        rows,
        notes=(
            f"{args.repeat} runs each way of {len(results[0][0])} user turns, alternating which goes first",
            f"latency saved per run and turn: {per_turn} ms; per-run p50: {figures['latency_saved_p50_per_run']}",
            f"response latency per run and turn: {[[r['response_latency_ms'] for r in rs] for rs, _ in results]} ms",
        ),
        log_path=log_path_from_args(args),
        argv=["bench", "demo", *argv],
    )
    return 0
