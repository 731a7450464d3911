"""Observability end to end: /metrics scraped over HTTP and parsed by Prometheus's own parser, and
OpenTelemetry traces seen by an in-memory exporter, after a real (aiortc) WebRTC call and a real
MQTT conversation through mosquitto; the metrics port's token and its answers to bad requests."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from duplexer.cli import main as cli_main
from duplexer.protocols.engine_factory import EngineFactory, scripted_engines
from duplexer.protocols.metrics_endpoint import ObservabilitySettings
from duplexer.protocols.mqtt_broker import LoopbackBroker
from duplexer.protocols.webrtc_client import WebRtcCaller
from duplexer.runtime.logging import configure_logging
from duplexer.runtime.turn_timing import STAGES
from tests.conftest import REPO, fuzz_settings, run
from tests.mqtt_broker import LONG_REPLY, device, running_bridge
from tests.mqtt_broker import speech as phrase
from tests.observed import Samples, in_memory_tracer, scrape, scrape_until, traces, turn_and_stages, value
from tests.serve_http import json_error, raw_request, serving, speech

TOKEN = "metrics-secret"
header_bytes = st.binary(max_size=60).map(lambda b: bytes(c for c in b if c >= 0x20 and c != 0x7F).strip())
"""Any header value that keeps HTTP framing whole (aiohttp's parser answers the rest before the app)."""
TRACED_STAGES = [*STAGES, "playout"]


@pytest.fixture(autouse=True)
def logging_to_the_real_stderr() -> None:
    configure_logging(stream=sys.__stderr__)


def humming(reply: str) -> EngineFactory:
    """Scripted engines whose bot says ``reply`` as an audible hum (a silent voice has no latency as heard)."""
    return scripted_engines(reply_for=lambda _: reply)


def turns_counted(samples: Samples) -> float:
    return value(samples, "duplexer_turns_total", outcome="done") + value(
        samples, "duplexer_turns_total", outcome="stopped"
    )


def assert_every_turn_traced_with_its_stages(exporter: Any, turns: float) -> list[Any]:
    """One trace per counted turn, each a ``turn`` span whose children are its stages in order."""
    by_trace = traces(exporter)
    assert len(by_trace) == turns
    roots = []
    for spans in by_trace.values():
        turn, children = turn_and_stages(spans)
        assert [s.name for s in children] == TRACED_STAGES
        for before, after in itertools.pairwise(children):
            assert before.end_time is not None and after.start_time is not None
            assert before.end_time <= after.start_time + 1_000  # each stage starts where the last ended (1 µs)
        assert turn.start_time is not None and turn.end_time is not None
        assert turn.start_time <= children[0].start_time and children[-1].end_time <= turn.end_time + 1_000
        roots.append(turn)
    return roots


# ------------------------------------------------------------------ WebRTC


def test_after_a_webrtc_call_metrics_count_the_turn_and_its_latency_and_a_trace_shows_its_stages() -> None:
    pcm, rate = speech()
    tracer, exporter = in_memory_tracer()
    watch = ObservabilitySettings(metrics_port=0, tracer=tracer)

    async def scenario() -> tuple[dict[str, Any], Samples, Samples, str]:
        async with serving(token=TOKEN, observability=watch) as server:
            endpoint = server.observed.endpoint
            assert endpoint is not None and endpoint.port != server.port
            before = await scrape(endpoint.url, TOKEN)
            caller = WebRtcCaller(server.url, token=TOKEN)
            session_id = await caller.connect()
            await caller.mic.say(pcm, rate)
            metrics = await caller.wait_for(lambda m: m["type"] == "metrics", 20)
            after = await scrape_until(endpoint.url, lambda s: turns_counted(s) >= 1, TOKEN)
            await caller.close()
            return metrics, before, after, session_id

    metrics, before, after, session_id = run(scenario())
    assert turns_counted(before) == 0 and value(before, "duplexer_sessions_total") == 0
    assert value(after, "duplexer_sessions_total") == 1
    assert value(after, "duplexer_turns_total", outcome="done") == 1
    # The histogram holds the figure the call's own metrics message reported: the same definition.
    assert value(after, "duplexer_response_latency_seconds_count") == 1
    latency_s = value(after, "duplexer_response_latency_seconds_sum")
    assert 0 < latency_s < 3.0
    assert latency_s == pytest.approx(metrics["response_latency_ms"] / 1000, abs=0.001)
    for stage in STAGES:
        assert value(after, "duplexer_stage_latency_seconds_count", stage=stage) == 1, stage
    stages_s = sum(value(after, "duplexer_stage_latency_seconds_sum", stage=stage) for stage in STAGES)
    assert stages_s == pytest.approx(latency_s, abs=0.001)  # the stages add up to what the caller heard
    assert (
        value(after, "duplexer_stage_latency_seconds_sum", stage="llm") > 0
    )  # the scripted LLM waits for its first token
    assert value(after, "duplexer_errors_total", surface="webrtc", kind="401") == 0

    (turn,) = assert_every_turn_traced_with_its_stages(exporter, turns=1)
    assert turn.attributes["duplexer.session_id"] == session_id
    assert turn.attributes["duplexer.reply_id"] == metrics["reply_id"]
    assert turn.attributes["duplexer.response_latency_ms"] == pytest.approx(metrics["response_latency_ms"], abs=0.1)


# ------------------------------------------------------------------ MQTT


@pytest.mark.slow
def test_after_an_mqtt_conversation_with_a_barge_in_metrics_and_traces_show_both_turns(
    broker: LoopbackBroker,
) -> None:
    tracer, exporter = in_memory_tracer()
    watch = ObservabilitySettings(metrics_port=0, metrics_token=TOKEN, tracer=tracer)
    question, _ = phrase("basketball_short_female_en-US-Wavenet-E.wav")
    interruption, _ = phrase("bike_short_male_en-US-Wavenet-A.wav")

    async def scenario() -> Samples:
        async with (
            running_bridge(broker, humming(LONG_REPLY), observability=watch) as bridge,
            device(broker, "robot1") as dev,
        ):
            endpoint = bridge.observed.endpoint
            assert endpoint is not None
            dev.control("start")
            await dev.wait_type("session", 5)
            await dev.stream(question)
            quiet = asyncio.create_task(dev.silence(8000))
            first = await dev.wait_type("playout_started", 10)
            await asyncio.sleep(0.6)
            quiet.cancel()
            await dev.stream(interruption)
            quiet = asyncio.create_task(dev.silence(20000))
            await dev.wait_type("playout_stopped", 5, reply_id=first["reply_id"])
            await dev.wait_for(lambda e: e["type"] == "playout_started" and e["reply_id"] != first["reply_id"], 10)
            dev.control("interrupt")  # the second long reply need not play to its end
            samples = await scrape_until(endpoint.url, lambda s: turns_counted(s) >= 2, TOKEN, timeout_s=15)
            quiet.cancel()
            return samples

    samples = run(scenario(), timeout_s=90)
    assert value(samples, "duplexer_sessions_total") == 1 and value(samples, "duplexer_sessions_active") == 1
    assert turns_counted(samples) == 2
    assert value(samples, "duplexer_turns_total", outcome="stopped") == 2  # a barge-in, then the interrupt
    assert value(samples, "duplexer_response_latency_seconds_count") == 2
    assert 0 < value(samples, "duplexer_response_latency_seconds_sum") < 6.0
    # The user's speech over the first reply: the bot fell silent soon after it began (the live policy pauses
    # the reply at once and stops it after 500 ms of speech); that overlap, as heard, was observed.
    assert value(samples, "duplexer_barge_in_stop_seconds_count") == 1
    assert 0 < value(samples, "duplexer_barge_in_stop_seconds_sum") < 1.0
    for stage in STAGES:
        assert value(samples, "duplexer_stage_latency_seconds_count", stage=stage) == 2, stage
    assert_every_turn_traced_with_its_stages(exporter, turns=2)


# ------------------------------------------------------------------ the metrics port


async def _status_and_error(port: int, method: str, path: str, **headers: bytes) -> tuple[int, str]:
    status, _, content = await raw_request(port, method, path, headers=headers)
    return status, json_error(content)


def test_the_metrics_port_needs_the_token_and_answers_bad_requests_with_4xx_json() -> None:
    async def scenario() -> tuple[list[tuple[int, str]], Samples, int]:
        async with serving(token=TOKEN, observability=ObservabilitySettings(metrics_port=0)) as server:
            endpoint = server.observed.endpoint
            assert endpoint is not None and endpoint.port is not None
            port = endpoint.port
            answers = [
                await _status_and_error(port, "GET", "/metrics"),
                await _status_and_error(port, "GET", "/metrics", Authorization=b"Bearer wrong"),
                await _status_and_error(port, "GET", "/nothing-here", Authorization=f"Bearer {TOKEN}".encode()),
                await _status_and_error(port, "POST", "/metrics", Authorization=f"Bearer {TOKEN}".encode()),
                await _status_and_error(port, "GET", "/metrics", Host=b"evil.example:80"),
                await _status_and_error(port, "GET", "/metrics", Origin=b"http://evil.example"),
            ]
            samples = await scrape(endpoint.url, TOKEN)
            # The main port does not serve the metrics.
            async with aiohttp.ClientSession() as http, http.get(f"{server.url}/metrics") as response:
                main_status = response.status
            return answers, samples, main_status

    answers, samples, main_status = run(scenario())
    statuses = [status for status, _ in answers]
    assert statuses == [401, 401, 404, 405, 403, 403]
    assert "missing bearer token" in answers[0][1] and "wrong bearer token" in answers[1][1]
    assert "GET /metrics" in answers[2][1] and "evil.example" in answers[4][1]
    assert value(samples, "duplexer_errors_total", surface="metrics", kind="401") == 2
    assert value(samples, "duplexer_errors_total", surface="metrics", kind="403") == 2
    assert main_status in (401, 404)


@pytest.mark.fuzz
def test_no_request_to_the_metrics_port_gets_a_5xx() -> None:
    async def serve_and_fuzz() -> None:
        async with serving(observability=ObservabilitySettings(metrics_port=0, metrics_token=TOKEN)) as server:
            endpoint = server.observed.endpoint
            assert endpoint is not None and endpoint.port is not None
            port = endpoint.port

            @fuzz_settings()
            @given(
                method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"]),
                path=st.from_regex(r"/[A-Za-z0-9_./?=&-]{0,40}", fullmatch=True),
                auth=st.one_of(st.none(), header_bytes, st.just(f"Bearer {TOKEN}".encode())),
            )
            def one(method: str, path: str, auth: bytes | None) -> None:
                headers = {} if auth is None else {"Authorization": auth}
                future = asyncio.run_coroutine_threadsafe(raw_request(port, method, path, headers=headers), loop)
                status, _, content = future.result(timeout=20)
                assert status < 500, (method, path, auth, content[:200])
                if status >= 400 and method != "HEAD":
                    json_error(content)

            loop = asyncio.get_running_loop()
            await asyncio.to_thread(one)

    run(serve_and_fuzz(), timeout_s=120)


# ------------------------------------------------------------------ options


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--metrics-port", "70000"], "--metrics-port 70000"),
        (["--metrics-port", "0", "--metrics-host", "0.0.0.0"], "--metrics-host 0.0.0.0"),
        (["--otlp-endpoint", "ftp://collector:4318"], "--otlp-endpoint 'ftp://collector:4318'"),
    ],
    ids=["port-out-of-range", "open-host-without-token", "not-http"],
)
@pytest.mark.parametrize("command", ["serve", "mqtt"])
def test_bad_observability_options_exit_2_naming_the_option(
    command: str, args: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--engines", "scripted"] + (
        ["--broker", "mqtt://127.0.0.1:1", "--all-devices"] if command == "mqtt" else []
    )
    assert cli_main([command, *base, *args]) == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.parametrize("command", ["serve", "mqtt"])
