"""`duplexer bench executors`: the local executor against the Ray executor, in one run on this machine.

Two measurements, with one Ray instance (``ray.init`` once, through :func:`ensure_ray`):

1. **Event hop latency.** A probe event is published on a session's bus every
   ``--interval-ms`` (a realistic pace, not a flood), and a probe actor records
   ``clock.now_ms() - event.ts_ms`` when its ``handle()`` runs:

   - local executor: publish and actor in one process;
   - Ray executor: publish in the driver, actor in a session host (the events cross
     through :class:`~duplexer.runtime.linked_bus.LinkedBus`; both processes read one
     :class:`~duplexer.runtime.clock.EpochClock`, so the difference is a real one-way time),
     on the data lane and on the control lane;
   - baseline: a bare Ray async-actor call that returns its arrival time minus the send
     stamp (one way, the same monotonic clock), and its round trip.

2. **Concurrent real-time sessions.** N sessions run at once in this driver process
   (``asyncio.gather``), for N on a ramp 1, 2, 4, 8, 12, 16, 24, ... up to ``--cap``,
   stopping at the first level that is not sustained. Two workloads:

   - ``sim``: a shipped scenario replayed by the simulator in real time; the scripted
     VAD, ASR and LLM read the simulated user's script, so they stay in the driver, and
     the Ray placement is ``duplexer sim``'s default (``SIM_RAY_PLACEMENT``);
   - ``voice``: a synthetic voice spoken into a pipeline with an energy VAD and canned
     ASR (the scripted call engines), so every actor can be placed anywhere; placed as
     ``session`` (audio readers stay in the driver) and ``audio-remote`` (VAD and ASR in
     the session host, so every 20 ms frame crosses processes), with and without
     ``batch_ms``.

   A level is *sustained* when (see :func:`judge_level`) every session's behavioural
   outcomes equal those of the same session replayed on the virtual clock, the
   driver's frame pacing lag p99 is at most one frame (20 ms), and the response
   latency p50 is within ``--slack-ms`` of the virtual-clock reference.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from duplexer.bench.executor_hops import HopSamples, measure_hops
from duplexer.bench.executor_levels import (
    AUDIO_REMOTE_PLACEMENT,
    HOP_RATIO_TARGET,
    PACE_BOUND_MS,
    RAMP,
    RESPONSE_SLACK_MS,
    SESSIONS_RATIO_TARGET,
    SHARED_SESSIONS_PER_HOST,
    SIM_SCENARIO,
    START_SPREAD_S,
    Reference,
    cpu_times,
    fmt,
    judge_level,
    largest_sustained,
    machine_cpu_pct,
    percentile,
    ramp_levels,
    ratio_verdict,
    split_pace,
)
from duplexer.bench.executor_sessions import Config, Level, SessionRun, SimWorkload, VoiceWorkload, session_factory
from duplexer.runtime.console import progress, say
from duplexer.sims.cli import SIM_RAY_PLACEMENT

# ------------------------------------------------------------------ the ramps


Workload = SimWorkload | VoiceWorkload


async def run_level(
    workload: Workload, config: Config, n: int, options: Any, reference: Reference, slack_ms: float, run_tag: str
) -> Level:
    pool = None
    if config.prewarm or config.sessions_per_host > 1:
        from duplexer.runtime.ray_executor import HostPool

        pool = HostPool(replace(options, sessions_per_host=config.sessions_per_host))
    if pool is not None and config.prewarm:
        await pool.fill(n)  # before the level's clock starts: the pool is what is measured without
    factory = session_factory(config, options, run_tag, n, pool)

    async def one(i: int) -> SessionRun:
        await asyncio.sleep(START_SPREAD_S * i / n)
        try:
            return await workload.run_one(factory(i))
        except Exception as exc:  # a failed session fails the level; the ramp goes on reporting
            return SessionRun(None, error=f"{type(exc).__name__}: {exc}")

    cpu0, proc0, wall0 = cpu_times(), time.process_time(), time.monotonic()
    try:
        runs = list(await asyncio.gather(*(one(i) for i in range(n))))
    finally:
        if pool is not None:
            pool.shutdown()
    wall = time.monotonic() - wall0
    driver_cpu = 100.0 * (time.process_time() - proc0) / wall
    machine_cpu = machine_cpu_pct(cpu0, cpu_times())
    setup, steady = split_pace([r.frames for r in runs], [r.placed_s for r in runs])
    reasons = judge_level(
        [r.outcomes for r in runs], reference, [v for r in runs for v in r.response_ms], steady, slack_ms
    )
    errors = [r.error for r in runs if r.error]
    if errors:
        reasons.append(f"first error: {errors[0]}")
    return Level(config, n, runs, wall, driver_cpu, machine_cpu, reasons, setup, steady)


def _progress(level: Level, reference: Reference) -> None:
    response = percentile([v for r in level.runs for v in r.response_ms], 50)
    pace = percentile(level.steady_lag_ms, 99)
    verdict = "sustained" if level.sustained else "NOT sustained: " + "; ".join(level.reasons)
    progress(
        f"  {level.config.label}: {level.sessions} session(s): {verdict} "
        f"(response p50 {fmt(response)} ms vs {fmt(reference.response_p50_ms)}, pace lag p99 {fmt(pace, 1)} ms, "
        f"machine CPU {fmt(level.machine_cpu_pct)}%, {level.wall_s:.0f} s)"
    )


async def ramp(
    workload: Workload,
    config: Config,
    cap: int,
    options: Any,
    reference: Reference,
    slack_ms: float,
    levels: Sequence[int] | None = None,
) -> list[Level]:
    """Run the ramp's levels in order, stopping after the first one not sustained."""
    out: list[Level] = []
    for n in levels if levels is not None else ramp_levels(cap):
        tag = f"{abs(hash(config)) % 10_000}-{n}-{time.monotonic_ns() % 1_000_000}"
        level = await run_level(workload, config, n, options, reference, slack_ms, tag)
        _progress(level, reference)
        out.append(level)
        if not level.sustained:
            break
    return out


