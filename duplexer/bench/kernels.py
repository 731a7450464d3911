"""`duplexer bench kernels`: NumPy reference vs numba vs numba batched, and the torch embed path.

One run measures, on the same synthetic streaming workload (every session sends one chunk
per engine step), tokens per second of the 2:3 interleave, the strict de-interleave and the
AQAA demux, plus the torch fused-vs-unfused embedding gather and numba's first-call time.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from duplexer.bench.log import add_log_arguments
from duplexer.kernels import fast, reference
from duplexer.kernels.tokens import (
    AQAA_AUDIO_PER_CYCLE,
    AQAA_TEXT_PER_CYCLE,
    AUDIO_ID_OFFSET,
    GROUP_DURATION_MS,
    GROUP_SIZE,
    LINGUISTIC_CODEBOOK_SIZE,
    LINGUISTIC_PER_GROUP,
    NO_KIND,
    SEMANTIC_CODEBOOK_SIZE,
    SEMANTIC_PER_GROUP,
    AqaaConfig,
)
from duplexer.runtime.console import say

BATCHED_TARGET_RATIO = 20.0
"""The numba batched form should beat the NumPy reference by this factor (issue 8)."""

IntArray = np.ndarray[Any, np.dtype[np.int64]]


@dataclass(frozen=True, slots=True)
class Workload:
    """Per-step chunks for every session, laid out [steps, sessions, tokens] and contiguous."""

    ling: IntArray
    sem: IntArray
    ids: IntArray
    aqaa: IntArray
    aqaa_len: IntArray

    @property
    def sessions(self) -> int:
        """Sessions per step."""
        return int(self.ling.shape[1])

    @property
    def steps(self) -> int:
        """Engine steps in the workload."""
        return int(self.ling.shape[0])


def build_parser() -> argparse.ArgumentParser:
    """The option parser; exits 2 on bad options, like every argparse CLI."""
    parser = argparse.ArgumentParser(
        prog="duplexer bench kernels",
        description=(
            "Time the Step-Audio token kernels on a streaming workload: each of --sessions "
            "sessions sends one --chunk-ms chunk per engine step for --seconds of audio. "
            "Reports tokens/s of the NumPy reference (one call per session), numba (one call "
            "per session) and numba batched (one prange call for all sessions) for interleave, "
            "de-interleave and AQAA demux, as ratios to the reference; the torch fused vs "
            "unfused interleave+embedding gather on cuda if available, else cpu; and numba's "
            "first-call (compile or cache-load) time. Figures are printed and appended to the "
            "benchmark log."
        ),
    )
    parser.add_argument("--sessions", type=_positive_int, default=64, help="sessions (64)")
    parser.add_argument("--seconds", type=_positive_float, default=60.0, help="audio seconds per session (60)")
    parser.add_argument(
        "--chunk-ms",
        type=_positive_int,
        default=4 * GROUP_DURATION_MS,
        help=f"audio per chunk; a multiple of {GROUP_DURATION_MS} ms ({4 * GROUP_DURATION_MS})",
    )
    parser.add_argument("--repeats", type=_positive_int, default=5, help="passes per figure; the best counts (5)")
    parser.add_argument("--embed-dim", type=_positive_int, default=1024, help="embedding width for torch (1024)")
    parser.add_argument("--no-torch", action="store_true", help="skip the torch figures")
    parser.add_argument(
        "--torch-threads",
        type=_positive_int,
        default=None,
        help="torch intra-op threads on cpu (torch's default)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed of the workload (0)")
    add_log_arguments(parser)
    return parser


def _positive_int(text: str) -> int:
    """argparse type: an int >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    """argparse type: a float > 0."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def build_workload(sessions: int, seconds: float, chunk_ms: int, seed: int) -> Workload:
    """Random codes for every session, cut into per-step chunks, and their AQAA outputs."""
    rng = np.random.default_rng(seed)
    chunk_groups = chunk_ms // GROUP_DURATION_MS
    steps = max(1, round(seconds * 1000 / chunk_ms))
    groups = steps * chunk_groups
    ling = rng.integers(0, LINGUISTIC_CODEBOOK_SIZE, (sessions, groups * LINGUISTIC_PER_GROUP))
    sem = rng.integers(0, SEMANTIC_CODEBOOK_SIZE, (sessions, groups * SEMANTIC_PER_GROUP))
    ids = np.stack([reference.interleave(ling[b], sem[b], True)[0] for b in range(sessions)])
    cfg = AqaaConfig()
    n_text = ids.shape[1] * AQAA_TEXT_PER_CYCLE // AQAA_AUDIO_PER_CYCLE
    text = rng.integers(0, AUDIO_ID_OFFSET, (sessions, n_text))
    streams = np.stack(
        [
            reference.aqaa_mux(
                text[b],
                ids[b],
                cfg.audio_start_id,
                cfg.audio_end_id,
                cfg.vocab_size,
                cfg.text_per_cycle,
                cfg.audio_per_cycle,
                True,
            )[0]
            for b in range(sessions)
        ]
    )
    # The AQAA stream is cut into as many steps as the audio, so each step carries the LLM
    # tokens generated for one chunk of audio.
    per_step = -(-streams.shape[1] // steps)
    padded = np.full((sessions, per_step * steps), -1, dtype=np.int64)
    padded[:, : streams.shape[1]] = streams
    aqaa_len = np.clip(streams.shape[1] - np.arange(steps) * per_step, 0, per_step)

    def per_step_rows(rows: IntArray, width: int) -> IntArray:
        return np.ascontiguousarray(rows.reshape(sessions, steps, width).transpose(1, 0, 2))

    return Workload(
        ling=per_step_rows(ling, chunk_groups * LINGUISTIC_PER_GROUP),
        sem=per_step_rows(sem, chunk_groups * SEMANTIC_PER_GROUP),
        ids=per_step_rows(ids, chunk_groups * GROUP_SIZE),
        aqaa=per_step_rows(padded, per_step),
        aqaa_len=aqaa_len.astype(np.int64),
    )


def _best_seconds(run: Callable[[], None], repeats: int) -> float:
    """Best wall time of `repeats` runs."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def _per_session(kernels: Any, load: Workload) -> dict[str, Callable[[], None]]:
    """Workload runners calling a kernel module once per session per step."""
    cfg = AqaaConfig()
    marks = (cfg.audio_start_id, cfg.audio_end_id, cfg.vocab_size)
    cycle = (cfg.text_per_cycle, cfg.audio_per_cycle)

    def interleave() -> None:
        for step in range(load.steps):
            for b in range(load.sessions):
                kernels.interleave(load.ling[step, b], load.sem[step, b], False)

    def deinterleave() -> None:
        for step in range(load.steps):
            for b in range(load.sessions):
                kernels.deinterleave(load.ids[step, b], 0, False)

    def demux() -> None:
        states = [(False, 0, NO_KIND)] * load.sessions
        for step in range(load.steps):
            n = int(load.aqaa_len[step])
            for b in range(load.sessions):
                result = kernels.aqaa_demux(load.aqaa[step, b, :n], *marks, *cycle, *states[b])
                states[b] = result[2:5]

    return {"interleave": interleave, "de-interleave": deinterleave, "AQAA demux": demux}


