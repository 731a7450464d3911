"""`duplexer eval fdb`: run the engine on a Full-Duplex-Bench tree, or score one, and print FDB's v1 tables."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from tqdm import tqdm

from duplexer.cli_support import add_policy_argument, chosen_policy, fail, positive_int, unwritable
from duplexer.runtime.console import progress, say

JUDGE_NOT_IMPLEMENTED = (
    "--judge-url: the LLM judge (FDB's interruption relevance and v1.5 behaviour labels) is not "
    "implemented yet; run without it for the timing and takeover figures"
)


def _engines(args: argparse.Namespace) -> tuple[Any, Any]:
    """(engine factory, transcriber) for ``--engines``."""
    from duplexer.runtime.events import INPUT_SAMPLE_RATE_HZ
    from duplexer.sims.fdb_run import hum_words

    if args.engines == "scripted":
        from duplexer.protocols.engine_factory import scripted_engines

        return scripted_engines(tts_rate_hz=INPUT_SAMPLE_RATE_HZ, hum=True), hum_words
    from duplexer.actors.models.loading import load_models
    from duplexer.sims.demo_cli import demo_engines

    progress("loading models (Silero VAD, Whisper tiny.en, SmolLM2-135M, Piper joe)...")
    make_engines, _ = demo_engines(args)
    return make_engines, load_models().asr.transcribe_words


def _eval_fdb(args: argparse.Namespace) -> int:
    from duplexer.actors.models.packages import ModelPackageMissing
    from duplexer.runtime.logging import configure_logging
    from duplexer.sims.demo import demo_config
    from duplexer.sims.fdb import FdbError, discover, read_json, summarize, task_name
    from duplexer.sims.fdb_report import table, write_report
    from duplexer.sims.fdb_run import hum_words, run_tree, score_folder

    configure_logging(args.log_level)
    if args.judge_url:
        return fail(JUDGE_NOT_IMPLEMENTED)
    try:
        policy = chosen_policy(args)
        tasks = [task_name(t) for t in args.task or ()]
        samples = discover(args.root, tasks)
        if problem := unwritable(args.out, folder=True):
            raise FdbError(problem)
        icc_gt = read_json(args.icc_gt) if args.icc_gt else None
        if icc_gt is not None and not (
            isinstance(icc_gt, dict)
            and all(
                isinstance(v, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
                for v in icc_gt.values()
            )
        ):
            raise FdbError(f"{args.icc_gt}: expected {{sample id: [probabilities, as numbers]}}")
    except (FdbError, ValueError) as exc:
        return fail(str(exc))
    if args.score_only:
        from duplexer.sims.audio_timeline import LazyWhisper

        transcribe = hum_words if args.engines == "scripted" else LazyWhisper()
        bar = tqdm(total=len(samples), desc="samples", unit="sample", disable=args.quiet)
        scores = []
        try:
            for sample in samples:
                scores.append(score_folder(sample, transcribe, icc_gt))
                bar.update()
        except ModelPackageMissing as exc:  # a sample without output.json needs Whisper
            bar.close()
            return fail(str(exc))
    else:
        try:
            make_engines, transcribe = _engines(args)
        except (ModelPackageMissing, ValueError) as exc:
            return fail(str(exc))
        bar = tqdm(total=len(samples), desc="samples", unit="sample", disable=args.quiet)
        progress(f"running {len(samples)} samples in real time, {args.concurrency} at once...")
        scores = asyncio.run(
            run_tree(
                samples,
                make_engines,
                demo_config(None, policy),
                transcribe,
                args.concurrency,
                icc_gt,
                lambda _: bar.update(),
            )
        )
    bar.close()
    for s in scores:
        if s.error is not None:
            progress(f"skipped {s.sample}: {s.error}")
    if all(s.error is not None for s in scores):
        return fail(f"{args.root}: no sample could be scored ({len(scores)} tried; see the lines above)")
    summaries = summarize(scores)
    try:
        paths = write_report(args.out, scores, summaries)
    except OSError as exc:
        return fail(f"{args.out}: cannot write the report ({exc.strerror or exc})")
    say(table(summaries))
    v15 = sum(1 for s in scores if s.task == "v1_5")
    if v15:
        say(f"{v15} v1.5 samples: outputs written; their behaviour labels need an LLM judge (not implemented)")
    say("wrote " + ", ".join(str(p) for p in paths))
    return 0


def register(commands: Any) -> None:
    evaluate = commands.add_parser("eval", help="run and score public benchmarks")
    benchmarks = evaluate.add_subparsers(dest="eval_command", required=True, metavar="BENCHMARK")
    fdb = benchmarks.add_parser(
        "fdb",
        help="Full-Duplex-Bench v1/v1.5: run the engine on every input.wav, or score a tree's output.wav",
        description="Run the engine on every input.wav of a Full-Duplex-Bench folder tree (a sample is a "
        "folder holding input.wav; pause.json, turn_taking.json, interrupt.json or metadata.json say its "
        "task, none means ICC backchannel), in real time as `duplexer talk` does, and write beside each "
        "output.wav (mono, bot only, the input's rate and exact length) and output.json (its words and "
        "times). Then score the tree as FDB v1 does, print the per-task table and write OUT/fdb_samples.csv, "
        "fdb_tasks.csv, fdb.json and fdb.png. Columns: n samples; bad: samples skipped (the reason is "
        "printed); TOR: share of samples where the bot took the turn (its words span >= 1 s or number "
        "more than 3; lower is better for pause handling and backchannel, higher for the others); "
        "latency s: mean time from the user's turn end (turn-taking) or the interruption's end to the "
        "bot's first word, over TOR = 1 samples, negatives as 0; p50 s: its median; BC freq /s: "
        "backchannels per second; JSD: Jensen-Shannon distance to FDB's ICC distribution (needs "
        "--icc-gt). See docs/fdb.md.",
    )
    fdb.add_argument("root", type=Path, help="the tree's root folder")
    fdb.add_argument(
        "--task",
        action="append",
        metavar="TASK",
        help="only this task (repeatable): pause_handling (pause), smooth_turn_taking (turn_taking), "
        "user_interruption (interrupt), backchannel, v1_5",
    )
    fdb.add_argument(
        "--score-only",
        action="store_true",
        help="do not run the engine: score the output.wav files already there (words from output.json, "
        "else from Whisper on output.wav, written as output.json)",
    )
    fdb.add_argument("--out", type=Path, default=Path("out/fdb"), help="where the tables go (default: out/fdb)")
    fdb.add_argument(
        "--concurrency",
        type=positive_int,
        default=1,
        help="samples run at once (default 1: real models need the cores for one call in real time)",
    )
    fdb.add_argument(
        "--engines",
        choices=("real", "scripted"),
        default="real",
        help="real (default): the models `duplexer talk` uses; scripted: model-free engines that hum "
        "their replies, whose words are one [hum] per 400 ms of hum (for checking a tree and the tool)",
    )
    fdb.add_argument("--icc-gt", type=Path, metavar="FILE", help="FDB's icc_gt_distribution.json, for backchannel JSD")
    fdb.add_argument(
        "--judge-url",
        metavar="URL",
        help="OpenAI-compatible endpoint for FDB's LLM-judged scores (not implemented yet: refused)",
    )
    fdb.add_argument("--quiet", action="store_true", help="no progress bar")
    fdb.add_argument("--log-level", default="WARNING", help="structured log level (default: WARNING)")
    add_policy_argument(fdb, "live")
    fdb.set_defaults(handler=_eval_fdb)
