"""The `duplexer` command line. Bad input exits with code 2 and a one-line message."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

EXIT_BAD_INPUT = 2

# name -> (module, function, help). Each function takes the remaining argv and returns an exit code.
BENCHMARKS: dict[str, tuple[str, str, str]] = {
    "bus": ("duplexer.runtime.bench", "main", "in-process bus publish->deliver latency and rate"),
    "kernels": ("duplexer.kernels.bench", "main", "token interleave kernels: NumPy vs numba"),
}


def _fail(message: str) -> int:
    print(f"duplexer: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _run_bench(args: argparse.Namespace) -> int:
    module_name, func_name, _ = BENCHMARKS[args.name]
    func: Callable[[Sequence[str]], int] = getattr(importlib.import_module(module_name), func_name)
    return func(args.bench_args)


def _run_sim(args: argparse.Namespace) -> int:
    from duplexer.runtime.logging import configure_logging
    from duplexer.sims.report import (
        ScenarioError,
        UsageError,
        parse_overrides,
        parse_sweep,
        run_scenarios,
        run_sweep,
        summary_table,
    )

    configure_logging(args.log_level)
    progress = not args.quiet and sys.stderr.isatty()
    try:
        overrides = parse_overrides(args.set)
        if args.sweep:
            grid = parse_sweep(args.sweep)
            rows = run_sweep(args.paths, args.report, args.seed, overrides, grid, progress=progress)
            keys = list(grid)
            print(" ".join(f"{k:>16}" for k in keys) + f" {'lat p50 ms':>10} {'takeover':>8}")
            for row in rows:
                values = " ".join(f"{row['params'][k]:>16g}" for k in keys)
                lat, take = row["response_latency_p50_ms"], row["pause_takeover_rate"]
                print(
                    f"{values} {lat if lat is not None else '-':>10} {take if take is not None else '-':>8}"
                )
            print(f"wrote {args.report / 'sweep.csv'} and {args.report / 'pareto.png'}")
            return 0
        summary = run_scenarios(
            args.paths, args.report, args.seed, overrides, plots=not args.no_plots, progress=progress
        )
    except (ScenarioError, UsageError) as exc:
        return _fail(str(exc))
    print(summary_table(summary))
    print(
        f"wrote {args.report / 'summary.json'}"
        + ("" if args.no_plots else " and a timeline PNG per scenario")
    )
    return 0


def _run_policy_show(args: argparse.Namespace) -> int:
    from duplexer.policies.render import render

    print(render(args.format))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="duplexer",
        description="Full-duplex spoken-dialogue engine: listens while it talks, answers fast, "
        "stops when interrupted.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sim = commands.add_parser(
        "sim",
        help="replay scenarios on a virtual clock and report turn-taking metrics",
        description="Replay conversation scenarios (YAML) through the real actors on a virtual "
        "clock, with scripted engines. Each scenario runs twice, with speculation as configured "
        "and with it off, to measure the latency speculation saves. Writes REPORT/summary.json "
        "and a timeline PNG per scenario; with --sweep, writes REPORT/sweep.csv and "
        "REPORT/pareto.png instead. The scenario format is in docs/scenarios.md.",
    )
    sim.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="scenario files or folders")
    sim.add_argument(
        "--report", type=Path, default=Path("out"), metavar="DIR", help="output folder (default: out)"
    )
    sim.add_argument("--seed", type=int, default=0, help="seed for latency jitter (default: 0)")
    sim.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a policy parameter, e.g. --set pause_ms=250 (see `duplexer policy show`)",
    )
    sim.add_argument(
        "--sweep",
        action="append",
        default=[],
        metavar="KEY=START:STOP:STEP",
        help="sweep a policy parameter over a range (stop included); repeat for a grid",
    )
    sim.add_argument("--no-plots", action="store_true", help="skip the timeline PNGs")
    sim.add_argument("--quiet", action="store_true", help="no progress bar")
    sim.add_argument("--log-level", default="WARNING", help="structured log level (default: WARNING)")
    sim.set_defaults(handler=_run_sim)

    policy = commands.add_parser("policy", help="inspect the turn-taking policy")
    policy_commands = policy.add_subparsers(dest="policy_command", required=True, metavar="SUBCOMMAND")
    show = policy_commands.add_parser(
        "show",
        help="print the controller's transition table and parameters",
        description="Print the controller's transition table (every state x event pair, declared "
        "as a transition or as ignored) and its parameters, or draw it as a diagram.",
    )
    show.add_argument(
        "--format",
        choices=["table", "mermaid", "dot"],
        default="table",
        help="table (default), mermaid (stateDiagram-v2) or dot (Graphviz)",
    )
    show.set_defaults(handler=_run_policy_show)

    bench = commands.add_parser(
        "bench",
        help="run a benchmark; prints figures and appends them to docs/benchmarks.md",
        description="Run a benchmark. Figures are printed and appended, with the command, "
        "to docs/benchmarks.md. Available: "
        + "; ".join(f"{name}: {spec[2]}" for name, spec in BENCHMARKS.items()),
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