def _batched(load: Workload, parallel: bool | None) -> dict[str, Callable[[], None]]:
    """Workload runners calling the numba batched kernels once per step for all sessions."""
    cfg = AqaaConfig()
    ling_len = np.full(load.sessions, load.ling.shape[2], dtype=np.int64)
    sem_len = np.full(load.sessions, load.sem.shape[2], dtype=np.int64)
    id_len = np.full(load.sessions, load.ids.shape[2], dtype=np.int64)
    phases = np.zeros(load.sessions, dtype=np.int64)

    def interleave() -> None:
        for step in range(load.steps):
            fast.interleave_batch(load.ling[step], ling_len, load.sem[step], sem_len, False, parallel)

    def deinterleave() -> None:
        for step in range(load.steps):
            fast.deinterleave_batch(load.ids[step], id_len, phases, False, parallel)

    def demux() -> None:
        in_segment = np.zeros(load.sessions, dtype=np.bool_)
        slot = np.zeros(load.sessions, dtype=np.int64)
        only = np.full(load.sessions, NO_KIND, dtype=np.int64)
        for step in range(load.steps):
            lengths = np.full(load.sessions, load.aqaa_len[step], dtype=np.int64)
            fast.aqaa_demux_batch(
                load.aqaa[step],
                lengths,
                cfg.audio_start_id,
                cfg.audio_end_id,
                cfg.vocab_size,
                cfg.text_per_cycle,
                cfg.audio_per_cycle,
                in_segment,
                slot,
                only,
                parallel,
            )

    return {"interleave": interleave, "de-interleave": deinterleave, "AQAA demux": demux}


