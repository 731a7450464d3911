"""What a server reports about its sessions: Prometheus figures always, OpenTelemetry traces when on.

A server builds one :class:`Observability` and hands it to each session's turn recorder
(:mod:`duplexer.actors.turn_recorder`); docs/observability.md describes what comes out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from duplexer.runtime.service_metrics import ServiceMetrics
from duplexer.runtime.turn_timing import TurnTiming
from duplexer.runtime.turn_tracing import TurnTracer


@dataclass
class Observability:
    """A server's metrics registry and, when tracing is on, its tracer."""

    metrics: ServiceMetrics = field(default_factory=ServiceMetrics)
    tracer: TurnTracer | None = None

    def turn_ended(self, timing: TurnTiming, clock_now_ms: float) -> None:
        self.metrics.turn_ended(timing)
        if self.tracer is not None:
            self.tracer.turn_ended(timing, clock_now_ms)

    def close(self) -> None:
        """Send the traces still batched (at server stop)."""
        if self.tracer is not None:
            self.tracer.shutdown()
