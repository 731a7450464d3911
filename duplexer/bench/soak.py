"""`duplexer bench soak`: a scripted-engine server and MQTT bridge under a bounded mix of good and bad clients.

One process runs a ``serve`` server (WebRTC, with a token) and an MQTT bridge on a loopback
mosquitto, both on scripted engines, and the clients: good WebRTC callers and MQTT devices that
speak and listen turn after turn (:mod:`duplexer.bench.soak_clients`), and bad clients sending
every bad input of :mod:`duplexer.bench.soak_inputs` round after round, floods, offers that never
connect and devices that vanish. The run has a warm-up and a measured part; between them, and at
the end, the load pauses until every call and vanished session has ended, and the process's
resident memory and open file descriptors are read there: the measured part must not grow them.

What is checked (:meth:`SoakReport.problems`): every frame a good client sent reached its session
and it heard every frame of each reply; memory grew less than :data:`MAX_RSS_GROWTH` and file
descriptors by at most :data:`FD_TOLERANCE` over the measured part; the server and the bridge
counted exactly the errors the bad clients were due, by kind, and no 5xx or ``internal``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from duplexer.bench.soak_clients import (
    WEBRTC_HEARD_SLACK_FRAMES,
    GoodTally,
    mqtt_turn,
    offer_sdps,
    send_http,
    send_mqtt,
    stray_offer,
    vanish,
    webrtc_turn,
)
from duplexer.bench.soak_inputs import (
    DECLARED,
    DECLARED_CONFIG,
    SOAK_TOKEN,
    BadHttp,
    BadMqtt,
    http_bad_inputs,
    mqtt_bad_inputs,
)
from duplexer.protocols.engine_factory import scripted_engines
from duplexer.protocols.mqtt_bridge import BridgeConfig, MqttBridge
from duplexer.protocols.mqtt_connection import BrokerSettings, make_client
from duplexer.protocols.mqtt_topics import Channel, Topics
from duplexer.protocols.webrtc_call import CallSettings
from duplexer.protocols.webrtc_server import ServerConfig, WebRtcServer
from duplexer.runtime.events import INPUT_SAMPLE_RATE_HZ

REPLY = "Sure, here is a short answer."
UTTERANCE_MS = 1500.0
"""Each good turn says this much of the speech it is given, a different stretch each turn."""
MAX_RSS_GROWTH = 0.10
"""Resident memory may grow by less than this fraction of its post-warm-up size over the measured part."""
FD_TOLERANCE = 4
"""Open file descriptors may differ by this many between the two quiet points (loop internals, logs)."""
SETTLE_TIMEOUT_S = 30.0
"""Longest a pause waits for calls, sessions and half-sent requests to end."""
STRAY_CONNECT_TIMEOUT_S = 3.0
"""A call that never connects is ended this long after its offer (``serve --connect-timeout``)."""
VANISHED_GRACE_S = 1.0
"""The bridge ends a vanished device's session this long after its last will."""
VANISHED_IDS = ("soak-gone-0", "soak-gone-1")
GOOD_MQTT_IDS = ("soak-good-0", "soak-good-1")


@dataclass(frozen=True)
class SoakConfig:
    duration_s: float = 60.0
    """The whole run: warm-up, measured part and both pauses."""
    warmup_fraction: float = 0.25
    http_interval_s: float = 0.3
    mqtt_interval_s: float = 0.5
    stray_offer_every_s: float = 8.0
    vanish_every_s: float = 10.0


@dataclass
class Resources:
    rss_kb: int
    fds: int


def resources() -> Resources:
    """This process's resident memory (VmRSS, Linux /proc) and open file descriptors."""
    rss_kb = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss_kb = int(line.split()[1])
    return Resources(rss_kb, len(os.listdir("/proc/self/fd")))