def warm_numba(load: Workload) -> tuple[float, str]:
    """Call every numba kernel once; returns (seconds taken, cache state in words)."""
    start = time.perf_counter()
    small = Workload(load.ling[:1, :2], load.sem[:1, :2], load.ids[:1, :2], load.aqaa[:1, :2], load.aqaa_len[:1])
    batched = (*_batched(small, True).values(), *_batched(small, False).values())
    for run in (*_per_session(fast, small).values(), *batched):
        run()
    cfg = AqaaConfig()
    fast.aqaa_mux(
        load.aqaa[0, 0, :0],
        load.aqaa[0, 0, :0],
        cfg.audio_start_id,
        cfg.audio_end_id,
        cfg.vocab_size,
        cfg.text_per_cycle,
        cfg.audio_per_cycle,
        True,
    )
    seconds = time.perf_counter() - start
    hits = sum(sum(d.stats.cache_hits.values()) for d in fast.compiled_kernels().values())
    misses = sum(sum(d.stats.cache_misses.values()) for d in fast.compiled_kernels().values())
    if misses:
        state = f"cache cold: {misses} kernel(s) compiled and written to the cache"
    elif hits:
        state = f"cache warm: {hits} kernel(s) loaded from the numba cache"
    else:
        state = "already compiled in this process"
    return seconds, state


def _torch_figures(load: Workload, dim: int, repeats: int, threads: int | None) -> tuple[list[list[object]], str]:
    """Tokens/s of unfused and fused interleave+embedding over all steps; rows and device."""
    from duplexer.kernels import gpu

    torch = gpu.require_torch()
    device = gpu.default_device()
    if threads is not None:
        torch.set_num_threads(threads)
    if device == "cpu":
        device = f"cpu, {torch.get_num_threads()} threads"
    where = device.split(",")[0]
    table = torch.randn((AqaaConfig().vocab_size, dim), dtype=torch.float32, device=where)
    ling = torch.from_numpy(load.ling).to(where)
    sem = torch.from_numpy(load.sem).to(where)
    tokens = load.steps * load.sessions * load.ids.shape[2]

    def timed(embed: Callable[..., Any]) -> float:
        def run() -> None:
            for step in range(load.steps):
                embed(ling[step], sem[step], table, validate=False)
            if where == "cuda":
                torch.cuda.synchronize()

        run()  # warm-up (allocator, kernels)
        return tokens / _best_seconds(run, repeats)

    unfused = timed(gpu.interleave_embed_unfused)
    fused = timed(gpu.interleave_embed)
    label = f"interleave + embed [{dim}] (torch, {device})"
    rows: list[list[object]] = [
        [label, "unfused: ids then F.embedding", f"{unfused:,.0f}", "1.00"],
        [label, "fused: one gather", f"{fused:,.0f}", f"{fused / unfused:.2f}"],
    ]
    return rows, device


