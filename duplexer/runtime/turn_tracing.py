"""OpenTelemetry traces of live turns: one trace per reply, with a child span per stage.

Tracing is off unless an OTLP endpoint is configured (``--otlp-endpoint``, or the standard
``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``); off, nothing of
OpenTelemetry is imported and no span is made. Spans are written after the fact, when a reply's
playout ends, from its :class:`~duplexer.runtime.turn_timing.TurnTiming`: their times are the
session clock's marks placed on the wall clock, so a span's length is the stage's as measured.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

from duplexer.runtime.turn_timing import TurnTiming

OTLP_ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"
OTLP_TRACES_ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
TRACES_PATH = "/v1/traces"
"""Appended to a base endpoint, as the OTLP/HTTP exporter does for ``OTEL_EXPORTER_OTLP_ENDPOINT``."""
SERVICE_NAME = "duplexer"
TRACER_NAME = "duplexer.turns"
TURN_SPAN = "turn"
PLAYOUT_SPAN = "playout"


def _ns(ms: float) -> int:
    return round(ms * 1_000_000)


class TurnTracer:
    """Writes each ended reply as a trace: a ``turn`` span and its ``asr``, ``llm``, ``audio`` and
    ``playout`` children (those the turn reached)."""

    def __init__(self, provider: Any) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer(TRACER_NAME)

    @classmethod
    def exporting_to(cls, exporter: Any, batch: bool = True) -> TurnTracer:
        """A tracer whose spans go to ``exporter`` (an OTLP exporter, or a test's in-memory one)."""
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        provider = TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME}))
        provider.add_span_processor(BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter))
        return cls(provider)

    def turn_ended(self, timing: TurnTiming, clock_now_ms: float) -> None:
        """Write ``timing``'s trace; ``clock_now_ms`` is the session clock now, to place marks in wall time."""
        from opentelemetry import trace
        from opentelemetry.context import Context

        wall_now_ms = time.time_ns() / 1_000_000

        def wall_ns(clock_ms: float) -> int:
            return _ns(wall_now_ms - (clock_now_ms - clock_ms))

        first_ms = timing.reply_started_ms if timing.speech_end_ms is None else timing.speech_end_ms
        start_ms = min(first_ms, timing.reply_started_ms)
        turn = self.tracer.start_span(
            TURN_SPAN, context=Context(), start_time=wall_ns(start_ms), attributes=_turn_attributes(timing)
        )
        parent = trace.set_span_in_context(turn)
        children = [(span.stage, span.start_ms, span.end_ms) for span in timing.stages()]
        if timing.first_audible_ms is not None:
            children.append((PLAYOUT_SPAN, timing.first_audible_ms, max(timing.first_audible_ms, timing.ended_ms)))
        for name, begin_ms, end_ms in children:
            child = self.tracer.start_span(
                name, context=parent, start_time=wall_ns(begin_ms), attributes={"duplexer.stage": name}
            )
            child.end(end_time=wall_ns(end_ms))
        turn.end(end_time=wall_ns(max(timing.ended_ms, start_ms)))

    def shutdown(self) -> None:
        """Send what is still batched and stop."""
        self.provider.shutdown()


def _turn_attributes(timing: TurnTiming) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "duplexer.session_id": timing.session_id,
        "duplexer.reply_id": timing.reply_id,
        "duplexer.speculative": timing.speculative,
        "duplexer.outcome": timing.outcome,
        "duplexer.talk_over": timing.talk_over,
    }
    optional = {
        "duplexer.turn_id": timing.turn_id,
        "duplexer.response_latency_ms": timing.response_latency_ms,
        "duplexer.barge_in_stop_ms": timing.barge_in_stop_ms,
    }
    attributes.update({key: value for key, value in optional.items() if value is not None})
    return attributes


def traces_endpoint(endpoint: str | None, env: Mapping[str, str] = os.environ) -> str | None:
    """The OTLP/HTTP traces URL to export to, or None when tracing is off.

    ``endpoint`` (``--otlp-endpoint``) is a base URL like the standard variable's, and gets
    ``/v1/traces`` appended; the traces-only variable is used as it is. Raises ValueError naming a
    value that is not an http(s) URL."""
    if endpoint is not None:
        source, url = "--otlp-endpoint", endpoint.strip().rstrip("/") + TRACES_PATH
        given = endpoint
    elif env.get(OTLP_TRACES_ENDPOINT_ENV, "").strip():
        source, url = OTLP_TRACES_ENDPOINT_ENV, env[OTLP_TRACES_ENDPOINT_ENV].strip()
        given = url
    elif env.get(OTLP_ENDPOINT_ENV, "").strip():
        source, url = OTLP_ENDPOINT_ENV, env[OTLP_ENDPOINT_ENV].strip().rstrip("/") + TRACES_PATH
        given = env[OTLP_ENDPOINT_ENV]
    else:
        return None
    if not url.startswith(("http://", "https://")) or len(url.split("://", 1)[1].strip("/")) == 0:
        raise ValueError(f"{source} {given!r} must be an http:// or https:// URL, e.g. http://localhost:4318")
    return url


def otlp_tracer(endpoint: str | None, env: Mapping[str, str] = os.environ) -> TurnTracer | None:
    """A tracer exporting over OTLP/HTTP when an endpoint is configured; None (tracing off) otherwise."""
    url = traces_endpoint(endpoint, env)
    if url is None:
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return TurnTracer.exporting_to(OTLPSpanExporter(endpoint=url))