@dataclass
class SoakReport:
    duration_s: float = 0.0
    webrtc: GoodTally = field(default_factory=lambda: GoodTally(heard_slack_frames_per_turn=WEBRTC_HEARD_SLACK_FRAMES))
    mqtt: GoodTally = field(default_factory=GoodTally)
    http_due: Counter[str] = field(default_factory=Counter)
    """Errors the bad HTTP clients were due, by status."""
    http_sent: Counter[str] = field(default_factory=Counter)
    """Bad HTTP requests sent, by name."""
    http_unexpected: list[str] = field(default_factory=list)
    """Bad requests answered with another status than their due one."""
    http_counted: dict[str, int] = field(default_factory=dict)
    mqtt_due: Counter[str] = field(default_factory=Counter)
    mqtt_sent: int = 0
    mqtt_counted: dict[str, int] = field(default_factory=dict)
    stray_offers: int = 0
    vanished: int = 0
    vanished_sessions: int = 0
    """Sessions the vanished devices started (each must end after its last will)."""
    lingering: list[str] = field(default_factory=list)
    """What had not ended by the end of a pause."""
    start: Resources = field(default_factory=lambda: Resources(0, 0))
    end: Resources = field(default_factory=lambda: Resources(0, 0))
    peak_rss_kb: int = 0

    @property
    def rss_growth(self) -> float:
        return (self.end.rss_kb - self.start.rss_kb) / max(1, self.start.rss_kb)

    def problems(self) -> list[str]:
        """Everything the soak promises that did not hold; empty when the run passed."""
        found: list[str] = [f"webrtc: {f}" for f in self.webrtc.failures]
        found += [f"mqtt: {f}" for f in self.mqtt.failures]
        for name, tally in (("webrtc", self.webrtc), ("mqtt", self.mqtt)):
            if tally.turns == 0:
                found.append(f"{name}: no good turn completed")
            if tally.frames_received != tally.frames_sent or not tally.reply_heard_in_full():
                found.append(f"{name}: audio lost ({tally.frames_received}/{tally.frames_sent} mic frames, "
                             f"{tally.reply_frames_heard}/{tally.reply_frames_played} reply frames)")  # fmt: skip
        if self.rss_growth >= MAX_RSS_GROWTH:
            found.append(f"RSS grew {100 * self.rss_growth:.1f}% ({self.start.rss_kb} -> {self.end.rss_kb} kB)")
        if abs(self.end.fds - self.start.fds) > FD_TOLERANCE:
            found.append(f"open file descriptors went from {self.start.fds} to {self.end.fds}")
        found += self.http_unexpected
        if self.http_counted != dict(sorted(self.http_due.items())):
            found.append(f"server counted errors {self.http_counted}, the bad clients were due {dict(self.http_due)}")
        if self.mqtt_counted != dict(sorted(self.mqtt_due.items())):
            found.append(f"bridge counted errors {self.mqtt_counted}, the bad clients were due {dict(self.mqtt_due)}")
        if self.vanished_sessions != self.vanished:
            found.append(f"{self.vanished} devices vanished, {self.vanished_sessions} of them had a session")
        found += [f"not ended after a pause: {what}" for what in self.lingering]
        return found


