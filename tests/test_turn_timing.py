"""The turn recorder and the figures it derives: stage spans, speculation counts, talk-over, and the
OTLP endpoint option; driven with event sequences as a session's bus carries them."""

from __future__ import annotations

import asyncio
import http.server
import os
import subprocess
import sys
import threading
from typing import Any, ClassVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from duplexer.actors.turn_recorder import ReplyHeard, TurnRecorderActor
from duplexer.runtime.events import (
    AsrFinal,
    CancelReply,
    CommitReply,
    Event,
    LlmToken,
    PlayoutDone,
    PlayoutStarted,
    PlayoutStopped,
    StartReply,
    VadSpeechStart,
    VadSpeechStop,
)
from duplexer.runtime.observability import Observability
from duplexer.runtime.session import Session
from duplexer.runtime.turn_timing import STAGES, TurnTiming
from duplexer.runtime.turn_tracing import otlp_tracer, traces_endpoint
from tests.conftest import fuzz_settings
from tests.observed import in_memory_tracer, traces, turn_and_stages

marks = st.one_of(st.none(), st.floats(0.0, 10_000.0))


@fuzz_settings()
@given(speech_end=st.floats(0.0, 10_000.0), asr=marks, token=marks, audible=marks)
def test_stages_run_back_to_back_from_the_end_of_speech_and_never_backwards(
    speech_end: float, asr: float | None, token: float | None, audible: float | None
) -> None:
    timing = TurnTiming(
        session_id="s",
        turn_id=1,
        reply_id="r",
        speculative=False,
        outcome="done",
        reply_started_ms=speech_end,
        ended_ms=speech_end + 20_000,
        speech_end_ms=speech_end,
        asr_final_ms=asr,
        first_token_ms=token,
        first_audible_ms=audible,
    )
    spans = timing.stages()
    reached = [(stage, mark) for stage, mark in zip(STAGES, (asr, token, audible), strict=True) if mark is not None]
    assert [span.stage for span in spans] == [stage for stage, _ in reached]
    start = speech_end
    for span in spans:
        assert span.start_ms == start and span.duration_ms >= 0
        start = span.end_ms
    assert start == max([speech_end, *(mark for _, mark in reached)])
    if audible is not None and all(speech_end <= mark <= audible for _, mark in reached):
        assert sum(span.duration_ms for span in spans) == pytest.approx(timing.response_latency_ms)


def _event(kind: type[Event], ts_ms: float, **fields: Any) -> Event:
    return kind(session_id="s1", ts_ms=ts_ms, turn_id=fields.pop("turn_id", 1), **fields)


def test_the_recorder_counts_speculation_as_the_simulator_does_and_times_what_was_heard() -> None:
    """A speculative reply discarded when the user resumes, a second one committed and played, and a
    third that becomes audible just after the user starts again, who then stops it."""
    heard = {"r2": ReplyHeard(2600.0, 4000.0), "r3": ReplyHeard(5100.0, 5900.0)}
    tracer, exporter = in_memory_tracer()
    observability = Observability(tracer=tracer)
    events = [
        _event(VadSpeechStart, 0, segment_id=1, probability=0.9, speech_start_ms=0),
        _event(VadSpeechStop, 1000, segment_id=1, probability=0.1, speech_end_ms=900),
        _event(AsrFinal, 1100, segment_id=1, text="so do you"),
        _event(StartReply, 1200, reply_id="r1", user_text="so do you", speculative=True),
        _event(VadSpeechStart, 1300, segment_id=2, probability=0.9, speech_start_ms=1250),
        _event(CancelReply, 1310, reply_id="r1", reason="user_resumed"),
        _event(VadSpeechStop, 2000, segment_id=2, probability=0.1, speech_end_ms=1900),
        _event(AsrFinal, 2150, segment_id=2, text="so do you play basketball"),
        _event(StartReply, 2200, reply_id="r2", user_text="so do you play basketball", speculative=True),
        _event(LlmToken, 2400, reply_id="r2", text="Sure", index=0),
        _event(CommitReply, 2500, reply_id="r2", user_text="so do you play basketball"),
        _event(PlayoutStarted, 2550, reply_id="r2"),
        _event(PlayoutDone, 4100, reply_id="r2", played_ms=1500),
        _event(VadSpeechStart, 4500, segment_id=3, probability=0.9, speech_start_ms=4500, turn_id=2),
        _event(VadSpeechStop, 4850, segment_id=3, probability=0.1, speech_end_ms=4800, turn_id=2),
        _event(StartReply, 4900, reply_id="r3", user_text="and", speculative=False, turn_id=2),
        _event(CommitReply, 4950, reply_id="r3", user_text="and", turn_id=2),
        _event(PlayoutStarted, 5000, reply_id="r3", turn_id=2),
        _event(VadSpeechStart, 5060, segment_id=4, probability=0.9, speech_start_ms=5050, turn_id=3),
        _event(PlayoutStopped, 6000, reply_id="r3", played_ms=900, turn_id=2),
    ]

    async def scenario() -> TurnRecorderActor:
        async with Session("s1") as session:
            recorder = TurnRecorderActor(session.ctx, observability, heard.get)
            await recorder.on_start()
            for event in events:
                await recorder.handle(event)
            await recorder.on_stop()
            return recorder

    asyncio.run(scenario())
    metrics = observability.metrics
    registry = metrics.registry

    def sample(name: str, **labels: str) -> float:
        got = registry.get_sample_value(name, labels)
        return 0.0 if got is None else got

    assert [sample("duplexer_speculative_replies_total", outcome=o) for o in ("started", "committed", "discarded")] == [
        2,
        1,
        1,
    ]
    assert sample("duplexer_turns_total", outcome="done") == 1 == sample("duplexer_turns_total", outcome="stopped")
    assert sample("duplexer_sessions_total") == 1 and sample("duplexer_sessions_active") == 0
    # r2: heard 700 ms after the speech that ended at 1900 ms; r3: 300 ms after 4800 ms, over the user (from 5050).
    assert sample("duplexer_response_latency_seconds_count") == 2
    assert sample("duplexer_response_latency_seconds_sum") == pytest.approx(1.0)
    assert sample("duplexer_talk_overs_total") == 1
    assert sample("duplexer_stage_latency_seconds_sum", stage="asr") == pytest.approx(0.25)
    assert sample("duplexer_stage_latency_seconds_sum", stage="llm") == pytest.approx(0.25)
    assert sample("duplexer_stage_latency_seconds_sum", stage="audio") == pytest.approx(0.2 + 0.3)
    # r3 stopped by the speech from 5050 ms; its last audible sample left at 5900 ms.
    assert sample("duplexer_barge_in_stop_seconds_count") == 1
    assert sample("duplexer_barge_in_stop_seconds_sum") == pytest.approx(0.85)
    by_trace = traces(exporter)
    assert len(by_trace) == 2
    stage_names = sorted(tuple(s.name for s in turn_and_stages(spans)[1]) for spans in by_trace.values())
    assert stage_names == [("asr", "llm", "audio", "playout"), ("audio", "playout")]