def _level_row(level: Level, reference: Reference) -> list[object]:
    runs = level.runs
    response = [v for r in runs for v in r.response_ms]
    pace = level.steady_lag_ms
    ready = [r.host_ready_ms for r in runs if not math.isnan(r.host_ready_ms)]
    place = [r.place_ms for r in runs if not math.isnan(r.place_ms)]
    return [
        level.config.label,
        level.sessions,
        "yes" if level.sustained else "no: " + "; ".join(level.reasons),
        f"{fmt(percentile(response, 50))} ({fmt(reference.response_p50_ms)})",
        fmt(percentile(response, 90)),
        f"{fmt(percentile(pace, 50), 1)} / {fmt(percentile(pace, 99), 1)}",
        f"{fmt(percentile(place, 50), 1)} / {fmt(max(place, default=math.nan), 1)}",
        fmt(max(level.setup_lag_ms, default=math.nan)),
        f"{fmt(percentile(ready, 50))} / {fmt(max(ready, default=math.nan))}" if ready else "-",
        fmt(level.driver_cpu_pct),
        fmt(level.machine_cpu_pct),
    ]


SESSION_HEADER = (
    "workload / executor",
    "sessions",
    "sustained",
    "response p50 ms (reference)",
    "response p90 ms",
    "pace lag p50 / p99 ms",
    "place() p50 / max ms",
    "setup lag max ms",
    "host ready p50 / max ms",
    "driver CPU %",
    "machine CPU %",
)
HOP_HEADER = ("path", "samples", "p50 ms", "p90 ms", "p99 ms")


@dataclass
class Results:
    hops: list[HopSamples]
    levels: list[Level]
    references: dict[str, Reference]
    best: dict[Config, int]


