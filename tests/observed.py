"""Test helpers for observability: scraping /metrics as Prometheus would, and traces kept in memory."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import aiohttp
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from duplexer.runtime.turn_tracing import TurnTracer

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def in_memory_tracer() -> tuple[TurnTracer, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    return TurnTracer.exporting_to(exporter, batch=False), exporter


async def scrape(url: str, token: str | None = None) -> Samples:
    """Every sample of ``url``, parsed by prometheus-client's own text parser, by name and labels."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as response:
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def scrape_until(url: str, ready: Any, token: str | None = None, timeout_s: float = 10.0) -> Samples:
    """Scrape until ``ready(samples)`` holds (the recorder sees a reply's end just after the caller does)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        samples = await scrape(url, token)
        if ready(samples) or loop.time() > deadline:
            return samples
        await asyncio.sleep(0.1)


def traces(exporter: InMemorySpanExporter) -> dict[int, list[ReadableSpan]]:
    """The finished spans, by trace id."""
    by_trace: dict[int, list[ReadableSpan]] = defaultdict(list)
    for span in exporter.get_finished_spans():
        assert span.context is not None
        by_trace[span.context.trace_id].append(span)
    return dict(by_trace)


def turn_and_stages(spans: list[ReadableSpan]) -> tuple[ReadableSpan, list[ReadableSpan]]:
    """A trace's one root ``turn`` span and its children in time order; fails unless it is that shape."""
    roots = [s for s in spans if s.parent is None]
    assert [s.name for s in roots] == ["turn"], [s.name for s in spans]
    (turn,) = roots
    assert turn.context is not None
    children = sorted((s for s in spans if s is not turn), key=lambda s: s.start_time or 0)
    assert all(s.parent is not None and s.parent.span_id == turn.context.span_id for s in children)
    return turn, children
