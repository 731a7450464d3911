"""Soak: a scripted-engine server and MQTT bridge under a bounded mix of good and bad clients.

The default run lasts about a minute; ``pytest --long`` adds a ten-minute one. Good WebRTC
calls and MQTT devices say real speech turn after turn while bad clients send every bad input of
:mod:`duplexer.bench.soak_inputs`, floods, offers that never connect and devices that vanish.
Good sessions must lose no audio, memory and file descriptors must stay flat after the warm-up,
and the server and the bridge must have counted exactly the errors the bad clients were due.

The inputs that once got a 500 or ``internal`` are also checked one by one below, each against a
fresh server or bridge, so a regression names its input.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator

import aiohttp
import numpy as np
import pytest

from duplexer.bench.soak import FD_TOLERANCE, MAX_RSS_GROWTH, SoakConfig, SoakReport, figures, run_soak
from duplexer.bench.soak_clients import offer_sdps, send_http, send_mqtt
from duplexer.bench.soak_inputs import (
    DECLARED,
    DECLARED_CONFIG,
    BadHttp,
    BadMqtt,
    http_bad_inputs,
    mqtt_bad_inputs,
)
from duplexer.protocols.engine_factory import scripted_engines
from duplexer.protocols.mqtt_broker import LoopbackBroker
from duplexer.protocols.mqtt_connection import broker_settings, make_client
from duplexer.protocols.mqtt_topics import Channel, Topics
from duplexer.protocols.webrtc_server import ServerConfig, WebRtcServer
from duplexer.runtime.logging import configure_logging
from tests.conftest import voiced
from tests.mqtt_broker import running_bridge, until

pytestmark = pytest.mark.slow  # a real mosquitto, and a minute of real time

DEFAULT_RUN_S = 56.0
"""The default soak, plus about 4 s of start and pauses: a minute in all."""
LONG_RUN_S = 600.0


@pytest.fixture(autouse=True)
def quiet_logging() -> Iterator[None]:
    """Every bad input logs a warning; thousands of them would drown the test output."""
    configure_logging("CRITICAL", stream=sys.__stderr__)
    yield
    configure_logging(stream=sys.__stderr__)


def speech_pcm16() -> bytes:
    return (np.clip(voiced(), -1.0, 1.0) * 32767).astype("<i2").tobytes()


def soak(broker: LoopbackBroker, duration_s: float) -> SoakReport:
    config = SoakConfig(duration_s=duration_s)
    report = asyncio.run(
        asyncio.wait_for(run_soak(broker_settings(broker.url), speech_pcm16(), config), 3 * duration_s)
    )
    for what, value in figures(report):
        print(f"soak {what}: {value}")  # the figures, with -s or on failure
    return report


def assert_the_soak_held(report: SoakReport) -> None:
    for tally in (report.webrtc, report.mqtt):
        assert tally.turns >= 2 and tally.replies == tally.turns
        assert tally.failures == []
        assert tally.frames_received == tally.frames_sent > 0  # no microphone frame lost
        assert tally.reply_heard_in_full(), (tally.reply_frames_heard, tally.reply_frames_played)
    assert report.rss_growth < MAX_RSS_GROWTH, f"RSS {report.start.rss_kb} -> {report.end.rss_kb} kB"
    assert abs(report.end.fds - report.start.fds) <= FD_TOLERANCE
    assert report.http_unexpected == []
    assert report.http_counted == dict(sorted(report.http_due.items())) and report.http_due
    assert report.mqtt_counted == dict(sorted(report.mqtt_due.items())) and report.mqtt_due
    assert not any(kind.startswith("5") for kind in report.http_counted)
    assert "internal" not in report.mqtt_counted
    assert report.vanished >= 1 and report.vanished_sessions == report.vanished
    assert report.stray_offers >= 1
    assert report.lingering == []
    assert report.problems() == []


def test_a_minute_of_good_and_bad_clients_loses_no_audio_leaks_nothing_and_counts_every_error(
    broker: LoopbackBroker,
) -> None:
    report = soak(broker, DEFAULT_RUN_S)
    assert_the_soak_held(report)
    assert set(report.http_sent) == {b.name for b in http_bad_inputs("v=0", "v=0")}


@pytest.mark.long
@pytest.mark.timeout(2 * LONG_RUN_S)
def test_ten_minutes_of_good_and_bad_clients_loses_no_audio_leaks_nothing_and_counts_every_error(
    broker: LoopbackBroker,
) -> None:
    assert_the_soak_held(soak(broker, LONG_RUN_S))


# ------------------------------------------------------------------ inputs that once gave a 500 or `internal`


ONCE_500_HTTP = ["deeply nested JSON", "audio section twice", "5000-character file name", "half-sent body"]
ONCE_INTERNAL_MQTT = [b for b in mqtt_bad_inputs() if b.name in ("deeply nested control", "400-digit policy number")]


@pytest.mark.parametrize("name", ONCE_500_HTTP)
def test_a_request_that_once_got_a_500_gets_its_documented_status_and_is_counted(name: str) -> None:
    async def scenario() -> tuple[BadHttp, int | None, dict[str, int]]:
        (bad,) = [b for b in http_bad_inputs(*await offer_sdps()) if b.name == name]
        server = WebRtcServer(ServerConfig(port=0, token="soak-token"), scripted_engines())
        await server.start()
        assert server.port is not None
        try:
            async with aiohttp.ClientSession() as http:
                status = await send_http(server.url, server.port, bad, http)
            await asyncio.sleep(0.2)
            return bad, status, server.errors.as_dict()
        finally:
            await server.stop()

    bad, status, counted = asyncio.run(scenario())
    assert status == bad.status
    assert counted == {str(bad.status): 1}


@pytest.mark.parametrize("bad", ONCE_INTERNAL_MQTT, ids=lambda b: b.name)
def test_a_message_that_once_got_internal_gets_its_documented_code_and_is_counted(
    bad: BadMqtt, broker: LoopbackBroker
) -> None:
    async def scenario() -> dict[str, int]:
        async with running_bridge(broker) as bridge, make_client(broker_settings(broker.url), "soak-once") as client:
            await client.publish(Topics().device(DECLARED, Channel.CONFIG), DECLARED_CONFIG, 1, retain=True)
            await send_mqtt(client, bad)
            await until(lambda: bridge.error_counts.total >= bad.repeat, 5, "the refusal")
            return bridge.error_counts.as_dict()

    assert asyncio.run(scenario()) == {bad.code: bad.repeat}