async def _bench(
    args: argparse.Namespace, options: Any, sim: SimWorkload, voice: VoiceWorkload, references: dict[str, Reference]
) -> Results:
    progress(f"hop latency: {args.samples} probes per path, one every ~{args.interval_ms:g} ms")
    hops = await measure_hops(options, args.samples, args.warmup, args.interval_ms)
    for hop in hops:
        progress(f"  {hop.label}: p50 {hop.p(50):.3f} ms, p99 {hop.p(99):.3f} ms")
    configs = [
        Config("sim", "local"),
        Config("sim", "ray", SIM_RAY_PLACEMENT),
        Config("sim", "ray", SIM_RAY_PLACEMENT, prewarm=True),
        Config("sim", "ray", SIM_RAY_PLACEMENT, prewarm=True, sessions_per_host=SHARED_SESSIONS_PER_HOST),
        Config("voice", "local"),
        Config("voice", "ray", "session"),
        Config("voice", "ray", AUDIO_REMOTE_PLACEMENT),
    ]
    levels: list[Level] = []
    best: dict[Config, int] = {}
    workloads: dict[str, Workload] = {"sim": sim, "voice": voice}
    for config in configs:
        if config.workload == "voice" and config.executor == "local" and not args.voice_local:
            continue
        progress(f"sessions: {config.label}, ramp up to {args.cap}")
        done = await ramp(
            workloads[config.workload], config, args.cap, options, references[config.workload], args.slack_ms
        )
        levels += done
        best[config] = largest_sustained([(lv.sessions, lv.sustained) for lv in done])
    remote = Config("voice", "ray", AUDIO_REMOTE_PLACEMENT)
    remote_levels = [lv for lv in levels if lv.config == remote]
    probe_levels = sorted({best[remote] or 1, remote_levels[-1].sessions})
    for batch_ms in args.batch_ms:
        config = replace(remote, batch_ms=batch_ms)
        progress(f"sessions: {config.label}, at {probe_levels}")
        done = await ramp(voice, config, args.cap, options, references["voice"], args.slack_ms, probe_levels)
        levels += done
        best[config] = largest_sustained([(lv.sessions, lv.sustained) for lv in done])
    return Results(hops, levels, references, best)


