"""The `duplexer` command line. Bad input exits with code 2 and a one-line message.

Each command lives in its own module with a ``register(subparsers)`` function;
add a feature's command by adding its module to ``COMMAND_MODULES`` and a
benchmark (a module of :mod:`duplexer.bench`) by adding a line to ``BENCHMARKS``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

COMMAND_MODULES: tuple[str, ...] = (
    "duplexer.sims.cli",
    "duplexer.policy_cli",
    "duplexer.sims.demo_cli",
    "duplexer.sims.fdb_cli",
    "duplexer.protocols.mqtt_cli",
    "duplexer.protocols.webrtc_cli",
    "duplexer.sims.score_cli",
)

# name -> (module, function, help). Each function takes the remaining argv and returns an exit code.
BENCHMARKS: dict[str, tuple[str, str, str]] = {
    "bus": ("duplexer.bench.bus", "main", "in-process bus publish->deliver latency and rate"),
    "kernels": ("duplexer.bench.kernels", "main", "token interleave kernels: NumPy vs numba"),
    "demo": ("duplexer.bench.demo", "main", "the demo with real models, speculation on vs off"),
    "mqtt": ("duplexer.bench.mqtt", "main", "MQTT bridge: concurrent real-time devices, broker hop"),
    "llm-serving": ("duplexer.bench.llm_serving", "main", "LLM server: speculation's discarded work, prefix reuse"),
    "llm": ("duplexer.bench.llm", "main", "LLM in process vs its HTTP server: TTFT, decode, cancel"),
    "webrtc": ("duplexer.bench.webrtc", "main", "barge-in stop latency over WebRTC vs in process"),
    "asr": ("duplexer.bench.asr", "main", "Whisper short window vs 30 s window: word accuracy, time per call"),
    "eot": ("duplexer.bench.eot", "main", "end of turn: dead air vs false cut-offs, silence/text/audio/fused"),
    "echo": (
        "duplexer.bench.echo",
        "main",
        "echo cancellation on a device that hears its speaker: ERLE, self-stops",
    ),
    "executors": ("duplexer.bench.executors", "main", "local vs Ray executor: event hop latency, sessions"),
    "soak": ("duplexer.bench.soak", "main", "server and MQTT bridge under good and bad clients: audio, memory, errors"),
    "replies": ("duplexer.bench.replies", "main", "embedded LLM on VAP conversations: distinct replies, repeat guard"),
    "conversation": (
        "duplexer.bench.conversation",
        "main",
        "recorded questions through the live pipeline, real models: latency, takeover, barge-in, stages",
    ),
}


def _run_bench(args: argparse.Namespace) -> int:
    module_name, func_name, _ = BENCHMARKS[args.name]
    func: Callable[[Sequence[str]], int] = getattr(importlib.import_module(module_name), func_name)
    return func(args.bench_args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="duplexer",
        description="Full-duplex spoken-dialogue engine: listens while it talks, answers fast, stops when interrupted.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(commands)

    bench = commands.add_parser(
        "bench",
        help="run a benchmark; prints figures and appends them to the benchmark log",
        description="Run a benchmark. Figures are printed and appended, with the command, to --log PATH; "
        "by default to docs/benchmarks.md inside a checkout of duplexer, and nowhere otherwise "
        "(--no-log: nowhere). Available: " + "; ".join(f"{name}: {spec[2]}" for name, spec in BENCHMARKS.items()),
    )
    bench.add_argument("name", choices=sorted(BENCHMARKS), help="which benchmark")
    bench.add_argument("bench_args", nargs=argparse.REMAINDER, help="options for that benchmark")
    bench.set_defaults(handler=_run_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
