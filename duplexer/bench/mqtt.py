"""`duplexer bench mqtt`: how many devices one bridge serves in real time, and what a broker hop costs.

A mosquitto on loopback, the bridge as its own process (``duplexer mqtt
--engines scripted --all-devices``), and simulated devices in this process.
Rounds of 1, 2, 4, ... devices each hold one conversation turn at the same
time: every device speaks a 1.5 s utterance at 24 kHz (so the bridge also
resamples), then listens to the bot's reply on a quiet microphone. A round is
sustained in real time when every device heard its whole reply at real-time
pace, no microphone frame was lost, and response latency stayed within
``--latency-slack-ms`` of the one-device round. Meanwhile a probe measures the
broker hop: publish -> receive of 20 ms audio-sized messages, on the same clock.

Response latency is as heard: the first audible bot sample (at or above
:data:`~duplexer.kernels.loudness.AUDIBLE_DBFS`; its frame's arrival plus its offset)
minus the end of the utterance. The scripted voice opens each reply with Piper's
digital silence, so the first frame heard, kept as a breakdown column, comes earlier.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from duplexer.cli_support import positive_int
from duplexer.protocols.engine_factory import PIPER_LEAD_SILENCE_MS
from duplexer.protocols.heard_audio import HeardAudio
from duplexer.protocols.mqtt_broker import BrokerStartError, LoopbackBroker, find_mosquitto
from duplexer.protocols.mqtt_connection import BrokerSettings, broker_settings, make_client
from duplexer.protocols.mqtt_device import DeviceClient
from duplexer.protocols.mqtt_topics import AudioFormat, Topics
from duplexer.runtime.console import progress, say
from duplexer.runtime.events import FRAME_MS

DEVICE_RATE_HZ = 24_000
UTTERANCE_S = 1.5
PROBE_BYTES = 8 + 2 * 320
"""A probe message is the size of a 20 ms, 16 kHz audio frame with its header."""
REALTIME_LAG_MS = 100.0
"""A reply is at real-time pace when its last frame arrives at most this late on a perfect schedule."""


def utterance(rate_hz: int = DEVICE_RATE_HZ, seconds: float = UTTERANCE_S) -> bytes:
    """A loud, voiced-like sound with a syllable rhythm: the energy VAD hears one stretch of speech."""
    t = np.arange(int(rate_hz * seconds)) / rate_hz
    voice = sum(np.sin(2 * np.pi * 140.0 * k * t) / k for k in range(1, 6))
    envelope = 0.65 + 0.35 * np.cos(2 * np.pi * 4.0 * t)
    samples = 0.25 * voice * envelope / np.max(np.abs(voice))
    return (samples * 32767).astype("<i2").tobytes()


@dataclass
class DeviceResult:
    replied: bool = False
    response_ms: float = math.nan
    """First audible bot sample heard - end of the utterance."""
    first_frame_ms: float = math.nan
    """First bot frame heard, whatever it holds - end of the utterance."""
    reply_lag_ms: float = math.nan
    frames_expected: int = 0
    frames_heard: int = 0
    inbound_lost: int = 0
    bus_overflow: float = 0.0


@dataclass
class RoundResult:
    devices: int
    results: list[DeviceResult] = field(default_factory=list)
    hop_ms: list[float] = field(default_factory=list)
    bridge_cpu: float = math.nan
    generator_lag_ms: list[float] = field(default_factory=list)

    def percentile(self, values: list[float], q: float) -> float:
        finite = [v for v in values if math.isfinite(v)]
        return float(np.percentile(finite, q)) if finite else math.nan

    @property
    def response_ms(self) -> list[float]:
        return [r.response_ms for r in self.results]

    @property
    def first_frame_ms(self) -> list[float]:
        return [r.first_frame_ms for r in self.results]

    def sustained(self, baseline_p90_ms: float, slack_ms: float) -> bool:
        return (
            all(r.replied and r.frames_heard >= r.frames_expected for r in self.results)
            and all(math.isfinite(r.response_ms) for r in self.results)  # a reply never audible was not heard
            and all(r.reply_lag_ms <= REALTIME_LAG_MS for r in self.results)
            and all(r.inbound_lost == 0 and r.bus_overflow == 0 for r in self.results)
            and self.percentile(self.response_ms, 90) <= baseline_p90_ms + slack_ms
        )


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc); NaN elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return math.nan


async def _probe(settings: BrokerSettings, topic: str, stop: asyncio.Event, out: list[float]) -> None:
    """Publish audio-sized messages at 50 per second and time each one's trip through the broker."""
    receiver = make_client(settings, f"bench-probe-rx-{os.getpid()}")
    sender = make_client(settings, f"bench-probe-tx-{os.getpid()}")
    async with receiver, sender:
        await receiver.subscribe(topic, 0)

        async def receive() -> None:
            async for message in receiver.messages:
                sent_ns = int.from_bytes(bytes(message.payload)[:8], "little")  # type: ignore[arg-type]
                out.append((time.perf_counter_ns() - sent_ns) / 1e6)

        reader = asyncio.create_task(receive())
        padding = bytes(PROBE_BYTES - 8)
        while not stop.is_set():
            await sender.publish(topic, time.perf_counter_ns().to_bytes(8, "little") + padding, 0)
            await asyncio.sleep(FRAME_MS / 1000)
        await asyncio.sleep(0.1)
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)


