"""The MQTT bridge: robots and IoT devices talk to duplexer through a broker, one session per device.

Theory of operation
-------------------
One asyncio task reads the broker and dispatches each message to its device's
:class:`DeviceLink`. A link owns the device's declared audio format, its
session (started on the first ``start`` or audio frame, by the configured
session maker: a local :class:`~duplexer.runtime.session.Session`, or a Ray
session whose controller, context, LLM and TTS run in a Ray actor), and the
inbound audio state (sequence, resampling). Live policy changes reach the
controller as a :class:`~duplexer.runtime.events.PolicyUpdate` on the session's
bus, so they work wherever the controller runs. Everything the
bridge sends goes through one :class:`Outbox`, drained by a publisher task while
the broker is reachable.

Bad input is refused per message: it becomes an ``error`` event on the device's
``events`` topic (rate-limited) and a structured log line, and never touches
other devices. When the broker goes away the sessions keep running and keep
their state; the bridge reconnects with backoff. While it is away, bot audio
cannot reach anyone, so the reply playing is stopped (history keeps what was
heard) and queued audio is dropped and counted; events are queued and sent after
reconnecting, followed by an ``outage`` report. Audio the device held during the
outage comes back flagged and in sequence, and is fed to the pipeline in order.

The wire contract is in :mod:`duplexer.protocols.mqtt_topics` and docs/mqtt.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiomqtt

from duplexer.actors.pipeline import PipelineConfig
from duplexer.protocols.engine_factory import EngineFactory
from duplexer.protocols.inbound_audio import DEFAULT_REORDER_WINDOW_FRAMES, MAX_CONCEAL_MS
from duplexer.protocols.mqtt_connection import Backoff, BrokerSettings, is_auth_failure, make_client
from duplexer.protocols.mqtt_link import DeviceLink
from duplexer.protocols.mqtt_outbox import Outbox, Outgoing
from duplexer.protocols.mqtt_topics import (
    OFFLINE,
    ONLINE,
    QOS_EVENTS,
    QOS_STATUS,
    Channel,
    ErrorCode,
    Topics,
    encode_json,
    valid_device_id,
)
from duplexer.runtime.error_counts import ErrorCounts
from duplexer.runtime.executors import SessionMaker, local_session
from duplexer.runtime.logging import get_logger

T = TypeVar("T")


@dataclass(frozen=True)
class BridgeConfig:
    """Every bridge setting, with defaults in one place."""

    topics: Topics = field(default_factory=Topics)
    device_id: str | None = None
    """Serve this device only; None serves every device under the prefix."""
    bridge_id: str = "main"
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    reconnect_initial_s: float = 0.5
    reconnect_max_s: float = 10.0
    session_expiry_s: int = 60
    """How long the broker keeps QoS 1 control messages for the bridge while it is disconnected."""
    stats_interval_s: float = 10.0
    housekeeping_ms: float = 40.0
    reorder_window_frames: int = DEFAULT_REORDER_WINDOW_FRAMES
    max_conceal_ms: float = MAX_CONCEAL_MS
    max_queued: int = 5000
    """Outbox capacity; past it audio is dropped first, then the oldest events (both counted)."""
    max_inflight: int = 64
    device_offline_grace_s: float = 120.0
    """A session whose device went offline (its last will) is stopped after this long."""
    presence_timeout_s: float = 10.0
    """After an outage, a device's events wait this long for a sign of it before going out anyway."""
    max_held_events: int = 1000
    """Events held for one absent device; past it the oldest are dropped (and counted)."""
    error_repeat_s: float = 1.0
    """At most one error event per device and error code in this period; the rest are counted."""
    max_devices: int = 1000
    make_session: SessionMaker = local_session
    """Makes each device's session: ``local_session`` (default), or a Ray executor's
    (:func:`duplexer.runtime.executors.session_maker`), which builds the placed actors' engines in
    Ray processes with the bridge's engine factory."""
    ready_timeout_s: float = 120.0
    """How long a Ray session's hosts may take to start before the session is given up."""


class BrokerLoginRefused(RuntimeError):
    """The broker refused the bridge's credentials on the first connection."""


class _ErrorGate:
    """Rate limit for repeated errors: the first passes, then one per period with a count of the rest."""

    def __init__(self, period_s: float, max_keys: int = 10_000) -> None:
        self.period_s, self.max_keys = period_s, max_keys
        self._last: dict[tuple[str, str], float] = {}
        self._suppressed: Counter[tuple[str, str]] = Counter()

    def allow(self, key: tuple[str, str], now_s: float) -> tuple[bool, int]:
        last = self._last.get(key)
        if last is not None and now_s - last < self.period_s:
            self._suppressed[key] += 1
            return False, 0
        if len(self._last) >= self.max_keys:
            self._last.clear()
        self._last[key] = now_s
        return True, self._suppressed.pop(key, 0)


