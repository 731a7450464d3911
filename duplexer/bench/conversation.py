"""`duplexer bench conversation`: recorded questions through the live pipeline, scored from audio.

Each conversation (a VAP voice's 18 phrases, or a folder of wavs) is streamed in real time as the
microphone into the whole pipeline with the real embedded models, with speculation on and then off
in the same run, so the latency speculation saves is the same turn's difference. Every timing figure
comes from the two recorded channels (:mod:`duplexer.bench.conversation_score`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from duplexer.bench.conversation_input import (
    BARGE_IN_AFTER_MS,
    DEFAULT_GAP_MS,
    DEFAULT_INTERRUPT_EVERY,
    DEFAULT_PAUSE_MS,
    DEFAULT_VOICES,
    VAP_PHRASES_DIR,
    Conversation,
    folder_conversation,
    limited,
    scenario_of,
    vap_conversation,
)
from duplexer.bench.conversation_score import STAGE_EVENTS, STAGES, exchanges, saved_latency, summarize, turn_rows
from duplexer.cli_support import add_policy_argument, chosen_policy, fail, non_negative_ms, positive_int, unwritable
from duplexer.runtime.console import progress, say

if TYPE_CHECKING:  # the pipeline loads only when a run starts
    from duplexer.sims.live import EngineFactory, LiveRun


def build_parser() -> argparse.ArgumentParser:
    from duplexer.actors.engine_choice import add_engine_arguments
    from duplexer.bench.log import add_log_arguments

    parser = argparse.ArgumentParser(
        prog="duplexer bench conversation",
        description="Replay recorded questions through the live pipeline with the real models in real time, "
        "one conversation per VAP voice (or one of --folder's wavs), with speculation on and off; score "
        "from the recorded audio alone: response latency of short and long forms, pause takeover and "
        "talk-over on long forms, barge-in stop latency, speculation commit rate and latency saved, "
        "repeated replies, and where the time goes from the user's last sample to the bot's first.",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--voices",
        default=",".join(DEFAULT_VOICES),
        help=f"VAP voices, one conversation each (default {','.join(DEFAULT_VOICES)}: the held-out ones)",
    )
    source.add_argument(
        "--folder", type=Path, help="a folder of wavs: one conversation, one turn per file in name order"
    )
    parser.add_argument(
        "--vap-dir", type=Path, default=VAP_PHRASES_DIR, help=f"VAP phrases (default {VAP_PHRASES_DIR})"
    )
    parser.add_argument(
        "--gap-ms",
        type=non_negative_ms,
        default=DEFAULT_GAP_MS,
        help=f"silence between the bot's reply and the next turn (default {DEFAULT_GAP_MS:.0f})",
    )
    parser.add_argument(
        "--fixed-gap",
        action="store_true",
        help="start each turn --gap-ms after the previous turn, whether or not the reply is over "
        "(the same input for every configuration; long replies then meet the next turn as barge-ins)",
    )
    parser.add_argument(
        "--pause-ms",
        type=non_negative_ms,
        default=DEFAULT_PAUSE_MS,
        help="mid-turn pause put into each VAP long form where its short form ends "
        f"(default {DEFAULT_PAUSE_MS:.0f}; 0: none)",
    )
    parser.add_argument(
        "--interrupt-every",
        type=int,
        default=DEFAULT_INTERRUPT_EVERY,
        metavar="N",
        help=f"every Nth turn starts {BARGE_IN_AFTER_MS:.0f} ms into the reply before it (VAP: the short form of every "
        f"Nth phrase; default {DEFAULT_INTERRUPT_EVERY}; 0: none)",
    )
    parser.add_argument(
        "--limit", type=positive_int, default=None, metavar="N", help="only the first N turns of each conversation"
    )
    parser.add_argument("--no-speculation-baseline", action="store_true", help="skip the speculation-off run")
    parser.add_argument(
        "--out", type=Path, default=Path("out/conversation"), help="output folder (default out/conversation)"
    )
    add_policy_argument(parser)
    add_engine_arguments(parser)
    add_log_arguments(parser)
    return parser


def conversations_from_args(args: argparse.Namespace) -> list[Conversation]:
    """The conversations the options ask for; ValueError with a one-line reason when there are none."""
    if args.interrupt_every < 0:
        raise ValueError(f"--interrupt-every must be >= 0, got {args.interrupt_every}")
    if args.folder is not None:
        if not args.folder.is_dir():
            raise ValueError(f"--folder {args.folder}: not a folder")
        return [limited(folder_conversation(args.folder, args.interrupt_every), args.limit)]
    voices = [v.strip() for v in args.voices.split(",") if v.strip()]
    if not voices:
        raise ValueError("--voices: name at least one VAP voice (A, B, C, E, F)")
    if not (args.vap_dir / "audio").is_dir():
        raise ValueError(f"{args.vap_dir}: no audio folder of VAP phrases here (see --vap-dir)")
    return [limited(vap_conversation(args.vap_dir, v, args.interrupt_every, args.pause_ms), args.limit) for v in voices]


async def run_conversations(
    conversations: Sequence[Conversation],
    make_engines: EngineFactory,
    config: Any,
    gap_ms: float = DEFAULT_GAP_MS,
    baseline: bool = True,
    on_done: Callable[[str, LiveRun], None] | None = None,
    fixed_gap: bool = False,
) -> dict[str, list[tuple[Conversation, LiveRun]]]:
    """Each conversation live with speculation on and (``baseline``) off; which runs first alternates
    from one conversation to the next, so neither always meets the warmer caches."""
    from duplexer.sims.live import run_live, without_speculation

    runs: dict[str, list[tuple[Conversation, LiveRun]]] = {"on": [], "off": []}
    for k, conversation in enumerate(conversations):
        scenario, clips = scenario_of(conversation, gap_ms, fixed_gap=fixed_gap)
        modes = ["on", "off"] if baseline else ["on"]
        for mode in modes if k % 2 == 0 else modes[::-1]:
            chosen = config if mode == "on" else without_speculation(config)
            live = await run_live(scenario, clips, make_engines, chosen, extra_events=STAGE_EVENTS)
            runs[mode].append((conversation, live))
            if on_done is not None:
                on_done(f"{conversation.name} speculation {mode}", live)
    return runs


def report(runs: dict[str, list[tuple[Conversation, LiveRun]]]) -> dict[str, Any]:
    """Every turn's row and the summaries, per conversation and over all, per speculation mode."""
    rows = {mode: [r for c, live in pairs for r in turn_rows(live, c, mode == "on")] for mode, pairs in runs.items()}
    saved_latency(rows["on"], rows["off"])
    summaries: dict[str, dict[str, Any]] = {}
    for mode, pairs in runs.items():
        for conversation, live in pairs:
            mine = [r for r in rows[mode] if r["conversation"] == conversation.name]
            summaries[f"{conversation.name} {mode}"] = summarize(mine, [live])
        if pairs:
            summaries[f"ALL {mode}"] = summarize(rows[mode], [live for _, live in pairs])
    pairs_qa = {c.name: exchanges(live) for c, live in runs["on"]}
    return {"turns": rows["on"] + rows["off"], "summary": summaries, "exchanges": pairs_qa}


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.0f}" if isinstance(value, float) else str(value)