async def _device_turn(
    settings: BrokerSettings, device_id: str, start_delay_s: float, timeout_s: float, lags: list[float]
) -> DeviceResult:
    result = DeviceResult()
    fmt = AudioFormat(DEVICE_RATE_HZ, FRAME_MS)
    loop = asyncio.get_running_loop()
    async with DeviceClient(settings, device_id, fmt) as device:
        await device.wait_for_bridge(10.0)
        device.control("start")
        await device.wait_type("session", 10.0)
        await asyncio.sleep(start_delay_s)
        speech = utterance()
        frame_bytes = fmt.frame_bytes
        n_speech = len(speech) // frame_bytes
        deadline_s = loop.time() + timeout_s
        start_s = loop.time()
        speech_end_s = math.nan
        index = 0
        while loop.time() < deadline_s and not device.of_type("playout_done"):
            due_s = start_s + index * FRAME_MS / 1000
            lags.append(max(0.0, 1000 * (loop.time() - due_s)))
            chunk = speech[index * frame_bytes : (index + 1) * frame_bytes] if index < n_speech else b""
            device.send_frame(chunk or bytes(frame_bytes))
            index += 1
            if index == n_speech:
                speech_end_s = loop.time()
            await asyncio.sleep(max(0.0, start_s + index * FRAME_MS / 1000 - loop.time()))
        done = device.of_type("playout_done")
        device.control("stats")
        try:
            stats = await device.wait_type("stats", 5.0)
            result.inbound_lost = int(stats["audio_in"]["lost"])
            result.bus_overflow = float(stats["bus_overflow"])
        except TimeoutError:
            result.inbound_lost = -1
        device.control("stop")
        if done and device.audio:
            played_ms = float(done[0]["played_ms"])
            frames = device.audio
            result.replied = True
            result.frames_expected = math.ceil(played_ms / FRAME_MS - 1e-6)
            result.frames_heard = len(frames)
            result.first_frame_ms = 1000 * (frames[0].arrival_s - speech_end_s)
            heard = HeardAudio(device.out_rate_hz or DEVICE_RATE_HZ)
            for frame in frames:
                heard.add(frame.arrival_s, np.frombuffer(frame.pcm, dtype="<i2"))
            onset_s = heard.onset_s()
            if onset_s is not None:
                result.response_ms = 1000 * (onset_s - speech_end_s)
            span_ms = 1000 * (frames[-1].arrival_s - frames[0].arrival_s)
            result.reply_lag_ms = span_ms - (len(frames) - 1) * FRAME_MS
    return result