class Soak:
    """The server, the bridge and the clients of one soak run (see the module docstring)."""

    def __init__(self, broker: BrokerSettings, speech: bytes, config: SoakConfig) -> None:
        self.broker = broker
        self.speech = speech
        self.config = config
        self.report = SoakReport()
        engines = scripted_engines(reply_for=lambda _: REPLY)
        call = CallSettings(connect_timeout_s=STRAY_CONNECT_TIMEOUT_S, media_timeout_s=5.0, engines_name="scripted")
        self.server = WebRtcServer(ServerConfig(port=0, token=SOAK_TOKEN, max_sessions=8, call=call), engines)
        bridge_config = BridgeConfig(bridge_id="soak", device_offline_grace_s=VANISHED_GRACE_S)
        self.bridge = MqttBridge(broker, engines, bridge_config)
        self._turn = itertools.count()
        self._half_open: set[asyncio.Task[None]] = set()
        self._http_inputs: list[BadHttp] = []
        self._mqtt_inputs: list[BadMqtt] = []

    def _utterance(self) -> bytes:
        """A different stretch of the speech each turn."""
        n_bytes = 2 * int(INPUT_SAMPLE_RATE_HZ * UTTERANCE_MS / 1000)
        starts = max(1, len(self.speech) // n_bytes)
        start = (next(self._turn) % starts) * n_bytes
        return self.speech[start : start + n_bytes]

    async def run(self) -> SoakReport:
        loop = asyncio.get_running_loop()
        began_s = loop.time()
        await self.server.start()
        bridge_task = asyncio.create_task(self.bridge.run(), name="soak-bridge")
        try:
            await asyncio.wait_for(self.bridge.connected.wait(), 10.0)
            await self._prepare_inputs()
            warmup_s = self.config.duration_s * self.config.warmup_fraction
            await self._load(warmup_s)
            await self._settle()
            self.report.start = resources()
            await self._load(self.config.duration_s - (loop.time() - began_s))
            await self._settle()
            self.report.end = resources()
        finally:
            self.report.http_counted = self.server.errors.as_dict()
            self.report.mqtt_counted = self.bridge.error_counts.as_dict()
            links = [self.bridge.links[d] for d in VANISHED_IDS if d in self.bridge.links]
            self.report.vanished_sessions = sum(link.session_no for link in links)
            self.bridge.request_stop()
            await asyncio.wait_for(bridge_task, 20.0)
            await self.server.stop()
        self.report.duration_s = loop.time() - began_s
        return self.report

    async def _prepare_inputs(self) -> None:
        sdps = await offer_sdps()
        self._http_inputs = http_bad_inputs(*sdps)
        self._mqtt_inputs = mqtt_bad_inputs()
        async with make_client(self.broker, "soak-declare") as client:
            await client.publish(Topics().device(DECLARED, Channel.CONFIG), DECLARED_CONFIG, 1, retain=True)
        await asyncio.sleep(0.2)

    async def _load(self, seconds: float) -> None:
        """Every client at once for ``seconds``; each loop then finishes what it is doing."""
        stop = asyncio.Event()
        loops = [
            self._good_calls(stop),
            self._good_devices(stop),
            self._bad_http(stop),
            self._bad_mqtt(stop),
            self._strays(stop),
            self._vanishers(stop),
            self._sample(stop),
        ]
        tasks = [asyncio.create_task(loop) for loop in loops]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(asyncio.gather(*tasks)), max(0.0, seconds))
        stop.set()
        await asyncio.gather(*tasks)

    async def _sample(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.report.peak_rss_kb = max(self.report.peak_rss_kb, resources().rss_kb)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)

    async def _good_calls(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await webrtc_turn(self.server, self._utterance(), self.report.webrtc)

    async def _good_devices(self, stop: asyncio.Event) -> None:
        for device_id in itertools.cycle(GOOD_MQTT_IDS):
            if stop.is_set():
                return
            await mqtt_turn(self.broker, self.bridge, device_id, self._utterance(), self.report.mqtt)

    async def _bad_http(self, stop: asyncio.Event) -> None:
        port = self.server.port
        assert port is not None
        async with aiohttp.ClientSession() as http:
            for bad in itertools.cycle(self._http_inputs):
                if stop.is_set():
                    return
                if bad.hold_s:  # a half-sent request waits in the background
                    task = asyncio.create_task(self._send(port, bad, http))
                    self._half_open.add(task)
                    task.add_done_callback(self._half_open.discard)
                else:
                    await self._send(port, bad, http)
                await asyncio.sleep(self.config.http_interval_s)

    async def _send(self, port: int, bad: BadHttp, http: aiohttp.ClientSession) -> None:
        try:
            status = await send_http(self.server.url, port, bad, http)
        except (aiohttp.ClientError, OSError) as exc:  # the server dropped the connection without an answer
            self.report.http_unexpected.append(f"HTTP {bad.name!r}: {type(exc).__name__}: {exc}")
            status = None
        self._answered(bad, status)

    def _answered(self, bad: BadHttp, status: int | None) -> None:
        report = self.report
        report.http_sent[bad.name] += 1
        if bad.status is not None:
            report.http_due[str(bad.status)] += 1
        if status != bad.status:
            report.http_unexpected.append(f"HTTP {bad.name!r}: got {status}, due {bad.status}")

    async def _bad_mqtt(self, stop: asyncio.Event) -> None:
        async with make_client(self.broker, "soak-attacker") as client:
            for bad in itertools.cycle(self._mqtt_inputs):
                if stop.is_set():
                    return
                await send_mqtt(client, bad)
                self.report.mqtt_due[bad.code] += bad.repeat
                self.report.mqtt_sent += bad.repeat
                await asyncio.sleep(self.config.mqtt_interval_s)

    async def _strays(self, stop: asyncio.Event) -> None:
        async with aiohttp.ClientSession() as http:
            while not stop.is_set():
                status = await stray_offer(self.server.url, http)
                self.report.stray_offers += 1
                if status != 200:
                    self.report.http_unexpected.append(f"an offer that never connects got {status}, due 200")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.config.stray_offer_every_s)

    async def _vanishers(self, stop: asyncio.Event) -> None:
        for device_id in itertools.cycle(VANISHED_IDS):
            await vanish(self.broker, device_id, self._utterance())
            self.report.vanished += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.config.vanish_every_s)
            if stop.is_set():
                return

    def _still_running(self) -> list[str]:
        running = [f"call {sid}" for sid in self.server.calls]
        running += [f"session of {d}" for d in VANISHED_IDS if (link := self.bridge.links.get(d)) and link.session]
        running += [f"{len(self._half_open)} half-sent requests"] if self._half_open else []
        http_counted = sum(self.server.errors.as_dict().values())
        if http_counted < sum(self.report.http_due.values()):
            running.append(f"server: {http_counted} of {sum(self.report.http_due.values())} errors counted")
        mqtt_counted = self.bridge.error_counts.total
        if mqtt_counted < sum(self.report.mqtt_due.values()):
            running.append(f"bridge: {mqtt_counted} of {sum(self.report.mqtt_due.values())} errors counted")
        return running

    async def _settle(self) -> None:
        """Wait until calls, vanished sessions and half-sent requests have ended and every error is counted."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SETTLE_TIMEOUT_S
        while self._still_running() and loop.time() < deadline:
            await asyncio.sleep(0.1)
        self.report.lingering += self._still_running()
        await asyncio.sleep(0.5)  # closed sockets and finished tasks are reaped


async def run_soak(broker: BrokerSettings, speech: bytes, config: SoakConfig | None = None) -> SoakReport:
    """One soak run against ``broker`` with good clients saying ``speech`` (16 kHz mono PCM16)."""
    return await Soak(broker, speech, config or SoakConfig()).run()


# ------------------------------------------------------------------ duplexer bench soak


def figures(report: SoakReport) -> list[tuple[str, str]]:
    """The run's figures as (what, value) rows."""
    rows = [("duration s", f"{report.duration_s:.0f}")]
    for name, tally in (("webrtc", report.webrtc), ("mqtt", report.mqtt)):
        rows += [
            (f"{name} good turns", str(tally.turns)),
            (f"{name} mic frames received / sent", f"{tally.frames_received} / {tally.frames_sent}"),
            (f"{name} reply frames heard / played", f"{tally.reply_frames_heard} / {tally.reply_frames_played}"),
        ]
    rows += [
        (
            "RSS after warm-up / at the end / peak kB",
            f"{report.start.rss_kb} / {report.end.rss_kb} / {report.peak_rss_kb}",
        ),
        ("RSS growth %", f"{100 * report.rss_growth:.2f}"),
        ("open fds after warm-up / at the end", f"{report.start.fds} / {report.end.fds}"),
        ("bad HTTP requests sent", str(sum(report.http_sent.values()))),
        ("server errors counted (by status)", _kinds(report.http_counted)),
        ("bad MQTT messages sent", str(report.mqtt_sent)),
        ("bridge errors counted (by code)", _kinds(report.mqtt_counted)),
        ("offers never connected / devices vanished", f"{report.stray_offers} / {report.vanished}"),
        ("problems", str(len(report.problems()))),
    ]
    return rows


