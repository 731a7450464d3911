"""A device's side of the MQTT contract, in Python: for robots that run Python, the example and the bench.

The client declares its microphone format (retained), announces itself with a
last will, streams numbered frames, and collects the bot's audio and events.
While the broker is away it keeps the frames it could not send (up to
``outage_buffer_ms``) and sends them, flagged as delayed and still in sequence,
once it is back, so the user's words during an outage are heard late rather
than lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any

import aiomqtt

from duplexer.protocols.mqtt_connection import Backoff, BrokerSettings, make_client
from duplexer.protocols.mqtt_topics import (
    CONFIG_VERSION,
    FLAG_DELAYED,
    OFFLINE,
    ONLINE,
    QOS_AUDIO,
    QOS_CONFIG,
    QOS_CONTROL,
    QOS_EVENTS,
    QOS_STATUS,
    AudioFormat,
    Channel,
    EchoConfig,
    Topics,
    WireError,
    encode_json,
    pack_audio,
    unpack_audio,
)


@dataclass(frozen=True)
class ReceivedAudio:
    """One frame of bot audio as it arrived, with the loop time it arrived at."""

    seq: int
    flags: int
    pcm: bytes
    arrival_s: float


@dataclass(frozen=True)
class _Queued:
    topic: str
    qos: int
    payload: bytes = b""
    retain: bool = False
    seq: int | None = None  # set for microphone frames, whose header is packed when sent
    delayed: bool = False


class DeviceClient:
    """A microphone-and-speaker device on the broker; use as ``async with DeviceClient(...) as device``."""

    def __init__(
        self,
        broker: BrokerSettings,
        device_id: str,
        fmt: AudioFormat,
        topics: Topics | None = None,
        outage_buffer_ms: float = 10_000.0,
        reconnect_initial_s: float = 0.2,
        reconnect_max_s: float = 5.0,
        session_expiry_s: int = 60,
        on_audio: Callable[[ReceivedAudio], None] | None = None,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        token: str | None = None,
        echo: EchoConfig | None = None,
    ) -> None:
        self.broker = broker
        self.device_id = device_id
        self.fmt = fmt
        self.topics = topics or Topics()
        self.max_buffered = max(1, int(outage_buffer_ms // fmt.frame_ms))
        self.backoff = Backoff(reconnect_initial_s, reconnect_max_s)
        self.session_expiry_s = session_expiry_s
        """How long the broker keeps QoS 1 events for this device across a network blip."""
        self.on_audio, self.on_event = on_audio, on_event
        self.token = token
        """Sent in the config, for a bridge that names a token per device (``--device-tokens``)."""
        self.echo = echo
        """Sent in the config (version 2): who cancels this device's echo, e.g. ``EchoConfig(EchoMode.DEVICE)``."""
        self.client_id = f"duplexer-device-{device_id}-{secrets.token_hex(3)}"
        self.events: list[dict[str, Any]] = []
        self.event_arrivals_s: list[float] = []
        self.audio: list[ReceivedAudio] = []
        self.bridges: dict[str, str] = {}
        """Each bridge's last status (online/offline), by bridge id."""
        self.bridge_online = asyncio.Event()
        self.counters: Counter[str] = Counter()
        self.connected = asyncio.Event()
        self.seq = 0
        self._queue: deque[_Queued] = deque()
        self._wake = asyncio.Event()
        self._news = asyncio.Event()
        self._closing = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None

    def topic(self, channel: Channel) -> str:
        return self.topics.device(self.device_id, channel)

    @property
    def out_rate_hz(self) -> int | None:
        """The bot audio's sample rate, as the bridge declared it."""
        for event in reversed(self.events):
            if event.get("type") in ("session", "audio_out_format"):
                fmt = event.get("audio_out") if event["type"] == "session" else event
                if isinstance(fmt, dict) and isinstance(fmt.get("sample_rate_hz"), int):
                    return int(fmt["sample_rate_hz"])
        return None

    # -- sending

    def send_frame(self, pcm: bytes) -> None:
        """Queue one microphone frame; held (and later flagged delayed) while the broker is away."""
        delayed = not self.connected.is_set()
        self._queue.append(_Queued(self.topic(Channel.AUDIO_IN), QOS_AUDIO, pcm, seq=self.seq, delayed=delayed))
        self.seq += 1
        if len(self._queue) > self.max_buffered:  # drop the oldest frame, keep control messages
            oldest = next((item for item in self._queue if item.seq is not None), None)
            if oldest is not None and sum(1 for item in self._queue if item.seq is not None) > self.max_buffered:
                self._queue.remove(oldest)
                self.counters["frames_dropped"] += 1
        self._wake.set()

    def control(self, kind: str, **fields: Any) -> None:
        """Queue a control message, e.g. ``control("interrupt")`` or ``control("start", policy={...})``."""
        self.publish(Channel.CONTROL, encode_json({"type": kind, **fields}), QOS_CONTROL)

    def publish(self, channel: Channel, payload: bytes, qos: int, retain: bool = False) -> None:
        """Queue any message on one of this device's topics, in order with the audio."""
        self._queue.append(_Queued(self.topic(channel), qos, payload, retain))
        self._wake.set()

    async def stream(self, pcm: bytes, realtime: bool = True) -> None:
        """Send PCM as frames at the pace of a live microphone (the last frame is zero-padded)."""
        frame_bytes = self.fmt.frame_bytes
        loop = asyncio.get_running_loop()
        start_s = loop.time()
        for i, offset in enumerate(range(0, len(pcm), frame_bytes)):
            frame = pcm[offset : offset + frame_bytes]
            self.send_frame(frame + bytes(frame_bytes - len(frame)))
            if realtime:
                await asyncio.sleep(max(0.0, start_s + (i + 1) * self.fmt.frame_ms / 1000.0 - loop.time()))

    async def silence(self, duration_ms: float) -> None:
        n_frames = int(duration_ms // self.fmt.frame_ms)
        await self.stream(bytes(self.fmt.frame_bytes * n_frames))

    # -- receiving

    async def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout_s: float, start: int = 0
    ) -> dict[str, Any]:
        """The first event from index ``start`` on that matches; raises TimeoutError."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        index = start
        while True:
            while index < len(self.events):
                if predicate(self.events[index]):
                    return self.events[index]
                index += 1
            remaining = deadline - loop.time()
            if remaining <= 0:
                seen = [e.get("type") for e in self.events[start:]]
                raise TimeoutError(f"device {self.device_id}: no matching event in {timeout_s} s; saw {seen}")
            self._news.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._news.wait(), remaining)

    async def wait_for_bridge(self, timeout_s: float) -> None:
        """Until a bridge says it is online (its retained status); raises TimeoutError."""
        try:
            await asyncio.wait_for(self.bridge_online.wait(), timeout_s)
        except TimeoutError:
            raise TimeoutError(f"no bridge online under {self.topics.prefix}/ within {timeout_s} s") from None

    async def wait_type(self, kind: str, timeout_s: float, start: int = 0, **match: Any) -> dict[str, Any]:
        return await self.wait_for(
            lambda e: e.get("type") == kind and all(e.get(k) == v for k, v in match.items()), timeout_s, start
        )

    @property
    def queued(self) -> int:
        """Messages queued and not yet handed to the broker."""
        return len(self._queue)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [event for event in self.events if event.get("type") == kind]

    def _received(self, topic: str, payload: bytes) -> None:
        loop_time = asyncio.get_running_loop().time()
        if topic == self.topic(Channel.AUDIO_OUT):
            try:
                header, pcm = unpack_audio(payload)
            except WireError:
                self.counters["bad_audio_out"] += 1
                return
            frame = ReceivedAudio(header.seq, header.flags, pcm, loop_time)
            self.audio.append(frame)
            if self.on_audio:
                self.on_audio(frame)
        elif topic == self.topic(Channel.EVENTS):
            try:
                event = json.loads(payload)
            except ValueError:
                self.counters["bad_events"] += 1
                return
            self.events.append(event)
            self.event_arrivals_s.append(loop_time)
            if self.on_event:
                self.on_event(event)
        else:
            bridge_id = self.topics.parse_bridge_status(topic)
            if bridge_id is not None:
                self.bridges[bridge_id] = payload.decode("utf-8", errors="replace").strip().lower()
                if ONLINE in self.bridges.values():
                    self.bridge_online.set()
                else:
                    self.bridge_online.clear()
        self._news.set()

    # -- connection

    async def run(self) -> None:
        """Stay connected until :meth:`close`, reconnecting with backoff."""
        while not self._closing.is_set():
            client = make_client(
                self.broker,
                self.client_id,
                will=aiomqtt.Will(self.topic(Channel.STATUS), OFFLINE, QOS_STATUS, retain=True),
                clean_start=self.counters["connections"] == 0,
                session_expiry_s=self.session_expiry_s,
            )
            try:
                async with client:
                    self.backoff.reset()
                    await self._serve(client)
                    return
            except aiomqtt.MqttError:
                self.connected.clear()
                self.counters["disconnects"] += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self.backoff.next_s())

    async def _serve(self, client: aiomqtt.Client) -> None:
        await client.subscribe(self.topic(Channel.EVENTS), QOS_EVENTS)
        await client.subscribe(self.topic(Channel.AUDIO_OUT), QOS_AUDIO)
        await client.subscribe(self.topics.bridge_status("+"), QOS_STATUS)
        config = self.fmt.to_json() if self.token is None else {**self.fmt.to_json(), "token": self.token}
        if self.echo is not None:
            config = {**config, "version": CONFIG_VERSION, "echo": self.echo.to_json()}
        await client.publish(self.topic(Channel.CONFIG), encode_json(config), QOS_CONFIG, retain=True)
        await client.publish(self.topic(Channel.STATUS), ONLINE, QOS_STATUS, retain=True)
        # Whatever is still queued waited out an outage, even frames queued before it was noticed.
        self._queue = deque(replace(item, delayed=item.seq is not None) for item in self._queue)
        self.connected.set()
        self.counters["connections"] += 1
        workers = {
            asyncio.create_task(self._read_forever(client)),
            asyncio.create_task(self._send_forever(client)),
            asyncio.create_task(self._closing.wait()),
        }
        try:
            done, _ = await asyncio.wait(workers, return_when=asyncio.FIRST_COMPLETED)
            if self._closing.is_set():
                await self._flush(client)
                await client.publish(self.topic(Channel.STATUS), OFFLINE, QOS_STATUS, retain=True)
                return
            for task in done:
                task.result()
            raise aiomqtt.MqttError("connection ended")
        finally:
            self.connected.clear()
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    async def _read_forever(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
            self._received(str(message.topic), payload)

    async def _send_forever(self, client: aiomqtt.Client) -> None:
        while True:
            while not self._queue:
                self._wake.clear()
                await self._wake.wait()
            await self._send_one(client, self._queue[0])
            self._queue.popleft()

    async def _send_one(self, client: aiomqtt.Client, item: _Queued) -> None:
        payload = item.payload
        if item.seq is not None:
            payload = pack_audio(item.seq, item.payload, FLAG_DELAYED if item.delayed else 0)
            self.counters["frames_delayed" if item.delayed else "frames_sent"] += 1
        await client.publish(item.topic, payload, item.qos, retain=item.retain)

    async def _flush(self, client: aiomqtt.Client, timeout_s: float = 2.0) -> None:
        with contextlib.suppress(TimeoutError, aiomqtt.MqttError):
            async with asyncio.timeout(timeout_s):
                while self._queue:
                    await self._send_one(client, self._queue.popleft())

    async def close(self) -> None:
        """Send what is queued, mark the device offline and disconnect."""
        self._closing.set()
        if self._runner is not None:
            await self._runner

    async def __aenter__(self) -> DeviceClient:
        self._runner = asyncio.create_task(self.run(), name=f"device-{self.device_id}")
        waiter = asyncio.create_task(self.connected.wait())
        done, _ = await asyncio.wait({waiter, self._runner}, timeout=15.0, return_when=asyncio.FIRST_COMPLETED)
        if waiter not in done:
            waiter.cancel()
            await self.close()
            raise TimeoutError(f"device {self.device_id} could not connect to {self.broker.url}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