async def _round(settings: BrokerSettings, n_devices: int, round_no: int, timeout_s: float, pid: int) -> RoundResult:
    result = RoundResult(n_devices)
    stop_probe = asyncio.Event()
    probe = asyncio.create_task(_probe(settings, f"bench/_probe/{round_no}", stop_probe, result.hop_ms))
    cpu_before, wall_before = _cpu_s(pid), time.monotonic()
    turns = [
        _device_turn(
            settings, f"bench{round_no}-{i}", i * FRAME_MS / 1000 / n_devices, timeout_s, result.generator_lag_ms
        )
        for i in range(n_devices)
    ]
    result.results = list(await asyncio.gather(*turns))
    result.bridge_cpu = (_cpu_s(pid) - cpu_before) / (time.monotonic() - wall_before)
    stop_probe.set()
    await probe
    return result


def _fmt(value: float, digits: int = 0) -> str:
    return "-" if not math.isfinite(value) else f"{round(value, digits) + 0.0:.{digits}f}"  # no "-0"


def _ramp(max_devices: int) -> list[int]:
    counts, n = [], 1
    while n < max_devices:
        counts.append(n)
        n *= 2
    return [*counts, max_devices]


def main(argv: Sequence[str]) -> int:
    from duplexer.bench.log import add_log_arguments, append_benchmark, log_path_from_args
    from duplexer.cli_support import fail

    parser = argparse.ArgumentParser(
        prog="duplexer bench mqtt",
        description="Concurrent devices one MQTT bridge (scripted engines, one process) serves in real "
        "time, doubling the count up to --devices, and the broker hop latency (publish -> receive) "
        "of audio-sized messages. Starts a loopback mosquitto unless --broker is given. Prints the "
        "figures and appends them to the benchmark log (--log).",
    )
    parser.add_argument("--devices", type=positive_int, default=64, help="most devices to try (64)")
    parser.add_argument("--seconds", type=float, default=15.0, help="longest round per device, in s (15)")
    parser.add_argument(
        "--latency-slack-ms",
        type=float,
        default=300.0,
        help="response latency p90 may exceed the one-device round's by this much (300)",
    )
    parser.add_argument("--broker", metavar="URL", help="use this broker instead of a loopback mosquitto")
    add_log_arguments(parser)
    args = parser.parse_args(list(argv))
    if args.seconds < 8:
        parser.error("--seconds must be >= 8: a turn takes about 7 s")

    with tempfile.TemporaryDirectory(prefix="duplexer-bench-mqtt-") as workdir:
        broker: LoopbackBroker | None = None
        try:
            if args.broker:
                settings = broker_settings(args.broker)
            else:
                if find_mosquitto() is None:
                    return fail("mosquitto is not installed: apt-get install mosquitto, or pass --broker URL")
                broker = LoopbackBroker(Path(workdir))
                broker.start()
                settings = broker_settings(broker.url)
        except (ValueError, BrokerStartError) as exc:
            return fail(str(exc))
        bridge = subprocess.Popen(
            [sys.executable, "-m", "duplexer.cli", "mqtt", "--broker", settings.url, "--all-devices",
             "--engines", "scripted", "--scripted-lead-silence-ms", f"{PIPER_LEAD_SILENCE_MS:g}",
             "--bridge-id", "bench", "--log-level", "ERROR"],
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            rounds = asyncio.run(_rounds(settings, args, bridge.pid))
        finally:
            bridge.send_signal(signal.SIGTERM)
            try:
                bridge.wait(timeout=15)
            except subprocess.TimeoutExpired:
                bridge.kill()
            if broker is not None:
                broker.stop()

    baseline = rounds[0].percentile(rounds[0].response_ms, 90)
    sustained = [r.devices for r in rounds if r.sustained(baseline, args.latency_slack_ms)]
    best = max(sustained, default=0)
    rows = []
    for r in rounds:
        ok = r.sustained(baseline, args.latency_slack_ms)
        generator_p99 = r.percentile(r.generator_lag_ms, 99)
        limit = "-"
        if not ok:
            limit = "bridge CPU" if r.bridge_cpu >= 0.9 else "shared cores" if generator_p99 > 20 else "bridge"
        rows.append((
            r.devices,
            "yes" if ok else "no",
            f"{_fmt(r.percentile(r.response_ms, 50))} / {_fmt(r.percentile(r.response_ms, 90))}",
            _fmt(r.percentile(r.first_frame_ms, 50)),
            _fmt(max(x.reply_lag_ms for x in r.results)),
            f"{sum(x.frames_heard for x in r.results)}/{sum(x.frames_expected for x in r.results)}",
            sum(max(0, x.inbound_lost) for x in r.results),
            f"{_fmt(r.percentile(r.hop_ms, 50), 2)} / {_fmt(r.percentile(r.hop_ms, 99), 2)}",
            _fmt(100 * r.bridge_cpu),
            _fmt(generator_p99, 1),
            limit,
        ))  # fmt: skip
    header = (
        "devices",
        "real time",
        "heard response p50/p90 ms",
        "engine first frame p50 ms",
        "worst reply lag ms",
        "bot frames heard",
        "mic frames lost",
        "broker hop p50/p99 ms",
        "bridge CPU %",
        "generator lag p99 ms",
        "limited by",
    )
    say(" | ".join(header))
    for row in rows:
        say(" | ".join(str(cell) for cell in row))
    say(f"devices sustained in real time: {best}")
    notes = [
        f"devices sustained in real time: {best} (largest passing round; one bridge process, scripted engines)",
        f"each device: {UTTERANCE_S} s utterance at {DEVICE_RATE_HZ} Hz (resampled to 16 kHz), then a "
        f"4.3 s reply at 22.05 kHz ({PIPER_LEAD_SILENCE_MS:.0f} ms of digital silence, then a hum); "
        "audio QoS 0, events QoS 1",
        f"real time = every reply frame heard and audible, last frame <= {REALTIME_LAG_MS:.0f} ms behind a perfect "
        f"schedule, no mic frame lost, response p90 <= one-device p90 + {args.latency_slack_ms:.0f} ms",
        "heard response = first audible bot sample (>= -40 dBFS; its frame's arrival + its offset) - end of the "
        "utterance (includes the end-of-turn silence); engine first frame = first bot frame heard, whatever it "
        f"holds - the same end; each reply opens with {PIPER_LEAD_SILENCE_MS:.0f} ms of digital silence, as "
        "Piper's do",
        "broker hop = publish -> receive of 648-byte messages at 50/s through the broker, during the round",
        "bridge CPU % = the bridge process's CPU time / wall time (100% = one core); "
        "mosquitto and the simulated devices share the machine",
        "generator lag = how late the simulated devices sent their frames; over 20 ms the device "
        "simulator itself is short of CPU and the round is 'limited by shared cores', not by the bridge",
        "rounds double the device count, then narrow the gap between the last pass and the first fail",
    ]
    log_path = log_path_from_args(args)
    if log_path is not None:
        append_benchmark(
            "mqtt: devices one bridge serves in real time, and the broker hop",
            header,
            rows,
            notes=notes,
            log_path=log_path,
            argv=["bench", "mqtt", *argv],
        )
    return 0


async def _rounds(settings: BrokerSettings, args: argparse.Namespace, bridge_pid: int) -> list[RoundResult]:
    """Double the device count until a round fails, then narrow the gap to about a quarter."""
    ready = DeviceClient(settings, "bench-ready", AudioFormat(DEVICE_RATE_HZ, FRAME_MS), topics=Topics())
    async with ready:
        await ready.wait_for_bridge(30.0)
    rounds: list[RoundResult] = []

    async def attempt(n_devices: int) -> bool:
        result = await _round(settings, n_devices, len(rounds), args.seconds, bridge_pid)
        rounds.append(result)
        baseline = rounds[0].percentile(rounds[0].response_ms, 90)
        ok = result.sustained(baseline, args.latency_slack_ms)
        progress(f"  {n_devices} device(s): {'ok' if ok else 'not real time'}")
        return ok

    passed, failed = 0, None
    for n_devices in _ramp(args.devices):
        if not await attempt(n_devices):
            failed = n_devices
            break
        passed = n_devices
    while failed is not None and passed and failed - passed > max(1, passed // 4):
        middle = (passed + failed) // 2
        if await attempt(middle):
            passed = middle
        else:
            failed = middle
    return sorted(rounds, key=lambda r: r.devices)