class MqttBridge:
    """Bridges a broker to duplexer sessions, one per device; survives broker restarts and bad input."""

    def __init__(self, broker: BrokerSettings, engines: EngineFactory, config: BridgeConfig | None = None) -> None:
        self.broker = broker
        self.engines = engines
        self.config = config or BridgeConfig()
        self.topics = self.config.topics
        self.client_id = f"duplexer-bridge-{self.config.bridge_id}-{secrets.token_hex(3)}"
        self.status_topic = self.topics.bridge_status(self.config.bridge_id)
        self.links: dict[str, DeviceLink] = {}
        self.outbox = Outbox(self.config.max_queued, self._dropped)
        self.errors = _ErrorGate(self.config.error_repeat_s)
        self.counters: Counter[str] = Counter()
        self.error_counts = ErrorCounts()
        """Every message refused, by error code, across devices (links come and go; this stays)."""
        self.log = get_logger(component="mqtt_bridge", bridge_id=self.config.bridge_id)
        self.connected = asyncio.Event()
        self._stopping = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._down_since_s: float | None = None
        self._ever_connected = False

    # -- helpers

    def now_s(self) -> float:
        return asyncio.get_running_loop().time()

    def spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _dropped(self, item: Outgoing, reason: str) -> None:
        link = self.links.get(item.device_id) if item.device_id else None
        counters = link.counters if link is not None else self.counters
        if reason == "delayed":
            counters["events_delayed"] += 1
        elif item.is_audio:
            counters[f"audio_out_{reason}"] += 1
        else:
            counters["events_dropped"] += 1

    def request_stop(self) -> None:
        """Stop gracefully: end the sessions, send what is queued, then mark the bridge offline."""
        self._stopping.set()

    # -- running

    async def run(self) -> None:
        """Serve until :meth:`request_stop`; raises BrokerLoginRefused if the first login is refused."""
        housekeeper = asyncio.create_task(self._housekeep_forever(), name="mqtt-housekeeping")
        try:
            await self._connect_forever()
        finally:
            housekeeper.cancel()
            await asyncio.gather(housekeeper, return_exceptions=True)
            await self._stop_sessions("bridge_stopped")
            tasks = list(self._tasks)
            await asyncio.gather(*tasks, return_exceptions=True)
            self.log.info("mqtt_bridge_stopped", errors=self.error_counts.as_dict())

    async def _connect_forever(self) -> None:
        cfg = self.config
        backoff = Backoff(cfg.reconnect_initial_s, cfg.reconnect_max_s)
        while not self._stopping.is_set():
            client = make_client(
                self.broker,
                self.client_id,
                will=aiomqtt.Will(self.status_topic, OFFLINE, QOS_STATUS, retain=True),
                clean_start=not self._ever_connected,
                session_expiry_s=cfg.session_expiry_s,
            )
            try:
                async with client:
                    self._ever_connected = True
                    backoff.reset()
                    await self._serve(client)
                    return
            except aiomqtt.MqttError as exc:
                if is_auth_failure(exc) and not self._ever_connected:
                    raise BrokerLoginRefused(
                        f"broker {self.broker.url} refused the login ({exc}); check --username/--password"
                    ) from None
                self._connection_lost(exc)
            delay_s = backoff.next_s()
            self.log.warning("mqtt_reconnect_wait", delay_s=round(delay_s, 2), attempt=backoff.attempt)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay_s)

    async def _serve(self, client: aiomqtt.Client) -> None:
        for topic_filter, qos in self.topics.subscriptions(self.config.device_id):
            await client.subscribe(topic_filter, qos)
        await client.publish(self.status_topic, ONLINE, QOS_STATUS, retain=True)
        self._connection_made()
        reader = asyncio.create_task(self._read_forever(client), name="mqtt-reader")
        publisher = asyncio.create_task(self._publish_forever(client), name="mqtt-publisher")
        stopper = asyncio.create_task(self._stopping.wait(), name="mqtt-stop")
        workers = {reader, publisher, stopper}
        try:
            done, _ = await asyncio.wait(workers, return_when=asyncio.FIRST_COMPLETED)
            if stopper in done:
                reader.cancel()
                await self._stop_sessions("bridge_stopped")
                await self._drain(timeout_s=2.0)
                await client.publish(self.status_topic, OFFLINE, QOS_STATUS, retain=True)
                return
            for task in done:
                task.result()  # re-raises the MqttError that ended the connection
            raise aiomqtt.MqttError("connection ended")
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    async def _drain(self, timeout_s: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while len(self.outbox) and loop.time() < deadline:
            await asyncio.sleep(0.01)

    def _connection_made(self) -> None:
        self.outbox.connected = True
        self.connected.set()
        self.counters["connections"] += 1
        if self._down_since_s is None:
            self.log.info("mqtt_connected", broker=self.broker.url, client_id=self.client_id)
            return
        down_ms = 1000.0 * (self.now_s() - self._down_since_s)
        self._down_since_s = None
        self.log.warning("mqtt_reconnected", broker=self.broker.url, down_ms=round(down_ms, 1))
        for link in self.links.values():
            link.outage_ended(down_ms, self.now_s())

    def _connection_lost(self, exc: BaseException) -> None:
        if self.outbox.connected:
            self.outbox.connected = False
            self.connected.clear()
            self._down_since_s = self.now_s()
            self.counters["disconnects"] += 1
            self.outbox.drop_audio(None, "outage")
            self.log.warning("mqtt_disconnected", broker=self.broker.url, error=str(exc))
            for link in self.links.values():
                link.outage_began(self.now_s())
        else:
            self.log.warning("mqtt_connect_failed", broker=self.broker.url, error=str(exc))

    async def _read_forever(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            self.dispatch(str(message.topic), _payload_bytes(message.payload), bool(message.retain))

    async def _publish_forever(self, client: aiomqtt.Client) -> None:
        slots = asyncio.Semaphore(self.config.max_inflight)
        inflight: set[asyncio.Task[None]] = set()
        try:
            while True:
                item = await self.outbox.get()
                await slots.acquire()
                task = asyncio.create_task(self._publish_one(client, item, slots))
                inflight.add(task)
                task.add_done_callback(inflight.discard)
        finally:
            for task in inflight:
                task.cancel()
            await asyncio.gather(*inflight, return_exceptions=True)

    async def _publish_one(self, client: aiomqtt.Client, item: Outgoing, slots: asyncio.Semaphore) -> None:
        try:
            await client.publish(item.topic, item.payload, item.qos, retain=item.retain)
        except aiomqtt.MqttError:
            self._unsent(item)  # the reader sees the lost connection and reconnects
        except asyncio.CancelledError:
            self._unsent(item)
            raise
        finally:
            slots.release()

    def _unsent(self, item: Outgoing) -> None:
        if item.is_audio:
            self._dropped(item, "outage")
        else:
            self.outbox.retry(item)  # at least once: it goes out again after reconnecting

    async def _housekeep_forever(self) -> None:
        period_s = self.config.housekeeping_ms / 1000.0
        while True:
            await asyncio.sleep(period_s)
            now_s = self.now_s()
            for link in list(self.links.values()):
                try:
                    link.housekeep(now_s)
                except Exception as exc:  # upkeep of one device must not stop the others'
                    link.log.error("mqtt_housekeeping_failed", error=repr(exc))

    async def _stop_sessions(self, reason: str) -> None:
        stopping = [link.end_session(reason) for link in self.links.values()]
        await asyncio.gather(*(task for task in stopping if task is not None), return_exceptions=True)

    # -- dispatch

    def dispatch(self, topic: str, payload: bytes, retained: bool = False) -> None:
        """Route one incoming message to its device; never raises."""
        self.counters["messages"] += 1
        parsed = self.topics.parse(topic)
        if parsed is None:
            self.counters["foreign_topic"] += 1
            return
        device_id, channel = parsed
        link = self._link(device_id)
        if link is None:
            return
        try:
            if not retained and channel is not Channel.STATUS:
                link.seen()  # it is publishing now, so it is connected
            if channel is Channel.AUDIO_IN:
                link.on_audio(payload)
            elif channel is Channel.CONFIG:
                link.on_config(payload)
            elif channel is Channel.CONTROL:
                link.on_control(payload)
            elif channel is Channel.STATUS:
                link.on_status(payload)
        except Exception as exc:  # a bug met by one message must not end the bridge or the session
            link.log.exception("mqtt_dispatch_failed", channel=channel.value, error=repr(exc))
            link.error(ErrorCode.INTERNAL, f"the bridge failed on a {channel.value} message: {exc!r}")

    def _link(self, device_id: str) -> DeviceLink | None:
        link = self.links.get(device_id)
        if link is not None:
            return link
        if not valid_device_id(device_id):
            self._refuse(
                device_id,
                ErrorCode.BAD_DEVICE_ID,
                f"device id {device_id[:80]!r} is not valid: use 1-64 of A-Z a-z 0-9 _ . - "
                "starting with a letter or digit",
            )
            return None
        if len(self.links) >= self.config.max_devices:
            self._refuse(
                device_id,
                ErrorCode.TOO_MANY_DEVICES,
                f"this bridge serves at most {self.config.max_devices} devices",
            )
            return None
        link = self.links[device_id] = DeviceLink(self, device_id)
        return link

    def _refuse(self, device_id: str, code: ErrorCode, message: str) -> None:
        self.counters[f"refused_{code.value}"] += 1
        self.error_counts.count(code.value)
        allowed, suppressed = self.errors.allow((device_id, code.value), self.now_s())
        if not allowed:
            return
        self.log.warning("mqtt_bad_input", device_id=device_id[:80], code=code.value, message=message)
        body: dict[str, Any] = {"type": "error", "source": "mqtt", "code": code.value, "message": message}
        body.update(fatal=False, suppressed=suppressed)
        self.outbox.put(self.topics.device(device_id, Channel.EVENTS), encode_json(body), QOS_EVENTS, None, False)


def _payload_bytes(payload: Any) -> bytes:
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, bytearray):
        return bytes(payload)
    if payload is None:
        return b""
    return str(payload).encode("utf-8")
