"""`duplexer sim`: replay scenarios on the virtual clock (or in real time, on either executor); report or sweep."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from duplexer.actors.pipeline import PIPELINE_ACTORS
from duplexer.cli_support import add_policy_argument, chosen_policy, fail
from duplexer.runtime.console import say
from duplexer.runtime.executors import add_executor_arguments, session_maker

DEFAULT_CONCURRENCY = 8
"""Scenarios playing at once in real time."""
SIM_RAY_PLACEMENT = "session=controller,context"
"""The simulator's default Ray placement: the per-session actors go to a Ray host, except the VAD;
the scripted VAD, ASR, LLM and tools read the simulated user's script, so they run beside it in the
driver. The TTS stays beside the LLM: placed in the host, every LLM token crossed to it and every
audio chunk crossed back (98 Ray calls per simulated conversation instead of 74), and
``bench executors`` sustained 32 prewarmed sessions instead of 48."""


def run(args: argparse.Namespace) -> int:
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
        policy = chosen_policy(args)
        runner = _runner(args, progress)
    except (ValueError, RuntimeError) as exc:  # a bad preset or placement, or no Ray
        return fail(str(exc))
    try:
        overrides = parse_overrides(args.set, policy=policy)
        if args.sweep:
            grid = parse_sweep(args.sweep, policy)
            rows = run_sweep(args.paths, args.report, args.seed, overrides, grid, progress=progress, policy=policy)
            keys = list(grid)
            say(" ".join(f"{k:>16}" for k in keys) + f" {'lat p50 ms':>10} {'takeover':>8}")
            for row in rows:
                values = " ".join(f"{row['params'][k]:>16g}" for k in keys)
                lat, take = row["response_latency_p50_ms"], row["pause_takeover_rate"]
                say(f"{values} {lat if lat is not None else '-':>10} {take if take is not None else '-':>8}")
            say(f"wrote {args.report / 'sweep.csv'} and {args.report / 'pareto.png'}")
            return 0
        if args.sweep and runner is not None:
            raise UsageError("--sweep runs on the virtual clock only; leave out --executor ray and --real-time")
        summary = run_scenarios(
            args.paths,
            args.report,
            args.seed,
            overrides,
            plots=not args.no_plots,
            progress=progress,
            runner=runner,
            policy=policy,
        )
    except (ScenarioError, UsageError) as exc:
        return fail(str(exc))
    say(summary_table(summary))
    say(f"wrote {args.report / 'summary.json'}" + ("" if args.no_plots else " and a timeline PNG per scenario"))
    return 0


def _runner(args: argparse.Namespace, progress: bool) -> Any:
    """None for the virtual clock; else a runner that plays the scenarios in real time on the executor."""
    if args.executor == "local" and not args.real_time:
        return None
    from duplexer.sims.realtime import run_real_time

    if args.concurrency < 1:
        raise ValueError(f"--concurrency must be >= 1, got {args.concurrency}")
    make_session = session_maker(args, PIPELINE_ACTORS)

    def run_jobs(jobs: Any) -> Any:
        return run_real_time(jobs, args.seed, make_session, args.concurrency, progress)

    return run_jobs


TABLE_COLUMNS_HELP = """\
the table, one row per scenario and ALL (definitions: docs/metrics.md):
  turns       user turns answered
  lat p50/p90 response latency: bot audio onset - end of the user's turn, ms
  stop p50    barge-in stop: how long the bot keeps talking after the user comes in, ms
  talk-over   bot stretches begun inside a user's turn (pauses included) / their total ms
  pause TO    pause takeover rate: share of turns with a pause that the bot talked into
  bc stop     backchannel false stop rate: share of backchannels over the bot that stopped it
  spec s/c/d  speculative replies started / committed / discarded
  commit      speculation commit rate: committed / started
  saved p50   latency saved by speculation: the same turn with it off minus on, ms
scenarios with an end-of-turn detector add a table: its name, the estimates it gave, and the
end-of-turn commit p50 (end of the user's speech to the commit, ms) and pause takeover rate, each
beside the same scenario's with silence alone.
summary.json also holds every user turn's row (per_turn)."""


class _KeepEpilogLines(argparse.HelpFormatter):
    """Reflows the description as usual but prints the epilog's table as written."""

    def add_text(self, text: str | None) -> None:
        if text is TABLE_COLUMNS_HELP:
            self._add_item(lambda t: t + "\n", [text])
        else:
            super().add_text(text)


def register(commands: Any) -> None:
    sim = commands.add_parser(
        "sim",
        help="replay scenarios on a virtual clock and report turn-taking metrics",
        description="Replay conversation scenarios (YAML) through the real actors on a virtual "
        "clock, with scripted engines. Each scenario runs twice, with speculation as configured "
        "and with it off, to measure the latency speculation saves. Writes REPORT/summary.json "
        "and a timeline PNG per scenario; with --sweep, writes REPORT/sweep.csv and "
        "REPORT/pareto.png instead. The scenario format is in docs/scenarios.md. With "
        "--executor ray (or --real-time) the scenarios play on the wall clock, several at once.",
        epilog=TABLE_COLUMNS_HELP,
        formatter_class=_KeepEpilogLines,
    )
    sim.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="scenario files or folders")
    sim.add_argument("--report", type=Path, default=Path("out"), metavar="DIR", help="output folder (default: out)")
    sim.add_argument("--seed", type=int, default=0, help="seed for latency jitter (default: 0)")
    add_policy_argument(sim)
    sim.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a parameter of the --policy preset, e.g. --set pause_ms=250 (see `duplexer policy show`)",
    )
    sim.add_argument(
        "--sweep",
        action="append",
        default=[],
        metavar="KEY=START:STOP:STEP",
        help="sweep a policy parameter over a range (stop included); repeat for a grid",
    )
    sim.add_argument(
        "--real-time",
        action="store_true",
        help="play the scenarios on the wall clock instead of the virtual one (implied by --executor ray)",
    )
    sim.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY,
        metavar="N",
        help=f"in real time, how many scenarios play at once (default: {DEFAULT_CONCURRENCY})",
    )
    add_executor_arguments(sim, SIM_RAY_PLACEMENT, PIPELINE_ACTORS)
    sim.add_argument("--no-plots", action="store_true", help="skip the timeline PNGs")
    sim.add_argument("--quiet", action="store_true", help="no progress bar")
    sim.add_argument("--log-level", default="WARNING", help="structured log level (default: WARNING)")
    sim.set_defaults(handler=run)