def _parse_batches(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated milliseconds, got {text!r}") from None
    if any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError("batch sizes must be > 0 ms")
    return values


def build_parser() -> argparse.ArgumentParser:
    from duplexer.bench.log import add_log_arguments

    parser = argparse.ArgumentParser(
        prog="duplexer bench executors",
        description="Local vs Ray executor on this machine, in one run: per-hop event latency "
        "(bus publish -> actor handle(), against a bare Ray actor call) and the most concurrent "
        "real-time sessions one driver sustains, local and on Ray with audio in the driver or "
        "in the session host. Starts one local Ray instance. Prints the figures and appends "
        "them to the benchmark log (--log).",
    )
    parser.add_argument("--quick", action="store_true", help="a fast variant: 100 probes per path, cap 4")
    parser.add_argument("--cap", type=int, help=f"most concurrent sessions to try (default {RAMP[-1]}; --quick 4)")
    parser.add_argument("--samples", type=int, help="hop probes per path after warm-up (default 300, --quick 100)")
    parser.add_argument("--warmup", type=int, default=30, help="hop probes discarded first (default 30)")
    parser.add_argument("--interval-ms", type=float, default=10.0, help="mean gap between probes (default 10)")
    parser.add_argument(
        "--scenario", type=Path, default=SIM_SCENARIO, help=f"the sim workload (default {SIM_SCENARIO})"
    )
    parser.add_argument("--seed", type=int, default=0, help="scenario jitter seed (default 0)")
    parser.add_argument(
        "--batch-ms", type=_parse_batches, default=[20.0, 40.0], help="batch_ms values tried with audio-remote (20,40)"
    )
    parser.add_argument(
        "--slack-ms",
        type=float,
        default=RESPONSE_SLACK_MS,
        help=f"response p50 may exceed the virtual-clock reference by this much (default {RESPONSE_SLACK_MS:.0f})",
    )
    parser.add_argument(
        "--voice-local", action="store_true", help="also ramp the voice workload on the local executor (slower)"
    )
    parser.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray instance (default 2)")
    add_log_arguments(parser)
    return parser


def main(argv: Sequence[str]) -> int:
    from duplexer.cli_support import fail

    parser = build_parser()
    args = parser.parse_args(list(argv))
    args.cap = args.cap if args.cap is not None else 4 if args.quick else RAMP[-1]
    args.samples = args.samples if args.samples is not None else 100 if args.quick else 300
    if args.cap < 1 or args.samples < 10 or args.warmup < 0 or args.interval_ms <= 0 or args.num_cpus < 1:
        return fail("--cap and --num-cpus must be >= 1, --samples >= 10, --warmup >= 0, --interval-ms > 0")

    from duplexer.actors.pipeline import PIPELINE_ACTORS
    from duplexer.runtime.logging import configure_logging
    from duplexer.runtime.ray_executor import RayOptions, RayUnavailable, ensure_ray
    from duplexer.sims.scenario import ScenarioError

    configure_logging("ERROR")
    try:
        sim = SimWorkload(args.scenario, args.seed)
    except (ScenarioError, ValueError, OSError) as exc:
        return fail(str(exc))
    voice = VoiceWorkload(2)
    sim_ref, sim_ms = sim.reference()
    voice_ref, voice_ms = voice.reference()
    references = {"sim": sim_ref, "voice": voice_ref}
    progress(
        f"references on the virtual clock: sim {sim_ms / 1000:.1f} s per session, response p50 "
        f"{sim_ref.response_p50_ms:.0f} ms; voice {voice_ms / 1000:.1f} s, "
        f"response p50 {voice_ref.response_p50_ms:.0f} ms"
    )
    options = RayOptions(num_cpus=args.num_cpus, actors=PIPELINE_ACTORS)
    started = time.monotonic()
    try:
        ensure_ray(options)
    except RayUnavailable as exc:
        return fail(str(exc))
    progress(f"ray started in {time.monotonic() - started:.1f} s")
    try:
        results = asyncio.run(_bench(args, options, sim, voice, references))
    finally:
        from duplexer.runtime.ray_executor import ray_module

        ray_module().shutdown()
    return _report(args, argv, results, sim, voice, time.monotonic() - started)


def _report(
    args: argparse.Namespace,
    argv: Sequence[str],
    results: Results,
    sim: SimWorkload,
    voice: VoiceWorkload,
    elapsed_s: float,
) -> int:
    from duplexer.bench.log import append_benchmark, format_table, log_path_from_args

    ray_data = results.hops[2]
    bare = results.hops[4]
    p50_ratio = ray_data.p(50) / bare.p(50) if bare.p(50) > 0 else math.nan
    p99_ratio = ray_data.p(99) / bare.p(99) if bare.p(99) > 0 else math.nan
    hop_rows = [[h.label, len(h.values_ms), f"{h.p(50):.3f}", f"{h.p(90):.3f}", f"{h.p(99):.3f}"] for h in results.hops]
    hop_notes = [
        f"probes published one at a time, every {args.interval_ms:g} ms on average (uniform 0.5-1.5x), "
        f"{args.warmup} warm-up probes discarded; Ray: one local instance, num_cpus={args.num_cpus}; the Ray "
        "data-lane, Ray control-lane and bare probes take turns, so all three are sampled over the same seconds",
        "hop = the probe actor's clock.now_ms() in handle() - the probe's ts_ms at publish; the Ray host and "
        "the driver share an EpochClock (one monotonic clock on one machine); bare one way = arrival - send "
        "stamp in time.monotonic(); round trip = await of the call in the driver",
        f"Ray hop p50 / bare call p50 (one way): {p50_ratio:.2f}, {ratio_verdict(p50_ratio, HOP_RATIO_TARGET, True)}",
        f"Ray hop p99 / bare call p99 (one way): {p99_ratio:.2f}",
    ]
    refs = results.references
    rows = [_level_row(level, refs[level.config.workload]) for level in results.levels]
    best = results.best

    def best_of(config: Config) -> int:
        return best.get(config, 0)

    sim_local = best_of(Config("sim", "local"))
    sim_ray = best_of(Config("sim", "ray", SIM_RAY_PLACEMENT))
    sim_warm = best_of(Config("sim", "ray", SIM_RAY_PLACEMENT, prewarm=True))
    sim_shared = best_of(
        Config("sim", "ray", SIM_RAY_PLACEMENT, prewarm=True, sessions_per_host=SHARED_SESSIONS_PER_HOST)
    )
    v_local = best_of(Config("voice", "local"))
    v_session = best_of(Config("voice", "ray", "session"))
    v_remote = best_of(Config("voice", "ray", AUDIO_REMOTE_PLACEMENT))
    sessions_ratio = sim_ray / sim_local if sim_local else math.nan
    warm_ratio = sim_warm / sim_local if sim_local else math.nan
    shared_ratio = sim_shared / sim_local if sim_local else math.nan
    capped = [c.label for c, n in best.items() if n >= args.cap]
    session_notes = [
        f"sim workload: {sim.describe()}, replayed by the simulator in real time; Ray placement {SIM_RAY_PLACEMENT} "
        "(the scripted VAD, ASR and LLM read the simulated user's script, so they stay in the driver)",
        f"voice workload: {voice.describe()}; energy VAD, canned ASR, scripted LLM and humming TTS "
        f"(duplexer.protocols.engine_factory.scripted_engines); Ray placements: session (controller, context, "
        f"llm, tts in the host; audio in the driver) and {AUDIO_REMOTE_PLACEMENT} (audio-remote without its "
        "tokenizer: every 20 ms frame crosses to the host)",
        f"N sessions at once in one driver process (asyncio.gather), starts spread over {START_SPREAD_S:.0f} s; "
        f"ramp {', '.join(str(n) for n in ramp_levels(args.cap))}, stopping at the first level not sustained; "
        "batch_ms variants only at the largest sustained and the first failing audio-remote level",
        "sustained = every session's outcomes (turns answered, replies started/completed/stopped, speculation "
        "committed/discarded, errors, underruns) equal the same session's on the virtual clock, AND the driver's "
        f"frame pacing lag p99 <= {PACE_BOUND_MS:.0f} ms (each mic frame's send time - its real-time schedule), "
        f"AND response latency p50 <= the virtual-clock reference + {args.slack_ms:.0f} ms; pacing is judged "
        "in steady state, from the moment the level's last session was placed",
        "place() = how long building a session's actors held the driver's event loop (Ray: creating the host "
        "actor and sending its specs and engine factory); setup lag max = the worst frame lateness of any "
        "running session while the level's sessions were being placed; host ready = place() -> the host "
        "answers a ping (includes starting a Ray worker process)",
        f"largest N sustained: sim local {sim_local}, sim Ray {sim_ray}, sim Ray with hosts prewarmed "
        f"{sim_warm}, sim Ray prewarmed with {SHARED_SESSIONS_PER_HOST} sessions per host {sim_shared}; voice local "
        f"{v_local if args.voice_local else '-'}, voice Ray session {v_session}, voice Ray audio-remote {v_remote}"
        + "".join(f"; audio-remote batch_ms={c.batch_ms:g} {n}" for c, n in best.items() if c.batch_ms),
        f"Ray sessions / local sessions (sim): {fmt(sessions_ratio, 2)}, "
        f"{ratio_verdict(sessions_ratio, SESSIONS_RATIO_TARGET, False)}; with hosts prewarmed (HostPool, "
        f"--idle-hosts): {fmt(warm_ratio, 2)}, {ratio_verdict(warm_ratio, SESSIONS_RATIO_TARGET, False)}; "
        f"prewarmed, {SHARED_SESSIONS_PER_HOST} sessions per host (--sessions-per-host): {fmt(shared_ratio, 2)}, "
        f"{ratio_verdict(shared_ratio, SESSIONS_RATIO_TARGET, False)}"
        + (f"; at the cap ({args.cap}), so a lower bound: {', '.join(capped)}" if capped else ""),
        f"whole bench: {elapsed_s:.0f} s",
    ]
    hop_text = format_table(HOP_HEADER, hop_rows) + "\n" + "\n".join(f"- {n}" for n in hop_notes)
    session_text = format_table(SESSION_HEADER, rows) + "\n" + "\n".join(f"- {n}" for n in session_notes)
    say()
    say(hop_text)
    say()
    say(session_text)
    log_path = log_path_from_args(args)
    if log_path is not None:
        command = ["bench", "executors", *argv]
        append_benchmark(
            "executors: event hop latency, local vs Ray",
            HOP_HEADER,
            hop_rows,
            hop_notes,
            log_path=log_path,
            argv=command,
        )
        append_benchmark(
            "executors: concurrent real-time sessions, local vs Ray",
            SESSION_HEADER,
            rows,
            session_notes,
            log_path=log_path,
            argv=command,
        )
        say(f"\nappended to {log_path}")
    return 0


__all__ = ["judge_level", "largest_sustained", "main", "percentile", "ramp_levels"]