def main(argv: Sequence[str]) -> int:
    """Run the kernel benchmark; prints figures and appends them to the log. Returns 0."""
    args = build_parser().parse_args(list(argv))
    if args.chunk_ms % GROUP_DURATION_MS:
        build_parser().error(f"--chunk-ms must be a multiple of {GROUP_DURATION_MS}")
    load_before = os.getloadavg()[0]
    load = build_workload(args.sessions, args.seconds, args.chunk_ms, args.seed)
    compile_s, cache_state = warm_numba(load)

    header = ["operation", "implementation", "tokens/s", "ratio"]
    rows: list[list[object]] = []
    batched_ratios: list[float] = []
    token_counts = {
        "interleave": load.ids.size,
        "de-interleave": load.ids.size,
        "AQAA demux": int(load.aqaa_len.sum()) * load.sessions,
    }
    step_tokens = load.sessions * load.ids.shape[2]
    auto = "prange" if step_tokens >= fast.PARALLEL_MIN_TOKENS else "serial twin"
    runners = {
        "NumPy reference, per session": _per_session(reference, load),
        "numba, per session": _per_session(fast, load),
        f"numba batched, {load.sessions} sessions/call (auto: {auto})": _batched(load, None),
        f"numba batched, {load.sessions} sessions/call (prange forced)": _batched(load, True),
    }
    for name, tokens in token_counts.items():
        rates = [tokens / _best_seconds(runs[name], args.repeats) for runs in runners.values()]
        batched_ratios.append(rates[2] / rates[0])
        rows += [
            [name, label, f"{rate:,.0f}", f"{rate / rates[0]:.2f}"] for label, rate in zip(runners, rates, strict=True)
        ]
    device_note = "torch figures skipped (--no-torch)"
    if not args.no_torch:
        try:
            torch_rows, device = _torch_figures(load, args.embed_dim, args.repeats, args.torch_threads)
        except ModuleNotFoundError as error:
            device_note = f"torch figures skipped: {error}"
        else:
            rows += torch_rows
            device_note = (
                f"torch timed on {device}"
                + ("" if device == "cuda" else " (no CUDA device available)")
                + "; fused ratio is to the unfused torch path; validation off in both"
            )
    worst = min(batched_ratios)
    verdict = "met" if worst >= BATCHED_TARGET_RATIO else "NOT met"
    notes = [
        f"workload: {load.sessions} sessions x {args.seconds:g} s audio, one {args.chunk_ms} ms "
        f"chunk per session per step ({load.steps} steps, {step_tokens} interleaved tokens per "
        f"step), best of {args.repeats}",
        "kernel ratios are to the NumPy reference called once per session; kernel-module calls "
        "(no API conversion layer)",
        f"batched calls below {fast.PARALLEL_MIN_TOKENS} tokens use the serial twin unless prange is forced",
        f"numba first call (compile or cache load, all kernels): {compile_s:.2f} s, {cache_state}",
        f"target numba batched (auto) >= {BATCHED_TARGET_RATIO:g}x reference: {verdict} (lowest {worst:.1f}x)",
        device_note,
        f"1-min load average before/after: {load_before:.2f}/{os.getloadavg()[0]:.2f} on "
        f"{os.cpu_count()} CPUs (other work on the machine slows prange and torch threads most)",
    ]
    from duplexer.bench.log import append_benchmark, format_table, log_path_from_args

    say(format_table(header, rows))
    for note in notes:
        say(f"- {note}")
    log_path = log_path_from_args(args)
    if log_path is not None:
        append_benchmark(
            "Token kernels: NumPy reference vs numba vs numba batched",
            header,
            rows,
            notes=notes,
            log_path=log_path,
            argv=["bench", "kernels", *argv],
        )
        say(f"appended to {log_path}")
    return 0
