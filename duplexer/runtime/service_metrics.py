"""The operational figures of one serving process (``serve``, ``mqtt``), in Prometheus's terms.

Each server owns one :class:`ServiceMetrics` with a registry of its own (never prometheus-client's
global one), so two servers, or a test's many, in one process keep separate counts. The turn
recorder of each session (:mod:`duplexer.actors.turn_recorder`) feeds it; the ``/metrics`` endpoint
(:mod:`duplexer.protocols.metrics_endpoint`) renders it. docs/observability.md lists every name.

Latencies are in seconds, as Prometheus names them; every label value comes from a fixed set (an
outcome, a stage, an error kind), never from client input, so no client can grow the output.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from duplexer.runtime.error_counts import ErrorCounts
from duplexer.runtime.turn_timing import STAGES, TurnTiming

PREFIX = "duplexer"
RESPONSE_BUCKETS_S = (0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0)
"""Around published response latencies: humans about 0.2 s, FDB's systems 0.07-1.5 s."""
STOP_BUCKETS_S = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0)
"""Around FDB v1.5's barge-in stop latencies, 0.17 s to 2.5 s."""
STAGE_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0)
REPLY_OUTCOMES = ("done", "stopped")
SPECULATION_OUTCOMES = ("started", "committed", "discarded")


class _ErrorCountsCollector(Collector):
    """Each surface's :class:`ErrorCounts` as one counter family, read at each scrape."""

    def __init__(self) -> None:
        self.surfaces: dict[str, ErrorCounts] = {}

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            f"{PREFIX}_errors",
            "Errors answered, by surface (webrtc, mqtt, metrics) and kind (HTTP status or MQTT error code)",
            labels=["surface", "kind"],
        )
        for surface, counts in sorted(self.surfaces.items()):
            for kind, n in counts.as_dict().items():
                family.add_metric([surface, kind], float(n))
        yield family


class ServiceMetrics:
    """Histograms and counters of one server's sessions and turns, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.response_latency = Histogram(
            f"{PREFIX}_response_latency_seconds",
            "First audible bot sample sent to the listener minus the end of the user's speech (VAD)",
            buckets=RESPONSE_BUCKETS_S,
            registry=registry,
        )
        self.barge_in_stop = Histogram(
            f"{PREFIX}_barge_in_stop_seconds",
            "End of the last audible bot sample sent minus the onset of the user's speech over it",
            buckets=STOP_BUCKETS_S,
            registry=registry,
        )
        self.stage_latency = Histogram(
            f"{PREFIX}_stage_latency_seconds",
            "Each stage of an answered turn, from the previous mark: VAD end, ASR final (asr), "
            "first LLM token (llm), first audible bot sample (audio)",
            ["stage"],
            buckets=STAGE_BUCKETS_S,
            registry=registry,
        )
        self.turns = Counter(
            f"{PREFIX}_turns", "Committed replies whose playout ended, by outcome", ["outcome"], registry=registry
        )
        self.talk_overs = Counter(
            f"{PREFIX}_talk_overs", "Replies that became audible while the user was speaking", registry=registry
        )
        self.speculative = Counter(
            f"{PREFIX}_speculative_replies",
            "Speculative replies started, committed and discarded",
            ["outcome"],
            registry=registry,
        )
        self.underruns = Counter(
            f"{PREFIX}_playout_underruns", "Gaps in a playing reply's audio (TTS behind playout)", registry=registry
        )
        self.sessions = Counter(f"{PREFIX}_sessions", "Sessions started", registry=registry)
        self.sessions_active = Gauge(f"{PREFIX}_sessions_active", "Sessions running now", registry=registry)
        for outcome in REPLY_OUTCOMES:
            self.turns.labels(outcome)
        for outcome in SPECULATION_OUTCOMES:
            self.speculative.labels(outcome)
        for stage in STAGES:
            self.stage_latency.labels(stage)
        self._errors = _ErrorCountsCollector()
        registry.register(self._errors)

    def add_error_counts(self, surface: str, counts: ErrorCounts) -> None:
        """Export ``counts`` (kept up to date by their surface) as ``duplexer_errors_total{surface=...}``."""
        self._errors.surfaces[surface] = counts

    def turn_ended(self, timing: TurnTiming) -> None:
        """Count one reply's end and observe its latencies."""
        self.turns.labels(timing.outcome).inc()
        if timing.talk_over:
            self.talk_overs.inc()
        response_ms = timing.response_latency_ms
        if response_ms is not None:
            self.response_latency.observe(max(0.0, response_ms) / 1000.0)
            for span in timing.stages():
                self.stage_latency.labels(span.stage).observe(span.duration_ms / 1000.0)
        stop_ms = timing.barge_in_stop_ms
        if stop_ms is not None:
            self.barge_in_stop.observe(stop_ms / 1000.0)

    def speculation(self, outcome: str) -> None:
        self.speculative.labels(outcome).inc()

    def exposition(self) -> bytes:
        """The registry in Prometheus's text format (version 0.0.4)."""
        return generate_latest(self.registry)
