"""Test helpers for the MQTT bridge: a real mosquitto (installed on demand), a bridge beside it, speech."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import wave
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from duplexer.protocols.engine_factory import EngineFactory, scripted_engines
from duplexer.protocols.mqtt_bridge import BridgeConfig, MqttBridge
from duplexer.protocols.mqtt_broker import LoopbackBroker, find_mosquitto
from duplexer.protocols.mqtt_connection import BrokerSettings, broker_settings
from duplexer.protocols.mqtt_device import DeviceClient
from duplexer.protocols.mqtt_topics import AudioFormat
from tests.conftest import SHARED

SPEECH_DIR = SHARED / "data" / "vap_phrases" / "audio"
SHORT_REPLY = "Sure, here is a short answer."
LONG_REPLY = (
    "Well, that is a long story, and I will tell it slowly, from the very beginning, "
    "with every detail that matters, and a few that do not."
)


def ensure_mosquitto() -> str:
    """The mosquitto binary; on a fresh machine it is installed with apt-get (as root)."""
    path = find_mosquitto()
    if path:
        return path
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update"], check=False, capture_output=True, timeout=600, env=env)
        subprocess.run(
            ["apt-get", "install", "-y", "mosquitto"], check=False, capture_output=True, timeout=900, env=env
        )
        path = find_mosquitto()
        if path:
            return path
    pytest.fail("mosquitto is not installed and could not be installed (run: apt-get install -y mosquitto)")


def running_broker(workdir: Path, **options: Any) -> Iterator[LoopbackBroker]:
    """Body of a fixture: a mosquitto on a free 127.0.0.1 port, stopped afterwards."""
    broker = LoopbackBroker(workdir, binary=ensure_mosquitto(), **options)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def speech(name: str) -> tuple[bytes, int]:
    """PCM16 mono and its rate from the shared VAP phrases (24 kHz)."""
    path = SPEECH_DIR / name
    if not path.exists():
        pytest.fail(f"test speech {path} is missing; the shared data folder should sit beside the repo")
    with wave.open(str(path), "rb") as wav:
        assert wav.getnchannels() == 1 and wav.getsampwidth() == 2
        return wav.readframes(wav.getnframes()), wav.getframerate()


def engines_replying(reply: str = SHORT_REPLY, transcripts: tuple[str, ...] = ()) -> EngineFactory:
    """Scripted engines whose bot always says ``reply``."""
    return scripted_engines(transcripts=transcripts, reply_for=lambda _: reply, hum=False)


@contextlib.asynccontextmanager
async def running_bridge(
    broker: LoopbackBroker,
    engines: EngineFactory | None = None,
    settings: BrokerSettings | None = None,
    **config: Any,
) -> AsyncIterator[MqttBridge]:
    """An in-process bridge connected to ``broker``; stopped gracefully afterwards."""
    options: dict[str, Any] = {"reconnect_initial_s": 0.1, "reconnect_max_s": 0.5, **config}
    settings = settings or broker_settings(broker.url)
    bridge = MqttBridge(settings, engines or engines_replying(), BridgeConfig(**options))
    task = asyncio.create_task(bridge.run())
    connected = asyncio.create_task(bridge.connected.wait())
    done, _ = await asyncio.wait({task, connected}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    if connected not in done:
        connected.cancel()
        bridge.request_stop()
        if task.done():
            task.result()
        raise TimeoutError("the bridge did not connect to the test broker")
    try:
        yield bridge
    finally:
        bridge.request_stop()
        await asyncio.wait_for(task, 15)


@contextlib.asynccontextmanager
async def device(
    broker: LoopbackBroker,
    device_id: str,
    rate_hz: int = 24_000,
    settings: BrokerSettings | None = None,
    **options: Any,
) -> AsyncIterator[DeviceClient]:
    """A connected device client that has seen a bridge come online."""
    client = DeviceClient(settings or broker_settings(broker.url), device_id, AudioFormat(rate_hz), **options)
    async with client:
        await client.wait_for_bridge(10.0)
        yield client


async def until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        if loop.time() > deadline:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.02)