def test_the_otlp_endpoint_comes_from_the_option_or_the_standard_variables_and_is_off_without() -> None:
    assert traces_endpoint(None, {}) is None
    assert traces_endpoint("http://collector:4318/", {}) == "http://collector:4318/v1/traces"
    assert traces_endpoint(None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "https://c:4318"}) == "https://c:4318/v1/traces"
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:1", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://b:2/t"}
    assert traces_endpoint(None, env) == "http://b:2/t"
    assert traces_endpoint("http://c:3", env) == "http://c:3/v1/traces"
    with pytest.raises(ValueError, match="OTEL_EXPORTER_OTLP_ENDPOINT 'grpc://x'"):
        traces_endpoint(None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "grpc://x"})


@fuzz_settings()
@given(st.text(max_size=80))
def test_any_otlp_endpoint_text_is_a_url_or_a_one_line_error_naming_the_option(text: str) -> None:
    try:
        url = traces_endpoint(text, {})
    except ValueError as exc:
        assert str(exc).startswith("--otlp-endpoint") and "\n" not in str(exc).replace(text, "")
    else:
        assert url is not None and url.startswith(("http://", "https://")) and url.endswith("/v1/traces")


def test_with_tracing_off_opentelemetry_is_never_imported() -> None:
    script = (
        "import sys, asyncio\n"
        "from duplexer.protocols.metrics_endpoint import ObservabilitySettings\n"
        "from duplexer.protocols.engine_factory import scripted_engines\n"
        "from duplexer.protocols.webrtc_server import ServerConfig, WebRtcServer\n"
        "from duplexer.runtime.turn_tracing import otlp_tracer\n"
        "async def main():\n"
        "    assert otlp_tracer(None, {}) is None\n"
        "    server = WebRtcServer(ServerConfig(port=0, observability=ObservabilitySettings(metrics_port=0)),"
        " scripted_engines())\n"
        "    await server.start(); await server.stop()\n"
        "asyncio.run(main())\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


class _Collector(http.server.BaseHTTPRequestHandler):
    """A stand-in OTLP/HTTP collector: keeps each export request's body."""

    bodies: ClassVar[list[tuple[str, bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.bodies.append((self.path, body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_with_an_otlp_endpoint_each_turn_goes_to_the_collector_as_one_trace_with_its_stages() -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    collector = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=collector.serve_forever, daemon=True)
    thread.start()
    try:
        tracer = otlp_tracer(None, {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.server_port}"})
        assert tracer is not None
        timing = TurnTiming(
            session_id="s1",
            turn_id=3,
            reply_id="t3-r1",
            speculative=True,
            outcome="done",
            reply_started_ms=1200.0,
            ended_ms=4000.0,
            speech_end_ms=1000.0,
            asr_final_ms=1100.0,
            first_token_ms=1400.0,
            first_audible_ms=1700.0,
        )
        tracer.turn_ended(timing, clock_now_ms=4000.0)
        tracer.shutdown()  # sends what is batched
    finally:
        collector.shutdown()
    paths = {path for path, _ in _Collector.bodies}
    assert paths == {"/v1/traces"}
    spans = []
    for _, body in _Collector.bodies:
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}["service.name"]
            assert service == "duplexer"
            spans += [span for scope in resource_spans.scope_spans for span in scope.spans]
    assert sorted(span.name for span in spans) == sorted(["turn", "asr", "llm", "audio", "playout"])
    assert len({span.trace_id for span in spans}) == 1
    by_name = {span.name: span for span in spans}
    assert by_name["llm"].end_time_unix_nano - by_name["llm"].start_time_unix_nano == 300_000_000
    assert all(by_name[name].parent_span_id == by_name["turn"].span_id for name in ("asr", "llm", "audio", "playout"))