def _kinds(counts: dict[str, int]) -> str:
    return ", ".join(f"{kind}: {n}" for kind, n in counts.items()) or "none"


def main(argv: Sequence[str]) -> int:
    import tempfile

    from duplexer.bench.log import add_log_arguments, append_benchmark, log_path_from_args
    from duplexer.bench.webrtc import synthetic_speech
    from duplexer.cli_support import fail
    from duplexer.protocols.mqtt_broker import BrokerStartError, LoopbackBroker, find_mosquitto
    from duplexer.protocols.mqtt_connection import broker_settings
    from duplexer.runtime.console import say
    from duplexer.runtime.logging import configure_logging

    parser = argparse.ArgumentParser(
        prog="duplexer bench soak",
        description="A scripted-engine WebRTC server and MQTT bridge (on a loopback mosquitto) under good and "
        "bad clients at once: good calls and devices must lose no audio, memory and file descriptors must stay "
        "flat after a warm-up, and every bad request must be answered and counted. Exits 1 if not.",
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the whole run, in s (60)")
    add_log_arguments(parser)
    args = parser.parse_args(list(argv))
    if not 20 <= args.seconds <= 24 * 3600:
        return fail(f"--seconds must be within [20, 86400], got {args.seconds:g}")
    if find_mosquitto() is None:
        return fail("mosquitto is not installed: apt-get install mosquitto")
    configure_logging("CRITICAL")
    config = SoakConfig(duration_s=args.seconds)
    with tempfile.TemporaryDirectory(prefix="duplexer-bench-soak-") as workdir:
        broker = LoopbackBroker(Path(workdir))
        try:
            broker.start()
        except BrokerStartError as exc:
            return fail(str(exc))
        try:
            report = asyncio.run(run_soak(broker_settings(broker.url), synthetic_speech(10_000.0), config))
        finally:
            broker.stop()
    rows = figures(report)
    for what, value in rows:
        say(f"{what}: {value}")
    problems = report.problems()
    for problem in problems:
        say(f"PROBLEM: {problem}")
    notes = [
        f"one process: server (token, max 8 calls) and bridge on scripted engines, a loopback mosquitto, and the "
        f"clients; warm-up {100 * config.warmup_fraction:.0f}% of the run, then figures between two quiet points",
        f"pass: no audio lost, RSS growth < {100 * MAX_RSS_GROWTH:.0f}%, fds within {FD_TOLERANCE}, every bad "
        "input answered with its due error and counted by kind, no 5xx or internal",
    ]
    log_path = log_path_from_args(args)
    if log_path is not None:
        append_benchmark(
            "soak: server and bridge under good and bad clients",
            ("figure", "value"),
            rows,
            notes=notes,
            log_path=log_path,
            argv=["bench", "soak", *argv],
        )
    return 1 if problems else 0