TABLE_HEADER: tuple[str, ...] = (
    "conversation",
    "short p10/p50/p90",
    "long p50/p90",
    "pause TO",
    "talk-over long",
    "stop p50/p90",
    "spec commit",
    "saved p50",
    "repeats",
    "unanswered",
)


def table_rows(summary: dict[str, dict[str, Any]]) -> list[list[str]]:
    out = []
    for name, s in summary.items():
        sh, lo, stop = s["response_latency_short_ms"], s["response_latency_long_ms"], s["barge_in_stop_ms"]
        spec = s["speculation"]
        out.append(
            [
                name,
                f"{_fmt(sh['p10'])}/{_fmt(sh['p50'])}/{_fmt(sh['p90'])}",
                f"{_fmt(lo['p50'])}/{_fmt(lo['p90'])}",
                s["pause_takeovers"],
                f"{s['talk_over_long']['count']}/{_fmt(s['talk_over_long']['total_ms'])} ms",
                f"{_fmt(stop['p50'])}/{_fmt(stop['p90'])} ({s['barge_ins']})",
                f"{spec['committed']}/{spec['started']}",
                _fmt(s["latency_saved_ms"]["p50"]),
                f"{s['repeated_replies']} ({s['distinct_replies']}/{s['replies']} distinct)",
                str(s["unanswered"]),
            ]
        )
    return out


