"""`duplexer bench bus`: publish->deliver latency and throughput of the in-process bus."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence

import numpy as np

from duplexer.bench.log import add_log_arguments, append_benchmark, log_path_from_args
from duplexer.runtime.bus import Bus
from duplexer.runtime.clock import LoopClock
from duplexer.runtime.console import say
from duplexer.runtime.events import AudioFrame, MetricEvent

LATENCY_TARGET_P99_US = 200.0
THROUGHPUT_TARGET_PER_S = 200_000.0


async def _latency_us(n_events: int) -> np.ndarray:
    """One event at a time: publish, then yield once so the subscriber's task takes it."""
    clock = LoopClock()
    bus = Bus("bench", clock)
    sub = bus.subscribe("bench", [MetricEvent], maxsize=1024)
    samples = np.empty(n_events, dtype=np.float64)
    received = 0

    async def consume() -> None:
        nonlocal received
        while received < n_events:
            event = await sub.get()
            assert isinstance(event, MetricEvent)
            samples[received] = (time.perf_counter_ns() - event.value) / 1000.0
            received += 1

    consumer = asyncio.create_task(consume())
    await asyncio.sleep(0)
    for _ in range(n_events):
        bus.publish(MetricEvent(session_id="bench", ts_ms=clock.now_ms(), name="t", value=time.perf_counter_ns()))
        await asyncio.sleep(0)
    await consumer
    return samples


async def _throughput_per_s(n_events: int, batch: int, subscribers: int) -> float:
    """Events created, published and delivered per second, with ``subscribers`` readers each."""
    clock = LoopClock()
    bus = Bus("bench", clock)
    subs = [bus.subscribe(f"s{i}", [AudioFrame], maxsize=batch * 2) for i in range(subscribers)]
    pcm = bytes(640)
    done = 0

    async def consume(i: int) -> None:
        nonlocal done
        sub = subs[i]
        for _ in range(n_events):
            await sub.get()
        done += 1

    tasks = [asyncio.create_task(consume(i)) for i in range(subscribers)]
    await asyncio.sleep(0)
    start = time.perf_counter()
    seq = 0
    while seq < n_events:
        for _ in range(min(batch, n_events - seq)):
            bus.publish(AudioFrame(session_id="bench", ts_ms=clock.now_ms(), pcm=pcm, sample_rate_hz=16000, seq=seq))
            seq += 1
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    overflow = bus.metrics.total("bus.overflow")
    if overflow:
        raise RuntimeError(f"bench lost {overflow} events to overflow; raise the queue size")
    return n_events * subscribers / elapsed


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="duplexer bench bus",
        description="Measure the in-process bus on one core: publish->deliver latency (p50/p99, "
        "one event in flight) and events per second (batched publishing, one subscriber). "
        "Prints the figures and appends them to the benchmark log (--log).",
    )
    parser.add_argument("--events", type=int, default=200_000, help="events per measurement (default 200000)")
    parser.add_argument("--batch", type=int, default=256, help="events published per loop turn (default 256)")
    parser.add_argument("--repeats", type=int, default=3, help="repeat each measurement, keep the best (default 3)")
    add_log_arguments(parser)
    args = parser.parse_args(list(argv))
    if args.events < 1000 or args.batch < 1 or args.repeats < 1:
        parser.error("--events must be >= 1000, --batch and --repeats >= 1")

    latencies = [asyncio.run(_latency_us(args.events)) for _ in range(args.repeats)]
    best = min(latencies, key=lambda a: float(np.percentile(a, 99)))
    p50, p99 = float(np.percentile(best, 50)), float(np.percentile(best, 99))
    rate_one = max(asyncio.run(_throughput_per_s(args.events, args.batch, 1)) for _ in range(args.repeats))
    rate_four = max(asyncio.run(_throughput_per_s(args.events, args.batch, 4)) for _ in range(args.repeats))
    rows = [
        ("publish->deliver p50", f"{p50:.1f} µs", "-"),
        ("publish->deliver p99", f"{p99:.1f} µs", f"<= {LATENCY_TARGET_P99_US:.0f} µs"),
        ("events/s, 1 subscriber", f"{rate_one:,.0f}", f">= {THROUGHPUT_TARGET_PER_S:,.0f}"),
        ("deliveries/s, 4 subscribers", f"{rate_four:,.0f}", "-"),
    ]
    for name, value, target in rows:
        say(f"{name:30} {value:>14}   target {target}")
    append_benchmark(
        "bus: in-process publish/subscribe",
        ("measure", "value", "target"),
        rows,
        notes=(f"{args.events} events per measurement, best of {args.repeats}, one core (one asyncio loop)",),
        log_path=log_path_from_args(args),
        argv=["bench", "bus", *argv],
    )
    return 0