def test_the_commands_serve_metrics_on_their_own_port_behind_the_token_from_the_environment(
    command: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    metrics_port = _free_port()
    if command == "serve":
        argv = ["serve", "--port", str(_free_port())]
        env = {**os.environ, "DUPLEXER_TOKEN": TOKEN}
    else:
        broker: LoopbackBroker = request.getfixturevalue("broker")  # mosquitto only where it is needed
        argv = ["mqtt", "--broker", broker.url, "--all-devices"]
        env = {**os.environ, "DUPLEXER_METRICS_TOKEN": TOKEN}
    log = tmp_path / "command.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "duplexer.cli", *argv, "--engines", "scripted", "--metrics-port", str(metrics_port)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
    )
    url = f"http://127.0.0.1:{metrics_port}/metrics"

    async def probe() -> tuple[int, Samples]:
        for _ in range(300):
            with contextlib.suppress(aiohttp.ClientError):
                async with aiohttp.ClientSession() as http, http.get(url) as response:
                    refused = response.status
                return refused, await scrape(url, TOKEN)
            await asyncio.sleep(0.1)
        raise AssertionError(f"duplexer {command} did not serve /metrics: {log.read_text()[-2000:]}")

    try:
        refused, samples = run(probe(), timeout_s=45)
        assert refused == 401
        assert value(samples, "duplexer_sessions_total") == 0
        assert ("duplexer_turns_total", (("outcome", "done"),)) in samples
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0, log.read_text()[-2000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_metrics_port_already_taken_exits_2_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = ["serve", "--engines", "scripted", "--port", "0", "--metrics-port", str(port), "--log-level", "ERROR"]
        assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port} for /metrics" in err and "--metrics-port" in err