def stage_rows(summary: dict[str, dict[str, Any]]) -> list[list[str]]:
    return [
        [f"{name} ({s['staged_turns']} turns)", *(_fmt(s["stages_p50_ms"][stage]) for stage in STAGES)]
        for name, s in summary.items()
        if name.startswith("ALL")
    ]


def main(argv: Sequence[str]) -> int:
    """`duplexer bench conversation`: see :func:`build_parser`."""
    from duplexer.actors.engine_choice import chosen_engines
    from duplexer.actors.models.packages import ModelPackageMissing
    from duplexer.bench.log import append_benchmark, format_table, log_path_from_args
    from duplexer.protocols.wav import interleave_stereo, write_wav
    from duplexer.runtime.events import INPUT_SAMPLE_RATE_HZ
    from duplexer.sims.demo import demo_config
    from duplexer.sims.demo_cli import demo_engines

    args = build_parser().parse_args(list(argv))
    try:
        policy = chosen_policy(args)
        chosen_engines(args)  # a bad engine name stops the bench before any model loads
        conversations = conversations_from_args(args)
    except ValueError as exc:
        return fail(str(exc))
    if (reason := unwritable(args.out, folder=True)) is not None:
        return fail(reason)
    progress("bench conversation: loading models (Silero VAD, Whisper tiny.en, SmolLM2-135M, Piper)...")
    try:
        make_engines, _ = demo_engines(args)  # the real models, or the engines named with --vad/--asr/...
    except (ModelPackageMissing, ValueError) as exc:
        return fail(str(exc))
    args.out.mkdir(parents=True, exist_ok=True)

    def done(label: str, live: LiveRun) -> None:
        name = label.replace(" speculation ", "_spec_")
        write_wav(
            args.out / f"{name}.wav",
            interleave_stereo(live.user_track, live.bot_track),
            INPUT_SAMPLE_RATE_HZ,
            channels=2,
        )
        progress(f"bench conversation: {label} done, {live.run.duration_ms / 1000:.0f} s; wrote {args.out / name}.wav")

    modes = 1 if args.no_speculation_baseline else 2
    progress(
        f"bench conversation: {len(conversations)} conversation(s) of {[len(c.turns) for c in conversations]} turns, "
        f"{modes} run(s) each, in real time"
    )
    began = time.monotonic()
    runs = asyncio.run(
        run_conversations(
            conversations,
            make_engines,
            demo_config(None, policy),
            args.gap_ms,
            not args.no_speculation_baseline,
            done,
            args.fixed_gap,
        )
    )
    elapsed_s = time.monotonic() - began
    result = report(runs)
    result["options"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    result["elapsed_s"] = round(elapsed_s, 1)
    (args.out / "conversation.json").write_text(json.dumps(result, indent=2) + "\n")
    rows = table_rows(result["summary"])
    stages = stage_rows(result["summary"])
    say(format_table(TABLE_HEADER, rows))
    say("")
    say(format_table(("stage, from the user's last audible sample", *STAGES), stages))
    say(f"wrote {args.out / 'conversation.json'} and the stereo wavs (user left, bot right); {elapsed_s:.0f} s")
    qa = [f"{c}: {p['user']!r} -> {p['bot']!r}" for c, pairs in result["exchanges"].items() for p in pairs[:5]]
    notes = (
        f"policy {args.policy}; next turn {args.gap_ms:.0f} ms after "
        f"{'the previous turn' if args.fixed_gap else 'the reply ends'}; long-form mid-turn pause "
        f"{args.pause_ms:.0f} ms; interrupt every {args.interrupt_every} turns, "
        f"{BARGE_IN_AFTER_MS:.0f} ms into a reply; {elapsed_s:.0f} s wall",
        "latency from audio (bot audible onset - user's last audible sample), ms; pause TO: long forms the bot "
        "talked into; stop: barge-in stop latency (interruptions that landed over the bot); spec commit: speculative "
        "replies committed/started; saved: the same turn off minus on; CPU figures are noisy on a shared machine",
        *[f"Q/A {line}" for line in qa],
    )
    log_path, command = log_path_from_args(args), ["bench", "conversation", *argv]
    title = "conversation: recorded questions, live pipeline, real models, scored from audio"
    append_benchmark(title, TABLE_HEADER, rows, notes=notes, log_path=log_path, argv=command)
    append_benchmark(
        "conversation: stage breakdown, ms after the user's last audible sample (p50 over answered turns)",
        ("run", *STAGES),
        stages,
        log_path=log_path,
        argv=command,
    )
    return 0
